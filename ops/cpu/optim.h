// CPU kernels behind ops/optim.h. Arguments are already validated: contiguous CPU tensors
// of the right dtypes. Work over a list of tensors is cut into fixed-size chunks that are
// spread over the threads, so one call covers thousands of small parameters efficiently.
#pragma once
#include <vector>

#include "ops/optim.h"

namespace sd::cpu {

// Per-step scalars of AdamW, precomputed in double and rounded to f32 like PyTorch's.
struct AdamWStep {
  float decay_factor;  // 1 - lr * weight_decay
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float step_size;     // lr / (1 - beta1^step)
  float bc2_sqrt;      // sqrt(1 - beta2^step)
  float eps;
  float grad_scale;
};

void fused_adamw(const std::vector<AdamWSlot>& slots, const AdamWStep& s);
void ema_update(const std::vector<Tensor>& ema, const std::vector<Tensor>& params, double decay);
double sum_of_squares(const std::vector<Tensor>& ts);
void scale(const std::vector<Tensor>& ts, double s);
// Scales by s when scale_first (s = 1 skips the writes), then reports any non-finite element.
bool scale_and_check(const std::vector<Tensor>& ts, double s, bool scale_first);

}  // namespace sd::cpu
