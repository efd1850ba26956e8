// Flash attention forward and backward for f16/bf16 on tensor cores (mma.sync m16n8k16),
// in the style of FlashAttention-2: each block owns 64 query rows (forward) or 64 keys
// (backward), streams the other side through shared memory in tiles of 64, and keeps the
// softmax online, so the [Lq, Lk] score matrix never exists in memory. The head dim is
// padded to a multiple of 16 in shared memory only (40 -> 48, 80 -> 80, 160 -> 160).
#include <cmath>

#include "ops/cuda/attention_params.cuh"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/env_switch.h"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/attention.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/mma_utils.cuh"

namespace sd::cuda {

namespace {

using namespace sd::cuda::mma;

constexpr int kThreads = 128;  // 4 warps
constexpr int kBlockQ = 64;    // query rows per block (16 per warp) in the forward
constexpr int kBlockK = 64;    // keys per tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// 2^x on the special-function unit (flush-to-zero; 2^-inf = 0). exp2f() adds range
// handling around the same instruction, which costs more than the exponent itself here.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float mask_value(const AttnParams& p, int b, int h, int q, int key, bool& keep) {
  const int64_t off = b * p.mb + h * p.mh + q * p.mq + key * p.mk;
  if (p.mask_kind == 2) {
    keep = static_cast<const uint8_t*>(p.mask)[off] != 0;
    return 0.f;
  }
  keep = true;
  switch (p.mask_dtype) {
    case DType::F32: return static_cast<const float*>(p.mask)[off];
    case DType::F16: return __half2float(static_cast<const __half*>(p.mask)[off]);
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p.mask)[off]);
    case DType::F64: return float(static_cast<const double*>(p.mask)[off]);
    default: return 0.f;
  }
}

// Score (already multiplied by scale*log2e) after masking; -inf where the key is excluded.
__device__ __forceinline__ float masked_score(const AttnParams& p, float s, int b, int h, int q, int key) {
  if (key >= p.Lk || q >= p.Lq || (p.causal && key > q)) return -INFINITY;
  if (p.mask_kind) {
    bool keep;
    const float m = mask_value(p, b, h, q, key, keep);
    if (!keep) return -INFINITY;
    s += m * kLog2e;
  }
  return s;
}

// Copies rows [row0, row0+64) x [0, DP) of a [L, D] slab into shared memory with row
// stride LDS, zero-filling rows >= L and columns >= D. D % 8 == 0 (checked by the host).
template <class T, int DP, int LDS>
__device__ __forceinline__ void load_tile_async(T* dst, const T* src, int64_t row_stride, int row0, int L, int D) {
  constexpr int kChunks = DP / 8;
  for (int c = threadIdx.x; c < 64 * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool valid = row0 + r < L && col < D;
    const T* s = valid ? src + int64_t(row0 + r) * row_stride + col : src;
    cp_async_16(dst + r * LDS + col, s, valid ? 16 : 0);
  }
}

// The (b, h) slices of q, k, v and dO (dO only in backward), in elements of T.
template <class T>
struct HeadSlices {
  const T *q, *k, *v, *dout;
  __device__ HeadSlices(const AttnParams& p, int b, int h)
      : q(static_cast<const T*>(p.q) + b * p.qs.b + h * p.qs.h),
        k(static_cast<const T*>(p.k) + b * p.ks.b + h * p.ks.h),
        v(static_cast<const T*>(p.v) + b * p.vs.b + h * p.vs.h),
        dout(p.dout ? static_cast<const T*>(p.dout) + b * p.dos.b + h * p.dos.h : nullptr) {}
};

