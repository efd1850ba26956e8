// CPU reference kernels for softmax and log-softmax along one dim, forward and backward.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cpu {

// y = softmax(x) (or log_softmax when `log`) along `dim` (already wrapped); any strides in,
// contiguous out in x's dtype. Computed in f32 (f64 for f64) after subtracting the row max.
Tensor softmax_forward(const Tensor& x, int64_t dim, bool log);
// dx from dy and the forward's output y:
//   softmax:     dx = y (dy - sum(dy y))
//   log_softmax: dx = dy - exp(y) sum(dy)
Tensor softmax_backward(const Tensor& dy, const Tensor& y, int64_t dim, bool log);

}  // namespace sd::cpu
