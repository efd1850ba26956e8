// Learning-rate schedules of the diffusers training scripts (`--lr_scheduler`, `--lr_warmup_steps`,
// `--lr_num_cycles`, `--lr_power`): diffusers.optimization.get_scheduler, which wraps each
// schedule's lambda in torch's LambdaLR. lr_at(cfg, k) is the learning rate the optimizer holds
// when it takes step k, computed with the same double operations in the same order as Python, so
// it equals torch's value bit for bit (tests/train/lr_schedule_test.cpp checks this against
// diffusers 0.42.1, tests/data/train_schedules/lr_schedules.json).
//
// With base lr L, warmup W, total T and step k (the 0-based index of the optimizer step):
//   constant               L
//   constant_with_warmup   k < W: L * k/W                    else L
//   linear                 k < W: L * k/W                    else L * max(0, (T-k) / max(1, T-W))
//   cosine                 k < W: L * k/W                    else L * max(0, (1 + cos(pi * p)) / 2),
//                          p = (k-W) / max(1, T-W)
//   cosine_with_restarts   k < W: L * k/W; p >= 1: 0         else L * max(0, (1 + cos(pi * ((C*p) mod 1))) / 2)
//   polynomial             k < W: L * k/W; k > T: lr_end     else L * ((L - lr_end) * (1 - (k-W)/(T-W))^P + lr_end) / L
//   piecewise_constant     L * the multiplier of the first rule "m:s" with k < s (rules sorted by s), else
//                          the last multiplier; step_rules "1:10,0.1:20,0.005" = 1 below 10, 0.1 below 20,
//                          then 0.005
//
// What get_scheduler passes on, which these configs follow:
//   - num_cycles reaches cosine_with_restarts only (C above). `cosine` is always half a cosine
//     (get_cosine_schedule_with_warmup's own num_cycles = 0.5): num_cycles does not change it.
//   - power reaches polynomial only; lr_end is never passed, so the scripts always run with 1e-7.
//   - constant ignores warmup_steps; constant_with_warmup ignores total_steps.
//
// The training loop: the learning rate of optimizer step k is lr_at(cfg, k), where k counts the
// scheduler steps taken before it. Under accelerate (the scripts), a skipped fp16 step (inf
// gradients) does not advance the scheduler, and with N processes the scripts pass warmup and
// total multiplied by N while the scheduler advances N times per optimizer step, so k = N * (the
// optimizer steps actually taken); both are the trainer's bookkeeping, not this file's.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sd::train {

struct LrScheduleConfig {
  std::string name = "constant";  // one of lr_scheduler_names()
  double base_lr = 1e-4;          // the optimizer's lr (after --scale_lr)
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;
  double num_cycles = 1;          // cosine_with_restarts only (the scripts' --lr_num_cycles, default 1)
  double power = 1.0;             // polynomial only (--lr_power)
  double lr_end = 1e-7;           // polynomial only; diffusers' default, which the scripts cannot change
  std::string step_rules;         // piecewise_constant only: "m1:s1,m2:s2,...,m_last"
};

// The learning rate of optimizer step `step` (0-based: the first step uses lr_at(cfg, 0)), as torch's
// LambdaLR built by diffusers' get_scheduler gives it: base_lr * lambda(step), in double like Python.
// Validates cfg (see validate) and throws sd::Error for a negative step.
double lr_at(const LrScheduleConfig& cfg, int64_t step);

// Throws sd::Error naming the problem: an unknown name (the message lists the valid names),
// negative warmup/total steps, a non-finite or negative base_lr, non-finite num_cycles / power /
// lr_end, and what diffusers rejects or would divide by zero on: polynomial with base_lr <= lr_end
// or base_lr == 0 (it divides by base_lr), polynomial with total_steps == warmup_steps, a negative
// power for polynomial (0 ** -p at the last step), piecewise_constant without step_rules or with a
// malformed rule (multipliers read as Python's float() reads decimals, steps as its int()).
void validate(const LrScheduleConfig& cfg);

// "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
// "piecewise_constant" (diffusers' SchedulerType values).
const std::vector<std::string>& lr_scheduler_names();

}  // namespace sd::train
