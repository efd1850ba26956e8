#include "ops/cpu/conv_winograd.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "ops/cpu/gemm.h"
#include "ops/cpu/gemm_bf16.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace sd::cpu {

namespace {

// Winograd F(m x m, 3x3): an (m+2) x (m+2) input tile d and a 3x3 kernel g give an m x m output
// tile y = A^T ((G g G^T) .* (B^T d B)) A. Summed over input channels, each of the (m+2)^2
// products is one GEMM. Each variant below gives the 1-d transforms: a column of G g (kernel),
// B^T d (input) and A^T m (output); the 2-d transforms apply them along both axes.

// F(2x2, 3x3): G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], B^T = [1 0 -1 0; 0 1 1 0;
// 0 -1 1 0; 0 1 0 -1], A^T = [1 1 1 0; 0 1 -1 -1]. 16 products per 4 outputs.
struct F2 {
  static constexpr int m = 2, a = 4;
  static void kernel(const float* g, float* u) {
    u[0] = g[0];
    u[1] = 0.5f * (g[0] + g[1] + g[2]);
    u[2] = 0.5f * (g[0] - g[1] + g[2]);
    u[3] = g[2];
  }
  // d[i * ds] -> r[i * rs]: the strides let the 2-d transforms run these on a lane of a block of
  // tiles laid out [row][col][lane], so that loops over lanes vectorise.
  static void input(const float* d, int ds, float* r, int rs) {
    r[0] = d[0] - d[2 * ds];
    r[rs] = d[ds] + d[2 * ds];
    r[2 * rs] = d[2 * ds] - d[ds];
    r[3 * rs] = d[ds] - d[3 * ds];
  }
  static void output(const float* x, int xs, float* y, int ys) {
    y[0] = x[0] + x[xs] + x[2 * xs];
    y[ys] = x[xs] - x[2 * xs] - x[3 * xs];
  }
};

// F(4x4, 3x3) on the points 0, +-1, +-2, inf (Lavin & Gray's matrices): 36 products per 16
// outputs, 1.8x fewer than F(2x2, 3x3) and 4x fewer than the direct 144; the transforms' larger
// constants cost accuracy: over 5760 taps (640 channels) the error reaches ~5e-5 of the output's
// scale in f32, against ~1e-6 direct (tests/ops/conv_test.cpp measures it).
struct F4 {
  static constexpr int m = 4, a = 6;
  static void kernel(const float* g, float* u) {
    u[0] = 0.25f * g[0];
    u[1] = (-1.0f / 6.0f) * (g[0] + g[1] + g[2]);
    u[2] = (-1.0f / 6.0f) * (g[0] - g[1] + g[2]);
    u[3] = (1.0f / 24.0f) * g[0] + (1.0f / 12.0f) * g[1] + (1.0f / 6.0f) * g[2];
    u[4] = (1.0f / 24.0f) * g[0] - (1.0f / 12.0f) * g[1] + (1.0f / 6.0f) * g[2];
    u[5] = g[2];
  }
  static void input(const float* d, int ds, float* r, int rs) {
    const float d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds], d4 = d[4 * ds], d5 = d[5 * ds];
    r[0] = 4.0f * d0 - 5.0f * d2 + d4;
    r[rs] = -4.0f * (d1 + d2) + d3 + d4;
    r[2 * rs] = 4.0f * (d1 - d2) - d3 + d4;
    r[3 * rs] = 2.0f * (d3 - d1) - d2 + d4;
    r[4 * rs] = 2.0f * (d1 - d3) - d2 + d4;
    r[5 * rs] = 4.0f * d1 - 5.0f * d3 + d5;
  }
  static void output(const float* x, int xs, float* y, int ys) {
    const float x0 = x[0], x1 = x[xs], x2 = x[2 * xs], x3 = x[3 * xs], x4 = x[4 * xs], x5 = x[5 * xs];
    y[0] = x0 + x1 + x2 + x3 + x4;
    y[ys] = x1 - x2 + 2.0f * (x3 - x4);
    y[2 * ys] = x1 + x2 + 4.0f * (x3 + x4);
    y[3 * ys] = x1 - x2 + 8.0f * (x3 - x4) + x5;
  }
};

struct Geometry {
  int64_t N, C, H, W, O, ph, pw, Ho, Wo, th, tw;
};

