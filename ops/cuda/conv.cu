// conv2d entry points on the GPU: layout decisions, the backend choice, the bias.
#include <atomic>
#include <cstdint>

#include "ops/cuda/conv.h"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/conv_impl.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/env_switch.h"
#include "runtime/image_layout.h"

namespace sd::cuda {

namespace conv_detail {

Problem make_problem(const Shape& x, const Shape& w, const cpu::Conv2dGeom& g, bool channels_last, DType dtype,
                     int device) {
  Problem p{};
  p.N = x[0];
  p.C = x[1];
  p.H = x[2];
  p.W = x[3];
  p.O = w[0];
  p.kh = w[2];
  p.kw = w[3];
  p.Ho = (p.H + 2 * g.pad_h - p.kh) / g.stride_h + 1;
  p.Wo = (p.W + 2 * g.pad_w - p.kw) / g.stride_w + 1;
  p.g = g;
  p.channels_last = channels_last;
  p.dtype = dtype;
  p.device = device;
  return p;
}

namespace {

// y is dense in its layout, so element i of memory has channel i % O (channels-last) or
// (i / L) % O (NCHW).
template <class T>
__global__ void add_bias_kernel(T* y, const T* bias, int64_t n, int64_t O, int64_t L, bool channels_last) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = channels_last ? i % O : (i / L) % O;
    y[i] = from_acc<T>(to_acc(y[i]) + to_acc(bias[o]));
  }
}

}  // namespace

void add_bias(const Problem& p, const Tensor& y, const Tensor& bias_in) {
  const int64_t n = p.N * p.O * p.L();
  if (n == 0) return;
  Tensor bias = contiguous_raw(bias_in);
  dispatch_float(y.dtype(), "conv2d bias", [&]<class T>() {
    add_bias_kernel<T><<<grid_1d(n), 256, 0, stream()>>>(static_cast<T*>(y.data_ptr()), static_cast<const T*>(bias.data_ptr()),
                                            n, p.O, p.L(), p.channels_last);
    SD_CUDA_CHECK_LAUNCH("add_bias_kernel");
  });
}

}  // namespace conv_detail

namespace {

using conv_detail::Problem;

ConvBackend initial_backend() {
  if (env_flag_on("SD_CONV_IM2COL")) return ConvBackend::Im2col;
  return env_flag_on("SD_CONV_GRAPH") ? ConvBackend::CudnnGraph : ConvBackend::Auto;
}

std::atomic<ConvBackend>& backend_setting() {
  static std::atomic<ConvBackend> b{initial_backend()};
  return b;
}

bool use_cudnn() { return backend_setting().load() != ConvBackend::Im2col && conv_detail::cudnn_usable(); }
bool use_graph() { return backend_setting().load() == ConvBackend::CudnnGraph && conv_detail::cudnn_usable(); }

// t in the problem's layout, dense, its first element 16-byte aligned (the widest vector
// loads of the cuDNN kernels); a copy only when t is not that already.
Tensor in_layout(const Tensor& t, bool channels_last) {
  const bool dense = channels_last ? is_channels_last_dense(t) : t.is_contiguous();
  const bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  if (dense && aligned) return t;
  Tensor c = empty_image(t.shape(), t.dtype(), t.device(), channels_last);
  copy_(c, t);
  return c;
}

// The weight dense and aligned: a contiguous [O, C, kh, kw], or for channels-last problems also
// a channels-last one as it is (cuDNN's NHWC filter layout).
Tensor dense_weight(const Tensor& w, bool channels_last) {
  const bool aligned = reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0;
  const bool dense = w.is_contiguous() || (channels_last && is_channels_last_dense(w));
  return dense && aligned ? w : copy_to(w, w.dtype(), w.device());
}

}  // namespace

