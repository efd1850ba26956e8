// CUDA softmax / log-softmax along one dim with the semantics of ops/cpu/softmax.h: any
// strides in, contiguous out in x's dtype, f32 math (f64 for f64) after subtracting the
// row max, a row of all -inf gives NaN.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cuda {

// dim already wrapped.
Tensor softmax_forward(const Tensor& x, int64_t dim, bool log);
// dx from dy and the forward's output y (softmax: y (dy - sum(dy y)); log: dy - exp(y) sum(dy)).
Tensor softmax_backward(const Tensor& dy, const Tensor& y, int64_t dim, bool log);

}  // namespace sd::cuda
