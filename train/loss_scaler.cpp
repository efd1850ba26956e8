// torch.amp.GradScaler's scale bookkeeping (see loss_scaler.h); the arithmetic of
// _amp_update_scale_: float scale, double factors, the product rounded to float.
#include "train/loss_scaler.h"

#include <cmath>

#include "ops/optim.h"
#include "runtime/error.h"

namespace sd::train {

LossScaler::LossScaler(const LossScalerConfig& cfg) : cfg_(cfg) {
  SD_CHECK(std::isfinite(cfg.init_scale) && cfg.init_scale > 0 && std::isfinite(float(cfg.init_scale)),
           "loss scaler: init_scale must be finite (in float32) and > 0, got ", cfg.init_scale);
  SD_CHECK(std::isfinite(cfg.growth_factor) && cfg.growth_factor > 1, "loss scaler: growth_factor must be > 1, got ",
           cfg.growth_factor);
  SD_CHECK(cfg.backoff_factor > 0 && cfg.backoff_factor < 1, "loss scaler: backoff_factor must be in (0, 1), got ",
           cfg.backoff_factor);
  SD_CHECK(cfg.growth_interval >= 1, "loss scaler: growth_interval must be >= 1, got ", cfg.growth_interval);
  scale_ = float(cfg.init_scale);  // torch.full((), init_scale, dtype=torch.float32)
}

double LossScaler::inv_scale() const {
  return double(float(1.0 / double(scale_)));  // self._scale.double().reciprocal().float()
}

bool LossScaler::unscale_(const std::vector<Tensor>& grads) const { return unscale_and_check_(grads, inv_scale()); }

void LossScaler::update(bool found_inf) {
  if (found_inf) {
    scale_ = float(double(scale_) * cfg_.backoff_factor);
    growth_tracker_ = 0;
    skipped_ += 1;
    return;
  }
  const int64_t successful = growth_tracker_ + 1;
  if (successful == cfg_.growth_interval) {
    const float grown = float(double(scale_) * cfg_.growth_factor);
    if (std::isfinite(grown)) scale_ = grown;
    growth_tracker_ = 0;
  } else {
    growth_tracker_ = successful;
  }
}

void LossScaler::load_state(const LossScalerState& s) {
  SD_CHECK(std::isfinite(s.scale) && s.scale > 0 && double(float(s.scale)) == s.scale,
           "loss scaler load_state: scale must be a finite float32 value > 0, got ", s.scale);
  SD_CHECK(s.growth_tracker >= 0 && s.growth_tracker < cfg_.growth_interval, "loss scaler load_state: growth tracker ",
           s.growth_tracker, " is outside [0, growth_interval = ", cfg_.growth_interval, ")");
  SD_CHECK(s.skipped_steps >= 0, "loss scaler load_state: skipped steps must be >= 0, got ", s.skipped_steps);
  scale_ = float(s.scale);
  growth_tracker_ = s.growth_tracker;
  skipped_ = s.skipped_steps;
}

}  // namespace sd::train
