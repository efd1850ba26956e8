// Dynamic loss scaling for fp16 training (`--mixed_precision fp16`): torch.amp.GradScaler with its
// defaults, as accelerate sets it up for the diffusers scripts. Each optimizer step:
//   backward of loss * scale()  ->  found_inf = unscale_(grads)  ->  optimizer step unless found_inf
//   ->  update(found_inf)
// update (torch._amp_update_scale_): on inf/NaN gradients the scale is multiplied by backoff_factor
// and the run of clean steps restarts from 0; after growth_interval clean steps in a row it is
// multiplied by growth_factor (unless that overflows float32) and the run restarts. The scale is a
// float32 value, as torch holds it: each product is taken in double and rounded to float32.
// tests/train/loss_scaler_test.cpp checks the scales against GradScaler's (torch 2.15.0).
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace sd::train {

struct LossScalerConfig {
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

// What a checkpoint keeps (GradScaler.state_dict's scale and _growth_tracker, plus our count of
// skipped steps).
struct LossScalerState {
  double scale = 65536.0;
  int64_t growth_tracker = 0;  // clean steps in a row since the last change of scale
  int64_t skipped_steps = 0;   // steps whose gradients held inf/NaN (the optimizer did not step)
};

class LossScaler {
 public:
  // Throws sd::Error unless init_scale is finite and > 0, growth_factor > 1 (torch's check),
  // 0 < backoff_factor < 1 (torch checks < 1) and growth_interval >= 1.
  explicit LossScaler(const LossScalerConfig& cfg = {});

  // The factor the loss is multiplied by before backward.
  double scale() const { return scale_; }
  // float32(1 / scale): what GradScaler.unscale_ multiplies the gradients by.
  double inv_scale() const;
  // grads *= inv_scale(), and true when any gradient element is inf/NaN (skip the optimizer step):
  // GradScaler.unscale_ through ops/optim.h's unscale_and_check_.
  bool unscale_(const std::vector<Tensor>& grads) const;
  // Ends a step: adjusts the scale as above and counts a skipped step when found_inf.
  void update(bool found_inf);

  int64_t growth_tracker() const { return growth_tracker_; }
  int64_t skipped_steps() const { return skipped_; }
  const LossScalerConfig& config() const { return cfg_; }

  LossScalerState state() const { return {scale_, growth_tracker_, skipped_}; }
  // Throws sd::Error (leaving the scaler unchanged) unless scale is finite, > 0 and a float32
  // value, 0 <= growth_tracker < growth_interval and skipped_steps >= 0.
  void load_state(const LossScalerState& s);

 private:
  LossScalerConfig cfg_;
  float scale_;
  int64_t growth_tracker_ = 0;
  int64_t skipped_ = 0;
};

}  // namespace sd::train
