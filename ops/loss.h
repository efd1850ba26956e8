// Training losses. mse_loss follows torch.nn.functional.mse_loss, plus optional per-sample
// weights the way the diffusers trainers apply them (min-SNR / per-sample weighting):
// the loss is first averaged over each sample's elements, then weighted, then reduced.
#pragma once
#include "runtime/tensor.h"

namespace sd {

enum class Reduction { None, Mean, Sum };

// pred and target are [N, ...] of the same shape, dtype and device; sample_weights, when
// defined, is [N] (any floating dtype, converted to pred's; no gradient flows into it).
//   no weights: None -> (pred - target)^2, Mean -> its mean (0-d), Sum -> its sum (0-d)
//   weights w:  None -> (pred - target)^2 * w[n] (broadcast over each sample)
//               Mean -> (1/N) sum_n w[n] * mean_{elements of n} (pred - target)^2
//               Sum  -> sum_n w[n] * sum_{elements of n} (pred - target)^2
// Differentiable w.r.t. pred and target.
Tensor mse_loss(const Tensor& pred, const Tensor& target, Reduction reduction = Reduction::Mean,
                const Tensor& sample_weights = Tensor());

}  // namespace sd
