// CUDA LayerNorm forward and backward over the last dim, x seen as contiguous rows [R, D].
// A warp per row up to D = 2048 (the SD and CLIP widths, 320..1280), a 256-thread block per
// row above. Statistics take two passes over the row (mean, then centered squares), as the
// CPU reference does; the second and third reads of a row come from L1/L2.
// dweight/dbias: per (row slice, column) partial sums, then a sum over the slices in a
// fixed order (deterministic, no atomics).
#include <algorithm>

#include "ops/cuda/norm.h"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/vec_reduce.cuh"

namespace sd::cuda {

namespace {

template <class T, int V, int TPR>
__global__ void ln_forward(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ w,
                           const T* __restrict__ b, acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ rstd,
                           int64_t R, int64_t D, double eps) {
  using A = acc_t<T>;
  __shared__ A scratch[TPR / 32];
  const int64_t row = row_index<TPR>();
  const int t = thread_in_row<TPR>();
  if (row >= R) return;  // TPR == 32: whole warps; TPR > 32: one block per row, never taken
  const T* xr = x + row * D;
  T* yr = y + row * D;
  A s = A(0);
  for (int64_t j = int64_t(t) * V; j < D; j += int64_t(TPR) * V) {
    A v[V];
    load_vec<T, V>(xr + j, v);
#pragma unroll
    for (int k = 0; k < V; ++k) s += v[k];
  }
  s = group_sum<TPR>(s, scratch);
  const A mu = D > 0 ? s / A(D) : A(0);
  A q = A(0);
  for (int64_t j = int64_t(t) * V; j < D; j += int64_t(TPR) * V) {
    A v[V];
    load_vec<T, V>(xr + j, v);
#pragma unroll
    for (int k = 0; k < V; ++k) q += (v[k] - mu) * (v[k] - mu);
  }
  q = group_sum<TPR>(q, scratch);
  const A rs = dev_rsqrt_exact((D > 0 ? q / A(D) : A(0)) + A(eps));
  if (t == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
  for (int64_t j = int64_t(t) * V; j < D; j += int64_t(TPR) * V) {
    A v[V];
    load_vec<T, V>(xr + j, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = (v[k] - mu) * rs * param_or(w, j + k, A(1)) + param_or(b, j + k, A(0));
    store_vec<T, V>(yr + j, v);
  }
}

// dx = rstd (dy w - mean(dy w) - xhat mean(dy w xhat)) per row.
template <class T, int V, int TPR>
__global__ void ln_backward_dx(const T* __restrict__ x, const T* __restrict__ dy, const acc_t<T>* __restrict__ mean,
                               const acc_t<T>* __restrict__ rstd, const T* __restrict__ w, T* __restrict__ dx,
                               int64_t R, int64_t D) {
  using A = acc_t<T>;
  __shared__ A scratch[TPR / 32];
  const int64_t row = row_index<TPR>();
  const int t = thread_in_row<TPR>();
  if (row >= R) return;
  const T* xr = x + row * D;
  const T* gr = dy + row * D;
  const A mu = mean[row], rs = rstd[row];
  A s0 = A(0), s1 = A(0);
  for (int64_t j = int64_t(t) * V; j < D; j += int64_t(TPR) * V) {
    A xv[V], gv[V];
    load_vec<T, V>(xr + j, xv);
    load_vec<T, V>(gr + j, gv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A dxhat = gv[k] * param_or(w, j + k, A(1));
      s0 += dxhat;
      s1 += dxhat * (xv[k] - mu) * rs;
    }
  }
  s0 = group_sum<TPR>(s0, scratch);
  s1 = group_sum<TPR>(s1, scratch);
  const A c1 = s0 / A(D), c2 = s1 / A(D);  // D > 0 whenever the loop below runs
  T* dr = dx + row * D;
  for (int64_t j = int64_t(t) * V; j < D; j += int64_t(TPR) * V) {
    A xv[V], gv[V];
    load_vec<T, V>(xr + j, xv);
    load_vec<T, V>(gr + j, gv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A xhat = (xv[k] - mu) * rs;
      xv[k] = rs * (gv[k] * param_or(w, j + k, A(1)) - c1 - xhat * c2);
    }
    store_vec<T, V>(dr + j, xv);
  }
}

constexpr int kColThreads = 32, kRowLanes = 8;

// Block (32 columns, 8 row lanes) of row slice blockIdx.y: partial sums over the slice's
// rows of dy * xhat (-> dweight) and dy (-> dbias) for each column.
template <class T>
__global__ void ln_param_partial(const T* __restrict__ x, const T* __restrict__ dy,
                                 const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                                 acc_t<T>* __restrict__ part_w, acc_t<T>* __restrict__ part_b, int64_t R, int64_t D,
                                 int64_t chunk) {
  using A = acc_t<T>;
  __shared__ A sw[kRowLanes][kColThreads], sb[kRowLanes][kColThreads];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t d = int64_t(blockIdx.x) * kColThreads + tx, slice = blockIdx.y;
  const int64_t r0 = slice * chunk, r1 = min(R, r0 + chunk);
  A aw = A(0), ab = A(0);
  if (d < D) {
    for (int64_t row = r0 + ty; row < r1; row += kRowLanes) {
      const A g = to_acc(dy[row * D + d]);
      aw += g * (to_acc(x[row * D + d]) - mean[row]) * rstd[row];
      ab += g;
    }
  }
  sw[ty][tx] = aw;
  sb[ty][tx] = ab;
  __syncthreads();
  if (ty == 0 && d < D) {
    for (int k = 1; k < kRowLanes; ++k) {
      aw += sw[k][tx];
      ab += sb[k][tx];
    }
    part_w[slice * D + d] = aw;
    part_b[slice * D + d] = ab;
  }
}

template <class T>
__global__ void ln_param_final(const acc_t<T>* __restrict__ part_w, const acc_t<T>* __restrict__ part_b,
                               int64_t slices, int64_t D, T* __restrict__ dw, T* __restrict__ db) {
  using A = acc_t<T>;
  for (int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; d < D; d += int64_t(gridDim.x) * blockDim.x) {
    A sw = A(0), sb = A(0);
    for (int64_t s = 0; s < slices; ++s) {
      sw += part_w[s * D + d];
      sb += part_b[s * D + d];
    }
    if (dw) dw[d] = from_acc<T>(sw);
    if (db) db[d] = from_acc<T>(sb);
  }
}

// The row kernels' vector width: 16 bytes when rows and pointers allow it.
template <class T, class F>
void dispatch_row_vec(int64_t D, bool aligned, F&& f) {
  if (aligned && D % kVec<T> == 0)
    f.template operator()<kVec<T>>();
  else
    f.template operator()<1>();
}

Tensor param(const Tensor& p) { return p.defined() ? contiguous_raw(p) : Tensor(); }

template <class T>
const T* opt_ptr(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}

}  // namespace

cpu::NormForward layer_norm_forward(const Tensor& x_in, const Tensor& weight, const Tensor& bias, double eps) {
  set_device_of(x_in);
  const Tensor x = contiguous_raw(x_in);
  const Shape stats_shape(x.shape().begin(), x.shape().end() - 1);
  const int64_t D = x.size(-1), R = shape_numel(stats_shape);
  const DType sdt = x.dtype() == DType::F64 ? DType::F64 : DType::F32;
  cpu::NormForward r{empty(x.shape(), x.dtype(), x.device()), empty(stats_shape, sdt, x.device()),
                     empty(stats_shape, sdt, x.device())};
  if (R == 0) return r;
  const Tensor w = param(weight), b = param(bias);
  dispatch_float(x.dtype(), "layer_norm", [&]<class T>() {
    using A = acc_t<T>;
    dispatch_row_vec<T>(D, aligned16(x.data_ptr()) && aligned16(r.y.data_ptr()), [&]<int V>() {
      dispatch_row_threads(D, [&]<int TPR>() {
        ln_forward<T, V, TPR><<<row_grid(R, TPR), kRowThreads, 0, stream()>>>(
            static_cast<const T*>(x.data_ptr()), static_cast<T*>(r.y.data_ptr()), opt_ptr<T>(w), opt_ptr<T>(b),
            static_cast<A*>(r.mean.data_ptr()), static_cast<A*>(r.rstd.data_ptr()), R, D, eps);
        SD_CUDA_CHECK_LAUNCH("ln_forward");
      });
    });
  });
  return r;
}

cpu::NormGrads layer_norm_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& weight, bool need_dx, bool need_dweight, bool need_dbias) {
  set_device_of(x_in);
  const Tensor x = contiguous_raw(x_in);
  const Tensor dy = dy_in.dtype() == x.dtype() ? contiguous_raw(dy_in) : copy_to(dy_in, x.dtype(), x.device());
  const int64_t D = x.size(-1), R = shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  cpu::NormGrads r;
  if (need_dx) r.dx = empty(x.shape(), x.dtype(), x.device());
  if (need_dweight) r.dweight = empty({D}, x.dtype(), x.device());
  if (need_dbias) r.dbias = empty({D}, x.dtype(), x.device());
  const Tensor w = param(weight);
  dispatch_float(x.dtype(), "layer_norm_backward", [&]<class T>() {
    using A = acc_t<T>;
    const T* xp = static_cast<const T*>(x.data_ptr());
    const T* gp = static_cast<const T*>(dy.data_ptr());
    const A* mp = static_cast<const A*>(mean.data_ptr());
    const A* rp = static_cast<const A*>(rstd.data_ptr());
    if (need_dx && R > 0) {
      const bool aligned = aligned16(xp) && aligned16(gp) && aligned16(r.dx.data_ptr());
      dispatch_row_vec<T>(D, aligned, [&]<int V>() {
        dispatch_row_threads(D, [&]<int TPR>() {
          ln_backward_dx<T, V, TPR><<<row_grid(R, TPR), kRowThreads, 0, stream()>>>(
              xp, gp, mp, rp, opt_ptr<T>(w), static_cast<T*>(r.dx.data_ptr()), R, D);
          SD_CUDA_CHECK_LAUNCH("ln_backward_dx");
        });
      });
    }
    if ((need_dweight || need_dbias) && D > 0) {
      T* dw = need_dweight ? static_cast<T*>(r.dweight.data_ptr()) : nullptr;
      T* db = need_dbias ? static_cast<T*>(r.dbias.data_ptr()) : nullptr;
      // ~8 blocks per SM, each row lane walking >= 8 rows of its slice.
      const int64_t col_blocks = ceil_div(D, kColThreads);
      const int64_t want = ceil_div(int64_t(sm_count()) * 8, col_blocks);
      int64_t slices = std::clamp<int64_t>(want, 1, std::clamp<int64_t>(R / (kRowLanes * 8), 1, 65535));
      const int64_t chunk = std::max<int64_t>(1, ceil_div(R, slices));
      slices = R > 0 ? ceil_div(R, chunk) : 1;
      const DType pdt = std::is_same_v<A, double> ? DType::F64 : DType::F32;
      Tensor part_w = empty({slices, D}, pdt, x.device()), part_b = empty({slices, D}, pdt, x.device());
      ln_param_partial<T><<<dim3(unsigned(col_blocks), unsigned(slices)), dim3(kColThreads, kRowLanes), 0, stream()>>>(
          xp, gp, mp, rp, static_cast<A*>(part_w.data_ptr()), static_cast<A*>(part_b.data_ptr()), R, D, chunk);
      SD_CUDA_CHECK_LAUNCH("ln_param_partial");
      ln_param_final<T><<<grid_1d(D, 256), 256, 0, stream()>>>(static_cast<const A*>(part_w.data_ptr()),
                                                   static_cast<const A*>(part_b.data_ptr()), slices, D, dw, db);
      SD_CUDA_CHECK_LAUNCH("ln_param_final");
    }
  });
  return r;
}

}  // namespace sd::cuda
