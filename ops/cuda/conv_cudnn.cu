// conv2d through cuDNN's convolution API (cudnnConvolutionForward / BackwardData /
// BackwardFilter, algorithms from cudnnGet*Algorithm_v7 or, in benchmark mode,
// cudnnFind*AlgorithmEx). This API is marked deprecated in cuDNN 9 but is still shipped
// and supported there; it needs no graph building and covers every conv2d this project has.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "ops/cuda/conv_impl.h"

#ifndef SD_WITH_CUDNN

namespace sd::cuda::conv_detail {

bool cudnn_usable() { return false; }
bool cudnn_forward(const Problem&, const Tensor&, const Tensor&, const Tensor&) { return false; }
bool cudnn_grad_input(const Problem&, const Tensor&, const Tensor&, const Tensor&) { return false; }
bool cudnn_grad_weight(const Problem&, const Tensor&, const Tensor&, const Tensor&) { return false; }
void cudnn_set_benchmark(bool) {}
bool cudnn_benchmark() { return false; }
void cudnn_clear_cache() {}

}  // namespace sd::cuda::conv_detail

#else

#include <cudnn.h>

#include <algorithm>
#include <array>
#include <limits>
#include <map>
#include <mutex>
#include <vector>

#include "ops/cuda/conv_cudnn_shared.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/gemm.h"
#include "runtime/image_layout.h"
#include "runtime/cuda/current_stream.cuh"

namespace sd::cuda::conv_detail {

cudnnHandle_t cudnn_handle(int device) {
  static std::mutex mu;
  static std::vector<cudnnHandle_t> handles;
  static std::vector<bool> tried;
  std::lock_guard<std::mutex> lock(mu);
  if (int(handles.size()) <= device) {
    handles.resize(size_t(device) + 1, nullptr);
    tried.resize(size_t(device) + 1, false);
  }
  if (!tried[size_t(device)]) {
    tried[size_t(device)] = true;
    cudart::set_device(device);
    const cudnnStatus_t st = cudnnCreate(&handles[size_t(device)]);
    if (st != CUDNN_STATUS_SUCCESS) {
      handles[size_t(device)] = nullptr;
      std::fprintf(stderr, "sd: cudnnCreate failed on GPU %d (%s); conv2d uses im2col + cuBLAS\n", device,
                   cudnnGetErrorString(st));
    }
  }
  return handles[size_t(device)];
}

bool strict_fp32(const Problem& p) { return p.dtype == DType::F32 && !allow_tf32(); }

namespace {

std::atomic<bool>& benchmark_setting() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("SD_CUDNN_BENCHMARK");
    return e == nullptr || std::strcmp(e, "0") != 0;  // measured choice by default; SD_CUDNN_BENCHMARK=0: heuristics
  }()};
  return on;
}

// RAII holders of the descriptors (cheap to create per call).
struct TensorDesc {
  cudnnTensorDescriptor_t d = nullptr;
  TensorDesc() { SD_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d)); }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
};
struct FilterDesc {
  cudnnFilterDescriptor_t d = nullptr;
  FilterDesc() { SD_CUDNN_CHECK(cudnnCreateFilterDescriptor(&d)); }
  ~FilterDesc() { cudnnDestroyFilterDescriptor(d); }
  FilterDesc(const FilterDesc&) = delete;
  FilterDesc& operator=(const FilterDesc&) = delete;
};
struct ConvDesc {
  cudnnConvolutionDescriptor_t d = nullptr;
  ConvDesc() { SD_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d)); }
  ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d); }
  ConvDesc(const ConvDesc&) = delete;
  ConvDesc& operator=(const ConvDesc&) = delete;
};

cudnnDataType_t cudnn_type(DType t) {
  switch (t) {
    case DType::F32: return CUDNN_DATA_FLOAT;
    case DType::F16: return CUDNN_DATA_HALF;
    case DType::BF16: return CUDNN_DATA_BFLOAT16;
    default: SD_FAIL("conv2d (cuDNN): unsupported dtype ", dtype_name(t));
  }
}

