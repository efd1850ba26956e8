// conv2d as im2col + cuBLAS GEMM: the fallback backend (no cuDNN, f64, problems cuDNN
// declines). Simple, not fast: one thread per column or image element.
//
// For a chunk of b images the column matrix col is [K, b*L] (K = C*kh*kw taps ordered like
// the weight's [C, kh, kw], L = Ho*Wo output positions per image, images side by side), so
//   forward NCHW        y[n]     [O, L]   = W [O, K] @ col[:, n*L:(n+1)*L]   (batched over n)
//   forward NHWC        y        [b*L, O] = col^T [b*L, K] @ W^T [K, O]      (one GEMM)
//   grad weight         dW       [O, K]   = dY [O, b*L] @ col^T [b*L, K]     (one GEMM)
//   grad input          dcol[n]  [K, L]   = W^T [K, O] @ dY[n] [O, L], then col2im sums the
//                                           taps that read each input pixel (a gather: no
//                                           atomics, deterministic).
#include <algorithm>
#include <atomic>

#include "ops/cuda/conv_impl.h"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/gemm.h"

namespace sd::cuda::conv_detail {

namespace {

constexpr int64_t kDefaultBudget = int64_t(256) << 20;
std::atomic<int64_t> g_budget{kDefaultBudget};

// Geometry the kernels need, by value.
struct Geom {
  int64_t C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo;
};

Geom geom_of(const Problem& p) {
  return {p.C, p.H, p.W, p.kh, p.kw, p.g.stride_h, p.g.stride_w, p.g.pad_h, p.g.pad_w, p.Ho, p.Wo};
}

// Element strides of an image tensor [N, C, H, W].
struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// col [K, b*L] (contiguous) from images x[0 .. b) (x points at the chunk's first image).
template <class T>
__global__ void im2col_kernel(const T* x, Strides4 xs, T* col, int64_t b, Geom g) {
  const int64_t L = g.Ho * g.Wo, bL = b * L, taps = g.kh * g.kw;
  const int64_t total = g.C * taps * bL;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i / bL, r = i - k * bL;
    const int64_t n = r / L, l = r - n * L;
    const int64_t oh = l / g.Wo, ow = l - oh * g.Wo;
    const int64_t c = k / taps, t = k - c * taps;
    const int64_t ki = t / g.kw, kj = t - ki * g.kw;
    const int64_t ih = oh * g.sh - g.ph + ki, iw = ow * g.sw - g.pw + kj;
    T v = from_acc<T>(acc_t<T>(0));
    if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) v = x[n * xs.n + c * xs.c + ih * xs.h + iw * xs.w];
    col[i] = v;
  }
}

// dx for images [0, b) of the chunk (dx points at its first image) from dcol [b, K, L]
// (contiguous): each input pixel sums the column entries that read it. Threads walk dx in
// memory order of its layout, so the stores coalesce.
template <class T>
__global__ void col2im_kernel(const T* dcol, T* dx, Strides4 ds, int64_t b, Geom g, bool channels_last) {
  using A = acc_t<T>;
  const int64_t L = g.Ho * g.Wo, taps = g.kh * g.kw, K = g.C * taps;
  const int64_t total = b * g.C * g.H * g.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, h, w, r;
    if (channels_last) {
      c = i % g.C;
      r = i / g.C;
      w = r % g.W;
      r /= g.W;
      h = r % g.H;
      n = r / g.H;
    } else {
      w = i % g.W;
      r = i / g.W;
      h = r % g.H;
      r /= g.H;
      c = r % g.C;
      n = r / g.C;
    }
    const T* base = dcol + n * K * L + c * taps * L;
    A acc = A(0);
    // Tap (ki, kj) of output (oh, ow) read pixel (oh*sh - ph + ki, ow*sw - pw + kj).
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      const int64_t th = h + g.ph - ki;
      if (th < 0) break;  // th only decreases with ki
      if (th % g.sh != 0) continue;
      const int64_t oh = th / g.sh;
      if (oh >= g.Ho) continue;
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        const int64_t tw = w + g.pw - kj;
        if (tw < 0) break;
        if (tw % g.sw != 0) continue;
        const int64_t ow = tw / g.sw;
        if (ow >= g.Wo) continue;
        acc += to_acc(base[(ki * g.kw + kj) * L + oh * g.Wo + ow]);
      }
    }
    dx[n * ds.n + c * ds.c + h * ds.h + w * ds.w] = from_acc<T>(acc);
  }
}

// Images per chunk: as many as keep the column buffer within the budget, at least one.
int64_t chunk_images(const Problem& p) {
  const int64_t per_image = std::max<int64_t>(1, p.K() * p.L() * int64_t(dtype_size(p.dtype)));
  return std::clamp<int64_t>(g_budget.load() / per_image, 1, std::max<int64_t>(p.N, 1));
}

// Offset (in elements, absolute in the storage) of image n of a dense image tensor t.
int64_t image_offset(const Tensor& t, int64_t n) { return t.offset() + n * t.stride(0); }

void launch_im2col(const Problem& p, const Tensor& x, int64_t n0, int64_t b, const Tensor& col) {
  const int64_t total = p.K() * b * p.L();
  dispatch_float(p.dtype, "conv2d im2col", [&]<class T>() {
    const T* xp = static_cast<const T*>(x.data_ptr()) + n0 * x.stride(0);
    im2col_kernel<T><<<grid_1d(total), 256, 0, stream()>>>(xp, strides_of(x), static_cast<T*>(col.data_ptr()), b, geom_of(p));
    SD_CUDA_CHECK_LAUNCH("im2col_kernel");
  });
}

}  // namespace

