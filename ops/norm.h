// Normalization layers with their own fused backward.
//
// group_norm: x [N, C, *spatial] (any number of trailing dims, none included) split into
// `groups` groups of C / groups channels; each (sample, group) is normalized with its own
// mean and biased variance, then scaled and shifted per channel. UNet and VAE blocks always
// follow GroupNorm with SiLU, so fuse_silu applies it in the same kernel (and backward).
// layer_norm: normalizes over the last dim.
// weight/bias may be undefined (no affine transform). Statistics are computed in f32 (f64
// for f64 inputs); the output has x's dtype. weight/bias must share x's dtype and device.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd {

// x [N, C, *spatial], weight/bias [C] or undefined -> x's shape.
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps,
                  bool fuse_silu = false);
// x [..., D], weight/bias [D] or undefined -> x's shape.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);

}  // namespace sd