cudnnMathType_t requested_math(const Problem& p) {
  if (p.dtype == DType::F32) return allow_tf32() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
  return CUDNN_TENSOR_OP_MATH;
}

// true on success; false when cuDNN reports that it does not support what was asked (any
// status of the NOT_SUPPORTED category): the caller then falls back to im2col. Any other
// failure raises sd::Error.
bool ok_or_unsupported(cudnnStatus_t st, const char* what) {
  if (st == CUDNN_STATUS_SUCCESS) return true;
  if (CUDNN_STATUS_CATEGORY(st) == CUDNN_STATUS_NOT_SUPPORTED) return false;
  SD_FAIL("conv2d: cuDNN error ", cudnnGetErrorString(st), " in ", what);
}

// A dense [n, c, h, w] in the problem's layout, described by its strides.
bool set_image(const TensorDesc& t, const Problem& p, int64_t n, int64_t c, int64_t h, int64_t w) {
  const Shape st = p.channels_last ? channels_last_strides({n, c, h, w}) : contiguous_strides({n, c, h, w});
  return ok_or_unsupported(cudnnSetTensor4dDescriptorEx(t.d, cudnn_type(p.dtype), int(n), int(c), int(h), int(w),
                                                        int(st[0]), int(st[1]), int(st[2]), int(st[3])),
                           "cudnnSetTensor4dDescriptorEx");
}

struct Descs {
  TensorDesc x, y;
  FilterDesc w;
  ConvDesc conv;
};

bool set_descs(Descs& d, const Problem& p) {
  return set_image(d.x, p, p.N, p.C, p.H, p.W) && set_image(d.y, p, p.N, p.O, p.Ho, p.Wo) &&
         ok_or_unsupported(cudnnSetFilter4dDescriptor(d.w.d, cudnn_type(p.dtype),
                                                      p.channels_last ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW,
                                                      int(p.O), int(p.C), int(p.kh), int(p.kw)),
                           "cudnnSetFilter4dDescriptor") &&
         ok_or_unsupported(cudnnSetConvolution2dDescriptor(d.conv.d, int(p.g.pad_h), int(p.g.pad_w),
                                                           int(p.g.stride_h), int(p.g.stride_w), 1, 1,
                                                           CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                           "cudnnSetConvolution2dDescriptor") &&
         ok_or_unsupported(cudnnSetConvolutionMathType(d.conv.d, requested_math(p)), "cudnnSetConvolutionMathType");
}

// ---- algorithm choice, cached per problem ----

enum class Dir { Forward = 0, Data = 1, Filter = 2 };

struct Choice {
  bool ok = false;
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  size_t workspace = 0;
};

using Key = std::array<int64_t, 17>;

Key key_of(const Problem& p, Dir dir) {
  return {int64_t(dir), int64_t(p.dtype), p.channels_last, p.device, strict_fp32(p), p.N, p.C, p.H, p.W,
          p.O, p.kh, p.kw, p.g.stride_h, p.g.stride_w, p.g.pad_h, p.g.pad_w, benchmark_setting().load()};
}

std::mutex g_cache_mu;
std::map<Key, Choice>& cache() {
  static std::map<Key, Choice> m;
  return m;
}

// The first usable entry of a ranked list (by heuristic or by measured time): supported,
// of an allowed math type, with a workspace we are willing to give. The workspace comes
// from the Get*WorkspaceSize call for that (algo, math) pair, since the size can depend on
// the math type set on the descriptor.
template <class Perf, class WsFn>
Choice first_usable(const Perf* perf, int count, const Problem& p, const ConvDesc& conv, WsFn&& workspace_of) {
  for (int i = 0; i < count; ++i) {
    const Perf& r = perf[i];
    if (r.status != CUDNN_STATUS_SUCCESS) continue;
    // Without TF32, only plain FMA kernels give f32 results like the CPU's.
    if (strict_fp32(p) && r.mathType != CUDNN_FMA_MATH) continue;
    if (cudnnSetConvolutionMathType(conv.d, r.mathType) != CUDNN_STATUS_SUCCESS) continue;
    size_t ws = 0;
    if (workspace_of(r.algo, ws) != CUDNN_STATUS_SUCCESS || ws > kMaxWorkspace) continue;
    return Choice{true, int(r.algo), r.mathType, ws};
  }
  return Choice{};
}

// Largest workspace among the usable heuristic candidates: what benchmark mode hands to
// cudnnFind*Ex so that each of them can run.
template <class Perf, class WsFn>
size_t max_workspace(const Perf* perf, int count, const Problem& p, const ConvDesc& conv, WsFn&& workspace_of) {
  size_t most = 0;
  for (int i = 0; i < count; ++i) {
    const Perf& r = perf[i];
    if (r.status != CUDNN_STATUS_SUCCESS || (strict_fp32(p) && r.mathType != CUDNN_FMA_MATH)) continue;
    if (cudnnSetConvolutionMathType(conv.d, r.mathType) != CUDNN_STATUS_SUCCESS) continue;
    size_t ws = 0;
    if (workspace_of(r.algo, ws) == CUDNN_STATUS_SUCCESS && ws <= kMaxWorkspace) most = std::max(most, ws);
  }
  SD_CUDNN_CHECK(cudnnSetConvolutionMathType(conv.d, requested_math(p)));
  return most;
}

// Looks the problem up, or runs `choose` (under the lock: choosing may run convolutions on
// the handle) and remembers its answer, a negative one too.
template <class F>
Choice cached_choice(const Problem& p, Dir dir, F&& choose) {
  const Key k = key_of(p, dir);
  std::lock_guard<std::mutex> lock(g_cache_mu);
  auto it = cache().find(k);
  if (it != cache().end()) return it->second;
  const Choice c = choose();
  cache().emplace(k, c);
  return c;
}

// After cuDNN refused to run its chosen algorithm: that problem uses im2col from now on.
void mark_unsupported(const Problem& p, Dir dir, cudnnStatus_t st) {
  {
    std::lock_guard<std::mutex> lock(g_cache_mu);
    cache()[key_of(p, dir)] = Choice{};
  }
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true))
    std::fprintf(stderr, "sd: cuDNN declined a convolution (%s); that shape uses im2col + cuBLAS\n",
                 cudnnGetErrorString(st));
}

