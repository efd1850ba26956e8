// CUDA GroupNorm (+ fused SiLU), forward and backward.
//
// x [N, C, *spatial] (S = product of the spatial dims) is read in one of two layouts:
//   NCHW:          element (n, c, s) at (n * C + c) * S + s (x contiguous),
//   channels-last: element (n, c, s) at (n * S + s) * C + c (x = permute of a contiguous
//                  [N, *spatial, C], as the conv kernels produce it), read in place.
// Both layouts reduce into per-(n, c, split) partials, a split being a slice of the spatial
// positions of one (n, c): rows of S contiguous values in NCHW, columns of stride C in
// channels-last. The partials of group (n, g) are then contiguous ([N][C][splits] with the
// group's channels adjacent), so one finalize kernel serves both layouts:
//   forward:  Welford (count, mean, M2) partials -> per group mean/rstd (saved) and per
//             (n, c) coefficients -> one elementwise pass y = act((x - mean) * scale + shift).
//   backward: partial sums of dz and dz * xhat (dz = dy * silu'(z) with z recomputed) ->
//             per (n, c) sums (dweight/dbias add them over n in order: no atomics, the
//             result is deterministic) and per (n, c) dx coefficients -> one pass for dx.
// Statistics are f32 (f64 for f64 inputs). Accesses are 16 bytes wide where the contiguous
// extent (S in NCHW, C in channels-last) is a multiple of the vector and pointers align.
#include <algorithm>
#include <atomic>

#include "ops/cuda/env_switch.h"
#include "ops/cuda/norm.h"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/vec_reduce.cuh"

