// CUDA softmax / log-softmax. The input is made contiguous and seen as [outer, L, inner]
// around `dim` (as the CPU reference does):
//   inner == 1 (the last dim): rows of L contiguous values, a warp per row up to 2048
//     elements and a 256-thread block above, three passes (max, sum of exp, write), the
//     re-reads served by L1/L2;
//   inner > 1: one thread per (outer, inner) row; adjacent threads read adjacent inner
//     positions, so every pass over l is a coalesced sweep without any transpose.
#include "ops/cuda/softmax.h"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/vec_reduce.cuh"

namespace sd::cuda {

namespace {

template <class T, int V, int TPR>
__global__ void softmax_last(const T* __restrict__ x, T* __restrict__ y, int64_t R, int64_t L, bool log) {
  using A = acc_t<T>;
  __shared__ A scratch[TPR / 32];
  const int64_t row = row_index<TPR>();
  const int t = thread_in_row<TPR>();
  if (row >= R) return;  // TPR == 32: whole warps; TPR > 32: one block per row, never taken
  const T* xr = x + row * L;
  T* yr = y + row * L;
  A m = A(-INFINITY);
  for (int64_t j = int64_t(t) * V; j < L; j += int64_t(TPR) * V) {
    A v[V];
    load_vec<T, V>(xr + j, v);
#pragma unroll
    for (int k = 0; k < V; ++k) m = v[k] > m ? v[k] : m;
  }
  m = group_max<TPR>(m, scratch);
  // A row of all -inf gives NaN (exp(-inf - -inf)), as on the CPU and in PyTorch.
  A s = A(0);
  for (int64_t j = int64_t(t) * V; j < L; j += int64_t(TPR) * V) {
    A v[V];
    load_vec<T, V>(xr + j, v);
#pragma unroll
    for (int k = 0; k < V; ++k) s += dev_exp(v[k] - m);
  }
  s = group_sum<TPR>(s, scratch);
  // log: (x - max) - log(sum), the CPU's order of operations.
  const A log_sum = dev_log(s), inv = A(1) / s;
  for (int64_t j = int64_t(t) * V; j < L; j += int64_t(TPR) * V) {
    A v[V];
    load_vec<T, V>(xr + j, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = log ? (v[k] - m) - log_sum : dev_exp(v[k] - m) * inv;
    store_vec<T, V>(yr + j, v);
  }
}

// softmax: dx = y (dy - sum(dy y)); log_softmax: dx = dy - exp(y) sum(dy).
template <class T, int V, int TPR>
__global__ void softmax_last_bwd(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx, int64_t R,
                                 int64_t L, bool log) {
  using A = acc_t<T>;
  __shared__ A scratch[TPR / 32];
  const int64_t row = row_index<TPR>();
  const int t = thread_in_row<TPR>();
  if (row >= R) return;
  const T* gr = dy + row * L;
  const T* yr = y + row * L;
  T* dr = dx + row * L;
  A s = A(0);
  for (int64_t j = int64_t(t) * V; j < L; j += int64_t(TPR) * V) {
    A gv[V], yv[V];
    load_vec<T, V>(gr + j, gv);
    load_vec<T, V>(yr + j, yv);
#pragma unroll
    for (int k = 0; k < V; ++k) s += log ? gv[k] : gv[k] * yv[k];
  }
  s = group_sum<TPR>(s, scratch);
  for (int64_t j = int64_t(t) * V; j < L; j += int64_t(TPR) * V) {
    A gv[V], yv[V];
    load_vec<T, V>(gr + j, gv);
    load_vec<T, V>(yr + j, yv);
#pragma unroll
    for (int k = 0; k < V; ++k) gv[k] = log ? gv[k] - dev_exp(yv[k]) * s : yv[k] * (gv[k] - s);
    store_vec<T, V>(dr + j, gv);
  }
}

// Row r = (o, i) holds x[o * L * inner + l * inner + i], l < L.
template <class T>
__global__ void softmax_inner(const T* __restrict__ x, T* __restrict__ y, int64_t outer, int64_t L, int64_t inner,
                              bool log) {
  using A = acc_t<T>;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < outer * inner;
       r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = (r / inner) * L * inner + r % inner;
    const T* xr = x + base;
    T* yr = y + base;
    A m = A(-INFINITY);
    for (int64_t l = 0; l < L; ++l) {
      const A v = to_acc(xr[l * inner]);
      m = v > m ? v : m;
    }
    A s = A(0);
    for (int64_t l = 0; l < L; ++l) s += dev_exp(to_acc(xr[l * inner]) - m);
    const A log_sum = dev_log(s), inv = A(1) / s;
    for (int64_t l = 0; l < L; ++l) {
      const A v = to_acc(xr[l * inner]);
      yr[l * inner] = from_acc<T>(log ? (v - m) - log_sum : dev_exp(v - m) * inv);
    }
  }
}

template <class T>
__global__ void softmax_inner_bwd(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                                  int64_t outer, int64_t L, int64_t inner, bool log) {
  using A = acc_t<T>;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < outer * inner;
       r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = (r / inner) * L * inner + r % inner;
    A s = A(0);
    for (int64_t l = 0; l < L; ++l) {
      const A g = to_acc(dy[base + l * inner]);
      s += log ? g : g * to_acc(y[base + l * inner]);
    }
    for (int64_t l = 0; l < L; ++l) {
      const int64_t o = base + l * inner;
      const A g = to_acc(dy[o]), yv = to_acc(y[o]);
      dx[o] = from_acc<T>(log ? g - dev_exp(yv) * s : yv * (g - s));
    }
  }
}

// [outer, L, inner] around dim of a contiguous shape.
struct Rows {
  int64_t outer = 1, len = 1, inner = 1;
  Rows(const Shape& s, int64_t dim) {
    for (int64_t d = 0; d < dim; ++d) outer *= s[size_t(d)];
    len = s[size_t(dim)];
    for (size_t d = size_t(dim) + 1; d < s.size(); ++d) inner *= s[d];
  }
};

template <class T, class F>
void dispatch_row_vec(int64_t L, bool aligned, F&& f) {
  if (aligned && L % kVec<T> == 0)
    f.template operator()<kVec<T>>();
  else
    f.template operator()<1>();
}

}  // namespace

