// Scaled dot-product attention with a dedicated (flash-attention style) backward.
//
//   out[b, h, i] = sum_j softmax_j(scale q_i.k_j + mask_ij) v_j
//
// q [B, H, Lq, D], k [B, H, Lk, D], v [B, H, Lk, Dv] -> [B, H, Lq, Dv] (q's dtype).
// scale 0 means 1 / sqrt(D). mask (optional) broadcasts to [B, H, Lq, Lk] and is either
// floating (q's dtype), added to the scores, or Bool, true = attend. causal masks keys
// j > i (top-left aligned when Lq != Lk; CLIP's text encoder uses it with Lq == Lk).
// A query row whose keys are all masked outputs 0 and gets zero gradients (not NaN).
// No gradient flows to the mask (an additive mask is treated as a constant).
// Inputs may be non-contiguous (the UNet's q/k/v are permuted views of [B, L, H, D]).
#pragma once
#include "runtime/tensor.h"

namespace sd {

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask = Tensor(),
                                    double scale = 0.0, bool causal = false);

}  // namespace sd
