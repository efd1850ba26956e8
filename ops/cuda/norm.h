// CUDA GroupNorm (+ fused SiLU) and LayerNorm, forward and backward, with the semantics of
// the CPU reference kernels in ops/cpu/norm.h: same saved mean/rstd ([N, groups] or x's
// shape without the last dim, f32 or f64 for f64 inputs), same outputs and gradients.
// One difference in layout only: a channels-last GroupNorm input (x.permute of a
// contiguous [N, *spatial, C]) is read in place and gives a channels-last output and dx;
// other non-contiguous inputs are made contiguous first and give contiguous results.
#pragma once
#include <cstdint>

#include "ops/cpu/norm.h"  // NormForward / NormGrads (plain structs shared with the CPU path)
#include "runtime/tensor.h"

namespace sd::cuda {

cpu::NormForward group_norm_forward(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                                    double eps, bool fuse_silu);
cpu::NormGrads group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& weight, const Tensor& bias, int64_t groups, bool fuse_silu,
                                   bool need_dx, bool need_dweight, bool need_dbias);

// GroupNorm's forward in one kernel per group (the group staged in shared memory: one read of x,
// one write of y) where the group fits in a block's shared memory, instead of the three-kernel
// path (statistics partials, merge, apply). Off by default until measured on a GPU; the
// environment's SD_GN_ONE_KERNEL=1 turns it on at start.
void set_group_norm_one_kernel(bool on);
bool group_norm_one_kernel();
// Forward calls that took the one-kernel path since the process started (tests).
int64_t group_norm_one_kernel_calls();

cpu::NormForward layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
cpu::NormGrads layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& weight, bool need_dx, bool need_dweight, bool need_dbias);

}  // namespace sd::cuda
