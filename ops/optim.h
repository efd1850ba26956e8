// Optimizer-side kernels for training: fused multi-tensor AdamW with f32 master weights,
// EMA of weights, gradient norm and clipping, and the non-finite checks of loss scaling.
// None of these record autograd history; all update their tensors in place and run in
// parallel over the elements of all tensors together (many small tensors in one call; on a
// GPU one kernel launch per call). Every tensor of a call lives on one device.
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace sd {

struct AdamWConfig {
  double lr = 1e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 1e-2;
};

// One trainable tensor: f32 master weights and moments; grad in f32/f16/bf16; model_copy
// (f16/bf16, or undefined) receives the updated master rounded to its dtype (mixed-precision
// training keeps the compute copy in 16 bits). All defined tensors have the same shape and
// are contiguous, on slot 0's device. A slot whose grad is undefined is skipped (the parameter got
// no gradient this step, as PyTorch skips p.grad is None).
struct AdamWSlot {
  Tensor master, grad, exp_avg, exp_avg_sq, model_copy;
};

// PyTorch AdamW (decoupled weight decay, bias correction), per element, in f32:
//   g = grad * grad_scale;  p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
//   p -= (lr / (1 - b1^step)) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
// step counts from 1. grad_scale is 1/loss_scale for fp16 training.
void fused_adamw_(std::vector<AdamWSlot>& slots, const AdamWConfig& cfg, int64_t step, double grad_scale = 1.0);

// ema -= (1 - decay) * (ema - param) (diffusers' EMAModel form: an average equal to its parameter does not
// move), pairwise, in the ema's accumulation type; ema and params floating, same shapes.
void ema_update_(const std::vector<Tensor>& ema, const std::vector<Tensor>& params, double decay);

// L2 norm over every element of every (defined) tensor, accumulated in double. The sum is
// taken in a fixed order, so the result does not depend on the thread count (on a GPU: the
// same bits run to run; CPU and GPU orders differ, so they agree to double rounding).
double global_grad_norm(const std::vector<Tensor>& grads);

// torch.nn.utils.clip_grad_norm_ (L2): returns the norm before clipping and multiplies every
// grad by max_norm / (norm + 1e-6) when that factor is below 1. A non-finite norm leaves the
// grads untouched (the caller skips that step) instead of filling them with NaN.
double clip_grad_norm_(const std::vector<Tensor>& grads, double max_norm);

// True when any element of any (defined) tensor is inf or NaN.
bool has_non_finite(const std::vector<Tensor>& ts);

// grads *= inv_scale (loss-scale removal), and in the same pass: true when any element is
// non-finite (then the optimizer step is skipped).
bool unscale_and_check_(const std::vector<Tensor>& grads, double inv_scale);

}  // namespace sd