Tensor softmax_forward(const Tensor& x_in, int64_t dim, bool log) {
  set_device_of(x_in);
  const Tensor x = contiguous_raw(x_in);
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return y;
  const Rows rows(x.shape(), dim);
  dispatch_float(x.dtype(), log ? "log_softmax" : "softmax", [&]<class T>() {
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* yp = static_cast<T*>(y.data_ptr());
    if (rows.inner == 1) {
      dispatch_row_vec<T>(rows.len, aligned16(xp) && aligned16(yp), [&]<int V>() {
        dispatch_row_threads(rows.len, [&]<int TPR>() {
          softmax_last<T, V, TPR><<<row_grid(rows.outer, TPR), kRowThreads, 0, stream()>>>(xp, yp, rows.outer, rows.len, log);
          SD_CUDA_CHECK_LAUNCH("softmax_last");
        });
      });
    } else {
      softmax_inner<T><<<grid_1d(rows.outer * rows.inner), 256, 0, stream()>>>(xp, yp, rows.outer, rows.len, rows.inner, log);
      SD_CUDA_CHECK_LAUNCH("softmax_inner");
    }
  });
  return y;
}

Tensor softmax_backward(const Tensor& dy_in, const Tensor& y_in, int64_t dim, bool log) {
  set_device_of(y_in);
  const Tensor y = contiguous_raw(y_in);
  const Tensor dy = dy_in.dtype() == y.dtype() ? contiguous_raw(dy_in) : copy_to(dy_in, y.dtype(), y.device());
  Tensor dx = empty(y.shape(), y.dtype(), y.device());
  if (y.numel() == 0) return dx;
  const Rows rows(y.shape(), dim);
  dispatch_float(y.dtype(), log ? "log_softmax_backward" : "softmax_backward", [&]<class T>() {
    const T* gp = static_cast<const T*>(dy.data_ptr());
    const T* yp = static_cast<const T*>(y.data_ptr());
    T* dp = static_cast<T*>(dx.data_ptr());
    if (rows.inner == 1) {
      dispatch_row_vec<T>(rows.len, aligned16(gp) && aligned16(yp) && aligned16(dp), [&]<int V>() {
        dispatch_row_threads(rows.len, [&]<int TPR>() {
          softmax_last_bwd<T, V, TPR>
              <<<row_grid(rows.outer, TPR), kRowThreads, 0, stream()>>>(gp, yp, dp, rows.outer, rows.len, log);
          SD_CUDA_CHECK_LAUNCH("softmax_last_bwd");
        });
      });
    } else {
      softmax_inner_bwd<T>
          <<<grid_1d(rows.outer * rows.inner), 256, 0, stream()>>>(gp, yp, dp, rows.outer, rows.len, rows.inner, log);
      SD_CUDA_CHECK_LAUNCH("softmax_inner_bwd");
    }
  });
  return dx;
}

}  // namespace sd::cuda