namespace sd::cuda {

namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------- device math

template <class A>
struct Welford {  // count, mean and sum of squared deviations of a set of values
  A n, mean, m2;
};

// a := a united with b (Chan et al.); empty sets are skipped.
template <class A>
__device__ __forceinline__ void merge(Welford<A>& a, const Welford<A>& b) {
  if (b.n == A(0)) return;
  if (a.n == A(0)) {
    a = b;
    return;
  }
  const A n = a.n + b.n, d = b.mean - a.mean, f = b.n / n;
  a.mean += d * f;
  a.m2 += b.m2 + d * d * a.n * f;
  a.n = n;
}

template <class A>
__device__ __forceinline__ Welford<A> shfl_down(const Welford<A>& s, int offset, int width) {
  return {__shfl_down_sync(0xffffffffu, s.n, offset, width), __shfl_down_sync(0xffffffffu, s.mean, offset, width),
          __shfl_down_sync(0xffffffffu, s.m2, offset, width)};
}

template <class A>
struct Sums {  // backward partials: sum of dz and of dz * xhat
  A dz, dz_xhat;
};

// Forward coefficients of channel c of sample n: z = (x - mean) * scale + shift.
template <class A>
struct Coef {
  A mean, scale, shift;
};

// Backward coefficients: z as above, dx = dz * scale + (x - mean) * alpha + beta.
template <class A>
struct BwdCoef {
  A mean, scale, shift, alpha, beta;
};

template <class A>
__device__ __forceinline__ A sigmoid(A z) {
  return A(1) / (A(1) + dev_exp(-z));
}

// y = silu(z) or z.
template <class A>
__device__ __forceinline__ A activate(A z, bool silu) {
  return silu ? z * sigmoid(z) : z;
}

// dy/dz: silu'(z) = s (1 + z (1 - s)), s = sigmoid(z); 1 without SiLU.
template <class A>
__device__ __forceinline__ A activation_grad(A z, bool silu) {
  if (!silu) return A(1);
  const A s = sigmoid(z);
  return s * (A(1) + z * (A(1) - s));
}

// ---------------------------------------------------------------------------- forward

// NCHW statistics. Item = (row = n * C + c, split) covers [split * chunk, +chunk) of the
// row's S values; `lanes` (a power of two <= 32) adjacent threads share an item.
template <class T, int V>
__global__ void gn_stats_rows(const T* __restrict__ x, Welford<acc_t<T>>* __restrict__ part, int64_t items,
                              int64_t S, int splits, int64_t chunk, int lanes) {
  using A = acc_t<T>;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t item = t / lanes;
  const int lane = int(t % lanes);
  Welford<A> st{A(0), A(0), A(0)};
  if (item < items) {
    const int64_t row = item / splits, split = item % splits;
    const int64_t begin = split * chunk, end = min(S, begin + chunk);
    const T* p = x + row * S;
    // chunk and S are multiples of V when V > 1, so every vector lies inside [begin, end).
    for (int64_t j = begin + int64_t(lane) * V; j < end; j += int64_t(lanes) * V) {
      A v[V];
      load_vec<T, V>(p + j, v);
      A s = A(0);
#pragma unroll
      for (int k = 0; k < V; ++k) s += v[k];
      const A m = s / A(V);
      A q = A(0);
#pragma unroll
      for (int k = 0; k < V; ++k) q += (v[k] - m) * (v[k] - m);
      merge(st, Welford<A>{A(V), m, q});
    }
  }
  // Every thread of the warp takes part (items past the end hold empty sets).
  for (int o = lanes / 2; o > 0; o >>= 1) merge(st, shfl_down(st, o, lanes));
  if (lane == 0 && item < items) part[item] = st;
}

// Channels-last statistics. Block (split, column chunk, n): each thread owns a column of
// V adjacent channels and walks positions s = split start + r, r + rows, ...; the `rows`
// threads of a column are merged in shared memory in a fixed order.
template <class T, int V>
__global__ void gn_stats_cl(const T* __restrict__ x, Welford<acc_t<T>>* __restrict__ part, int64_t S, int64_t C,
                            int splits, int64_t chunk, int cw) {
  using A = acc_t<T>;
  __shared__ Welford<A> sm[kThreads * V];
  const int rows = kThreads / cw, cl = int(threadIdx.x) % cw, r = int(threadIdx.x) / cw;
  const int64_t cols = C / V, col = int64_t(blockIdx.y) * cw + cl;
  const int64_t n = blockIdx.z, split = blockIdx.x;
  const int64_t s0 = split * chunk, s1 = min(S, s0 + chunk);
  A cnt = A(0), mean[V], m2[V];
#pragma unroll
  for (int k = 0; k < V; ++k) mean[k] = m2[k] = A(0);
  if (r < rows && col < cols) {
    const T* p = x + n * S * C + col * V;
    for (int64_t s = s0 + r; s < s1; s += rows) {
      A v[V];
      load_vec<T, V>(p + s * C, v);
      cnt += A(1);
      const A inv = A(1) / cnt;  // one division per vector: the V channels share the count
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A d = v[k] - mean[k];
        mean[k] += d * inv;
        m2[k] += d * (v[k] - mean[k]);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < V; ++k) sm[threadIdx.x * V + k] = Welford<A>{cnt, mean[k], m2[k]};
  __syncthreads();
  if (r == 0 && col < cols) {
    for (int k = 0; k < V; ++k) {
      Welford<A> acc = sm[cl * V + k];
      for (int rr = 1; rr < rows; ++rr) merge(acc, sm[(rr * cw + cl) * V + k]);
      part[(n * C + col * V + k) * splits + split] = acc;
    }
  }
}

// One warp per group (n, g): merges the group's `per_group` partials, saves mean/rstd and
// writes the coefficients of the group's channels.
template <class T>
__global__ void gn_finalize(const Welford<acc_t<T>>* __restrict__ part, int64_t per_group, int64_t NG, int64_t G,
                            int64_t C, int64_t Cg, int64_t M, const T* __restrict__ w, const T* __restrict__ b,
                            double eps, acc_t<T>* __restrict__ mean_out, acc_t<T>* __restrict__ rstd_out,
                            Coef<acc_t<T>>* __restrict__ coef) {
  using A = acc_t<T>;
  const int64_t grp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = int(threadIdx.x % 32);
  if (grp >= NG) return;  // whole warps only (blockDim is a multiple of 32)
  Welford<A> st{A(0), A(0), A(0)};
  const Welford<A>* pp = part + grp * per_group;
  for (int64_t i = lane; i < per_group; i += 32) merge(st, pp[i]);
  for (int o = 16; o > 0; o >>= 1) merge(st, shfl_down(st, o, 32));
  const A mu_raw = __shfl_sync(0xffffffffu, st.mean, 0), m2 = __shfl_sync(0xffffffffu, st.m2, 0);
  // An empty group (S == 0 or C == 0) keeps finite statistics, as on the CPU.
  const A mu = M > 0 ? mu_raw : A(0);
  const A var = M > 0 ? (m2 > A(0) ? m2 : A(0)) / A(M) : A(0);
  const A rs = dev_rsqrt_exact(var + A(eps));
  if (lane == 0) {
    mean_out[grp] = mu;
    rstd_out[grp] = rs;
  }
  const int64_t n = grp / G, g = grp % G;
  for (int64_t c = g * Cg + lane; c < (g + 1) * Cg; c += 32)
    coef[n * C + c] = Coef<A>{mu, rs * param_or(w, c, A(1)), param_or(b, c, A(0))};
}

// Index of the (n, c) coefficient of flat element i (the first of a vector when V > 1).
template <class Idx>
struct CoefIndex {
  Idx S, C, SC;
  bool cl;
  __device__ __forceinline__ Idx operator()(Idx i) const { return cl ? (i / SC) * C + i % C : i / S; }
};

// y = act((x - mean) * scale + shift). In NCHW the V elements of a vector share a channel,
// in channels-last they are V adjacent channels of one position.
template <class T, int V, class Idx>
__global__ void gn_apply(const T* __restrict__ x, T* __restrict__ y, const Coef<acc_t<T>>* __restrict__ coef,
                         Idx nvec, CoefIndex<Idx> ci, bool silu) {
  using A = acc_t<T>;
  for (Idx vi = Idx(blockIdx.x) * blockDim.x + threadIdx.x; vi < nvec; vi += Idx(gridDim.x) * blockDim.x) {
    const Idx i = vi * V;
    A v[V];
    load_vec<T, V>(x + i, v);
    const Idx c0 = ci(i);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const Coef<A> cf = coef[ci.cl ? c0 + k : c0];
      v[k] = activate((v[k] - cf.mean) * cf.scale + cf.shift, silu);
    }
    store_vec<T, V>(y + i, v);
  }
}

// ---------------------------------------------------------------------------- one-kernel forward

// The whole forward of group (n, g) in one block, the group staged in shared memory: x is read
// from memory once and y written once, with exact two-pass statistics (sum, then the squared
// deviations from the mean) computed from the staged copy. The group's elements sit in the tile
// as [Cg][S] for NCHW (one contiguous run of x) and [S][Cg] for channels-last (Cg adjacent
// channels at each position). Used when the tile fits in a block's shared memory and the
// switch is on (group_norm_one_kernel); mean/rstd/y mean the same as the three-kernel path's.
constexpr int kOneKernelThreads = 1024;

template <class T, bool CL, int V>
__global__ void __launch_bounds__(kOneKernelThreads)
    gn_one_kernel(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ w, const T* __restrict__ b,
                  acc_t<T>* __restrict__ mean_out, acc_t<T>* __restrict__ rstd_out, uint32_t C, uint32_t S,
                  uint32_t G, uint32_t Cg, double eps, bool silu) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char gn_tile_raw[];
  T* tile = reinterpret_cast<T*>(gn_tile_raw);
  __shared__ A scratch[kOneKernelThreads / 32];
  const uint32_t grp = blockIdx.x, n = grp / G, g = grp % G;
  const uint32_t M = Cg * S;
  // Where element i of the tile lives in x (and y).
  auto at = [&](uint32_t i) -> int64_t {
    if (!CL) return (int64_t(n) * C + int64_t(g) * Cg) * S + i;
    return (int64_t(n) * S + i / Cg) * C + int64_t(g) * Cg + i % Cg;
  };
  A sum = A(0);
  if (!CL && V > 1) {  // one contiguous run, 16-byte vectors (M and the run's start are multiples of V)
    const T* src = x + at(0);
    for (uint32_t i = threadIdx.x * V; i < M; i += blockDim.x * V) {
      const VecT<T, V> raw = *reinterpret_cast<const VecT<T, V>*>(src + i);
      *reinterpret_cast<VecT<T, V>*>(tile + i) = raw;
#pragma unroll
      for (int k = 0; k < V; ++k) sum += to_acc(raw.v[k]);
    }
  } else {
    for (uint32_t i = threadIdx.x; i < M; i += blockDim.x) {
      const T v = x[at(i)];
      tile[i] = v;
      sum += to_acc(v);
    }
  }
  const A mu = group_sum<kOneKernelThreads>(sum, scratch) / A(M);
  A sq = A(0);
  for (uint32_t i = threadIdx.x; i < M; i += blockDim.x) {
    const A d = to_acc(tile[i]) - mu;
    sq += d * d;
  }
  const A var = group_sum<kOneKernelThreads>(sq, scratch) / A(M);
  const A rs = dev_rsqrt_exact(var + A(eps));
  if (threadIdx.x == 0) {
    mean_out[grp] = mu;
    rstd_out[grp] = rs;
  }
  const uint32_t c_base = g * Cg;
  if (!CL && V > 1) {
    T* dst = y + at(0);
    for (uint32_t i = threadIdx.x * V; i < M; i += blockDim.x * V) {
      const VecT<T, V> raw = *reinterpret_cast<const VecT<T, V>*>(tile + i);
      A v[V];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const uint32_t c = c_base + (i + k) / S;
        v[k] = activate((to_acc(raw.v[k]) - mu) * (rs * param_or(w, c, A(1))) + param_or(b, c, A(0)), silu);
      }
      store_vec<T, V>(dst + i, v);
    }
  } else {
    for (uint32_t i = threadIdx.x; i < M; i += blockDim.x) {
      const uint32_t c = c_base + (CL ? i % Cg : i / S);
      y[at(i)] = from_acc<T>(
          activate((to_acc(tile[i]) - mu) * (rs * param_or(w, c, A(1))) + param_or(b, c, A(0)), silu));
    }
  }
}

