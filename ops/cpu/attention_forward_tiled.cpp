// Attention forward on the CPU as FlashAttention does it on a GPU: a block of query rows meets
// the keys one tile at a time, S = Q K^T and O += P V are GEMMs on tiles that stay in cache,
// and an online softmax (running max and sum per row) rescales what was accumulated when a
// later tile raises the max. No [Lq, Lk] score matrix is ever held: memory is O(tile).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/attention_common.h"
#include "ops/cpu/gemm.h"
#include "ops/cpu/vec_math.h"
#include "runtime/parallel.h"

namespace sd::cpu {

namespace {

constexpr int64_t kQueryRows = 64;  // query rows per work item (and per GEMM's M)
constexpr int64_t kKeyTile = 256;   // keys per tile: S tile 64 x 256 floats = 64 KB, in L2

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The rows' scores after the mask: additive values added, masked-out and (causal) future
// keys set to -inf. Rows are query rows i0.., columns keys j0...
template <class T>
void apply_mask(float* s, int64_t rows, int64_t cols, int64_t ld, const MaskView<T>& mv, int64_t b, int64_t h,
                int64_t i0, int64_t j0, bool causal) {
  const int64_t sj = mv.st[3];
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * ld;
    if (mv.any()) {
      const int64_t off = mv.row_offset(b, h, i0 + r) + j0 * sj;
      if (mv.additive)
        for (int64_t c = 0; c < cols; ++c) sr[c] += float(mv.additive[off + c * sj]);
      if (mv.keep)
        for (int64_t c = 0; c < cols; ++c) sr[c] = mv.keep[off + c * sj] ? sr[c] : kNegInf;
    }
    if (causal)
      for (int64_t c = std::max<int64_t>(0, i0 + r - j0 + 1); c < cols; ++c) sr[c] = kNegInf;
  }
}

// Per-thread buffers: the head's keys [Lk, D] and values [Lk, Dv], a block of queries [rows, D],
// one score tile, the output accumulator [rows, Dv], and each row's running max and sum.
struct Workspace {
  std::vector<float> k, v, q, s, o, m, l;
  int64_t head = -1;  // which (b, h) k and v hold
};

template <class T>
void forward_block(const Tensor& q, const Tensor& k, const Tensor& v, const MaskView<T>& mv, float scale, bool causal,
                   int64_t b, int64_t h, int64_t i0, int64_t rows, Workspace& w, T* out, float* lse) {
  const int64_t D = q.size(3), Lk = k.size(2), Dv = v.size(3);
  gather_head<T, float>(q, b, h, false, w.q, i0, rows);  // the block's query rows [rows, D]
  w.s.resize(size_t(rows * kKeyTile));
  w.o.assign(size_t(rows * Dv), 0.0f);
  w.m.assign(size_t(rows), kNegInf);
  w.l.assign(size_t(rows), 0.0f);
  // With causal masking, keys past the block's last row are masked for every row of it.
  const int64_t key_end = causal ? std::min(Lk, i0 + rows) : Lk;
  for (int64_t j0 = 0; j0 < key_end; j0 += kKeyTile) {
    const int64_t nk = std::min(kKeyTile, key_end - j0);
    float* s = w.s.data();
    // S [rows, nk] = scale Q K[j0 : j0 + nk]^T
    gemm(false, true, rows, nk, D, scale, w.q.data(), D, w.k.data() + j0 * D, D, 0.0f, s, nk);
    if (mv.any() || causal) apply_mask(s, rows, nk, nk, mv, b, h, i0, j0, causal);
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = s + r * nk;
      float tile_max = kNegInf;
      // Without omp simd this is a serial chain of scalar vmaxss that costs as much as both GEMMs
      // (GCC will not reorder a float max). A NaN score is skipped by the max but still reaches
      // the output through exp.
#pragma omp simd reduction(max : tile_max)
      for (int64_t c = 0; c < nk; ++c) tile_max = sr[c] > tile_max ? sr[c] : tile_max;
      const float m_old = w.m[size_t(r)], m_new = std::max(m_old, tile_max);
      if (m_new == kNegInf) {  // every key so far masked: nothing to add from this tile
        std::fill(sr, sr + nk, 0.0f);
        continue;
      }
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < nk; ++c) {
        const float p = exp_f32(sr[c] - m_new);  // 0 where masked
        sr[c] = p;
        sum += p;
      }
      // Rescale what earlier tiles accumulated to the new max (alpha = 0 on the first tile).
      const float alpha = exp_f32(m_old - m_new);
      float* orow = w.o.data() + r * Dv;
      if (alpha != 1.0f)
        for (int64_t c = 0; c < Dv; ++c) orow[c] *= alpha;
      w.l[size_t(r)] = w.l[size_t(r)] * alpha + sum;
      w.m[size_t(r)] = m_new;
    }
    // O [rows, Dv] += P [rows, nk] V[j0 : j0 + nk]
    gemm(false, false, rows, Dv, nk, 1.0f, s, nk, w.v.data() + j0 * Dv, Dv, 1.0f, w.o.data(), Dv);
  }
  for (int64_t r = 0; r < rows; ++r) {
    T* orow = out + r * Dv;
    const float l = w.l[size_t(r)];
    if (l == 0.0f) {  // every key masked: output 0 rather than 0/0, lse -inf
      std::fill(orow, orow + Dv, T(0));
      lse[r] = kNegInf;
      continue;
    }
    const float inv = 1.0f / l;
    for (int64_t c = 0; c < Dv; ++c) orow[c] = T(w.o[size_t(r * Dv + c)] * inv);
    lse[r] = w.m[size_t(r)] + std::log(l);
  }
}

