// Device-side helpers of the runtime itself (copies, fills), callable from plain C++.
// Only defined in CUDA builds; callers guard with SD_WITH_CUDA.
#pragma once
#include "runtime/tensor.h"

namespace sd::cuda_kernels {

// dst[i] = convert(src[i]); both on the same GPU, src already broadcast to dst's shape
// (stride 0 on broadcast dims), any strides and any dtypes.
void copy_strided(const Tensor& dst, const Tensor& src);
void fill(const Tensor& dst, double value);

}  // namespace sd::cuda_kernels