// ---------------------------------------------------------------------------- backward

// NCHW partial sums, items as in gn_stats_rows.
template <class T, int V>
__global__ void gn_bwd_rows(const T* __restrict__ x, const T* __restrict__ dy, const acc_t<T>* __restrict__ mean,
                            const acc_t<T>* __restrict__ rstd, const T* __restrict__ w, const T* __restrict__ b,
                            Sums<acc_t<T>>* __restrict__ part, int64_t items, int64_t S, int64_t C, int64_t Cg,
                            int splits, int64_t chunk, int lanes, bool silu) {
  using A = acc_t<T>;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t item = t / lanes;
  const int lane = int(t % lanes);
  A s0 = A(0), s1 = A(0);
  if (item < items) {
    const int64_t row = item / splits, split = item % splits;
    const int64_t n = row / C, c = row % C, grp = n * (C / Cg) + c / Cg;
    const A mu = mean[grp], rs = rstd[grp], wc = param_or(w, c, A(1)), bc = param_or(b, c, A(0));
    const int64_t begin = split * chunk, end = min(S, begin + chunk);
    const T* xp = x + row * S;
    const T* gp = dy + row * S;
    for (int64_t j = begin + int64_t(lane) * V; j < end; j += int64_t(lanes) * V) {
      A xv[V], gv[V];
      load_vec<T, V>(xp + j, xv);
      load_vec<T, V>(gp + j, gv);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A xhat = (xv[k] - mu) * rs;
        const A dz = gv[k] * activation_grad(xhat * wc + bc, silu);
        s0 += dz;
        s1 += dz * xhat;
      }
    }
  }
  for (int o = lanes / 2; o > 0; o >>= 1) {
    s0 += __shfl_down_sync(0xffffffffu, s0, o, lanes);
    s1 += __shfl_down_sync(0xffffffffu, s1, o, lanes);
  }
  if (lane == 0 && item < items) part[item] = Sums<A>{s0, s1};
}

