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

// Picks the kernel by the device of `t`. In a CPU-only build no tensor can live on a GPU,
// and the CUDA expression is dropped by the preprocessor (its kernels are not compiled).
#ifdef SD_WITH_CUDA
#define SD_DISPATCH_DEVICE(t, cpu_expr, cuda_expr) ((t).is_cuda() ? (cuda_expr) : (cpu_expr))
#else
#define SD_DISPATCH_DEVICE(t, cpu_expr, cuda_expr) (cpu_expr)
#endif
