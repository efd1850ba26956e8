// The GPU kernels' entry points in the CPU-only backend (sd_nocuda): the library's device dispatch
// (SD_DISPATCH_DEVICE, copy_, fill_, ...) calls them only for tensors on a GPU, which cannot exist
// without the CUDA backend, so each raises. The backend controls (convolution algorithm, TF32) do
// nothing, so tests and tools call them without an #ifdef. Linked instead of sd_cuda: the CPU parts of
// sd need no CUDA library (CMakeLists.txt checks at build time that nothing is missing here).
#include "ops/cuda/attention.h"
#include "ops/cuda/conv.h"
#include "ops/cuda/dropout.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/norm.h"
#include "ops/cuda/optim.h"
#include "ops/cuda/pointwise.h"
#include "ops/cuda/reduce.h"
#include "ops/cuda/softmax.h"
#include "ops/cuda/timestep.h"
#include "ops/cuda/upsample.h"
#include "runtime/cuda_kernels.h"
#include "runtime/error.h"

namespace sd {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  SD_FAIL(what, ": this build of sd has no CUDA backend (link sd_cuda, or configure with -DSD_CUDA=ON where nvcc "
          "exists)");
}
}  // namespace

namespace cuda_kernels {
void copy_strided(const Tensor&, const Tensor&) { no_cuda("copy_"); }
void fill(const Tensor&, double) { no_cuda("fill_"); }
void axpy(const Tensor&, const Tensor&, double) { no_cuda("axpy_"); }
void fill_uniform(const Tensor&, uint64_t, uint64_t, double, double) { no_cuda("fill_uniform_"); }
void fill_normal(const Tensor&, uint64_t, uint64_t, double, double) { no_cuda("fill_normal_"); }
}  // namespace cuda_kernels

namespace cuda {
std::array<Tensor, 2> attention_forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, bool) {
  no_cuda("attention");
}
std::array<Tensor, 3> attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                         const Tensor&, const Tensor&, double, bool) {
  no_cuda("attention backward");
}
bool flash_attention_supported(const Tensor&, const Tensor&, const Tensor&) { return false; }
void set_attention_deterministic(bool) {}  // a setting only: nothing runs without CUDA
bool attention_deterministic() { return false; }
void set_flash_forward_v3(bool) {}  // a setting only: nothing runs without CUDA
bool flash_forward_v3() { return false; }

Tensor binary(BinaryKind, const Tensor&, const Tensor&) { no_cuda("binary op"); }
Tensor unary(UnaryKind, const Tensor&, double, double) { no_cuda("unary op"); }
Tensor unary_backward(UnaryKind, const Tensor&, const Tensor&, double, double) { no_cuda("unary op backward"); }
Tensor geglu(const Tensor&) { no_cuda("geglu"); }
Tensor geglu_backward(const Tensor&, const Tensor&) { no_cuda("geglu backward"); }
void set_fused_geglu(bool) {}  // a setting only: nothing runs without CUDA
bool fused_geglu() { return false; }

Tensor bmm(const Tensor&, const Tensor&) { no_cuda("matmul"); }
Tensor linear_bias(const Tensor&, const Tensor&, const Tensor&) { no_cuda("linear"); }
void set_allow_tf32(bool) {}
bool allow_tf32() { return false; }

Tensor dropout_masked(const Tensor&, double, uint64_t, uint64_t) { no_cuda("dropout"); }

void fused_adamw(const std::vector<AdamWSlot>&, const cpu::AdamWStep&) { no_cuda("fused_adamw_"); }
void ema_update(const std::vector<Tensor>&, const std::vector<Tensor>&, double) { no_cuda("ema_update_"); }
double sum_of_squares(const std::vector<Tensor>&) { no_cuda("global_grad_norm"); }
void scale(const std::vector<Tensor>&, double) { no_cuda("scale_"); }
bool scale_and_check(const std::vector<Tensor>&, double, bool) { no_cuda("unscale_and_check_"); }

Tensor embedding(const Tensor&, const Tensor&) { no_cuda("embedding"); }
Tensor embedding_backward(const Tensor&, const Tensor&, int64_t) { no_cuda("embedding backward"); }

cpu::NormForward group_norm_forward(const Tensor&, int64_t, const Tensor&, const Tensor&, double, bool) {
  no_cuda("group_norm");
}
cpu::NormGrads group_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                   const Tensor&, int64_t, bool, bool, bool, bool) {
  no_cuda("group_norm backward");
}
void set_group_norm_one_kernel(bool) {}  // a setting only: nothing runs without CUDA
bool group_norm_one_kernel() { return false; }
int64_t group_norm_one_kernel_calls() { return 0; }
cpu::NormForward layer_norm_forward(const Tensor&, const Tensor&, const Tensor&, double) { no_cuda("layer_norm"); }
cpu::NormGrads layer_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool,
                                   bool, bool) {
  no_cuda("layer_norm backward");
}

Tensor sum_keepdim(const Tensor&, const std::vector<int64_t>&) { no_cuda("sum"); }
Tensor softmax_forward(const Tensor&, int64_t, bool) { no_cuda("softmax"); }
Tensor softmax_backward(const Tensor&, const Tensor&, int64_t, bool) { no_cuda("softmax backward"); }
Tensor timestep_embedding(const Tensor&, const std::vector<float>&, int64_t, bool, float) {
  no_cuda("timestep_embedding");
}
Tensor upsample_nearest2d(const Tensor&, int64_t) { no_cuda("upsample_nearest2d"); }
Tensor upsample_nearest2d_backward(const Tensor&, int64_t) { no_cuda("upsample_nearest2d backward"); }

Tensor conv2d(const Tensor&, const Tensor&, const Tensor&, const cpu::Conv2dGeom&) { no_cuda("conv2d"); }
Tensor conv2d_grad_input(const Tensor&, const Tensor&, const Shape&, const cpu::Conv2dGeom&, bool) {
  no_cuda("conv2d backward");
}
Tensor conv2d_grad_weight(const Tensor&, const Tensor&, const Shape&, const cpu::Conv2dGeom&, bool) {
  no_cuda("conv2d backward");
}
void set_conv_backend(ConvBackend) {}
ConvBackend conv_backend() { return ConvBackend::Auto; }
bool cudnn_available() { return false; }
int64_t cudnn_graph_runs() { return 0; }
void set_conv_benchmark(bool) {}
void clear_conv_algo_cache() {}
void set_conv_im2col_budget(int64_t) {}
}  // namespace cuda

}  // namespace sd