// U [a*a][o1 - o0][C] from the kernels of output channels [o0, o1), w [O][C][3][3]. Kernels are
// transformed 64 at a time into a local block and written out as a*a runs of 64 floats: writing
// the values of one kernel straight into the a*a matrices, whose starts are a matrix apart,
// sent every store to the same cache sets.
template <class F, class In, class St>
void transform_weights(const In* w, const Geometry& q, int64_t o0, int64_t o1, St* U) {
  constexpr int a = F::a;
  constexpr int64_t kChunk = 64;
  const int64_t OC = (o1 - o0) * q.C, chunks = (OC + kChunk - 1) / kChunk;
  w += o0 * q.C * 9;
  parallel_for(chunks, kChunk * 16 * a, [&](int64_t k0, int64_t k1) {
    float local[a * a][kChunk];
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t i0 = k * kChunk, n = std::min(kChunk, OC - i0);
      for (int64_t j = 0; j < n; ++j) {
        const In* g = w + (i0 + j) * 9;
        float t[3][a];  // t[c] = G applied to column c of g
        for (int c = 0; c < 3; ++c) {
          const float col[3] = {float(g[c]), float(g[3 + c]), float(g[6 + c])};
          F::kernel(col, t[c]);
        }
        for (int r = 0; r < a; ++r) {  // (G g) G^T: G applied to each row of G g
          const float row[3] = {t[0][r], t[1][r], t[2][r]};
          float u[a];
          F::kernel(row, u);
          for (int s = 0; s < a; ++s) local[r * a + s][j] = u[s];
        }
      }
      for (int xi = 0; xi < a * a; ++xi) std::copy(local[xi], local[xi] + n, U + xi * OC + i0);
    }
  });
}

// Tiles go in blocks of whole tile rows: tile row tr = n * th + ty holds tiles tr * tw + tx.

constexpr int kLanes = 16;  // tiles transformed together, one float per lane of a 512-bit vector

// V [a*a][C][nt] for tile rows [r0, r0 + nr) (nt = nr * tw), zero outside the image. Per
// (channel, tile row), the a input rows under it are copied with their padding into a row
// buffer; its tiles are then transformed kLanes at a time, laid out [row][col][lane] so that
// every step is a loop over lanes (vectorised), and stored as contiguous runs.
template <class F, class In, class St>
void transform_inputs(const In* x, const Geometry& q, int64_t r0, int64_t nr, St* V) {
  constexpr int a = F::a, m = F::m, L = kLanes;
  const int64_t nt = nr * q.tw, CT = q.C * nt;
  // Padded row length: what the tiles read, rounded up to whole blocks of lanes (zeros).
  const int64_t groups = (q.tw + L - 1) / L, span = m * groups * L + 2;
  parallel_for(q.C, nt * a * a * 3, [&](int64_t c0, int64_t c1) {
    std::vector<float> rows(size_t(a * span));
    alignas(64) float d[a][a][L], b[a][a][L], e[a][a][L];
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t rr = 0; rr < nr; ++rr) {
        const int64_t tr = r0 + rr, n = tr / q.th, ty = tr % q.th;
        const In* xc = x + (n * q.C + c) * q.H * q.W;
        for (int64_t r = 0; r < a; ++r) {
          float* row = rows.data() + r * span;
          const int64_t iy = ty * m - q.ph + r;
          std::fill(row, row + span, 0.0f);
          if (iy < 0 || iy >= q.H) continue;
          // row[s] = x[iy][s - pw] where that is inside the image
          const int64_t s0 = q.pw, s1 = std::min(span, q.W + q.pw);
          std::copy(xc + iy * q.W + (s0 - q.pw), xc + iy * q.W + (s1 - q.pw), row + s0);
        }
        St* v = V + c * nt + rr * q.tw;
        for (int64_t t0 = 0; t0 < q.tw; t0 += L) {
          for (int r = 0; r < a; ++r)
            for (int s = 0; s < a; ++s) {
              const float* src = rows.data() + r * span + m * t0 + s;
              for (int l = 0; l < L; ++l) d[r][s][l] = src[m * l];
            }
          for (int s = 0; s < a; ++s)  // B^T applied to each column
#pragma omp simd
            for (int l = 0; l < L; ++l) F::input(&d[0][s][l], a * L, &b[0][s][l], a * L);
          for (int r = 0; r < a; ++r)  // then to each row
#pragma omp simd
            for (int l = 0; l < L; ++l) F::input(&b[r][0][l], L, &e[r][0][l], L);
          const int64_t n_valid = std::min<int64_t>(L, q.tw - t0);
          for (int r = 0; r < a; ++r)
            for (int s = 0; s < a; ++s) std::copy(e[r][s], e[r][s] + n_valid, v + (r * a + s) * CT + t0);
        }
      }
    }
  });
}