void im2col_set_budget(int64_t bytes) { g_budget.store(bytes > 0 ? bytes : kDefaultBudget); }

void im2col_forward(const Problem& p, const Tensor& x, const Tensor& w, const Tensor& y) {
  const int64_t K = p.K(), L = p.L(), O = p.O, B = chunk_images(p);
  Tensor col = empty({K * B * L}, p.dtype, x.device());
  for (int64_t n0 = 0; n0 < p.N; n0 += B) {
    const int64_t b = std::min(B, p.N - n0);
    launch_im2col(p, x, n0, b, col);
    if (p.channels_last) {
      // y rows n0*L .. (n0+b)*L of [N*L, O] = col^T [b*L, K] @ W^T [K, O]
      Tensor colT = as_strided(col, {1, b * L, K}, {0, 1, b * L}, col.offset());
      Tensor wT = as_strided(w, {1, K, O}, {0, 1, K}, w.offset());
      copy_(as_strided(y, {1, b * L, O}, {0, O, 1}, image_offset(y, n0)), bmm(colT, wT));
    } else {
      // y[n] [O, L] = W [O, K] @ col[:, n*L:(n+1)*L], batched over the chunk's images
      Tensor wb = as_strided(w, {b, O, K}, {0, K, 1}, w.offset());
      Tensor colb = as_strided(col, {b, K, L}, {L, b * L, 1}, col.offset());
      copy_(as_strided(y, {b, O, L}, {O * L, L, 1}, image_offset(y, n0)), bmm(wb, colb));
    }
  }
}

void im2col_grad_input(const Problem& p, const Tensor& dy, const Tensor& w, const Tensor& dx) {
  const int64_t K = p.K(), L = p.L(), O = p.O, B = chunk_images(p);
  // dY[n] as [O, L]: both dense layouts merge (Ho, Wo) into one stride.
  const int64_t so = p.channels_last ? 1 : L, sl = p.channels_last ? O : 1;
  Tensor wT = as_strided(w, {B, K, O}, {0, 1, K}, w.offset());
  for (int64_t n0 = 0; n0 < p.N; n0 += B) {
    const int64_t b = std::min(B, p.N - n0);
    Tensor dyb = as_strided(dy, {b, O, L}, {O * L, so, sl}, image_offset(dy, n0));
    Tensor wTb = b == B ? wT : as_strided(w, {b, K, O}, {0, 1, K}, w.offset());
    Tensor dcol = bmm(wTb, dyb);  // [b, K, L], contiguous
    dispatch_float(p.dtype, "conv2d col2im", [&]<class T>() {
      T* dxp = static_cast<T*>(dx.data_ptr()) + n0 * dx.stride(0);
      const int64_t total = b * p.C * p.H * p.W;
      col2im_kernel<T><<<grid_1d(total), 256, 0, stream()>>>(static_cast<const T*>(dcol.data_ptr()), dxp, strides_of(dx), b,
                                                geom_of(p), p.channels_last);
      SD_CUDA_CHECK_LAUNCH("col2im_kernel");
    });
  }
}

void im2col_grad_weight(const Problem& p, const Tensor& dy, const Tensor& x, const Tensor& dw) {
  const int64_t K = p.K(), L = p.L(), O = p.O, B = chunk_images(p);
  const bool one_chunk = B >= p.N;
  Tensor col = empty({K * B * L}, p.dtype, x.device());
  // Several chunks add up in f32 (f64 for f64), rounded once at the end.
  Tensor acc = one_chunk ? Tensor() : zeros({O, K}, p.dtype == DType::F64 ? DType::F64 : DType::F32, x.device());
  for (int64_t n0 = 0; n0 < p.N; n0 += B) {
    const int64_t b = std::min(B, p.N - n0);
    launch_im2col(p, x, n0, b, col);
    // dY of the chunk as [O, b*L]: channels-last is [b*L, O] in memory, read transposed; an
    // NCHW chunk of one image is [O, L]; several NCHW images are gathered into [O, b, L].
    Tensor dy2;
    if (p.channels_last) {
      dy2 = as_strided(dy, {1, O, b * L}, {0, 1, O}, image_offset(dy, n0));
    } else if (b == 1) {
      dy2 = as_strided(dy, {1, O, L}, {0, L, 1}, image_offset(dy, n0));
    } else {
      Tensor buf = empty({O * b * L}, p.dtype, dy.device());
      copy_(as_strided(buf, {b, O, L}, {L, b * L, 1}, buf.offset()),
            as_strided(dy, {b, O, L}, {O * L, L, 1}, image_offset(dy, n0)));
      dy2 = as_strided(buf, {1, O, b * L}, {0, b * L, 1}, buf.offset());
    }
    Tensor colT = as_strided(col, {1, b * L, K}, {0, 1, b * L}, col.offset());
    Tensor part = bmm(dy2, colT);  // [1, O, K]
    if (one_chunk) {
      copy_(as_strided(dw, {1, O, K}, {0, K, 1}, dw.offset()), part);
    } else {
      axpy_(acc, as_strided(part, {O, K}, {K, 1}, part.offset()));
    }
  }
  if (!one_chunk) copy_(as_strided(dw, {O, K}, {K, 1}, dw.offset()), acc);
}

}  // namespace sd::cuda::conv_detail
