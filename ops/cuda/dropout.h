// CUDA kernel of dropout (ops/dropout.h has the mask definition; ops/cpu/dropout.h the CPU twin).
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cuda {

// out[i] = x[i] / (1-p) where uniform(seed, offset, i) >= p, else 0; x any strides, out a
// new contiguous tensor of x's dtype on x's GPU. The mask is bit-identical to the CPU's.
Tensor dropout_masked(const Tensor& x, double p, uint64_t seed, uint64_t offset);

}  // namespace sd::cuda