// Forward: each block owns 64 * RT query rows (RT tiles of 16 rows per warp), streams K/V in
// 64-key tiles double-buffered with cp.async, keeps the softmax online in base 2 and P in
// registers as the A operand of P V. Two variants share this code and compute every row the
// same way (the same bits):
//  - today's kernel (RT = 1, two barriers per key tile: one after the wait, one before the
//    buffer is refilled), the default;
//  - version 3 (set_flash_forward_v3; issue 15's first steps, unmeasured): RT = 2 for head dims
//    <= 64, so each K/V fragment loaded from shared memory feeds two tensor-core ops, and one
//    barrier per tile: after the wait for tile j it also proves every warp done with tile j - 1,
//    so tile j + 1 is prefetched into that buffer right after it.
template <class T, int DP, int RT, bool ONE_BARRIER>
__global__ void __launch_bounds__(kThreads) flash_fwd_kernel(AttnParams p) {
  constexpr int LDS = DP + 8;
  constexpr int KSTEPS = DP / 16, NT_D = DP / 8, NT_S = kBlockK / 8, BQ = kBlockQ * RT;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // [BQ][LDS]
  T* Ks = Qs + BQ * LDS;                   // [2][64][LDS]
  T* Vs = Ks + 2 * kBlockK * LDS;          // [2][64][LDS]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const int q0 = blockIdx.x * BQ;
  const HeadSlices<T> hs(p, b, h);
  const T *qbase = hs.q, *kbase = hs.k, *vbase = hs.v;
  const float scale_log2 = p.scale * kLog2e;

  for (int rt = 0; rt < RT; ++rt) load_tile_async<T, DP, LDS>(Qs + rt * kBlockQ * LDS, qbase, p.qs.l, q0 + rt * kBlockQ, p.Lq, p.D);
  load_tile_async<T, DP, LDS>(Ks, kbase, p.ks.l, 0, p.Lk, p.D);
  load_tile_async<T, DP, LDS>(Vs, vbase, p.vs.l, 0, p.Lk, p.D);
  cp_async_commit();

  float o[RT][NT_D][4];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt)
#pragma unroll
    for (int i = 0; i < NT_D; ++i) o[rt][i][0] = o[rt][i][1] = o[rt][i][2] = o[rt][i][3] = 0.f;
  float m[RT][2], l[RT][2];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) m[rt][0] = m[rt][1] = -INFINITY, l[rt][0] = l[rt][1] = 0.f;
  uint32_t qf[RT][KSTEPS][4];
  // This warp's rows: tile rt covers [wrow + 16 rt, + 16); the thread holds rows g and g + 8 of each.
  const int wrow = warp * 16 * RT;

  const int ntiles = (p.Lk + kBlockK - 1) / kBlockK;
  for (int j = 0; j < ntiles; ++j) {
    const int buf = j & 1;
    if constexpr (ONE_BARRIER) {
      cp_async_wait<0>();
      __syncthreads();  // tile j is visible, and no warp still reads buffer buf ^ 1 (tile j - 1)
      if (j + 1 < ntiles) {
        load_tile_async<T, DP, LDS>(Ks + (buf ^ 1) * kBlockK * LDS, kbase, p.ks.l, (j + 1) * kBlockK, p.Lk, p.D);
        load_tile_async<T, DP, LDS>(Vs + (buf ^ 1) * kBlockK * LDS, vbase, p.vs.l, (j + 1) * kBlockK, p.Lk, p.D);
        cp_async_commit();
      }
    } else {
      if (j + 1 < ntiles) {  // prefetch the next tile while this one is used
        load_tile_async<T, DP, LDS>(Ks + (buf ^ 1) * kBlockK * LDS, kbase, p.ks.l, (j + 1) * kBlockK, p.Lk, p.D);
        load_tile_async<T, DP, LDS>(Vs + (buf ^ 1) * kBlockK * LDS, vbase, p.vs.l, (j + 1) * kBlockK, p.Lk, p.D);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
    }
    if (j == 0) {
#pragma unroll
      for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks)
          ldmatrix_x4(qf[rt][ks], Qs + (wrow + rt * 16 + (lane % 16)) * LDS + ks * 16 + (lane / 16) * 8);
    }
    const T* Kt = Ks + buf * kBlockK * LDS;
    const T* Vt = Vs + buf * kBlockK * LDS;

    float s[RT][NT_S][4];
#pragma unroll
    for (int rt = 0; rt < RT; ++rt)
#pragma unroll
      for (int i = 0; i < NT_S; ++i) s[rt][i][0] = s[rt][i][1] = s[rt][i][2] = s[rt][i][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
      for (int np = 0; np < NT_S / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, Kt + (np * 16 + (lane % 8) + (lane / 16) * 8) * LDS + ks * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
          mma_16816<T>(s[rt][2 * np], qf[rt][ks], r[0], r[1]);
          mma_16816<T>(s[rt][2 * np + 1], qf[rt][ks], r[2], r[3]);
        }
      }
    }

    const bool plain = !p.causal && p.mask_kind == 0 && (j + 1) * kBlockK <= p.Lk;
    const float mul = plain ? scale_log2 : 1.f;
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) {
      const int row0 = q0 + wrow + rt * 16 + g, row1 = row0 + 8;
      float mx[2] = {-INFINITY, -INFINITY};
      if (plain) {
#pragma unroll
        for (int nt = 0; nt < NT_S; ++nt) {
          mx[0] = fmaxf(mx[0], fmaxf(s[rt][nt][0], s[rt][nt][1]));
          mx[1] = fmaxf(mx[1], fmaxf(s[rt][nt][2], s[rt][nt][3]));
        }
      } else {
#pragma unroll
        for (int nt = 0; nt < NT_S; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = j * kBlockK + nt * 8 + t4 * 2 + (e & 1);
            const float v = masked_score(p, s[rt][nt][e] * scale_log2, b, h, e < 2 ? row0 : row1, key);
            s[rt][nt][e] = v;
            mx[e / 2] = fmaxf(mx[e / 2], v);
          }
      }
      float mref[2], corr[2], rowsum[2] = {0.f, 0.f};
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        mx[i] = fmaxf(m[rt][i], mx[i] * mul);
        mref[i] = mx[i] == -INFINITY ? 0.f : mx[i];
        corr[i] = fast_exp2(m[rt][i] - mref[i]);
        m[rt][i] = mx[i];
      }
