// Nearest-neighbour upsampling: one thread per output element, reading the input through
// its strides; the backward is one thread per input element summing its s x s block.
#include "ops/cuda/cuda_common.cuh"
#include "runtime/cuda/current_stream.cuh"
#include "runtime/image_layout.h"
#include "ops/cuda/upsample.h"

namespace sd::cuda {

namespace {

struct Dims4 {
  int64_t N, C, H, W;
};
struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Index i of a dense tensor of dims d in the given layout -> (n, c, h, w).
__device__ __forceinline__ void unravel(int64_t i, const Dims4& d, bool channels_last, int64_t& n, int64_t& c,
                                        int64_t& h, int64_t& w) {
  if (channels_last) {
    c = i % d.C;
    i /= d.C;
    w = i % d.W;
    i /= d.W;
    h = i % d.H;
    n = i / d.H;
  } else {
    w = i % d.W;
    i /= d.W;
    h = i % d.H;
    i /= d.H;
    c = i % d.C;
    n = i / d.C;
  }
}

// out (dense, dims `od`) [n, c, h, w] = x[n, c, h / s, w / s].
template <class T>
__global__ void upsample_kernel(const T* x, Strides4 xs, T* out, Dims4 od, int64_t s, bool channels_last) {
  const int64_t total = od.N * od.C * od.H * od.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, h, w;
    unravel(i, od, channels_last, n, c, h, w);
    out[i] = x[n * xs.n + c * xs.c + (h / s) * xs.h + (w / s) * xs.w];
  }
}

// dx (dense, dims `xd`) [n, c, h, w] = sum over the block grad[n, c, h*s + a, w*s + b].
template <class T>
__global__ void upsample_backward_kernel(const T* g, Strides4 gs, T* dx, Dims4 xd, int64_t s, bool channels_last) {
  using A = acc_t<T>;
  const int64_t total = xd.N * xd.C * xd.H * xd.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, h, w;
    unravel(i, xd, channels_last, n, c, h, w);
    const T* base = g + n * gs.n + c * gs.c + (h * s) * gs.h + (w * s) * gs.w;
    A acc = A(0);
    for (int64_t a = 0; a < s; ++a)
      for (int64_t b = 0; b < s; ++b) acc += to_acc(base[a * gs.h + b * gs.w]);
    dx[i] = from_acc<T>(acc);
  }
}

}  // namespace

Tensor upsample_nearest2d(const Tensor& x, int64_t s) {
  set_device_of(x);
  const bool cl = prefers_channels_last(x);
  const Dims4 od{x.size(0), x.size(1), x.size(2) * s, x.size(3) * s};
  Tensor out = empty_image({od.N, od.C, od.H, od.W}, x.dtype(), x.device(), cl);
  const int64_t n = out.numel();
  if (n == 0) return out;
  dispatch_float(x.dtype(), "upsample_nearest2d", [&]<class T>() {
    upsample_kernel<T><<<grid_1d(n), 256, 0, stream()>>>(static_cast<const T*>(x.data_ptr()), strides_of(x),
                                            static_cast<T*>(out.data_ptr()), od, s, cl);
    SD_CUDA_CHECK_LAUNCH("upsample_kernel");
  });
  return out;
}

Tensor upsample_nearest2d_backward(const Tensor& grad, int64_t s) {
  set_device_of(grad);
  const bool cl = prefers_channels_last(grad);
  const Dims4 xd{grad.size(0), grad.size(1), grad.size(2) / s, grad.size(3) / s};
  Tensor dx = empty_image({xd.N, xd.C, xd.H, xd.W}, grad.dtype(), grad.device(), cl);
  const int64_t n = dx.numel();
  if (n == 0) return dx;
  dispatch_float(grad.dtype(), "upsample_nearest2d backward", [&]<class T>() {
    upsample_backward_kernel<T><<<grid_1d(n), 256, 0, stream()>>>(static_cast<const T*>(grad.data_ptr()), strides_of(grad),
                                                     static_cast<T*>(dx.data_ptr()), xd, s, cl);
    SD_CUDA_CHECK_LAUNCH("upsample_backward_kernel");
  });
  return dx;
}

}  // namespace sd::cuda