// Channels-last partial sums, blocks as in gn_stats_cl.
template <class T, int V>
__global__ void gn_bwd_cl(const T* __restrict__ x, const T* __restrict__ dy, const acc_t<T>* __restrict__ mean,
                          const acc_t<T>* __restrict__ rstd, const T* __restrict__ w, const T* __restrict__ b,
                          Sums<acc_t<T>>* __restrict__ part, int64_t S, int64_t C, int64_t Cg, int splits,
                          int64_t chunk, int cw, bool silu) {
  using A = acc_t<T>;
  __shared__ Sums<A> sm[kThreads * V];
  const int rows = kThreads / cw, cl = int(threadIdx.x) % cw, r = int(threadIdx.x) / cw;
  const int64_t cols = C / V, col = int64_t(blockIdx.y) * cw + cl;
  const int64_t n = blockIdx.z, split = blockIdx.x;
  const int64_t s0 = split * chunk, s1 = min(S, s0 + chunk);
  A sdz[V], sdzx[V];
#pragma unroll
  for (int k = 0; k < V; ++k) sdz[k] = sdzx[k] = A(0);
  if (r < rows && col < cols) {
    // The V channels of the column may belong to different groups.
    A mu[V], rs[V], wc[V], bc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int64_t c = col * V + k, grp = n * (C / Cg) + c / Cg;
      mu[k] = mean[grp];
      rs[k] = rstd[grp];
      wc[k] = param_or(w, c, A(1));
      bc[k] = param_or(b, c, A(0));
    }
    const T* xp = x + n * S * C + col * V;
    const T* gp = dy + n * S * C + col * V;
    for (int64_t s = s0 + r; s < s1; s += rows) {
      A xv[V], gv[V];
      load_vec<T, V>(xp + s * C, xv);
      load_vec<T, V>(gp + s * C, gv);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A xhat = (xv[k] - mu[k]) * rs[k];
        const A dz = gv[k] * activation_grad(xhat * wc[k] + bc[k], silu);
        sdz[k] += dz;
        sdzx[k] += dz * xhat;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < V; ++k) sm[threadIdx.x * V + k] = Sums<A>{sdz[k], sdzx[k]};
  __syncthreads();
  if (r == 0 && col < cols) {
    for (int k = 0; k < V; ++k) {
      Sums<A> acc = sm[cl * V + k];
      for (int rr = 1; rr < rows; ++rr) {
        acc.dz += sm[(rr * cw + cl) * V + k].dz;
        acc.dz_xhat += sm[(rr * cw + cl) * V + k].dz_xhat;
      }
      part[(n * C + col * V + k) * splits + split] = acc;
    }
  }
}

// One warp per group (n, g): per channel sums over the splits (kept for dweight/dbias),
// the group constants c1 = sum_c w_c sum(dz) / M, c2 = sum_c w_c sum(dz xhat) / M and, when
// dx is wanted, the coefficients of
//   dx = rstd (dz w - c1 - xhat c2) = dz (rstd w) + (x - mean) (-rstd^2 c2) + (-rstd c1).
template <class T>
__global__ void gn_bwd_finalize(const Sums<acc_t<T>>* __restrict__ part, int splits, int64_t NG, int64_t G,
                                int64_t C, int64_t Cg, int64_t M, const acc_t<T>* __restrict__ mean,
                                const acc_t<T>* __restrict__ rstd, const T* __restrict__ w,
                                const T* __restrict__ b, Sums<acc_t<T>>* __restrict__ chan,
                                BwdCoef<acc_t<T>>* __restrict__ coef) {
  using A = acc_t<T>;
  const int64_t grp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = int(threadIdx.x % 32);
  if (grp >= NG) return;  // whole warps only
  const int64_t n = grp / G, g = grp % G;
  A a0 = A(0), a1 = A(0);
  for (int64_t c = g * Cg + lane; c < (g + 1) * Cg; c += 32) {
    const Sums<A>* pp = part + (n * C + c) * splits;
    Sums<A> s{A(0), A(0)};
    for (int sp = 0; sp < splits; ++sp) {
      s.dz += pp[sp].dz;
      s.dz_xhat += pp[sp].dz_xhat;
    }
    chan[n * C + c] = s;
    const A wc = param_or(w, c, A(1));
    a0 += wc * s.dz;
    a1 += wc * s.dz_xhat;
  }
  for (int o = 16; o > 0; o >>= 1) {  // xor butterfly: every lane ends with the same sums
    a0 += __shfl_xor_sync(0xffffffffu, a0, o);
    a1 += __shfl_xor_sync(0xffffffffu, a1, o);
  }
  if (!coef) return;
  const A mu = mean[grp], rs = rstd[grp];
  const A c1 = M > 0 ? a0 / A(M) : A(0), c2 = M > 0 ? a1 / A(M) : A(0);
  for (int64_t c = g * Cg + lane; c < (g + 1) * Cg; c += 32)
    coef[n * C + c] =
        BwdCoef<A>{mu, rs * param_or(w, c, A(1)), param_or(b, c, A(0)), -rs * rs * c2, -rs * c1};
}