#pragma unroll
      for (int nt = 0; nt < NT_S; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pv = fast_exp2(fmaf(s[rt][nt][e], mul, -mref[e / 2]));
          s[rt][nt][e] = pv;
          rowsum[e / 2] += pv;
        }
#pragma unroll
      for (int i = 0; i < 2; ++i) l[rt][i] = l[rt][i] * corr[i] + rowsum[i];
#pragma unroll
      for (int nt = 0; nt < NT_D; ++nt) {
        o[rt][nt][0] *= corr[0];
        o[rt][nt][1] *= corr[0];
        o[rt][nt][2] *= corr[1];
        o[rt][nt][3] *= corr[1];
      }
    }

    // O += P V: each V fragment feeds the RT row tiles.
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      uint32_t a[RT][4];
#pragma unroll
      for (int rt = 0; rt < RT; ++rt) c_pair_to_a<T>(a[rt], s[rt][2 * kk], s[rt][2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < NT_D / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4_trans(r, Vt + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LDS + np * 16 + (lane / 16) * 8);
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
          mma_16816<T>(o[rt][2 * np], a[rt], r[0], r[1]);
          mma_16816<T>(o[rt][2 * np + 1], a[rt], r[2], r[3]);
        }
      }
    }
    if constexpr (!ONE_BARRIER) __syncthreads();  // everyone is done with this buffer before it is refilled
  }

  T* obase = static_cast<T*>(p.out) + b * p.os.b + h * p.os.h;
  float* lse = static_cast<float*>(p.lse) + int64_t(bh) * p.Lq;
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) {
    const int row0 = q0 + wrow + rt * 16 + g, row1 = row0 + 8;
    float inv[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      l[rt][i] += __shfl_xor_sync(0xffffffffu, l[rt][i], 1);
      l[rt][i] += __shfl_xor_sync(0xffffffffu, l[rt][i], 2);
      inv[i] = l[rt][i] > 0.f ? 1.f / l[rt][i] : 0.f;
    }
#pragma unroll
    for (int nt = 0; nt < NT_D; ++nt) {
      const int col = nt * 8 + t4 * 2;
      if (col >= p.D) continue;
      if (row0 < p.Lq)
        *reinterpret_cast<uint32_t*>(obase + int64_t(row0) * p.os.l + col) =
            pack2<T>(o[rt][nt][0] * inv[0], o[rt][nt][1] * inv[0]);
      if (row1 < p.Lq)
        *reinterpret_cast<uint32_t*>(obase + int64_t(row1) * p.os.l + col) =
            pack2<T>(o[rt][nt][2] * inv[1], o[rt][nt][3] * inv[1]);
    }
    if (t4 == 0) {
      if (row0 < p.Lq) lse[row0] = l[rt][0] > 0.f ? m[rt][0] * kLn2 + logf(l[rt][0]) : INFINITY;
      if (row1 < p.Lq) lse[row1] = l[rt][1] > 0.f ? m[rt][1] * kLn2 + logf(l[rt][1]) : INFINITY;
    }
  }
}

// delta[b, h, q] = sum_d dO[q, d] * O[q, d], one warp per row.
template <class T>
__global__ void flash_bwd_delta_kernel(AttnParams p, float* delta) {
  const int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= int64_t(p.B) * p.H * p.Lq) return;
  const int q = int(row % p.Lq);
  const int bh = int(row / p.Lq), b = bh / p.H, h = bh % p.H;
  const T* o = static_cast<const T*>(p.o) + b * p.os.b + h * p.os.h + int64_t(q) * p.os.l;
  const T* d = static_cast<const T*>(p.dout) + b * p.dos.b + h * p.dos.h + int64_t(q) * p.dos.l;
  float acc = 0.f;
  for (int i = lane; i < p.D; i += 32) acc += to_acc(o[i]) * to_acc(d[i]);
  for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
  if (lane == 0) delta[row] = acc;
}

