// The trainer's AdamW: f32 master weights and moments for every trainable tensor, whatever dtype the
// model computes in. With mixed precision the model holds 16-bit copies that the fused kernel rewrites
// from the masters after each step, so no 16-bit gradient ever reaches an optimizer update (the
// "Attempting to unscale FP16 gradients" failure of PyTorch AMP cannot happen by construction).
//
// Gradients take one path: after each micro-batch's backward, collect_grads() moves the model's
// gradients into f32 accumulators (for f32 parameters the .grad itself accumulates); before the step
// the GradientSync averages them over processes (a no-op for one process); then clipping, the
// non-finite check of fp16 loss scaling, and the fused update.
//
// ZeRO stage 1 (--zero_stage 1): shard() restricts the optimizer to one contiguous range of each
// parameter's elements (train/distributed.h decides which); the moments and f32 masters outside it
// are dropped, step() updates only that range from the averaged gradient of that range alone, and the
// sync's all-gather brings the rest of every parameter from the processes that own it.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ops/optim.h"
#include "runtime/tensor.h"

namespace sd::train {

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
  // Bytes of optimizer state this process holds: the moments, and the f32 masters of 16-bit
  // parameters (an f32 parameter is its own master: model weights, not counted).
  int64_t state_bytes() const;

  // ---- for the GradientSync --------------------------------------------------------------------
  // The f32 gradient of parameter i accumulated so far (undefined when none reached it).
  Tensor grad(size_t i) const;
  // The same, created as zeros when absent (another process had a gradient for it).
  Tensor ensure_grad(size_t i);
  // collect_grads() for one parameter, from its grad-ready hook during backward.
  void collect_grad(size_t i);

  // ZeRO stage 1. From now on this process keeps and updates only owned[i] = [begin, end) of
  // parameter i's flattened elements (begin == end: none). full_masters[i]: where the complete f32
  // master of a 16-bit parameter lives between steps (the sync's all-gather buffer, shaped like the
  // parameter; undefined for f32 parameters, which are their own masters). Drops the rest.
  struct Range {
    int64_t begin = 0, end = 0;
    int64_t size() const { return end - begin; }
  };
  void shard(std::vector<Range> owned, std::vector<Tensor> full_masters);
  bool sharded() const { return sharded_; }
  const Range& owned(size_t i) const { return owned_.at(i); }
  // The owned range's state as 1-D f32 tensors: 0 master, 1 exp_avg, 2 exp_avg_sq (sharded only).
  Tensor owned_state(size_t i, int which) const;
  // The step's averaged gradients of the owned ranges (1-D f32; undefined: no gradient anywhere);
  // the full local gradients are dropped. grads() returns these until zero_grad().
  void set_shard_grads(std::vector<Tensor> g);
  // master() of a 16-bit parameter reads full_masters, which the sync overwrites while gradients
  // travel; it says when they hold the masters (a read in between is an error, never stale data).
  void set_full_masters_valid(bool v) { full_masters_valid_ = v; }

 private:
  bool has_master(size_t i) const { return split_[i] != 0; }
  void ensure_moments();

  std::vector<OptimizerParam> params_;
  std::vector<char> split_;  // the parameter has a separate f32 master (16-bit compute copy)
  std::vector<Tensor> exp_avg_, exp_avg_sq_, grad_acc_;
  AdamWConfig cfg_;
  int64_t step_ = 0;
  // ZeRO-1
  bool sharded_ = false;
  bool full_masters_valid_ = true;
  std::vector<Range> owned_;
  std::vector<Tensor> master_shard_, full_masters_, shard_grad_;
};

// Averages gradients over the processes of a data-parallel run: the one place where gradients meet
// before the update. The single-process one does nothing; train/distributed.h has the MPI/NCCL one
// (plain data parallelism, or ZeRO stage 1). The trainer's step, in order:
//   attach(opt) once, before the first step (and before a resume loads the optimizer state);
//   begin_backward(last) before each micro-batch: only the step's last micro-batch communicates,
//     from the grad-ready hooks while its backward still runs; earlier ones accumulate locally;
//   reduce(opt) after the last backward; grad_norm(opt.grads()); opt.step(...) unless skipped;
//   after_step(opt) (skipped steps too); opt.zero_grad().
class GradientSync {
 public:
  virtual ~GradientSync() = default;
  virtual int rank() const { return 0; }
  virtual int world_size() const { return 1; }
  virtual int local_rank() const { return 0; }
  // True for the MPI/NCCL one (also with one process, under `mpirun -np 1`).
  virtual bool communicates() const { return false; }
  virtual void attach(AdamWOptimizer& opt) {}
  virtual void begin_backward(bool last) {}
  // Afterwards opt.grads() are the averages over processes (sum / world size, in f32): in full, or
  // this process's shard under ZeRO-1. A parameter that got a gradient on any process has one on
  // every process (zeros where it had none); one that got none anywhere stays without.
  virtual void reduce(AdamWOptimizer& opt) {}
  // L2 norm of the averaged gradients of all processes (each holds a shard under ZeRO-1).
  virtual double grad_norm(const std::vector<Tensor>& grads) { return global_grad_norm(grads); }
  // ZeRO-1: the all-gather of the updated parameters.
  virtual void after_step(AdamWOptimizer& opt) {}
  // The complete optimizer state (AdamWOptimizer::state_tensors) on rank 0 for a checkpoint; other
  // processes get nothing. Every process calls it (under ZeRO-1 it gathers the shards).
  virtual std::vector<std::pair<std::string, Tensor>> gather_state(AdamWOptimizer& opt);
  // True on every process when `flag` is true on any (one non-finite rank skips everywhere).
  virtual bool any(bool flag) { return flag; }
  // Sum / mean / maximum of a scalar over processes (logged loss, example counts, memory).
  virtual double sum(double v) { return v; }
  virtual double mean(double v) { return v; }
  virtual double max(double v) { return v; }
  // One line for the log: processes, transport, buckets, ZeRO stage.
  virtual std::string describe() const { return "1 process"; }
  // At the end: how much of the communication started while backward still ran.
  virtual std::string report() const { return ""; }
};

}  // namespace sd::train
