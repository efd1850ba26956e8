#include "ops/cpu/conv_winograd.h"

#include <algorithm>
#include <vector>

#include "ops/cpu/gemm.h"
#include "runtime/parallel.h"

namespace sd::cpu {

namespace {

// F(2x2, 3x3) on 4x4 input tiles d and 3x3 kernels g, output tiles y (2x2):
//   U = G g G^T,  V = B^T d B,  y = A^T (U .* V) A, where
//   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],  B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// The 16 products of U .* V summed over input channels are the GEMMs.
constexpr int64_t kTile = 2;  // outputs per tile side
constexpr int64_t kXi = 16;   // transformed tile size (4x4)

struct Geometry {
  int64_t N, C, H, W, O, ph, pw, Ho, Wo, th, tw;
};

// U [16][o1 - o0][C] from the kernels of output channels [o0, o1), w [O][C][3][3]. Kernels are
// transformed 64 at a time into a local block and written out as 16 runs of 64 floats: writing
// the 16 values of one kernel straight into the 16 matrices, whose starts are a matrix apart,
// sent every store to the same cache sets.
void transform_weights(const float* w, const Geometry& q, int64_t o0, int64_t o1, float* U) {
  constexpr int64_t kChunk = 64;
  const int64_t OC = (o1 - o0) * q.C, chunks = (OC + kChunk - 1) / kChunk;
  w += o0 * q.C * 9;
  parallel_for(chunks, kChunk * 64, [&](int64_t k0, int64_t k1) {
    float local[kXi][kChunk];
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t i0 = k * kChunk, n = std::min(kChunk, OC - i0);
      for (int64_t j = 0; j < n; ++j) {
        const float* g = w + (i0 + j) * 9;
        float t[4][3];  // G g: rows
        for (int c = 0; c < 3; ++c) {
          t[0][c] = g[c];
          t[1][c] = 0.5f * (g[c] + g[3 + c] + g[6 + c]);
          t[2][c] = 0.5f * (g[c] - g[3 + c] + g[6 + c]);
          t[3][c] = g[6 + c];
        }
        for (int r = 0; r < 4; ++r) {  // (G g) G^T: columns
          local[r * 4 + 0][j] = t[r][0];
          local[r * 4 + 1][j] = 0.5f * (t[r][0] + t[r][1] + t[r][2]);
          local[r * 4 + 2][j] = 0.5f * (t[r][0] - t[r][1] + t[r][2]);
          local[r * 4 + 3][j] = t[r][2];
        }
      }
      for (int64_t xi = 0; xi < kXi; ++xi) std::copy(local[xi], local[xi] + n, U + xi * OC + i0);
    }
  });
}

// Tiles go in blocks of whole tile rows: tile row tr = n * th + ty holds tiles tr * tw + tx.

// V [16][C][nt] for tile rows [r0, r0 + nr) (nt = nr * tw), zero outside the image. Per
// (channel, tile row), the 4 input rows under it are copied with their padding into a row
// buffer, and each of the 16 outputs is a loop over the tiles (vectorisable, contiguous stores).
void transform_inputs(const float* x, const Geometry& q, int64_t r0, int64_t nr, float* V) {
  const int64_t nt = nr * q.tw, CT = q.C * nt, span = 2 * q.tw + 2;  // padded row length the tiles read
  parallel_for(q.C, nt * 48, [&](int64_t c0, int64_t c1) {
    std::vector<float> rows(size_t(4 * span));
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t rr = 0; rr < nr; ++rr) {
        const int64_t tr = r0 + rr, n = tr / q.th, ty = tr % q.th;
        const float* xc = x + (n * q.C + c) * q.H * q.W;
        for (int64_t r = 0; r < 4; ++r) {
          float* row = rows.data() + r * span;
          const int64_t iy = ty * kTile - q.ph + r;
          std::fill(row, row + span, 0.0f);
          if (iy < 0 || iy >= q.H) continue;
          // row[s] = x[iy][s - pw] where that is inside the image
          const int64_t s0 = q.pw, s1 = std::min(span, q.W + q.pw);
          std::copy(xc + iy * q.W + (s0 - q.pw), xc + iy * q.W + (s1 - q.pw), row + s0);
        }
        const float* d0 = rows.data();
        const float* d1 = d0 + span;
        const float* d2 = d1 + span;
        const float* d3 = d2 + span;
        float* v = V + c * nt + rr * q.tw;
#pragma omp simd
        for (int64_t t = 0; t < q.tw; ++t) {
          float b[4][4];  // B^T d, then (B^T d) B
          for (int64_t s = 0; s < 4; ++s) {
            const int64_t at = 2 * t + s;
            b[0][s] = d0[at] - d2[at];
            b[1][s] = d1[at] + d2[at];
            b[2][s] = d2[at] - d1[at];
            b[3][s] = d1[at] - d3[at];
          }
          for (int64_t r = 0; r < 4; ++r) {
            v[(r * 4 + 0) * CT + t] = b[r][0] - b[r][2];
            v[(r * 4 + 1) * CT + t] = b[r][1] + b[r][2];
            v[(r * 4 + 2) * CT + t] = b[r][2] - b[r][1];
            v[(r * 4 + 3) * CT + t] = b[r][1] - b[r][3];
          }
        }
      }
    }
  });
}

