#include "ops/cpu/conv.h"

#include <algorithm>
#include <vector>

#include "ops/cpu/conv_winograd.h"
#include "ops/cpu/gemm.h"
#include "ops/cpu/gemm_bf16.h"
#include "runtime/parallel.h"

namespace sd::cpu {

namespace {

// Sizes of one convolution. The column matrix of an image is [K, L]: one row per
// (channel, kernel row, kernel col) tap, one column per output position.
struct Dims {
  int64_t N, C, H, W, O, kh, kw, Ho, Wo;
  int64_t K() const { return C * kh * kw; }
  int64_t L() const { return Ho * Wo; }
};

Dims dims_of(const Shape& x, const Shape& w, const Conv2dGeom& g) {
  Dims d{x[0], x[1], x[2], x[3], w[0], w[2], w[3], 0, 0};
  d.Ho = (d.H + 2 * g.pad_h - d.kh) / g.stride_h + 1;
  d.Wo = (d.W + 2 * g.pad_w - d.kw) / g.stride_w + 1;
  return d;
}

// A 1x1 kernel with stride 1 and no padding reads each pixel once: the image [C, H*W] is
// its own column matrix, so GEMM reads it in place.
bool is_pointwise(const Dims& d, const Conv2dGeom& g) {
  return d.kh == 1 && d.kw == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0;
}

// Output positions per column block. A whole image's column matrix can reach gigabytes
// (a 512x512 VAE layer with 128 channels and a 3x3 kernel: 1.2 GB in f32), so it is built
// one block of output positions at a time, within a fixed budget.
int64_t block_cols(const Dims& d, size_t elem_size) {
  const int64_t budget = (int64_t(16) << 20) / int64_t(elem_size);
  const int64_t L = d.L();
  return std::clamp<int64_t>(budget / std::max<int64_t>(d.K(), 1), std::min<int64_t>(L, 256), L);
}

// Walks output positions [l0, l1) row by row: f(oh, ow0, ow1, dst_offset).
template <class F>
void for_each_output_run(const Dims& d, int64_t l0, int64_t l1, F&& f) {
  for (int64_t l = l0; l < l1;) {
    const int64_t oh = l / d.Wo, ow0 = l % d.Wo, ow1 = std::min(d.Wo, ow0 + (l1 - l));
    f(oh, ow0, ow1, l - l0);
    l += ow1 - ow0;
  }
}

// col[k, l - l0] = the input pixel under tap k at output position l (0 in the padding),
// for an image x [C, H, W] and output positions [l0, l1); col's rows are ld apart (l1 - l0
// unless the columns of several images sit side by side). Rows are independent: parallel.
template <class A>
void im2col(const A* x, const Dims& d, const Conv2dGeom& g, int64_t l0, int64_t l1, A* col, int64_t ld = 0) {
  const int64_t n = l1 - l0;
  if (ld == 0) ld = n;
  parallel_for(d.K(), n, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t c = k / (d.kh * d.kw), i = (k / d.kw) % d.kh, j = k % d.kw;
      const A* xc = x + c * d.H * d.W;
      A* row = col + k * ld;
      for_each_output_run(d, l0, l1, [&](int64_t oh, int64_t ow0, int64_t ow1, int64_t at) {
        A* dst = row + at;
        const int64_t ih = oh * g.stride_h - g.pad_h + i;
        if (ih < 0 || ih >= d.H) {
          std::fill(dst, dst + (ow1 - ow0), A(0));
          return;
        }
        const A* src = xc + ih * d.W;
        for (int64_t ow = ow0; ow < ow1; ++ow) {
          const int64_t iw = ow * g.stride_w - g.pad_w + j;
          dst[ow - ow0] = iw >= 0 && iw < d.W ? src[iw] : A(0);
        }
      });
    }
  });
}

// The adjoint of im2col: dx [C, H, W] += every col entry at the pixel it was read from.
// Parallel over channels, since the taps of one channel only write that channel.
template <class A>
void col2im_add(const A* col, const Dims& d, const Conv2dGeom& g, int64_t l0, int64_t l1, A* dx) {
  const int64_t n = l1 - l0, taps = d.kh * d.kw;
  parallel_for(d.C, taps * n, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      A* xc = dx + c * d.H * d.W;
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t i = t / d.kw, j = t % d.kw;
        const A* row = col + (c * taps + t) * n;
        for_each_output_run(d, l0, l1, [&](int64_t oh, int64_t ow0, int64_t ow1, int64_t at) {
          const int64_t ih = oh * g.stride_h - g.pad_h + i;
          if (ih < 0 || ih >= d.H) return;
          A* dst = xc + ih * d.W;
          const A* src = row + at;
          for (int64_t ow = ow0; ow < ow1; ++ow) {
            const int64_t iw = ow * g.stride_w - g.pad_w + j;
            if (iw >= 0 && iw < d.W) dst[iw] += src[ow - ow0];
          }
        });
      }
    }
  });
}

