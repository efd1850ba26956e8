// CUDA nearest-neighbour upsampling (the GPU side of ops/upsample.h). Inputs in any strides;
// results are channels-last when the input is a channels-last view, NCHW otherwise.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cuda {

// x [N, C, H, W] -> [N, C, H*s, W*s].
Tensor upsample_nearest2d(const Tensor& x, int64_t s);
// grad [N, C, H*s, W*s] -> [N, C, H, W]: each s x s block summed in f32 (f64 for f64), in the
// CPU kernel's order (row by row), so f32 results match it bit for bit.
Tensor upsample_nearest2d_backward(const Tensor& grad, int64_t s);

}  // namespace sd::cuda
