// The image-layout helpers of runtime/image_layout.h under sd::cuda, where the GPU image kernels
// (conv, GroupNorm, upsample, pad) were written against them.
#pragma once
#include "runtime/image_layout.h"

namespace sd::cuda {
using sd::channels_last_strides;
using sd::empty_image;
using sd::is_channels_last_dense;
using sd::prefers_channels_last;
}  // namespace sd::cuda
