// CUDA kernels for elementwise ops (the same formulas as ops/cpu/pointwise.h).
#pragma once
#include "ops/pointwise_kinds.h"
#include "runtime/tensor.h"

namespace sd::cuda {

Tensor binary(BinaryKind k, const Tensor& a, const Tensor& b);
Tensor unary(UnaryKind k, const Tensor& x, double p0, double p1);
Tensor unary_backward(UnaryKind k, const Tensor& grad, const Tensor& x, double p0, double p1);

// GEGLU in one pass: x [..., 2n] contiguous = [hidden | gate] -> hidden * gelu(gate) [..., n]
// (GELU with erf, as diffusers' GEGLU), and its backward dx = [g gelu(gate) | g hidden gelu'(gate)]
// from the upstream gradient g [..., n]. Used when set_fused_geglu is on (SD_FUSED_GEGLU=1; off
// until measured): the composite reads and writes the gate twice more.
Tensor geglu(const Tensor& x);
Tensor geglu_backward(const Tensor& grad, const Tensor& x);
void set_fused_geglu(bool on);
bool fused_geglu();

}  // namespace sd::cuda
