// Exponential moving average of the trained weights (`--use_ema`, `--offload_ema`): diffusers'
// training_utils.EMAModel as the training scripts use it. After each optimizer step,
// step(params) counts optimization_step up by one and moves every average towards its parameter:
//   ema = ema - (1 - d) * (ema - param),  d = get_decay(optimization_step)
// Validation and the final save use the averages: store(params), copy_to(params), run,
// restore(params), as the scripts do.
//
// get_decay(n) (EMAModel.get_decay, exactly; tests/train/ema_test.cpp against diffusers 0.42.1):
//   s = max(0, n - update_after_step - 1);  s == 0: 0 (the first update copies the parameters)
//   use_ema_warmup: 1 - (1 + s / inv_gamma)^-power     else: (1 + s) / (10 + s)
//   then min(., decay), then max(., min_decay)
// With the defaults (decay 0.9999, no warmup) d reaches 0.999 at n = 8991 and the 0.9999 cap at
// n = 89991.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runtime/tensor.h"

namespace sd::train {

struct EmaConfig {
  double decay = 0.9999;       // the cap of the decay
  double min_decay = 0.0;      // its floor (from the first update after update_after_step on)
  int64_t update_after_step = 0;
  bool use_ema_warmup = false;
  double inv_gamma = 1.0;      // warmup only
  double power = 2.0 / 3.0;    // warmup only (3/4 for shorter runs, as diffusers' docstring says)
  bool offload = false;        // keep the averages in host memory (--offload_ema)
};

// EMAModel.get_decay(optimization_step). Throws sd::Error on an invalid config (validate).
double ema_decay(const EmaConfig& cfg, int64_t optimization_step);

// Throws sd::Error unless 0 <= min_decay, decay <= 1, update_after_step >= 0, inv_gamma > 0 and
// power finite. (diffusers checks only decay's range, when loading a state.)
void validate(const EmaConfig& cfg);

class EmaModel {
 public:
  // Float32 contiguous copies of `params` (any floating dtypes, all on one device), held on that
  // device, or in host memory when cfg.offload. names: the checkpoint name of each tensor; empty
  // means each parameter's own name() (its state-dict key), or "<index>" where that is empty.
  // Names must be unique.
  EmaModel(const std::vector<Tensor>& params, const EmaConfig& cfg = {}, std::vector<std::string> names = {});

  double get_decay(int64_t optimization_step) const { return ema_decay(cfg_, optimization_step); }

  // EMAModel.step: optimization_step += 1, then every average moves towards its parameter with
  // get_decay(optimization_step). params: the same count, shapes and order as at construction (any
  // floating dtype, any device). With offload the parameters are brought to the host in batches of
  // at most 256 MiB and averaged there by the CPU, so the GPU holds nothing extra.
  //
  // The update is ops/optim.h's ema_update_ (one pass over all tensors), diffusers' own form
  // ema -= (1 - d) * (ema - param) in float32: an average equal to its parameter stays exactly where it
  // is (the form d*ema + (1-d)*param, with d and 1 - d rounded to float32 apart, pulled every average
  // towards zero by 1.7e-4 of its value per time constant at d = 0.9999).
  void step(const std::vector<Tensor>& params);

  // params = the averages (converted to each parameter's dtype and device). No autograd record.
  void copy_to(const std::vector<Tensor>& params) const;
  // Keeps a host copy of params (in their dtypes) for restore(): EMAModel.store.
  void store(const std::vector<Tensor>& params);
  // Writes the stored copies back into params and drops them; throws sd::Error without store().
  void restore(const std::vector<Tensor>& params);
  bool has_stored() const { return has_stored_; }

  int64_t optimization_step() const { return optimization_step_; }
  // The decay the last step() used (diffusers' cur_decay_value); NaN before the first step.
  double cur_decay_value() const { return cur_decay_; }
  const EmaConfig& config() const { return cfg_; }
  const std::vector<Tensor>& shadow_params() const { return shadow_; }
  const std::vector<std::string>& names() const { return names_; }

  // For checkpoints: (name, average) pairs, the averages themselves (not copies; float32, on the
  // EMA's device), and the step counter (save both; diffusers saves optimization_step too).
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Copies every average from `tensors` (matched by name; any floating dtype and device; every
  // name must be present with the same shape, and no unknown names) and sets the step counter.
  // Drops stored copies. Throws sd::Error naming the first problem, leaving this EMA unchanged.
  void load_state(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t optimization_step);

 private:
  void check_params(const std::vector<Tensor>& params, const char* op) const;

  EmaConfig cfg_;
  std::vector<Tensor> shadow_;
  std::vector<std::string> names_;
  std::vector<Tensor> stored_;
  bool has_stored_ = false;
  int64_t optimization_step_ = 0;
  double cur_decay_;
};

}  // namespace sd::train