// Output channels [o0, o1) of tile rows [r0, r0 + nr) from M [a*a][o1 - o0][nt], plus the bias.
// Per (output channel, tile row), the tiles are transformed kLanes at a time as above into m
// output rows, which are copied to the image cropped to Wo.
template <class F>
void transform_outputs(const float* M, const float* bias, const Geometry& q, int64_t o0, int64_t o1, int64_t r0,
                       int64_t nr, float* out) {
  constexpr int a = F::a, m = F::m, L = kLanes;
  const int64_t nt = nr * q.tw, OT = (o1 - o0) * nt;
  const int64_t groups = (q.tw + L - 1) / L, width = m * groups * L;
  parallel_for(o1 - o0, nt * a * a * 3, [&](int64_t j0, int64_t j1) {
    std::vector<float> y(size_t(m * width));
    alignas(64) float xt[a][a][L], h[m][a][L], z[m][m][L];
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t o = o0 + j;
      const float b0 = bias ? bias[o] : 0.0f;
      for (int64_t rr = 0; rr < nr; ++rr) {
        const int64_t tr = r0 + rr, n = tr / q.th, ty = tr % q.th;
        const float* mp = M + j * nt + rr * q.tw;
        for (int64_t t0 = 0; t0 < q.tw; t0 += L) {
          const int64_t n_valid = std::min<int64_t>(L, q.tw - t0);
          for (int r = 0; r < a; ++r)
            for (int s = 0; s < a; ++s) {
              const float* src = mp + (r * a + s) * OT + t0;
              std::copy(src, src + n_valid, xt[r][s]);
              std::fill(xt[r][s] + n_valid, xt[r][s] + L, 0.0f);
            }
          for (int s = 0; s < a; ++s)  // A^T applied to each column
#pragma omp simd
            for (int l = 0; l < L; ++l) F::output(&xt[0][s][l], a * L, &h[0][s][l], a * L);
          for (int r = 0; r < m; ++r)  // then to each row
#pragma omp simd
            for (int l = 0; l < L; ++l) F::output(&h[r][0][l], L, &z[r][0][l], L);
          for (int r = 0; r < m; ++r)
            for (int s = 0; s < m; ++s) {
              float* dst = y.data() + r * width + m * t0 + s;
              for (int l = 0; l < L; ++l) dst[m * l] = z[r][s][l] + b0;
            }
        }
        float* yo = out + (n * q.O + o) * q.Ho * q.Wo;
        for (int r = 0; r < m && ty * m + r < q.Ho; ++r)
          std::copy(y.data() + r * width, y.data() + r * width + q.Wo, yo + (ty * m + r) * q.Wo);
      }
    }
  });
}

// In: the element type of x and w; St: of the transformed U and V the GEMMs read (bf16 with the
// bf16 GEMM, which then reads half the bytes; f32 otherwise). Transforms compute in f32.
template <class F, class In, class St>
void run(const In* x, const In* w, const float* bias, const Shape& xs, int64_t O, const Conv2dGeom& g, float* out,
         int64_t tile_rows_per_block) {
  constexpr DType st_dtype = std::is_same_v<St, float> ? DType::F32 : DType::BF16;
  constexpr int64_t xis = F::a * F::a;
  Geometry q{xs[0], xs[1], xs[2], xs[3], O, g.pad_h, g.pad_w, 0, 0, 0, 0};
  q.Ho = q.H + 2 * q.ph - 2;
  q.Wo = q.W + 2 * q.pw - 2;
  q.th = (q.Ho + F::m - 1) / F::m;
  q.tw = (q.Wo + F::m - 1) / F::m;
  // Loop nest: blocks of whole tile rows (V [a*a][C][nt] within a budget), then blocks of output
  // channels whose transformed kernels U [a*a][ob][C] stay in cache from their transform to
  // their GEMMs. Transforming all of U up front cost a write and a read of (a/3)^2 times the
  // weights through DRAM per call, 15% of a UNet step; per block, a large image re-transforms
  // the kernels once per tile-row block, which its many tiles pay for.
  // Block sizes, measured on 2 cores: V within 16 MB but never under 768 tiles, U within 8 MB but
  // never under 128 output channels. Below those the GEMMs get thin (F(4x4) at C = 960 gave 7-row,
  // 48-channel blocks: the UNet's 960 -> 320 conv at 64x64 took 111-144 ms against 78 ms now).
  const int64_t R = q.N * q.th;
  const int64_t min_rows = std::min(R, std::max<int64_t>(4, (768 + q.tw - 1) / q.tw));
  const int64_t rows_per_block =
      tile_rows_per_block > 0
          ? std::min(tile_rows_per_block, R)
          : std::clamp<int64_t>((int64_t(4) << 20) / (xis * q.C * q.tw), min_rows, R);
  const int64_t ob = std::clamp<int64_t>((int64_t(1) << 21) / (xis * q.C) / 16 * 16, std::min<int64_t>(O, 128), O);
  const int64_t block = rows_per_block * q.tw;
  // Scratch as tensors, so it comes from the caching allocator (fresh pages would fault in on
  // every call).
  Tensor Ut = empty({xis, ob, q.C}, st_dtype, Device::cpu()), Vt = empty({xis, q.C, block}, st_dtype, Device::cpu()),
         Mt = empty({xis, ob, block}, DType::F32, Device::cpu());
  St* U = static_cast<St*>(Ut.data_ptr());
  St* V = static_cast<St*>(Vt.data_ptr());
  float* M = Mt.data<float>();
  // With a single block of output channels (the VAE's 128-512 channels), its kernels are
  // transformed once for all tile-row blocks: a 512x512 image has 32 of them.
  const bool one_channel_block = ob >= O;
  if (one_channel_block) transform_weights<F>(w, q, 0, O, U);
  for (int64_t r0 = 0; r0 < R; r0 += rows_per_block) {
    const int64_t nr = std::min(rows_per_block, R - r0), nt = nr * q.tw;
    transform_inputs<F>(x, q, r0, nr, V);
    for (int64_t o0 = 0; o0 < O; o0 += ob) {
      const int64_t o1 = std::min(O, o0 + ob), no = o1 - o0;
      if (!one_channel_block) transform_weights<F>(w, q, o0, o1, U);
      // M[xi] [no, nt] = U[xi] [no, C] @ V[xi] [C, nt]. The GEMMs are shared out among the
      // threads whole (each GEMM then runs on its thread): one threaded GEMM at a time was
      // mostly threads waiting, these GEMMs being small.
      parallel_for(xis, no * nt * q.C * 2, [&](int64_t x0, int64_t x1) {
        for (int64_t xi = x0; xi < x1; ++xi) {
          if constexpr (std::is_same_v<St, float>)
            gemm(false, false, no, nt, q.C, 1.0f, U + xi * no * q.C, q.C, V + xi * q.C * nt, nt, 0.0f,
                 M + xi * no * nt, nt);
          else
            gemm_bf16(false, false, no, nt, q.C, U + xi * no * q.C, q.C, V + xi * q.C * nt, nt, false, M + xi * no * nt,
                      nt);
        }
      });
      transform_outputs<F>(M, bias, q, o0, o1, r0, nr, out);
    }
  }
}

}  // namespace