template <class T, int DP>
__global__ void __launch_bounds__(kThreads) flash_bwd_kernel(AttnParams p) {
  constexpr int LDS = DP + 8, KSTEPS = DP / 16, NT_D = DP / 8;
  constexpr int kBlockQB = 64, LDSS = kBlockQB + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Ks = reinterpret_cast<T*>(smem_raw);  // [64 keys][LDS]
  T* Vs = Ks + kBlockK * LDS;              // [64 keys][LDS]
  T* Qs = Vs + kBlockK * LDS;              // [64 q][LDS]
  T* dOs = Qs + kBlockQB * LDS;            // [64 q][LDS]
  T* dSs = dOs + kBlockQB * LDS;           // [64 keys][LDSS]: dS^T of this q tile
  float* lse2_s = reinterpret_cast<float*>(dSs + kBlockK * LDSS);  // [64]
  float* delta_s = lse2_s + kBlockQB;                              // [64]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const int k0 = blockIdx.x * kBlockK;
  const HeadSlices<T> hs(p, b, h);
  const T *qbase = hs.q, *kbase = hs.k, *vbase = hs.v, *dobase = hs.dout;
  const float* lse = static_cast<const float*>(p.lse) + int64_t(bh) * p.Lq;
  const float* delta = p.delta + int64_t(bh) * p.Lq;
  float* dq = static_cast<float*>(p.dq) + int64_t(bh) * p.Lq * p.D;
  const float scale_log2 = p.scale * kLog2e;

  load_tile_async<T, DP, LDS>(Ks, kbase, p.ks.l, k0, p.Lk, p.D);
  load_tile_async<T, DP, LDS>(Vs, vbase, p.vs.l, k0, p.Lk, p.D);
  cp_async_commit();

  float dk[NT_D][4], dv[NT_D][4];
#pragma unroll
  for (int i = 0; i < NT_D; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;

  const int key_row0 = k0 + warp * 16 + g;  // this thread's keys: key_row0 and key_row0 + 8
  // With a causal mask, query tiles that end before this key tile contribute nothing.
  const int first_q_tile = p.causal ? k0 / kBlockQB : 0;
  const int nq = (p.Lq + kBlockQB - 1) / kBlockQB;
  // With few key tiles (cross-attention: 77 keys) the query tiles are split over gridDim.z
  // blocks so the GPU fills up; their dK/dV partials then meet in f32 accumulators.
  const int per_split = (nq - first_q_tile + int(gridDim.z) - 1) / int(gridDim.z);
  const int q_begin = first_q_tile + int(blockIdx.z) * per_split;
  const int q_end = min(nq, q_begin + per_split);
  for (int qi = q_begin; qi < q_end; ++qi) {
    const int q0 = qi * kBlockQB;
    __syncthreads();  // the previous tile's Qs/dOs/dSs are no longer read
    load_tile_async<T, DP, LDS>(Qs, qbase, p.qs.l, q0, p.Lq, p.D);
    load_tile_async<T, DP, LDS>(dOs, dobase, p.dos.l, q0, p.Lq, p.D);
    cp_async_commit();
    if (threadIdx.x < kBlockQB) {
      const int q = q0 + threadIdx.x;
      lse2_s[threadIdx.x] = q < p.Lq ? lse[q] * kLog2e : INFINITY;
      delta_s[threadIdx.x] = q < p.Lq ? delta[q] : 0.f;
    }
    cp_async_wait<0>();
    __syncthreads();

    // S^T = K Q^T: this warp's 16 keys x the tile's 64 queries.
    float s[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      uint32_t a[4];
      ldmatrix_x4(a, Ks + (warp * 16 + (lane % 16)) * LDS + ks * 16 + (lane / 16) * 8);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, Qs + (np * 16 + (lane % 8) + (lane / 16) * 8) * LDS + ks * 16 + ((lane / 8) % 2) * 8);
        mma_16816<T>(s[2 * np], a, r[0], r[1]);
        mma_16816<T>(s[2 * np + 1], a, r[2], r[3]);
      }
    }
    // P^T = exp(S^T * scale - LSE), recomputed from the saved log-sum-exp; tiles with nothing
    // masked skip the per-element checks.
    if (!p.causal && p.mask_kind == 0 && k0 + kBlockK <= p.Lk && q0 + kBlockQB <= p.Lq) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = fast_exp2(fmaf(s[nt][e], scale_log2, -lse2_s[nt * 8 + t4 * 2 + (e & 1)]));
    } else {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = nt * 8 + t4 * 2 + (e & 1);
          const int key = key_row0 + (e >= 2 ? 8 : 0);
          const float v = masked_score(p, s[nt][e] * scale_log2, b, h, q0 + c, key);
          s[nt][e] = v == -INFINITY ? 0.f : fast_exp2(v - lse2_s[c]);
        }
    }
    // dV += P^T dO
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      c_pair_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < NT_D / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4_trans(r, dOs + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LDS + np * 16 + (lane / 16) * 8);
        mma_16816<T>(dv[2 * np], a, r[0], r[1]);
        mma_16816<T>(dv[2 * np + 1], a, r[2], r[3]);
      }
    }
    // dP^T = V dO^T
    float dp[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      uint32_t a[4];
      ldmatrix_x4(a, Vs + (warp * 16 + (lane % 16)) * LDS + ks * 16 + (lane / 16) * 8);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, dOs + (np * 16 + (lane % 8) + (lane / 16) * 8) * LDS + ks * 16 + ((lane / 8) % 2) * 8);
        mma_16816<T>(dp[2 * np], a, r[0], r[1]);
        mma_16816<T>(dp[2 * np + 1], a, r[2], r[3]);
      }
    }
    // dS^T = P^T (dP^T - delta) * scale: the softmax backward, with the score scale folded in.
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = nt * 8 + t4 * 2 + (e & 1);
        s[nt][e] = s[nt][e] * (dp[nt][e] - delta_s[c]) * p.scale;
      }
    // dK += dS^T Q
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      c_pair_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < NT_D / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4_trans(r, Qs + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LDS + np * 16 + (lane / 16) * 8);
        mma_16816<T>(dk[2 * np], a, r[0], r[1]);
        mma_16816<T>(dk[2 * np + 1], a, r[2], r[3]);
      }
    }
    if (p.skip_dq) continue;  // deterministic mode: flash_bwd_dq_kernel writes dQ (uniform per block)
    // dS^T to shared memory: dQ needs it transposed, across all four warps' keys.
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int c = nt * 8 + t4 * 2;
      *reinterpret_cast<uint32_t*>(dSs + (warp * 16 + g) * LDSS + c) = pack2<T>(s[nt][0], s[nt][1]);
      *reinterpret_cast<uint32_t*>(dSs + (warp * 16 + g + 8) * LDSS + c) = pack2<T>(s[nt][2], s[nt][3]);
    }
    __syncthreads();
    // dQ[16 rows of this warp] += dS K over the tile's 64 keys, 16 columns at a time.
