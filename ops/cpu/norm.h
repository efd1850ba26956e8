// CPU reference kernels for GroupNorm and LayerNorm, forward and backward. The CUDA kernels
// are checked against these, so they are written out directly (no composition of other
// ops) and compute statistics in f32 (f64 for f64 inputs), whatever the storage dtype.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cpu {

struct NormForward {
  Tensor y;     // x's dtype and shape, contiguous
  Tensor mean;  // per normalized set, cpu::stats_dtype(x)
  Tensor rstd;  // 1 / sqrt(var + eps), biased variance
};

struct NormGrads {
  Tensor dx, dweight, dbias;  // undefined where not requested
};

// x [N, C, *spatial] (any strides), weight/bias [C] or undefined (then 1 / 0).
// y = (x - mean) * rstd * weight + bias over each (n, group) of C / groups channels,
// then SiLU when fuse_silu. mean/rstd are [N, groups].
NormForward group_norm_forward(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps,
                               bool fuse_silu);
// dy like x; mean/rstd from the forward. With fuse_silu the pre-activation is recomputed
// from x, the statistics, weight and bias (bias is only read then).
NormGrads group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                              const Tensor& weight, const Tensor& bias, int64_t groups, bool fuse_silu, bool need_dx,
                              bool need_dweight, bool need_dbias);

// x [..., D], weight/bias [D] or undefined; normalizes each row of the last dim.
// mean/rstd have x's shape without the last dim.
NormForward layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
NormGrads layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                              const Tensor& weight, bool need_dx, bool need_dweight, bool need_dbias);

}  // namespace sd::cpu