Tensor workspace(size_t bytes, int device) {
  return bytes ? empty({int64_t(bytes)}, DType::U8, Device::cuda(device)) : Tensor();
}
void* ptr(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
size_t bytes(const Tensor& t) { return t.defined() ? t.nbytes() : 0; }

// cuDNN's legacy API indexes with int: every tensor must stay within that range.
bool fits_int32(const Problem& p) {
  constexpr int64_t lim = std::numeric_limits<int32_t>::max();
  return p.N * p.C * p.H * p.W <= lim && p.N * p.O * p.Ho * p.Wo <= lim && p.O * p.C * p.kh * p.kw <= lim;
}

bool runnable(const Problem& p) {
  return (p.dtype == DType::F32 || p.dtype == DType::F16 || p.dtype == DType::BF16) && fits_int32(p) &&
         cudnn_handle(p.device) != nullptr;
}

// The filter layout cuDNN is told: [O, C, kh, kw] for NCHW problems, [O, kh, kw, C] for
// channels-last ones (the same memory when kh = kw = 1). `w` is a contiguous [O, C, kh, kw].
bool filter_is_in_layout(const Problem& p, const Tensor& w) { return !p.channels_last || is_channels_last_dense(w); }

Tensor weight_in_layout(const Problem& p, const Tensor& w) {
  if (filter_is_in_layout(p, w)) return w;
  Tensor c = empty_image(w.shape(), w.dtype(), w.device(), true);
  copy_(c, w);
  return c;
}

}  // namespace

bool cudnn_usable() {
  int device = 0;
  SD_CUDA_CHECK(cudaGetDevice(&device));
  return cudnn_handle(device) != nullptr;
}

void cudnn_set_benchmark(bool on) {
  benchmark_setting().store(on);
  cudnn_clear_cache();
}