#pragma unroll
    for (int np = 0; np < NT_D / 2; ++np) {
      float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
      for (int kk = 0; kk < kBlockK / 16; ++kk) {
        uint32_t a[4], r[4];
        ldmatrix_x4_trans(a, dSs + (kk * 16 + (lane % 8) + (lane / 16) * 8) * LDSS + warp * 16 + ((lane / 8) % 2) * 8);
        ldmatrix_x4_trans(r, Ks + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LDS + np * 16 + (lane / 16) * 8);
        mma_16816<T>(acc[0], a, r[0], r[1]);
        mma_16816<T>(acc[1], a, r[2], r[3]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int q = q0 + warp * 16 + g + (e >= 2 ? 8 : 0);
          const int d = np * 16 + i * 8 + t4 * 2 + (e & 1);
          if (q < p.Lq && d < p.D) atomicAdd(dq + int64_t(q) * p.D + d, acc[i][e]);
        }
    }
  }

  // dK and dV of this block's keys: [B, H, Lk, D] contiguous outputs (or f32 accumulators
  // when the query range was split).
  T* dkb = static_cast<T*>(p.dk) + int64_t(bh) * p.Lk * p.D;
  T* dvb = static_cast<T*>(p.dv) + int64_t(bh) * p.Lk * p.D;
  // Split partials: this split's own slice of the accumulators, written with plain stores.
  const int64_t slice = p.split_partials ? int64_t(blockIdx.z) * p.B * p.H * p.Lk * p.D : 0;
  float* dka = p.dk_acc ? p.dk_acc + slice + int64_t(bh) * p.Lk * p.D : nullptr;
  float* dva = p.dv_acc ? p.dv_acc + slice + int64_t(bh) * p.Lk * p.D : nullptr;