bool winograd_applies(const Shape& x, const Shape& w, const Conv2dGeom& g) {
  if (w[2] != 3 || w[3] != 3 || g.stride_h != 1 || g.stride_w != 1 || g.pad_h > 1 || g.pad_w > 1) return false;
  const int64_t Ho = x[2] + 2 * g.pad_h - 2, Wo = x[3] + 2 * g.pad_w - 2;
  // Below these the GEMMs are too small to gain, or reading and writing the transformed weights
  // costs more than the flops saved: measured on 2 cores, 1280 channels at 8x8 and batch 2 ran
  // 1.8x faster than im2col + GEMM; at 4x4 the layer is bound by reading the weights, which the
  // transform only adds to. The test is per image, not per batch, so a sample's result does not
  // depend on the batch it is in (tiled VAE decoding relies on that).
  return x[1] >= 32 && w[0] >= 32 && Ho * Wo >= 64;
}

WinogradTile winograd_tile_for(const Shape& x, const Conv2dGeom& g) {
  const int64_t Ho = x[2] + 2 * g.pad_h - 2, Wo = x[3] + 2 * g.pad_w - 2;
  // F(4x4) needs enough tiles per image to pay for its 4x larger transformed kernels. Measured on
  // 2 cores (batch 2): at 8x8 and 1280 channels F(4x4) took 23 ms to F(2x2)'s 18; at 16x16 they
  // tie; at 32x32 F(4x4) is 1.2x faster and on the VAE's 64x64 layers 1.5x.
  return Ho >= 16 && Wo >= 16 ? WinogradTile::F4 : WinogradTile::F2;
}

void conv2d_winograd(const float* x, const float* w, const float* bias, const Shape& xs, int64_t O,
                     const Conv2dGeom& g, float* out, WinogradTile tile, int64_t tile_rows_per_block) {
  if (tile == WinogradTile::F4)
    run<F4, float, float>(x, w, bias, xs, O, g, out, tile_rows_per_block);
  else
    run<F2, float, float>(x, w, bias, xs, O, g, out, tile_rows_per_block);
}

void conv2d_winograd_bf16(const BFloat16* x, const BFloat16* w, const float* bias, const Shape& xs, int64_t O,
                          const Conv2dGeom& g, float* out, WinogradTile tile, int64_t tile_rows_per_block) {
  SD_CHECK(bf16_gemm_available(), "conv2d_winograd_bf16: no bf16 GEMM on this CPU / build");
  if (tile == WinogradTile::F4)
    run<F4, BFloat16, BFloat16>(x, w, bias, xs, O, g, out, tile_rows_per_block);
  else
    run<F2, BFloat16, BFloat16>(x, w, bias, xs, O, g, out, tile_rows_per_block);
}

}  // namespace sd::cpu