bool cudnn_benchmark() { return benchmark_setting().load(); }

void cudnn_clear_cache() {
  std::lock_guard<std::mutex> lock(g_cache_mu);
  cache().clear();
}

bool cudnn_forward(const Problem& p, const Tensor& x, const Tensor& w_in, const Tensor& y) {
  if (!runnable(p)) return false;
  cudnnHandle_t h = cudnn_handle(p.device);
  SD_CUDNN_CHECK(cudnnSetStream(h, stream()));  // the current stream, as every kernel of this build
  Descs d;
  if (!set_descs(d, p)) return false;
  const Tensor w = weight_in_layout(p, w_in);
  auto ws_of = [&](cudnnConvolutionFwdAlgo_t algo, size_t& ws) {
    return cudnnGetConvolutionForwardWorkspaceSize(h, d.x.d, d.w.d, d.conv.d, d.y.d, algo, &ws);
  };
  const Choice c = cached_choice(p, Dir::Forward, [&] {
    int n = 0;
    SD_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &n));
    std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(size_t(std::max(n, 1)));
    int got = 0;
    if (!ok_or_unsupported(
            cudnnGetConvolutionForwardAlgorithm_v7(h, d.x.d, d.w.d, d.conv.d, d.y.d, n, &got, perf.data()),
            "cudnnGetConvolutionForwardAlgorithm_v7"))
      return Choice{};
    if (benchmark_setting().load()) {
      Tensor ws = workspace(max_workspace(perf.data(), got, p, d.conv, ws_of), p.device);
      // Runs every algorithm on the real buffers; y is written again below.
      if (!ok_or_unsupported(cudnnFindConvolutionForwardAlgorithmEx(h, d.x.d, x.data_ptr(), d.w.d, w.data_ptr(),
                                                                    d.conv.d, d.y.d, y.data_ptr(), n, &got,
                                                                    perf.data(), ptr(ws), bytes(ws)),
                             "cudnnFindConvolutionForwardAlgorithmEx"))
        return Choice{};
    }
    return first_usable(perf.data(), got, p, d.conv, ws_of);
  });
  if (!c.ok) return false;
  SD_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv.d, c.math));
  Tensor ws = workspace(c.workspace, p.device);
  const float one = 1.0f, zero = 0.0f;
  const cudnnStatus_t st =
      cudnnConvolutionForward(h, &one, d.x.d, x.data_ptr(), d.w.d, w.data_ptr(), d.conv.d,
                              cudnnConvolutionFwdAlgo_t(c.algo), ptr(ws), c.workspace, &zero, d.y.d, y.data_ptr());
  if (ok_or_unsupported(st, "cudnnConvolutionForward")) return true;
  mark_unsupported(p, Dir::Forward, st);
  return false;
}

bool cudnn_grad_input(const Problem& p, const Tensor& dy, const Tensor& w_in, const Tensor& dx) {
  if (!runnable(p)) return false;
  cudnnHandle_t h = cudnn_handle(p.device);
  SD_CUDNN_CHECK(cudnnSetStream(h, stream()));  // the current stream, as every kernel of this build
  Descs d;
  if (!set_descs(d, p)) return false;
  const Tensor w = weight_in_layout(p, w_in);
  auto ws_of = [&](cudnnConvolutionBwdDataAlgo_t algo, size_t& ws) {
    return cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w.d, d.y.d, d.conv.d, d.x.d, algo, &ws);
  };
  const Choice c = cached_choice(p, Dir::Data, [&] {
    int n = 0;
    SD_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &n));
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(size_t(std::max(n, 1)));
    int got = 0;
    if (!ok_or_unsupported(
            cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w.d, d.y.d, d.conv.d, d.x.d, n, &got, perf.data()),
            "cudnnGetConvolutionBackwardDataAlgorithm_v7"))
      return Choice{};
    if (benchmark_setting().load()) {
      Tensor ws = workspace(max_workspace(perf.data(), got, p, d.conv, ws_of), p.device);
      if (!ok_or_unsupported(cudnnFindConvolutionBackwardDataAlgorithmEx(h, d.w.d, w.data_ptr(), d.y.d,
                                                                         dy.data_ptr(), d.conv.d, d.x.d,
                                                                         dx.data_ptr(), n, &got, perf.data(),
                                                                         ptr(ws), bytes(ws)),
                             "cudnnFindConvolutionBackwardDataAlgorithmEx"))
        return Choice{};
    }
    return first_usable(perf.data(), got, p, d.conv, ws_of);
  });
  if (!c.ok) return false;
  SD_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv.d, c.math));
  Tensor ws = workspace(c.workspace, p.device);
  const float one = 1.0f, zero = 0.0f;
  const cudnnStatus_t st =
      cudnnConvolutionBackwardData(h, &one, d.w.d, w.data_ptr(), d.y.d, dy.data_ptr(), d.conv.d,
                                   cudnnConvolutionBwdDataAlgo_t(c.algo), ptr(ws), c.workspace, &zero, d.x.d,
                                   dx.data_ptr());
  if (ok_or_unsupported(st, "cudnnConvolutionBackwardData")) return true;
  mark_unsupported(p, Dir::Data, st);
  return false;
}