// dweight[c] = sum_n chan[n, c].dz_xhat, dbias[c] = sum_n chan[n, c].dz, n in order.
template <class T>
__global__ void gn_param_grads(const Sums<acc_t<T>>* __restrict__ chan, int64_t N, int64_t C, T* __restrict__ dw,
                               T* __restrict__ db) {
  using A = acc_t<T>;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += int64_t(gridDim.x) * blockDim.x) {
    A sw = A(0), sb = A(0);
    for (int64_t n = 0; n < N; ++n) {
      sw += chan[n * C + c].dz_xhat;
      sb += chan[n * C + c].dz;
    }
    if (dw) dw[c] = from_acc<T>(sw);
    if (db) db[c] = from_acc<T>(sb);
  }
}

template <class T, int V, class Idx>
__global__ void gn_bwd_apply(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                             const BwdCoef<acc_t<T>>* __restrict__ coef, Idx nvec, CoefIndex<Idx> ci, bool silu) {
  using A = acc_t<T>;
  for (Idx vi = Idx(blockIdx.x) * blockDim.x + threadIdx.x; vi < nvec; vi += Idx(gridDim.x) * blockDim.x) {
    const Idx i = vi * V;
    A xv[V], gv[V];
    load_vec<T, V>(x + i, xv);
    load_vec<T, V>(dy + i, gv);
    const Idx c0 = ci(i);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const BwdCoef<A> cf = coef[ci.cl ? c0 + k : c0];
      const A xc = xv[k] - cf.mean;
      const A dz = gv[k] * activation_grad(xc * cf.scale + cf.shift, silu);
      xv[k] = dz * cf.scale + xc * cf.alpha + cf.beta;
    }
    store_vec<T, V>(dx + i, xv);
  }
}

// ---------------------------------------------------------------------------- host side

