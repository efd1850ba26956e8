// CPU kernels for nearest-neighbour upsampling; any input strides, results contiguous.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cpu {

// x [N, C, H, W] -> [N, C, H*s, W*s].
Tensor upsample_nearest2d(const Tensor& x, int64_t s);
// grad [N, C, H*s, W*s] -> [N, C, H, W]: each s x s block summed (in f32, f64 for f64).
Tensor upsample_nearest2d_backward(const Tensor& grad, int64_t s);

}  // namespace sd::cpu