// Column block [l0, l1) of image xn: a pointer into the image itself for pointwise kernels,
// otherwise into `buf` after im2col. Returns the pointer; `ld` receives its row stride.
template <class A>
const A* columns(const A* xn, const Dims& d, const Conv2dGeom& g, int64_t l0, int64_t l1, std::vector<A>& buf,
                 int64_t& ld) {
  if (is_pointwise(d, g)) {
    ld = d.L();
    return xn + l0;
  }
  im2col(xn, d, g, l0, l1, buf.data());
  ld = l1 - l0;
  return buf.data();
}

// The images are walked one at a time and the parallelism is inside (im2col rows, the
// threaded GEMM): the layers that cost the most have large images and small batches.

// Small images (the UNet's 4x4 level) go several to one GEMM: per image, the GEMM would be
// [O, K] x [K, L] with L = 16, and packing the weights (59 MB at 1280 channels) for every image
// cost more than the multiply. col holds the images' columns side by side, [K, n * L]; the
// product [O, n * L] is then scattered into the images with the bias.
template <class A>
void forward_small_images(const A* x, const A* w, const A* bias, const Dims& d, const Conv2dGeom& g, int64_t per_gemm,
                          A* out) {
  const int64_t K = d.K(), L = d.L();
  std::vector<A> col(size_t(K * per_gemm * L)), prod(size_t(d.O * per_gemm * L));
  for (int64_t n0 = 0; n0 < d.N; n0 += per_gemm) {
    const int64_t nb = std::min(per_gemm, d.N - n0), cols = nb * L;
    for (int64_t i = 0; i < nb; ++i)
      im2col(x + (n0 + i) * d.C * d.H * d.W, d, g, 0, L, col.data() + i * L, cols);
    gemm(false, false, d.O, cols, K, A(1), w, K, col.data(), cols, A(0), prod.data(), cols);
    for (int64_t i = 0; i < nb; ++i)
      for (int64_t o = 0; o < d.O; ++o) {
        const A b = bias ? bias[o] : A(0);
        const A* src = prod.data() + o * cols + i * L;
        A* dst = out + ((n0 + i) * d.O + o) * L;
        for (int64_t l = 0; l < L; ++l) dst[l] = src[l] + b;
      }
  }
}

template <class A>
void forward_impl(const A* x, const A* w, const A* bias, const Dims& d, const Conv2dGeom& g, A* out) {
  const int64_t K = d.K(), L = d.L(), bl = block_cols(d, sizeof(A));
  if (d.N > 1 && L < 256 && !is_pointwise(d, g)) {
    forward_small_images(x, w, bias, d, g, std::min<int64_t>(d.N, 256 / L), out);
    return;
  }
  std::vector<A> buf(is_pointwise(d, g) ? 0 : size_t(K * bl));
  for (int64_t n = 0; n < d.N; ++n) {
    const A* xn = x + n * d.C * d.H * d.W;
    A* on = out + n * d.O * L;
    // Start from the bias and let GEMM accumulate onto it (beta = 1).
    for (int64_t o = 0; o < d.O; ++o) std::fill(on + o * L, on + (o + 1) * L, bias ? bias[o] : A(0));
    for (int64_t l0 = 0; l0 < L; l0 += bl) {
      const int64_t l1 = std::min(L, l0 + bl);
      int64_t ld = 0;
      const A* col = columns(xn, d, g, l0, l1, buf, ld);
      // out[:, l0:l1] [O, nb] += W [O, K] @ col [K, nb]
      gemm(false, false, d.O, l1 - l0, K, A(1), w, K, col, ld, A(1), on + l0, L);
    }
  }
}

template <class A>
void grad_input_impl(const A* gy, const A* w, const Dims& d, const Conv2dGeom& g, A* dx) {
  const int64_t K = d.K(), L = d.L(), bl = block_cols(d, sizeof(A));
  const bool pointwise = is_pointwise(d, g);
  std::vector<A> buf(pointwise ? 0 : size_t(K * bl));
  if (!pointwise) std::fill(dx, dx + d.N * d.C * d.H * d.W, A(0));  // col2im accumulates
  for (int64_t n = 0; n < d.N; ++n) {
    const A* gn = gy + n * d.O * L;
    A* dxn = dx + n * d.C * d.H * d.W;
    for (int64_t l0 = 0; l0 < L; l0 += bl) {
      const int64_t l1 = std::min(L, l0 + bl), nb = l1 - l0;
      // dcol [K, nb] = W^T [K, O] @ dY[:, l0:l1] [O, nb]; pointwise kernels write dx directly.
      if (pointwise) {
        gemm(true, false, K, nb, d.O, A(1), w, K, gn + l0, L, A(0), dxn + l0, L);
      } else {
        gemm(true, false, K, nb, d.O, A(1), w, K, gn + l0, L, A(0), buf.data(), nb);
        col2im_add(buf.data(), d, g, l0, l1, dxn);
      }
    }
  }
}

