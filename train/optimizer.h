// The trainer's AdamW: f32 master weights and moments for every trainable tensor, whatever dtype the
// model computes in. With mixed precision the model holds 16-bit copies that the fused kernel rewrites
// from the masters after each step, so no 16-bit gradient ever reaches an optimizer update (the
// "Attempting to unscale FP16 gradients" failure of PyTorch AMP cannot happen by construction).
//
// Gradients take one path: after each micro-batch's backward, collect_grads() moves the model's
// gradients into f32 accumulators (for f32 parameters the .grad itself accumulates); before the step
// the GradientSync averages them over processes (a no-op for one process); then clipping, the
// non-finite check of fp16 loss scaling, and the fused update.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ops/optim.h"
#include "runtime/tensor.h"

namespace sd::train {

// Averages gradients over the processes of a data-parallel run. The single-process one does nothing;
// the MPI/NCCL one (multi-process training) slots in here.
class GradientSync {
 public:
  virtual ~GradientSync() = default;
  virtual int rank() const { return 0; }
  virtual int world_size() const { return 1; }
  virtual void average(const std::vector<Tensor>& grads) {}
  // True on every process when `flag` is true on any (one non-finite rank skips everywhere).
  virtual bool any(bool flag) { return flag; }
  // The mean of a scalar over processes (the logged loss).
  virtual double mean(double v) { return v; }
};

struct OptimizerParam {
  std::string name;  // checkpoint key
  Tensor param;      // the tensor the model computes with (requires_grad)
  Tensor master;     // f32 master; undefined = `param` itself (when param is f32)
  int group = 0;     // learning-rate group (0: UNet / adapters, 1: text encoders)
};

class AdamWOptimizer {
 public:
  AdamWOptimizer(std::vector<OptimizerParam> params, AdamWConfig cfg);

  // After each micro-batch's backward: 16-bit parameter gradients are added into f32 accumulators
  // and dropped from the parameters.
  void collect_grads();
  // The gradients the step will use (f32; undefined for a parameter no gradient reached).
  std::vector<Tensor> grads() const;
  void zero_grad();

  // One update with lr per group (group_lr[g]); grad_scale multiplies every gradient (1/loss scale,
  // times the clipping factor). Advances the step counter.
  void step(const std::vector<double>& group_lr, double grad_scale);
  int64_t step_count() const { return step_; }

  // Masters and moments by name, for checkpoints: "<name>", "exp_avg.<name>", "exp_avg_sq.<name>".
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Restores masters (and the 16-bit copies from them) and moments; every key must be present with
  // its shape, else sd::Error naming it.
  void load_state_tensors(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t step);

  const std::vector<OptimizerParam>& params() const { return params_; }
  // The f32 master of each parameter (the param itself for f32 ones).
  Tensor master(size_t i) const;
  // Copies the masters into the 16-bit compute copies (after loading, or after validation swapped
  // weights in).
  void sync_model_copies();

 private:
  std::vector<OptimizerParam> params_;
  std::vector<Tensor> exp_avg_, exp_avg_sq_, grad_acc_;
  AdamWConfig cfg_;
  int64_t step_ = 0;
};

}  // namespace sd::train