bool cudnn_grad_weight(const Problem& p, const Tensor& dy, const Tensor& x, const Tensor& dw) {
  if (!runnable(p)) return false;
  cudnnHandle_t h = cudnn_handle(p.device);
  SD_CUDNN_CHECK(cudnnSetStream(h, stream()));  // the current stream, as every kernel of this build
  Descs d;
  if (!set_descs(d, p)) return false;
  // cuDNN writes the filter gradient in the filter layout; channels-last problems get a
  // buffer [O, kh, kw, C] that is copied into the contiguous dw afterwards.
  const Tensor dwl = filter_is_in_layout(p, dw) ? dw : empty_image(dw.shape(), dw.dtype(), dw.device(), true);
  auto ws_of = [&](cudnnConvolutionBwdFilterAlgo_t algo, size_t& ws) {
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x.d, d.y.d, d.conv.d, d.w.d, algo, &ws);
  };
  const Choice c = cached_choice(p, Dir::Filter, [&] {
    int n = 0;
    SD_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &n));
    std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(size_t(std::max(n, 1)));
    int got = 0;
    if (!ok_or_unsupported(
            cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x.d, d.y.d, d.conv.d, d.w.d, n, &got, perf.data()),
            "cudnnGetConvolutionBackwardFilterAlgorithm_v7"))
      return Choice{};
    if (benchmark_setting().load()) {
      Tensor ws = workspace(max_workspace(perf.data(), got, p, d.conv, ws_of), p.device);
      if (!ok_or_unsupported(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, d.x.d, x.data_ptr(), d.y.d,
                                                                           dy.data_ptr(), d.conv.d, d.w.d,
                                                                           dwl.data_ptr(), n, &got, perf.data(),
                                                                           ptr(ws), bytes(ws)),
                             "cudnnFindConvolutionBackwardFilterAlgorithmEx"))
        return Choice{};
    }
    return first_usable(perf.data(), got, p, d.conv, ws_of);
  });
  if (!c.ok) return false;
  SD_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv.d, c.math));
  Tensor ws = workspace(c.workspace, p.device);
  const float one = 1.0f, zero = 0.0f;
  const cudnnStatus_t st =
      cudnnConvolutionBackwardFilter(h, &one, d.x.d, x.data_ptr(), d.y.d, dy.data_ptr(), d.conv.d,
                                     cudnnConvolutionBwdFilterAlgo_t(c.algo), ptr(ws), c.workspace, &zero, d.w.d,
                                     dwl.data_ptr());
  if (!ok_or_unsupported(st, "cudnnConvolutionBackwardFilter")) {
    mark_unsupported(p, Dir::Filter, st);
    return false;
  }
  if (!dwl.same(dw)) copy_(dw, dwl);
  return true;
}

}  // namespace sd::cuda::conv_detail

#endif  // SD_WITH_CUDNN