template <class A>
void grad_weight_impl(const A* gy, const A* x, const Dims& d, const Conv2dGeom& g, A* dw) {
  const int64_t K = d.K(), L = d.L(), bl = block_cols(d, sizeof(A));
  std::vector<A> buf(is_pointwise(d, g) ? 0 : size_t(K * bl));
  std::fill(dw, dw + d.O * K, A(0));
  for (int64_t n = 0; n < d.N; ++n) {
    const A* gn = gy + n * d.O * L;
    const A* xn = x + n * d.C * d.H * d.W;
    for (int64_t l0 = 0; l0 < L; l0 += bl) {
      const int64_t l1 = std::min(L, l0 + bl);
      int64_t ld = 0;
      const A* col = columns(xn, d, g, l0, l1, buf, ld);
      // dW [O, K] += dY[:, l0:l1] [O, nb] @ col^T [nb, K]
      gemm(false, true, d.O, K, l1 - l0, A(1), gn + l0, L, col, ld, A(1), dw, K);
    }
  }
}

// f16/bf16 compute in f32; f32 and f64 in themselves.
DType compute_dtype(DType t) { return t == DType::F64 ? DType::F64 : DType::F32; }

// t as a contiguous tensor of dtype dt (no copy when it already is one).
Tensor dense(const Tensor& t, DType dt) {
  return t.dtype() == dt ? contiguous_raw(t) : copy_to(t, dt, Device::cpu());
}

Tensor round_to(const Tensor& t, DType dt) { return t.dtype() == dt ? t : copy_to(t, dt, Device::cpu()); }

// Calls f with A = float or double, matching the compute dtype.
template <class F>
void dispatch_compute(DType compute, F&& f) {
  if (compute == DType::F64) {
    f(double{});
  } else {
    f(float{});
  }
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dGeom& g) {
  const Dims d = dims_of(x.shape(), weight.shape(), g);
  if (x.dtype() == DType::BF16 && weight.dtype() == DType::BF16 && winograd_applies(x.shape(), weight.shape(), g) &&
      bf16_gemm_available()) {
    // bf16 in, bf16 GEMMs on the transformed tiles, f32 out rounded once: no f32 copies of the
    // input or the weights. Always F(2x2): F(4x4)'s transformed values rounded to bf16 gave 2.1%
    // relative error (F(2x2): 0.4%, PyTorch's bf16 conv 0.17%; tests/ops/conv_test.cpp).
    Tensor xb = contiguous_raw(x), wb = contiguous_raw(weight);
    Tensor bf = bias.defined() ? dense(bias, DType::F32) : Tensor();
    Tensor out = empty({d.N, d.O, d.Ho, d.Wo}, DType::F32, Device::cpu());
    conv2d_winograd_bf16(xb.data<BFloat16>(), wb.data<BFloat16>(), bf.defined() ? bf.data<float>() : nullptr,
                         x.shape(), d.O, g, out.data<float>(), WinogradTile::F2);
    return round_to(out, DType::BF16);
  }
  const DType cd = compute_dtype(x.dtype());
  Tensor xc = dense(x, cd), wc = dense(weight, cd), bc = bias.defined() ? dense(bias, cd) : Tensor();
  Tensor out = empty({d.N, d.O, d.Ho, d.Wo}, cd, Device::cpu());
  if (cd == DType::F32 && winograd_applies(x.shape(), weight.shape(), g)) {
    conv2d_winograd(xc.data<float>(), wc.data<float>(), bc.defined() ? bc.data<float>() : nullptr, x.shape(), d.O, g,
                    out.data<float>(), winograd_tile_for(x.shape(), g));
    return round_to(out, x.dtype());
  }
  dispatch_compute(cd, [&](auto tag) {
    using A = decltype(tag);
    forward_impl<A>(xc.data<A>(), wc.data<A>(), bc.defined() ? bc.data<A>() : nullptr, d, g, out.data<A>());
  });
  return round_to(out, x.dtype());
}

Tensor conv2d_grad_input(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape, const Conv2dGeom& g) {
  const Dims d = dims_of(x_shape, weight.shape(), g);
  const DType cd = compute_dtype(grad_out.dtype());
  Tensor gc = dense(grad_out, cd), wc = dense(weight, cd);
  Tensor dx = empty(x_shape, cd, Device::cpu());
  dispatch_compute(cd, [&](auto tag) {
    using A = decltype(tag);
    grad_input_impl<A>(gc.data<A>(), wc.data<A>(), d, g, dx.data<A>());
  });
  return round_to(dx, grad_out.dtype());
}

Tensor conv2d_grad_weight(const Tensor& grad_out, const Tensor& x, const Shape& w_shape, const Conv2dGeom& g) {
  const Dims d = dims_of(x.shape(), w_shape, g);
  const DType cd = compute_dtype(grad_out.dtype());
  Tensor gc = dense(grad_out, cd), xc = dense(x, cd);
  Tensor dw = empty(w_shape, cd, Device::cpu());
  dispatch_compute(cd, [&](auto tag) {
    using A = decltype(tag);
    grad_weight_impl<A>(gc.data<A>(), xc.data<A>(), d, g, dw.data<A>());
  });
  return round_to(dw, grad_out.dtype());
}

}  // namespace sd::cpu