// True when (shape, strides) address a dense row-major block (size-1 dims ignored).
bool dense(const Shape& shape, const Shape& strides) {
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] == 1) continue;
    if (strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

// [N, C, *spatial] -> [N, *spatial, C] order of dims.
Shape to_nhwc_order(const Shape& v) {
  Shape out{v[0]};
  out.insert(out.end(), v.begin() + 2, v.end());
  out.push_back(v[1]);
  return out;
}

bool channels_last(const Tensor& t) { return dense(to_nhwc_order(t.shape()), to_nhwc_order(t.strides())); }

// x as one of the two layouts the kernels read (other layouts are copied to NCHW).
struct Input {
  Tensor x;
  bool cl;
};

Input as_kernel_layout(const Tensor& x) {
  if (x.is_contiguous() || x.numel() == 0) return {x, false};
  if (channels_last(x)) return {x, true};
  return {contiguous_raw(x), false};
}

// A new tensor with like's shape and dtype, NCHW-contiguous or channels-last.
Tensor empty_in_layout(const Tensor& like, bool cl) {
  if (!cl) return empty(like.shape(), like.dtype(), like.device());
  const Tensor base = empty(to_nhwc_order(like.shape()), like.dtype(), like.device());
  Shape st(like.shape().size());
  st[0] = base.stride(0);
  st[1] = 1;
  for (size_t d = 2; d < st.size(); ++d) st[d] = base.stride(int64_t(d) - 1);
  return as_strided(base, like.shape(), st, 0);
}

// dy in x's dtype and kernel layout.
Tensor grad_in_layout(const Tensor& dy, const Tensor& x, bool cl) {
  if (dy.dtype() == x.dtype() && (cl ? channels_last(dy) : dy.is_contiguous())) return dy;
  Tensor out = empty_in_layout(x, cl);
  copy_(out, dy);
  return out;
}

// Device scratch of `count` elements of a kernel struct.
template <class S>
Tensor scratch(int64_t count, Device dev) {
  return empty({count * int64_t(sizeof(S))}, DType::U8, dev);
}

template <class S>
S* ptr(const Tensor& t) {
  return static_cast<S*>(t.data_ptr());
}

template <class T>
const T* opt_ptr(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}

int next_pow2(int64_t v) {
  int p = 1;
  while (p < v && p < 32) p <<= 1;
  return p;
}

// How the reduction kernels cut the work; the same plan serves forward and backward.
struct Plan {
  int64_t N, C, S, G, Cg, M;
  bool cl;
  int vec;           // 1 or kVec<T>
  int splits;        // spatial slices per (n, c)
  int64_t chunk;     // positions per slice (a multiple of vec in NCHW)
  int lanes = 1;     // NCHW: threads per (row, split) item
  int cw = 1;        // channels-last: columns (vectors of channels) per block
  int64_t col_chunks = 1;
};

// len positions in at most `want` slices of at least `min_len`, slice lengths a multiple of align.
void split_range(Plan& p, int64_t len, int64_t want, int64_t min_len, int64_t align) {
  if (len <= 0) {
    p.splits = 1;
    p.chunk = 0;
    return;
  }
  const int64_t s = std::clamp<int64_t>(want, 1, std::max<int64_t>(1, len / min_len));
  p.chunk = ceil_div(ceil_div(len, s), align) * align;
  p.splits = int(ceil_div(len, p.chunk));
}

Plan make_plan(const Tensor& x, bool cl, int64_t groups, int vec_max, bool vec_ok) {
  Plan p{};
  p.N = x.size(0);
  p.C = x.size(1);
  p.S = 1;
  for (int64_t d = 2; d < x.dim(); ++d) p.S *= x.size(d);
  p.G = groups;
  p.Cg = p.C / groups;
  p.M = p.Cg * p.S;
  p.cl = cl;
  p.vec = vec_ok && (cl ? p.C : p.S) % vec_max == 0 ? vec_max : 1;
  const int64_t sms = sm_count();
  if (!cl) {
    // Enough (row, split) items for ~2048 threads per SM, each lane reading >= 4 vectors.
    const int64_t rows = p.N * p.C;
    split_range(p, p.S, ceil_div(sms * 2048, std::max<int64_t>(1, rows * 32)), int64_t(32) * 4 * p.vec, p.vec);
    p.lanes = next_pow2(ceil_div(p.chunk, p.vec));
  } else {
    const int64_t cols = p.C / p.vec;
    p.cw = int(std::min<int64_t>(cols, kThreads));
    p.col_chunks = ceil_div(cols, p.cw);
    const int64_t rows_per_block = kThreads / p.cw;
    // ~8 blocks per SM, each thread walking >= 8 positions.
    split_range(p, p.S, ceil_div(sms * 8, p.N * p.col_chunks), rows_per_block * 8, 1);
    SD_CHECK(p.N <= 65535 && p.col_chunks <= 65535, "group_norm: channels-last input too large: N=", p.N,
             " C=", p.C);
  }
  return p;
}

dim3 cl_grid(const Plan& p) { return dim3(unsigned(p.splits), unsigned(p.col_chunks), unsigned(p.N)); }

unsigned rows_grid(const Plan& p) {
  const int64_t threads = p.N * p.C * p.splits * p.lanes;
  SD_CHECK(ceil_div(threads, kThreads) < (int64_t(1) << 31), "group_norm: input too large");
  return unsigned(ceil_div(threads, kThreads));
}

unsigned warp_grid(int64_t warps) { return unsigned(ceil_div(warps * 32, kThreads)); }

// Per-(n, c, split) Welford partials of x.
template <class T, int V>
Tensor launch_stats(const Tensor& x, const Plan& p) {
  using A = acc_t<T>;
  Tensor part = scratch<Welford<A>>(p.N * p.C * p.splits, x.device());
  if (p.N * p.C == 0) return part;
  const T* xp = static_cast<const T*>(x.data_ptr());
  if (!p.cl) {
    gn_stats_rows<T, V><<<rows_grid(p), kThreads, 0, stream()>>>(xp, ptr<Welford<A>>(part), p.N * p.C * p.splits, p.S, p.splits,
                                                    p.chunk, p.lanes);
    SD_CUDA_CHECK_LAUNCH("gn_stats_rows");
  } else {
    gn_stats_cl<T, V><<<cl_grid(p), kThreads, 0, stream()>>>(xp, ptr<Welford<A>>(part), p.S, p.C, p.splits, p.chunk, p.cw);
    SD_CUDA_CHECK_LAUNCH("gn_stats_cl");
  }
  return part;
}

template <class T, int V>
Tensor launch_bwd_sums(const Tensor& x, const Tensor& dy, const Tensor& mean, const Tensor& rstd, const T* w,
                       const T* b, const Plan& p, bool silu) {
  using A = acc_t<T>;
  Tensor part = scratch<Sums<A>>(p.N * p.C * p.splits, x.device());
  if (p.N * p.C == 0) return part;
  const T* xp = static_cast<const T*>(x.data_ptr());
  const T* gp = static_cast<const T*>(dy.data_ptr());
  const A* mp = static_cast<const A*>(mean.data_ptr());
  const A* rp = static_cast<const A*>(rstd.data_ptr());
  if (!p.cl) {
    gn_bwd_rows<T, V><<<rows_grid(p), kThreads, 0, stream()>>>(xp, gp, mp, rp, w, b, ptr<Sums<A>>(part), p.N * p.C * p.splits,
                                                  p.S, p.C, p.Cg, p.splits, p.chunk, p.lanes, silu);
    SD_CUDA_CHECK_LAUNCH("gn_bwd_rows");
  } else {
    gn_bwd_cl<T, V><<<cl_grid(p), kThreads, 0, stream()>>>(xp, gp, mp, rp, w, b, ptr<Sums<A>>(part), p.S, p.C, p.Cg, p.splits,
                                              p.chunk, p.cw, silu);
    SD_CUDA_CHECK_LAUNCH("gn_bwd_cl");
  }
  return part;
}

// Runs f.template operator()<Idx>() with 32-bit indices when every flat index (and the
// grid-stride overshoot) fits, 64-bit otherwise: the elementwise passes divide per vector.
template <class F>
void dispatch_index(int64_t numel, F&& f) {
  if (numel < (int64_t(1) << 31))
    f.template operator()<uint32_t>();
  else
    f.template operator()<uint64_t>();
}

template <class Idx>
CoefIndex<Idx> coef_index(const Plan& p) {
  return CoefIndex<Idx>{Idx(p.S), Idx(p.C), Idx(p.S * p.C), p.cl};
}

// Dispatches on the vector width chosen for a plan: f.template operator()<V>().
template <class T, class F>
void dispatch_vec(int vec, F&& f) {
  if (vec == kVec<T>)
    f.template operator()<kVec<T>>();
  else
    f.template operator()<1>();
}

Tensor param(const Tensor& p) { return p.defined() ? contiguous_raw(p) : Tensor(); }

EnvSwitch& one_kernel_switch() {
  static EnvSwitch s("SD_GN_ONE_KERNEL");
  return s;
}

std::atomic<int64_t> g_one_kernel_calls{0};

// Shared memory a block may opt into on the current device (227 KiB on sm_90, 163 on sm_80).
int64_t max_block_smem() {
  int dev = 0, bytes = 0;
  SD_CUDA_CHECK(cudaGetDevice(&dev));
  SD_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return bytes;
}

// The one-kernel forward when the switch is on and the group's tile fits; false otherwise (the
// caller runs the three-kernel path).
template <class T>
bool try_one_kernel(const Tensor& x, bool cl, int64_t groups, const Tensor& w, const Tensor& b, double eps,
                    bool silu, cpu::NormForward& r) {
  using A = acc_t<T>;
  if (!one_kernel_switch().on() || x.numel() == 0) return false;
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / std::max<int64_t>(N * C, 1), Cg = C / groups;
  const int64_t tile_bytes = Cg * S * int64_t(sizeof(T));
  // Room for the kernel's static scratch; the tile's indices are 32-bit.
  if (tile_bytes + 1024 > max_block_smem() || N * groups > (int64_t(1) << 31) - 1 || C * S >= (int64_t(1) << 31))
    return false;
  const bool vec = !cl && (Cg * S) % kVec<T> == 0 && aligned16(x.data_ptr()) && aligned16(r.y.data_ptr());
  auto launch = [&]<bool CL, int V>() {
    auto kernel = gn_one_kernel<T, CL, V>;
    SD_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(tile_bytes)));
    kernel<<<unsigned(N * groups), kOneKernelThreads, size_t(tile_bytes), stream()>>>(
        static_cast<const T*>(x.data_ptr()), static_cast<T*>(r.y.data_ptr()), opt_ptr<T>(w), opt_ptr<T>(b),
        ptr<A>(r.mean), ptr<A>(r.rstd), uint32_t(C), uint32_t(S), uint32_t(groups), uint32_t(Cg), eps, silu);
    SD_CUDA_CHECK_LAUNCH("gn_one_kernel");
  };
  if (cl) launch.template operator()<true, 1>();
  else if (vec) launch.template operator()<false, kVec<T>>();
  else launch.template operator()<false, 1>();
  g_one_kernel_calls.fetch_add(1);
  return true;
}

}  // namespace