#pragma unroll
  for (int nt = 0; nt < NT_D; ++nt) {
    const int col = nt * 8 + t4 * 2;
    if (col >= p.D) continue;
    for (int half = 0; half < 2; ++half) {
      const int key = key_row0 + half * 8;
      if (key >= p.Lk) continue;
      const int64_t off = int64_t(key) * p.D + col;
      if (dka && p.split_partials) {
        dka[off] = dk[nt][2 * half];
        dka[off + 1] = dk[nt][2 * half + 1];
        dva[off] = dv[nt][2 * half];
        dva[off + 1] = dv[nt][2 * half + 1];
      } else if (dka) {
        atomicAdd(dka + off, dk[nt][2 * half]);
        atomicAdd(dka + off + 1, dk[nt][2 * half + 1]);
        atomicAdd(dva + off, dv[nt][2 * half]);
        atomicAdd(dva + off + 1, dv[nt][2 * half + 1]);
      } else {
        *reinterpret_cast<uint32_t*>(dkb + off) = pack2<T>(dk[nt][2 * half], dk[nt][2 * half + 1]);
        *reinterpret_cast<uint32_t*>(dvb + off) = pack2<T>(dv[nt][2 * half], dv[nt][2 * half + 1]);
      }
    }
  }
}

// dQ without atomics (deterministic mode): each block owns 64 query rows (16 per warp, as in
// the forward) and walks every key tile, recomputing S = Q K^T, P = exp(S - LSE), dP = dO V^T
// and dS = P (dP - delta) scale, and accumulating dQ = dS K in registers: every element is
// summed in the same order on every run and written once. Costs the two recomputed products
// (S and dP) on top of flash_bwd_kernel, which skips its dQ part in this mode.
template <class T, int DP>
__global__ void __launch_bounds__(kThreads) flash_bwd_dq_kernel(AttnParams p) {
  constexpr int LDS = DP + 8, KSTEPS = DP / 16, NT_D = DP / 8, NT_S = kBlockK / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // [64 q][LDS]
  T* dOs = Qs + kBlockQ * LDS;             // [64 q][LDS]
  T* Ks = dOs + kBlockQ * LDS;             // [64 keys][LDS]
  T* Vs = Ks + kBlockK * LDS;              // [64 keys][LDS]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const int q0 = blockIdx.x * kBlockQ;
  const HeadSlices<T> hs(p, b, h);
  const T *qbase = hs.q, *kbase = hs.k, *vbase = hs.v, *dobase = hs.dout;
  const float* lse = static_cast<const float*>(p.lse) + int64_t(bh) * p.Lq;
  const float* delta = p.delta + int64_t(bh) * p.Lq;
  const float scale_log2 = p.scale * kLog2e;
  const int row0 = q0 + warp * 16 + g, row1 = row0 + 8;
  // +inf for rows past the end (and rows with every key masked): their P is exactly 0.
  const float lse2[2] = {row0 < p.Lq ? lse[row0] * kLog2e : INFINITY, row1 < p.Lq ? lse[row1] * kLog2e : INFINITY};
  const float dl[2] = {row0 < p.Lq ? delta[row0] : 0.f, row1 < p.Lq ? delta[row1] : 0.f};

  load_tile_async<T, DP, LDS>(Qs, qbase, p.qs.l, q0, p.Lq, p.D);
  load_tile_async<T, DP, LDS>(dOs, dobase, p.dos.l, q0, p.Lq, p.D);
  cp_async_commit();

  float dq[NT_D][4];
#pragma unroll
  for (int i = 0; i < NT_D; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

  const int ntiles = (p.Lk + kBlockK - 1) / kBlockK;
  for (int j = 0; j < ntiles; ++j) {
    __syncthreads();  // every warp is done with the previous K/V tile
    load_tile_async<T, DP, LDS>(Ks, kbase, p.ks.l, j * kBlockK, p.Lk, p.D);
    load_tile_async<T, DP, LDS>(Vs, vbase, p.vs.l, j * kBlockK, p.Lk, p.D);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    // S = Q K^T and dP = dO V^T for this warp's 16 rows and the tile's 64 keys.
    float s[NT_S][4], dp[NT_S][4];
#pragma unroll
    for (int i = 0; i < NT_S; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      uint32_t qa[4], da[4];
      ldmatrix_x4(qa, Qs + (warp * 16 + (lane % 16)) * LDS + ks * 16 + (lane / 16) * 8);
      ldmatrix_x4(da, dOs + (warp * 16 + (lane % 16)) * LDS + ks * 16 + (lane / 16) * 8);
#pragma unroll
      for (int np = 0; np < NT_S / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, Ks + (np * 16 + (lane % 8) + (lane / 16) * 8) * LDS + ks * 16 + ((lane / 8) % 2) * 8);
        mma_16816<T>(s[2 * np], qa, r[0], r[1]);
        mma_16816<T>(s[2 * np + 1], qa, r[2], r[3]);
        ldmatrix_x4(r, Vs + (np * 16 + (lane % 8) + (lane / 16) * 8) * LDS + ks * 16 + ((lane / 8) % 2) * 8);
        mma_16816<T>(dp[2 * np], da, r[0], r[1]);
        mma_16816<T>(dp[2 * np + 1], da, r[2], r[3]);
      }
    }
    // dS = P (dP - delta) scale, P = exp(S scale - LSE) recomputed; unmasked tiles skip the checks.
    const bool plain = !p.causal && p.mask_kind == 0 && (j + 1) * kBlockK <= p.Lk;
#pragma unroll
    for (int nt = 0; nt < NT_S; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float pv;
        if (plain) {
          pv = fast_exp2(fmaf(s[nt][e], scale_log2, -lse2[e / 2]));
        } else {
          const int key = j * kBlockK + nt * 8 + t4 * 2 + (e & 1);
          const float v = masked_score(p, s[nt][e] * scale_log2, b, h, e < 2 ? row0 : row1, key);
          pv = v == -INFINITY ? 0.f : fast_exp2(v - lse2[e / 2]);
        }
        s[nt][e] = pv * (dp[nt][e] - dl[e / 2]) * p.scale;
      }
    // dQ += dS K, dS taken from registers as the A operand (as P in the forward's P V).
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      uint32_t a[4];
      c_pair_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < NT_D / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4_trans(r, Ks + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LDS + np * 16 + (lane / 16) * 8);
        mma_16816<T>(dq[2 * np], a, r[0], r[1]);
        mma_16816<T>(dq[2 * np + 1], a, r[2], r[3]);
      }
    }
  }

  float* dqb = static_cast<float*>(p.dq) + int64_t(bh) * p.Lq * p.D;
