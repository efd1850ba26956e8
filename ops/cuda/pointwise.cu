#include <algorithm>

#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/env_switch.h"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/pointwise.h"
#include "runtime/image_layout.h"

namespace sd::cuda {

namespace {

Tensor broadcast_to_shape(const Tensor& t, const Shape& shape) {
  Shape st(shape.size(), 0);
  const size_t lead = shape.size() - t.shape().size();
  for (size_t i = 0; i < t.shape().size(); ++i) st[lead + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  return as_strided(t, shape, st, t.offset());
}

template <class T>
__global__ void binary_kernel(BinaryKind k, T* out, const T* a, const T* b, StridedIndexer<2> ix, int64_t n) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    ix.offsets(i, off);
    out[i] = from_acc<T>(binary_apply<A>(k, to_acc(a[off[0]]), to_acc(b[off[1]])));
  }
}

template <class T>
__global__ void binary_contiguous_kernel(BinaryKind k, T* out, const T* a, const T* b, int64_t n) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_acc<T>(binary_apply<A>(k, to_acc(a[i]), to_acc(b[i])));
}

template <class T>
__global__ void unary_kernel(UnaryKind k, T* out, const T* x, StridedIndexer<1> ix, int64_t n, double p0, double p1) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[1];
    ix.offsets(i, off);
    out[i] = from_acc<T>(unary_apply<A>(k, to_acc(x[off[0]]), A(p0), A(p1)));
  }
}

template <class T>
__global__ void unary_backward_kernel(UnaryKind k, T* out, const T* g, const T* x, StridedIndexer<2> ix, int64_t n,
                                      double p0, double p1) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    ix.offsets(i, off);
    out[i] = from_acc<T>(to_acc(g[off[0]]) * unary_derivative<A>(k, to_acc(x[off[1]]), A(p0), A(p1)));
  }
}

template <class T>
__global__ void geglu_kernel(const T* x, T* out, int64_t rows, int64_t n) {
  using A = acc_t<T>;
  const int64_t total = rows * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / n, c = i % n;
    const T* row = x + r * 2 * n;
    out[i] = from_acc<T>(to_acc(row[c]) * unary_apply<A>(UnaryKind::GeluErf, to_acc(row[n + c]), A(0), A(0)));
  }
}

template <class T>
__global__ void geglu_backward_kernel(const T* g, const T* x, T* dx, int64_t rows, int64_t n) {
  using A = acc_t<T>;
  const int64_t total = rows * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / n, c = i % n;
    const T* row = x + r * 2 * n;
    T* drow = dx + r * 2 * n;
    const A gv = to_acc(g[i]), h = to_acc(row[c]), gate = to_acc(row[n + c]);
    drow[c] = from_acc<T>(gv * unary_apply<A>(UnaryKind::GeluErf, gate, A(0), A(0)));
    drow[n + c] = from_acc<T>(gv * h * unary_derivative<A>(UnaryKind::GeluErf, gate, A(0), A(0)));
  }
}

EnvSwitch& fused_geglu_switch() {
  static EnvSwitch s("SD_FUSED_GEGLU");
  return s;
}

}  // namespace

void set_fused_geglu(bool on) { fused_geglu_switch().set(on); }
bool fused_geglu() { return fused_geglu_switch().on(); }

Tensor geglu(const Tensor& x) {
  SD_CHECK(x.is_contiguous() && x.dim() >= 1 && x.size(-1) % 2 == 0, "cuda::geglu: needs a contiguous [..., 2n], got ",
           x.str());
  const int64_t n = x.size(-1) / 2, rows = x.numel() / std::max<int64_t>(x.size(-1), 1);
  Shape shape = x.shape();
  shape.back() = n;
  Tensor out = empty(shape, x.dtype(), x.device());
  if (out.numel() == 0) return out;
  set_device_of(x);
  dispatch_float(x.dtype(), "geglu", [&]<class T>() {
    geglu_kernel<T><<<grid_1d(rows * n), 256, 0, stream()>>>(static_cast<const T*>(x.data_ptr()),
                                                           static_cast<T*>(out.data_ptr()), rows, n);
    SD_CUDA_CHECK_LAUNCH("geglu");
  });
  return out;
}