cpu::NormForward group_norm_forward(const Tensor& x_in, int64_t groups, const Tensor& weight, const Tensor& bias,
                                    double eps, bool fuse_silu) {
  set_device_of(x_in);
  const Input in = as_kernel_layout(x_in);
  const Tensor& x = in.x;
  const bool cl = in.cl;
  const DType sdt = x.dtype() == DType::F64 ? DType::F64 : DType::F32;
  const int64_t N = x.size(0);
  cpu::NormForward r{empty_in_layout(x, cl), empty({N, groups}, sdt, x.device()),
                     empty({N, groups}, sdt, x.device())};
  if (N == 0) return r;
  const Tensor w = param(weight), b = param(bias);
  dispatch_float(x.dtype(), "group_norm", [&]<class T>() {
    using A = acc_t<T>;
    if (try_one_kernel<T>(x, cl, groups, w, b, eps, fuse_silu, r)) return;
    const bool vec_ok = aligned16(x.data_ptr()) && aligned16(r.y.data_ptr());
    const Plan p = make_plan(x, cl, groups, kVec<T>, vec_ok);
    Tensor coef = scratch<Coef<A>>(p.N * p.C, x.device());
    dispatch_vec<T>(p.vec, [&]<int V>() {
      Tensor part = launch_stats<T, V>(x, p);
      gn_finalize<T><<<warp_grid(p.N * p.G), kThreads, 0, stream()>>>(
          ptr<const Welford<A>>(part), p.Cg * p.splits, p.N * p.G, p.G, p.C, p.Cg, p.M, opt_ptr<T>(w),
          opt_ptr<T>(b), eps, ptr<A>(r.mean), ptr<A>(r.rstd), ptr<Coef<A>>(coef));
      SD_CUDA_CHECK_LAUNCH("gn_finalize");
      const int64_t numel = x.numel();
      if (numel == 0) return;
      dispatch_index(numel, [&]<class Idx>() {
        const Idx nvec = Idx(numel / V);
        gn_apply<T, V, Idx><<<grid_1d(int64_t(nvec), kThreads), kThreads, 0, stream()>>>(
            static_cast<const T*>(x.data_ptr()), static_cast<T*>(r.y.data_ptr()), ptr<const Coef<A>>(coef), nvec,
            coef_index<Idx>(p), fuse_silu);
        SD_CUDA_CHECK_LAUNCH("gn_apply");
      });
    });
  });
  return r;
}