void set_conv_backend(ConvBackend b) { backend_setting().store(b); }
ConvBackend conv_backend() { return backend_setting().load(); }
bool cudnn_available() { return conv_detail::cudnn_usable(); }
void set_conv_benchmark(bool on) { conv_detail::cudnn_set_benchmark(on); }
void clear_conv_algo_cache() {
  conv_detail::cudnn_clear_cache();
  conv_detail::graph_clear_cache();
}
int64_t cudnn_graph_runs() { return conv_detail::graph_runs(); }
void set_conv_im2col_budget(int64_t bytes) { conv_detail::im2col_set_budget(bytes); }

Tensor conv2d(const Tensor& x_in, const Tensor& w_in, const Tensor& bias, const cpu::Conv2dGeom& g) {
  set_device_of(x_in);
  const bool cl = prefers_channels_last(x_in);
  const Problem p = conv_detail::make_problem(x_in.shape(), w_in.shape(), g, cl, x_in.dtype(), x_in.device().index);
  Tensor y = empty_image({p.N, p.O, p.Ho, p.Wo}, p.dtype, x_in.device(), cl);
  if (y.numel() == 0) return y;
  const Tensor x = in_layout(x_in, cl), w = dense_weight(w_in, cl);
  bool bias_fused = false;
  if (use_graph() && conv_detail::graph_forward(p, x, w, bias, y, bias_fused)) {
    if (bias.defined() && !bias_fused) conv_detail::add_bias(p, y, bias);
    return y;
  }
  if (!(use_cudnn() && conv_detail::cudnn_forward(p, x, w, y)))
    conv_detail::im2col_forward(p, x, contiguous_raw(w), y);  // im2col reads [O, C*kh*kw] rows
  if (bias.defined()) conv_detail::add_bias(p, y, bias);
  return y;
}

Tensor conv2d_grad_input(const Tensor& grad_out, const Tensor& w_in, const Shape& x_shape, const cpu::Conv2dGeom& g,
                         bool channels_last) {
  set_device_of(grad_out);
  const Problem p =
      conv_detail::make_problem(x_shape, w_in.shape(), g, channels_last, grad_out.dtype(), grad_out.device().index);
  Tensor dx = empty_image(x_shape, p.dtype, grad_out.device(), channels_last);
  if (dx.numel() == 0) return dx;
  if (grad_out.numel() == 0) {  // no output channels: x did not matter
    fill_(dx, 0.0);
    return dx;
  }
  const Tensor dy = in_layout(grad_out, channels_last), w = dense_weight(w_in, channels_last);
  if (use_graph() && conv_detail::graph_grad_input(p, dy, w, dx)) return dx;
  if (!(use_cudnn() && conv_detail::cudnn_grad_input(p, dy, w, dx)))
    conv_detail::im2col_grad_input(p, dy, contiguous_raw(w), dx);
  return dx;
}

Tensor conv2d_grad_weight(const Tensor& grad_out, const Tensor& x_in, const Shape& w_shape,
                          const cpu::Conv2dGeom& g, bool weight_channels_last) {
  set_device_of(grad_out);
  // The layout of the forward pass: x decides it, and grad_out follows.
  const bool cl = prefers_channels_last(x_in);
  const Problem p = conv_detail::make_problem(x_in.shape(), w_shape, g, cl, grad_out.dtype(), grad_out.device().index);
  Tensor dw = empty_image(w_shape, p.dtype, grad_out.device(), cl && weight_channels_last);
  if (dw.numel() == 0) return dw;
  if (grad_out.numel() == 0) {  // an empty batch adds nothing
    fill_(dw, 0.0);
    return dw;
  }
  const Tensor x = in_layout(x_in, cl), dy = in_layout(grad_out, cl);
  if (use_graph() && conv_detail::graph_grad_weight(p, dy, x, dw)) return dw;
  if (use_cudnn() && conv_detail::cudnn_grad_weight(p, dy, x, dw)) return dw;
  if (dw.is_contiguous()) {
    conv_detail::im2col_grad_weight(p, dy, x, dw);
  } else {  // im2col writes a row-major [O, C*kh*kw]
    Tensor rows = empty(w_shape, p.dtype, grad_out.device());
    conv_detail::im2col_grad_weight(p, dy, x, rows);
    copy_(dw, rows);
  }
  return dw;
}

}  // namespace sd::cuda
