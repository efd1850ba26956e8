// CPU reference kernels for scaled dot-product attention, forward and backward, in the
// flash-attention formulation: the forward keeps only one row of scores at a time and saves
// the per-row log-sum-exp; the backward recomputes the probabilities from q, k and it.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cpu {

struct AttentionForward {
  Tensor out;  // [B, H, Lq, Dv], q's dtype, contiguous
  Tensor lse;  // [B, H, Lq] log(sum_j exp(s_ij)), cpu::stats_dtype(q); -inf for a fully masked row
};

struct AttentionGrads {
  Tensor dq, dk, dv;  // undefined where not requested
};

// q [B, H, Lq, D], k [B, H, Lk, D], v [B, H, Lk, Dv], any strides. s_ij = scale q_i.k_j,
// plus mask[b, h, i, j] for a floating mask (q's dtype), or -inf where a Bool mask is false;
// mask may be undefined or have any shape that broadcasts to [B, H, Lq, Lk]. causal sets
// s_ij = -inf for j > i. A row with every key masked gets output 0 (not NaN).
AttentionForward attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, double scale,
                                   bool causal);
// dout like out; out and lse from the forward. Fully masked rows give zero gradients.
AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& mask, const Tensor& out, const Tensor& lse, double scale, bool causal,
                                  bool need_dq, bool need_dk, bool need_dv);

}  // namespace sd::cpu
