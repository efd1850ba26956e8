// CUDA kernels for elementwise ops (the same formulas as ops/cpu/pointwise.h).
#pragma once
#include "ops/pointwise_kinds.h"
#include "runtime/tensor.h"

namespace sd::cuda {

Tensor binary(BinaryKind k, const Tensor& a, const Tensor& b);
Tensor unary(UnaryKind k, const Tensor& x, double p0, double p1);
Tensor unary_backward(UnaryKind k, const Tensor& grad, const Tensor& x, double p0, double p1);

}  // namespace sd::cuda
