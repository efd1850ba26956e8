// Softmax and log-softmax along one dim, numerically stable (the row max is subtracted
// before exponentiating), computed in f32 (f64 for f64) with the output in x's dtype.
// A row whose elements are all -inf gives NaN, as in PyTorch (attention handles fully
// masked rows itself: see ops/attention.h).
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd {

Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

}  // namespace sd
