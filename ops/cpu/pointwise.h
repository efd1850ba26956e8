// CPU reference kernels for elementwise ops (ops/pointwise_kinds.h has the formulas).
#pragma once
#include "ops/pointwise_kinds.h"
#include "runtime/tensor.h"

namespace sd::cpu {

// out = a (op) b, broadcast; a and b share dtype. Returns a new contiguous tensor.
Tensor binary(BinaryKind k, const Tensor& a, const Tensor& b);
Tensor unary(UnaryKind k, const Tensor& x, double p0, double p1);
// x [..., 2n] = [hidden | gate] -> hidden * gelu(gate) [..., n] in one pass (the composite reads the
// projection twice and writes the GELU between); contiguous f32 or bf16, no backward (inference).
Tensor geglu(const Tensor& x);
// grad * f'(x), in x's dtype.
Tensor unary_backward(UnaryKind k, const Tensor& grad, const Tensor& x, double p0, double p1);

}  // namespace sd::cpu