#pragma unroll
  for (int nt = 0; nt < NT_D; ++nt) {
    const int col = nt * 8 + t4 * 2;  // D % 8 == 0: col + 1 < D whenever col < D
    if (col >= p.D) continue;
    if (row0 < p.Lq) {
      dqb[int64_t(row0) * p.D + col] = dq[nt][0];
      dqb[int64_t(row0) * p.D + col + 1] = dq[nt][1];
    }
    if (row1 < p.Lq) {
      dqb[int64_t(row1) * p.D + col] = dq[nt][2];
      dqb[int64_t(row1) * p.D + col + 1] = dq[nt][3];
    }
  }
}

// out[i] = sum over s of parts[s * n + i], s in order: the deterministic sum of split partials,
// and with one split the plain conversion of an f32 accumulator (dQ) to the element type.
template <class T>
__global__ void sum_splits_kernel(const float* parts, int splits, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float acc = parts[i];
    for (int s = 1; s < splits; ++s) acc += parts[int64_t(s) * n + i];
    out[i] = from_acc<T>(acc);
  }
}

size_t bwd_smem_bytes(int dp) {
  return size_t(4 * 64) * (dp + 8) * 2 + size_t(kBlockK) * (64 + 8) * 2 + 2 * 64 * sizeof(float);
}

EnvSwitch& forward_v3_switch() {
  static EnvSwitch s("SD_FLASH_V3");
  return s;
}

template <class T, int DP, int RT, bool ONE_BARRIER>
void launch_fwd(const AttnParams& p) {
  const size_t smem = size_t(kBlockQ * RT + 4 * kBlockK) * (DP + 8) * sizeof(T);
  auto kernel = flash_fwd_kernel<T, DP, RT, ONE_BARRIER>;
  SD_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  dim3 grid((p.Lq + kBlockQ * RT - 1) / (kBlockQ * RT), p.B * p.H);
  kernel<<<grid, kThreads, smem, stream()>>>(p);
  SD_CUDA_CHECK_LAUNCH("flash_fwd_kernel");
}

