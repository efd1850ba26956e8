// The two generic differentiable pointwise ops that elementwise.h and activation.h wrap.
#pragma once
#include "ops/pointwise_kinds.h"
#include "runtime/tensor.h"

namespace sd::detail {

Tensor binary_op(BinaryKind k, const Tensor& a, const Tensor& b);
Tensor unary_op(UnaryKind k, const Tensor& x, double p0 = 0.0, double p1 = 0.0);

}  // namespace sd::detail