Tensor geglu_backward(const Tensor& grad_in, const Tensor& x) {
  const Tensor grad = contiguous_raw(grad_in);
  const int64_t n = x.size(-1) / 2, rows = x.numel() / std::max<int64_t>(x.size(-1), 1);
  Tensor dx = empty(x.shape(), x.dtype(), x.device());
  if (dx.numel() == 0) return dx;
  set_device_of(x);
  dispatch_float(x.dtype(), "geglu backward", [&]<class T>() {
    geglu_backward_kernel<T><<<grid_1d(rows * n), 256, 0, stream()>>>(
        static_cast<const T*>(grad.data_ptr()), static_cast<const T*>(x.data_ptr()), static_cast<T*>(dx.data_ptr()),
        rows, n);
    SD_CUDA_CHECK_LAUNCH("geglu backward");
  });
  return dx;
}

Tensor binary(BinaryKind k, const Tensor& a, const Tensor& b) {
  const Shape full = broadcast_shapes(a.shape(), b.shape(), binary_name(k));
  // A channels-last result when the full-shape operands are channels-last (runtime/image_layout.h);
  // the kernels then walk every operand in [N, H, W, C] order, where the result is contiguous.
  const bool cl = channels_last_result(full, {&a, &b});
  Tensor out = empty_image(full, a.dtype(), a.device(), cl);
  const int64_t n = out.numel();
  if (n == 0) return out;
  set_device_of(a);
  const Tensor ab = memory_order(broadcast_to_shape(a, full), cl), bb = memory_order(broadcast_to_shape(b, full), cl);
  const Shape& shape = ab.shape();
  dispatch_float(a.dtype(), binary_name(k), [&]<class T>() {
    const T* pa = static_cast<const T*>(a.data_ptr());
    const T* pb = static_cast<const T*>(b.data_ptr());
    T* po = static_cast<T*>(out.data_ptr());
    if (ab.is_contiguous() && bb.is_contiguous()) {  // same shape, same dense layout as the result
      binary_contiguous_kernel<T><<<grid_1d(n), 256, 0, stream()>>>(k, po, pa, pb, n);
    } else {
      const Tensor* views[2] = {&ab, &bb};
      binary_kernel<T><<<grid_1d(n), 256, 0, stream()>>>(k, po, pa, pb, make_indexer<2>(shape, views), n);
    }
    SD_CUDA_CHECK_LAUNCH(binary_name(k));
  });
  return out;
}

Tensor unary(UnaryKind k, const Tensor& x_in, double p0, double p1) {
  const bool cl = channels_last_result(x_in.shape(), {&x_in});
  Tensor out = empty_image(x_in.shape(), x_in.dtype(), x_in.device(), cl);
  const Tensor x = memory_order(x_in, cl);
  const int64_t n = out.numel();
  if (n == 0) return out;
  set_device_of(x);
  dispatch_float(x.dtype(), unary_name(k), [&]<class T>() {
    const Tensor* views[1] = {&x};
    unary_kernel<T><<<grid_1d(n), 256, 0, stream()>>>(k, static_cast<T*>(out.data_ptr()), static_cast<const T*>(x.data_ptr()),
                                         make_indexer<1>(x.shape(), views), n, p0, p1);
    SD_CUDA_CHECK_LAUNCH(unary_name(k));
  });
  return out;
}

Tensor unary_backward(UnaryKind k, const Tensor& grad_in, const Tensor& x_in, double p0, double p1) {
  const bool cl = channels_last_result(x_in.shape(), {&grad_in, &x_in});
  Tensor out = empty_image(x_in.shape(), x_in.dtype(), x_in.device(), cl);
  const Tensor grad = memory_order(grad_in, cl), x = memory_order(x_in, cl);
  const int64_t n = out.numel();
  if (n == 0) return out;
  set_device_of(x);
  dispatch_float(x.dtype(), unary_name(k), [&]<class T>() {
    const Tensor* views[2] = {&grad, &x};
    unary_backward_kernel<T><<<grid_1d(n), 256, 0, stream()>>>(k, static_cast<T*>(out.data_ptr()),
                                                  static_cast<const T*>(grad.data_ptr()),
                                                  static_cast<const T*>(x.data_ptr()),
                                                  make_indexer<2>(x.shape(), views), n, p0, p1);
    SD_CUDA_CHECK_LAUNCH(unary_name(k));
  });
  return out;
}

}  // namespace sd::cuda