template <class T>
void forward_all(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, float scale, bool causal,
                 Tensor& out, Tensor& lse) {
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = k.size(2), Dv = v.size(3);
  const int64_t blocks = (Lq + kQueryRows - 1) / kQueryRows;
  const MaskView<T> mv(mask);
  T* op = out.data<T>();
  float* lp = lse.data<float>();
  // Work items are (head, query block) in head-major order, so a thread's contiguous chunk
  // mostly reuses the head whose keys and values it already gathered. GEMMs called inside
  // the parallel loop run on the calling thread (OpenBLAS's OpenMP build checks
  // omp_in_parallel), so the tiles do not fight over threads.
  parallel_for(B * H * blocks, kQueryRows * Lk * (D + Dv) * 2, [&](int64_t w0, int64_t w1) {
    Workspace w;
    for (int64_t item = w0; item < w1; ++item) {
      const int64_t bh = item / blocks, blk = item % blocks, b = bh / H, h = bh % H;
      if (bh != w.head) {
        gather_head<T, float>(k, b, h, false, w.k);  // [Lk, D]
        gather_head<T, float>(v, b, h, false, w.v);  // [Lk, Dv]
        w.head = bh;
      }
      const int64_t i0 = blk * kQueryRows, rows = std::min(kQueryRows, Lq - i0);
      forward_block<T>(q, k, v, mv, scale, causal, b, h, i0, rows, w, op + (bh * Lq + i0) * Dv, lp + bh * Lq + i0);
    }
  });
}

}  // namespace

void attention_forward_tiled(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, double scale,
                             bool causal, Tensor& out, Tensor& lse) {
  switch (q.dtype()) {
    case DType::F32: return forward_all<float>(q, k, v, mask, float(scale), causal, out, lse);
    case DType::F16: return forward_all<Half>(q, k, v, mask, float(scale), causal, out, lse);
    case DType::BF16: return forward_all<BFloat16>(q, k, v, mask, float(scale), causal, out, lse);
    default: SD_FAIL("scaled_dot_product_attention: the tiled forward takes f32/f16/bf16, got ", dtype_name(q.dtype()));
  }
}

}  // namespace sd::cpu
