// CPU kernel of dropout (ops/dropout.h has the mask definition).
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cpu {

// out[i] = x[i] / (1-p) where uniform(seed, offset, i) >= p, else 0; x any strides, out a
// new contiguous tensor of x's dtype. Forward and backward (on the gradient) are the same.
Tensor dropout_masked(const Tensor& x, double p, uint64_t seed, uint64_t offset);

}  // namespace sd::cpu