// Output channels [o0, o1) of tile rows [r0, r0 + nr) from M [16][o1 - o0][nt], plus the bias.
// Per (output channel, tile row), two output rows are built in a buffer over all the row's
// tiles (vectorisable) and copied to the image cropped to Wo.
void transform_outputs(const float* M, const float* bias, const Geometry& q, int64_t o0, int64_t o1, int64_t r0,
                       int64_t nr, float* out) {
  const int64_t nt = nr * q.tw, OT = (o1 - o0) * nt;
  parallel_for(o1 - o0, nt * 40, [&](int64_t j0, int64_t j1) {
    std::vector<float> y(size_t(2 * 2 * q.tw));
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t o = o0 + j;
      const float b0 = bias ? bias[o] : 0.0f;
      for (int64_t rr = 0; rr < nr; ++rr) {
        const int64_t tr = r0 + rr, n = tr / q.th, ty = tr % q.th;
        const float* m = M + j * nt + rr * q.tw;
        float* y0 = y.data();
        float* y1 = y0 + 2 * q.tw;
#pragma omp simd
        for (int64_t t = 0; t < q.tw; ++t) {
          float a[2][4];  // A^T m, then (A^T m) A
          for (int64_t s = 0; s < 4; ++s) {
            const float m0 = m[(0 + s) * OT + t], m1 = m[(4 + s) * OT + t], m2 = m[(8 + s) * OT + t],
                        m3 = m[(12 + s) * OT + t];
            a[0][s] = m0 + m1 + m2;
            a[1][s] = m1 - m2 - m3;
          }
          y0[2 * t] = a[0][0] + a[0][1] + a[0][2] + b0;
          y0[2 * t + 1] = a[0][1] - a[0][2] - a[0][3] + b0;
          y1[2 * t] = a[1][0] + a[1][1] + a[1][2] + b0;
          y1[2 * t + 1] = a[1][1] - a[1][2] - a[1][3] + b0;
        }
        float* yo = out + (n * q.O + o) * q.Ho * q.Wo;
        const int64_t oy = ty * kTile;
        std::copy(y0, y0 + q.Wo, yo + oy * q.Wo);
        if (oy + 1 < q.Ho) std::copy(y1, y1 + q.Wo, yo + (oy + 1) * q.Wo);
      }
    }
  });
}

}  // namespace

