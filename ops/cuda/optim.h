// CUDA kernels behind ops/optim.h, with the semantics of the CPU kernels in ops/cpu/optim.h.
// Arguments are validated by the wrapper: contiguous tensors of the right dtypes, all on one
// GPU. Each call is one kernel launch over all tensors of the list (multi-tensor): a table
// of per-tensor records goes to the device in one copy, and each thread block finds the
// tensor of its chunk by binary search in that table.
#pragma once
#include <vector>

#include "ops/cpu/optim.h"  // AdamWStep: the per-step scalars, shared with the CPU kernel

namespace sd::cuda {

void fused_adamw(const std::vector<AdamWSlot>& slots, const cpu::AdamWStep& s);
void ema_update(const std::vector<Tensor>& ema, const std::vector<Tensor>& params, double decay);
// Sum of x^2 over every element of every tensor, in double, in a fixed order (the same
// result run to run); one host synchronisation to read it back.
double sum_of_squares(const std::vector<Tensor>& ts);
void scale(const std::vector<Tensor>& ts, double s);
// Scales by s when scale_first (s = 1 skips the writes), then reports any non-finite
// element of what is stored; one host synchronisation to read the flag back.
bool scale_and_check(const std::vector<Tensor>& ts, double s, bool scale_first);

}  // namespace sd::cuda