// Version 3: two row tiles per warp where the registers allow (head dims <= 64), one above.
template <class T, int DP>
void launch_fwd_v3(const AttnParams& p) {
  if constexpr (DP <= 64) launch_fwd<T, DP, 2, true>(p);
  else launch_fwd<T, DP, 1, true>(p);
}

template <class T, int DP>
void launch_bwd(const AttnParams& p) {
  const size_t smem = bwd_smem_bytes(DP);
  SD_CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_kernel<T, DP>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  dim3 grid((p.Lk + kBlockK - 1) / kBlockK, p.B * p.H, p.q_splits);
  flash_bwd_kernel<T, DP><<<grid, kThreads, smem, stream()>>>(p);
  SD_CUDA_CHECK_LAUNCH("flash_bwd_kernel");
  if (!p.skip_dq) return;
  const size_t dq_smem = size_t(2 * kBlockQ + 2 * kBlockK) * (DP + 8) * sizeof(T);
  SD_CUDA_CHECK(
      cudaFuncSetAttribute(flash_bwd_dq_kernel<T, DP>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(dq_smem)));
  dim3 dq_grid((p.Lq + kBlockQ - 1) / kBlockQ, p.B * p.H);
  flash_bwd_dq_kernel<T, DP><<<dq_grid, kThreads, dq_smem, stream()>>>(p);
  SD_CUDA_CHECK_LAUNCH("flash_bwd_dq_kernel");
}

// The padded head dims with a compiled kernel.
template <class T, class F>
void by_head_dim(int d, F&& f) {
  const int dp = (d + 15) / 16 * 16;
  switch (dp) {
    case 32: f.template operator()<T, 32>(); break;
    case 48: f.template operator()<T, 48>(); break;
    case 64: f.template operator()<T, 64>(); break;
    case 80: f.template operator()<T, 80>(); break;
    case 96: f.template operator()<T, 96>(); break;
    case 128: f.template operator()<T, 128>(); break;
    case 160: f.template operator()<T, 160>(); break;
    default: SD_FAIL("flash attention: no kernel for head dim ", d);
  }
}

struct LaunchFwd {
  const AttnParams& p;
  template <class T, int DP>
  void operator()() {
    if (forward_v3_switch().on()) launch_fwd_v3<T, DP>(p);
    else launch_fwd<T, DP, 1, false>(p);
  }
};
struct LaunchBwd {
  const AttnParams& p;
  template <class T, int DP>
  void operator()() { launch_bwd<T, DP>(p); }
};

}  // namespace

void set_flash_forward_v3(bool on) { forward_v3_switch().set(on); }
bool flash_forward_v3() { return forward_v3_switch().on(); }

bool flash_head_dim_compiled(int d) {
  const int dp = (d + 15) / 16 * 16;
  return dp == 32 || dp == 48 || dp == 64 || dp == 80 || dp == 96 || dp == 128 || dp == 160;
}

void flash_forward(const AttnParams& p, DType dtype) {
  if (dtype == DType::F16) by_head_dim<__half>(p.D, LaunchFwd{p});
  else by_head_dim<__nv_bfloat16>(p.D, LaunchFwd{p});
}

void flash_backward(const AttnParams& p, DType dtype) {
  const int64_t rows = int64_t(p.B) * p.H * p.Lq;
  // delta and the f32 dQ accumulator are allocated by the caller (p.delta, p.dq).
  if (dtype == DType::F16) {
    flash_bwd_delta_kernel<__half><<<grid_1d(rows * 32, 256), 256, 0, stream()>>>(p, const_cast<float*>(p.delta));
  } else {
    flash_bwd_delta_kernel<__nv_bfloat16><<<grid_1d(rows * 32, 256), 256, 0, stream()>>>(p, const_cast<float*>(p.delta));
  }
  SD_CUDA_CHECK_LAUNCH("flash_bwd_delta_kernel");
  if (dtype == DType::F16) by_head_dim<__half>(p.D, LaunchBwd{p});
  else by_head_dim<__nv_bfloat16>(p.D, LaunchBwd{p});
}

void sum_splits(const float* parts, int splits, void* out, int64_t n, DType dtype) {
  if (dtype == DType::F16)
    sum_splits_kernel<__half><<<grid_1d(n), 256, 0, stream()>>>(parts, splits, static_cast<__half*>(out), n);
  else
    sum_splits_kernel<__nv_bfloat16><<<grid_1d(n), 256, 0, stream()>>>(parts, splits,
                                                                       static_cast<__nv_bfloat16*>(out), n);
  SD_CUDA_CHECK_LAUNCH("sum_splits_kernel");
}

}  // namespace sd::cuda