bool winograd_applies(const Shape& x, const Shape& w, const Conv2dGeom& g) {
  if (w[2] != 3 || w[3] != 3 || g.stride_h != 1 || g.stride_w != 1 || g.pad_h > 1 || g.pad_w > 1) return false;
  const int64_t Ho = x[2] + 2 * g.pad_h - 2, Wo = x[3] + 2 * g.pad_w - 2;
  // Below these the GEMMs are too small to gain, or reading and writing the transformed weights
  // (16/9 of the weights) costs more than the flops saved: measured on 2 cores, 1280 channels at
  // 8x8 and batch 2 ran 1.8x faster than im2col + GEMM; at 4x4 the layer is bound by reading
  // the weights, which the transform only adds to. The test is per image, not per batch, so a
  // sample's result does not depend on the batch it is in (tiled VAE decoding relies on that).
  return x[1] >= 32 && w[0] >= 32 && Ho * Wo >= 64;
}

void conv2d_winograd(const float* x, const float* w, const float* bias, const Shape& xs, int64_t O,
                     const Conv2dGeom& g, float* out, int64_t tile_rows_per_block) {
  Geometry q{xs[0], xs[1], xs[2], xs[3], O, g.pad_h, g.pad_w, 0, 0, 0, 0};
  q.Ho = q.H + 2 * q.ph - 2;
  q.Wo = q.W + 2 * q.pw - 2;
  q.th = (q.Ho + kTile - 1) / kTile;
  q.tw = (q.Wo + kTile - 1) / kTile;
  // Loop nest: blocks of whole tile rows (V [16][C][nt] within a budget), then blocks of output
  // channels whose transformed kernels U [16][ob][C] stay in cache from their transform to their
  // GEMMs. Transforming all of U up front cost a write and a read of 16/9 of the weights through
  // DRAM per call, 15% of a UNet step; per block, a large image re-transforms the kernels once per
  // tile-row block, which its many tiles pay for.
  const int64_t R = q.N * q.th;
  const int64_t rows_per_block =
      tile_rows_per_block > 0
          ? std::min(tile_rows_per_block, R)
          : std::clamp<int64_t>((int64_t(4) << 20) / (kXi * q.C * q.tw), std::min<int64_t>(R, 4), R);
  // U blocks of 8 MB (2M floats): 96 output channels at C = 1280. Measured on 2 cores: smaller
  // blocks made the GEMMs too thin (16 rows: 1.7x slower), 16 MB ones fell out of cache.
  const int64_t ob = std::clamp<int64_t>((int64_t(1) << 21) / (kXi * q.C) / 16 * 16, std::min<int64_t>(O, 16), O);
  const int64_t block = rows_per_block * q.tw;
  // Scratch as tensors, so it comes from the caching allocator (fresh pages would fault in on
  // every call).
  Tensor Ut = empty({kXi, ob, q.C}, DType::F32, Device::cpu()), Vt = empty({kXi, q.C, block}, DType::F32, Device::cpu()),
         Mt = empty({kXi, ob, block}, DType::F32, Device::cpu());
  float* U = Ut.data<float>();
  float* V = Vt.data<float>();
  float* M = Mt.data<float>();
  for (int64_t r0 = 0; r0 < R; r0 += rows_per_block) {
    const int64_t nr = std::min(rows_per_block, R - r0), nt = nr * q.tw;
    transform_inputs(x, q, r0, nr, V);
    for (int64_t o0 = 0; o0 < O; o0 += ob) {
      const int64_t o1 = std::min(O, o0 + ob), no = o1 - o0;
      transform_weights(w, q, o0, o1, U);
      // M[xi] [no, nt] = U[xi] [no, C] @ V[xi] [C, nt]. The 16 GEMMs are shared out among the
      // threads whole (each GEMM then runs on its thread): one threaded GEMM at a time was
      // mostly threads waiting, these GEMMs being small.
      parallel_for(kXi, no * nt * q.C * 2, [&](int64_t x0, int64_t x1) {
        for (int64_t xi = x0; xi < x1; ++xi)
          gemm(false, false, no, nt, q.C, 1.0f, U + xi * no * q.C, q.C, V + xi * q.C * nt, nt, 0.0f, M + xi * no * nt,
               nt);
      });
      transform_outputs(M, bias, q, o0, o1, r0, nr, out);
    }
  }
}

}  // namespace sd::cpu