cpu::NormGrads group_norm_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& weight, const Tensor& bias, int64_t groups, bool fuse_silu,
                                   bool need_dx, bool need_dweight, bool need_dbias) {
  set_device_of(x_in);
  const Input in = as_kernel_layout(x_in);
  const Tensor& x = in.x;
  const bool cl = in.cl;
  const Tensor dy = grad_in_layout(dy_in, x, cl);
  const int64_t N = x.size(0), C = x.size(1);
  cpu::NormGrads r;
  if (need_dx) r.dx = empty_in_layout(x, cl);
  if (need_dweight) r.dweight = empty({C}, x.dtype(), x.device());
  if (need_dbias) r.dbias = empty({C}, x.dtype(), x.device());
  if (!need_dx && !need_dweight && !need_dbias) return r;
  const Tensor w = param(weight), b = fuse_silu ? param(bias) : Tensor();
  dispatch_float(x.dtype(), "group_norm_backward", [&]<class T>() {
    using A = acc_t<T>;
    const bool vec_ok =
        aligned16(x.data_ptr()) && aligned16(dy.data_ptr()) && (!need_dx || aligned16(r.dx.data_ptr()));
    const Plan p = make_plan(x, cl, groups, kVec<T>, vec_ok);
    Tensor chan = scratch<Sums<A>>(N * C, x.device());
    Tensor coef = need_dx ? scratch<BwdCoef<A>>(N * C, x.device()) : Tensor();
    dispatch_vec<T>(p.vec, [&]<int V>() {
      if (N * C > 0) {
        Tensor part = launch_bwd_sums<T, V>(x, dy, mean, rstd, opt_ptr<T>(w), opt_ptr<T>(b), p, fuse_silu);
        gn_bwd_finalize<T><<<warp_grid(p.N * p.G), kThreads, 0, stream()>>>(
            ptr<const Sums<A>>(part), p.splits, p.N * p.G, p.G, p.C, p.Cg, p.M,
            static_cast<const A*>(mean.data_ptr()), static_cast<const A*>(rstd.data_ptr()), opt_ptr<T>(w),
            opt_ptr<T>(b), ptr<Sums<A>>(chan), need_dx ? ptr<BwdCoef<A>>(coef) : nullptr);
        SD_CUDA_CHECK_LAUNCH("gn_bwd_finalize");
      }
      if ((need_dweight || need_dbias) && C > 0) {
        gn_param_grads<T><<<grid_1d(C, kThreads), kThreads, 0, stream()>>>(
            ptr<const Sums<A>>(chan), N, C, need_dweight ? static_cast<T*>(r.dweight.data_ptr()) : nullptr,
            need_dbias ? static_cast<T*>(r.dbias.data_ptr()) : nullptr);
        SD_CUDA_CHECK_LAUNCH("gn_param_grads");
      }
      const int64_t numel = x.numel();
      if (!need_dx || numel == 0) return;
      dispatch_index(numel, [&]<class Idx>() {
        const Idx nvec = Idx(numel / V);
        gn_bwd_apply<T, V, Idx><<<grid_1d(int64_t(nvec), kThreads), kThreads, 0, stream()>>>(
            static_cast<const T*>(x.data_ptr()), static_cast<const T*>(dy.data_ptr()),
            static_cast<T*>(r.dx.data_ptr()), ptr<const BwdCoef<A>>(coef), nvec, coef_index<Idx>(p), fuse_silu);
        SD_CUDA_CHECK_LAUNCH("gn_bwd_apply");
      });
    });
  });
  return r;
}

void set_group_norm_one_kernel(bool on) { one_kernel_switch().set(on); }
bool group_norm_one_kernel() { return one_kernel_switch().on(); }
int64_t group_norm_one_kernel_calls() { return g_one_kernel_calls.load(); }

}  // namespace sd::cuda
