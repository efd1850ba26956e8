// Helpers every op wrapper uses: argument checks that name the op, shapes and dtypes, and
// the device gate for kernels not yet written for the GPU.
#pragma once
#include <string>
#include <vector>

#include "runtime/error.h"
#include "runtime/nvtx.h"
#include "runtime/tensor.h"

namespace sd::detail {

// All defined tensors share the first one's dtype and device.
void check_same(const char* op, const std::vector<Tensor>& ts);
void check_floating(const char* op, const Tensor& t);
void check_dim(const char* op, const Tensor& t, int64_t ndim, const char* what);
// Ops whose CUDA kernel is not written yet call this on their inputs.
void check_cpu(const char* op, const std::vector<Tensor>& ts);
std::string describe(const std::vector<Tensor>& ts);

}  // namespace sd::detail

// Picks the kernel by the device of `t`. The CUDA kernels are a library of their own (sd_cuda, or the
// CPU-only sd_nocuda whose entry points raise): no tensor can be on a GPU without the former.
#define SD_DISPATCH_DEVICE(t, cpu_expr, cuda_expr) ((t).is_cuda() ? (cuda_expr) : (cpu_expr))
