// conv2d and pad2d: forward against direct float64 loops, backward against finite
// differences and against direct adjoint loops, on odd sizes and non-contiguous layouts.
#include <gtest/gtest.h>

#include <string>

#include "autograd/engine.h"
#include "ops/conv.h"
#include "ops/cpu/conv_winograd.h"
#include "ops/cpu/gemm_bf16.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::gradcheck;
using test::random_tensor;

struct ConvCase {
  int64_t N, C, H, W, O, kh, kw, sh, sw, ph, pw;
  bool bias;
};

std::string describe(const ConvCase& c) {
  return "N" + std::to_string(c.N) + " C" + std::to_string(c.C) + " H" + std::to_string(c.H) + " W" +
         std::to_string(c.W) + " O" + std::to_string(c.O) + " k" + std::to_string(c.kh) + "x" + std::to_string(c.kw) +
         " s" + std::to_string(c.sh) + "," + std::to_string(c.sw) + " p" + std::to_string(c.ph) + "," +
         std::to_string(c.pw) + (c.bias ? " bias" : "");
}

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p) { return (in + 2 * p - k) / s + 1; }

// The definition, one output element at a time: seven nested loops in float64.
std::vector<double> conv_loop(const Tensor& x, const Tensor& w, const Tensor& b, const ConvCase& c) {
  const std::vector<double> vx = x.to_vector(), vw = w.to_vector();
  const std::vector<double> vb = b.defined() ? b.to_vector() : std::vector<double>(c.O, 0.0);
  const int64_t Ho = out_size(c.H, c.kh, c.sh, c.ph), Wo = out_size(c.W, c.kw, c.sw, c.pw);
  std::vector<double> out;
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t o = 0; o < c.O; ++o)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          double s = vb[o];
          for (int64_t ci = 0; ci < c.C; ++ci)
            for (int64_t i = 0; i < c.kh; ++i)
              for (int64_t j = 0; j < c.kw; ++j) {
                const int64_t ih = oh * c.sh - c.ph + i, iw = ow * c.sw - c.pw + j;
                if (ih < 0 || ih >= c.H || iw < 0 || iw >= c.W) continue;
                s += vx[((n * c.C + ci) * c.H + ih) * c.W + iw] * vw[((o * c.C + ci) * c.kh + i) * c.kw + j];
              }
          out.push_back(s);
        }
  return out;
}

// The adjoint loops: dx and dw for an output gradient gy, by the same index map.
void conv_backward_loop(const Tensor& x, const Tensor& w, const Tensor& gy, const ConvCase& c, std::vector<double>& dx,
                        std::vector<double>& dw) {
  const std::vector<double> vx = x.to_vector(), vw = w.to_vector(), vg = gy.to_vector();
  const int64_t Ho = out_size(c.H, c.kh, c.sh, c.ph), Wo = out_size(c.W, c.kw, c.sw, c.pw);
  dx.assign(vx.size(), 0.0);
  dw.assign(vw.size(), 0.0);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t o = 0; o < c.O; ++o)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const double g = vg[((n * c.O + o) * Ho + oh) * Wo + ow];
          for (int64_t ci = 0; ci < c.C; ++ci)
            for (int64_t i = 0; i < c.kh; ++i)
              for (int64_t j = 0; j < c.kw; ++j) {
                const int64_t ih = oh * c.sh - c.ph + i, iw = ow * c.sw - c.pw + j;
                if (ih < 0 || ih >= c.H || iw < 0 || iw >= c.W) continue;
                const int64_t xi = ((n * c.C + ci) * c.H + ih) * c.W + iw, wi = ((o * c.C + ci) * c.kh + i) * c.kw + j;
                dx[xi] += g * vw[wi];
                dw[wi] += g * vx[xi];
              }
        }
}

const ConvCase kCases[] = {
    {2, 4, 5, 6, 3, 1, 1, 1, 1, 0, 0, true},   // 1x1: the image is its own column matrix
    {2, 4, 5, 6, 3, 1, 1, 1, 1, 0, 0, false},
    {1, 3, 5, 5, 2, 1, 1, 2, 2, 0, 0, true},   // 1x1 with stride: goes through im2col
    {2, 3, 7, 5, 4, 3, 3, 1, 1, 1, 1, true},   // 3x3 pad 1 (the UNet's conv)
    {2, 3, 7, 5, 4, 3, 3, 1, 1, 1, 1, false},
    {1, 3, 7, 5, 2, 3, 3, 2, 2, 1, 1, false},  // 3x3 stride 2
    {2, 2, 8, 8, 3, 3, 3, 2, 2, 0, 0, true},   // stride 2 without padding (VAE Downsample2D)
    {1, 3, 7, 5, 2, 4, 3, 1, 1, 0, 0, true},   // 4x3 kernel
    {2, 3, 7, 5, 2, 4, 3, 1, 2, 2, 1, false},  // 4x3 kernel, uneven stride and padding
    {3, 1, 1, 1, 2, 1, 1, 1, 1, 0, 0, true},   // single pixel
    {1, 2, 3, 4, 2, 3, 4, 1, 1, 0, 0, true},   // kernel as large as the input: one output pixel
    {1, 2, 2, 3, 3, 3, 3, 3, 1, 2, 1, true},   // padding wider than the image
    {3, 3, 10, 10, 4, 3, 3, 1, 1, 1, 1, true},  // small images two to a GEMM: groups of 2 and 1
};

Tensor bias_for(const ConvCase& c, DType dt, uint64_t seed) {
  return c.bias ? random_tensor({c.O}, dt, seed) : Tensor();
}

TEST(Conv, ForwardMatchesLoop) {
  uint64_t seed = 100;
  for (const ConvCase& c : kCases) {
    Tensor x = random_tensor({c.N, c.C, c.H, c.W}, DType::F64, ++seed);
    Tensor w = random_tensor({c.O, c.C, c.kh, c.kw}, DType::F64, ++seed);
    Tensor b = bias_for(c, DType::F64, ++seed);
    Tensor y = conv2d(x, w, b, {c.sh, c.sw}, {c.ph, c.pw});
    EXPECT_EQ(y.shape(), (Shape{c.N, c.O, out_size(c.H, c.kh, c.sh, c.ph), out_size(c.W, c.kw, c.sw, c.pw)}))
        << describe(c);
    const std::vector<double> ref = conv_loop(x, w, b, c);
    EXPECT_TRUE(test::all_close(y, ref, 1e-12, 1e-13)) << describe(c);
  }
}

TEST(Conv, LowPrecisionForwardMatchesLoop) {
  uint64_t seed = 200;
  for (const ConvCase& c : kCases) {
    Tensor x = random_tensor({c.N, c.C, c.H, c.W}, DType::F64, ++seed);
    Tensor w = random_tensor({c.O, c.C, c.kh, c.kw}, DType::F64, ++seed);
    Tensor b = bias_for(c, DType::F64, ++seed);
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      Tensor xl = to(x, dt), wl = to(w, dt), bl = b.defined() ? to(b, dt) : Tensor();
      Tensor y = conv2d(xl, wl, bl, {c.sh, c.sw}, {c.ph, c.pw});
      EXPECT_EQ(y.dtype(), dt);
      // Reference from the same rounded inputs: only the kernel's own rounding remains.
      const std::vector<double> ref =
          conv_loop(to(xl, DType::F64), to(wl, DType::F64), bl.defined() ? to(bl, DType::F64) : Tensor(), c);
      const double tol = dt == DType::F32 ? 1e-5 : (dt == DType::F16 ? 2e-3 : 1e-2);
      EXPECT_TRUE(test::all_close(y, ref, tol, tol)) << describe(c) << " " << dtype_name(dt);
    }
  }
}

// f32 3x3 stride-1 convolutions with enough channels and positions take the Winograd F(2x2, 3x3)
// or F(4x4, 3x3) path (ops/cpu/conv_winograd.cpp): odd output sizes (half tiles at the right and bottom edges),
// padding 0 and 1, one and several images, several blocks of tile rows, no bias.
TEST(Conv, WinogradForwardMatchesLoop) {
  const ConvCase cases[] = {
      {1, 32, 33, 35, 40, 3, 3, 1, 1, 1, 1, true},    // odd sizes, padding 1
      {2, 48, 28, 23, 32, 3, 3, 1, 1, 0, 0, false},   // padding 0, two images, no bias
      {2, 32, 30, 20, 36, 3, 3, 1, 1, 1, 0, true},    // asymmetric padding
      {1, 640, 16, 16, 160, 3, 3, 1, 1, 1, 1, true},  // a UNet level's depth: rounding over 5760 taps,
                                                      // and two blocks of output channels for F(4x4)
  };
  uint64_t seed = 900;
  for (const ConvCase& c : cases) {
    ASSERT_TRUE(cpu::winograd_applies({c.N, c.C, c.H, c.W}, {c.O, c.C, 3, 3}, {1, 1, c.ph, c.pw})) << describe(c);
    Tensor x = random_tensor({c.N, c.C, c.H, c.W}, DType::F32, ++seed);
    Tensor w = random_tensor({c.O, c.C, 3, 3}, DType::F32, ++seed, -0.2, 0.2);
    Tensor b = bias_for(c, DType::F32, ++seed);
    const std::vector<double> ref =
        conv_loop(to(x, DType::F64), to(w, DType::F64), b.defined() ? to(b, DType::F64) : Tensor(), c);
    // F(4x4)'s transforms multiply by up to 8 and divide by 24: measured errors reach 2.4e-4 on
    // outputs of scale ~5 over 5760 taps (5e-5 of the scale; F(2x2): below 2e-5), hence its
    // looser tolerance. Still well inside the 1e-3 of the TF32 convolutions PyTorch runs by
    // default on GPUs.
    auto tol = [](cpu::WinogradTile t) { return t == cpu::WinogradTile::F4 ? 4e-4 : 2e-5; };
    const cpu::WinogradTile chosen = cpu::winograd_tile_for(x.shape(), {1, 1, c.ph, c.pw});
    EXPECT_TRUE(test::all_close(conv2d(x, w, b, {1, 1}, {c.ph, c.pw}), ref, tol(chosen), tol(chosen))) << describe(c);
    // Both tile sizes, in blocks of 3 tile rows (several blocks, the last one partial, crossing
    // images).
    for (cpu::WinogradTile tile : {cpu::WinogradTile::F2, cpu::WinogradTile::F4}) {
      Tensor y = empty({c.N, c.O, out_size(c.H, 3, 1, c.ph), out_size(c.W, 3, 1, c.pw)}, DType::F32, Device::cpu());
      cpu::conv2d_winograd(x.data<float>(), w.data<float>(), b.defined() ? b.data<float>() : nullptr, x.shape(), c.O,
                           {1, 1, c.ph, c.pw}, y.data<float>(), tile, 3);
      EXPECT_TRUE(test::all_close(y, ref, tol(tile), tol(tile)))
          << describe(c) << (tile == cpu::WinogradTile::F4 ? " F(4x4)" : " F(2x2)") << " blocks of 3 tile rows";
    }
  }
}

// bf16 convolutions on CPUs with a bf16 GEMM: the F(2x2) transformed tiles and kernels are
// rounded to bf16 before the GEMMs. Measured: 0.4% relative error against the f64 loop over the
// bf16 inputs (PyTorch's own bf16 conv2d on such data: 0.17%; F(4x4) in bf16 reached 2.1%, which
// is why bf16 always takes F(2x2)).
TEST(Conv, WinogradBf16MatchesLoop) {
  if (!cpu::bf16_gemm_available()) GTEST_SKIP() << "no bf16 GEMM on this CPU / build";
  const ConvCase cases[] = {
      {1, 32, 33, 35, 40, 3, 3, 1, 1, 1, 1, true},   // odd sizes (half tiles at the edges)
      {2, 48, 12, 11, 32, 3, 3, 1, 1, 1, 1, false},  // two images, no bias
  };
  uint64_t seed = 950;
  for (const ConvCase& c : cases) {
    ASSERT_TRUE(cpu::winograd_applies({c.N, c.C, c.H, c.W}, {c.O, c.C, 3, 3}, {1, 1, c.ph, c.pw})) << describe(c);
    Tensor x = to(random_tensor({c.N, c.C, c.H, c.W}, DType::F32, ++seed), DType::BF16);
    Tensor w = to(random_tensor({c.O, c.C, 3, 3}, DType::F32, ++seed, -0.2, 0.2), DType::BF16);
    Tensor b = c.bias ? to(bias_for(c, DType::F32, ++seed), DType::BF16) : Tensor();
    const std::vector<double> ref =
        conv_loop(to(x, DType::F64), to(w, DType::F64), b.defined() ? to(b, DType::F64) : Tensor(), c);
    Tensor y = conv2d(x, w, b, {1, 1}, {c.ph, c.pw});
    EXPECT_EQ(y.dtype(), DType::BF16);
    // Relative to the outputs' scale: rounding the transformed operands to bf16 costs ~2^-9 each.
    EXPECT_LT(test::relative_error(y, from_vector(ref, {int64_t(ref.size())})), 6e-3) << describe(c);
  }
}

TEST(Conv, NonContiguousInputs) {
  const ConvCase c{2, 3, 7, 5, 4, 3, 3, 2, 1, 1, 0, true};
  Tensor x = random_tensor({c.N, c.C, c.H, c.W}, DType::F64, 301);
  Tensor w = random_tensor({c.O, c.C, c.kh, c.kw}, DType::F64, 302);
  Tensor b = random_tensor({c.O}, DType::F64, 303);
  const std::vector<double> ref = conv_loop(x, w, b, c);
  // Strided copies of every operand.
  Tensor y = conv2d(test::non_contiguous(x), test::non_contiguous(w), test::non_contiguous(b), {c.sh, c.sw},
                    {c.ph, c.pw});
  EXPECT_TRUE(test::all_close(y, ref, 1e-12, 1e-13));
  // Channels-last storage [N, H, W, C] seen as [N, C, H, W].
  Tensor x_nhwc = contiguous(permute(x, {0, 2, 3, 1}));
  Tensor x_cl = permute(x_nhwc, {0, 3, 1, 2});
  ASSERT_FALSE(x_cl.is_contiguous());
  EXPECT_TRUE(test::all_close(conv2d(x_cl, w, b, {c.sh, c.sw}, {c.ph, c.pw}), ref, 1e-12, 1e-13));
  // f16 channels-last too.
  Tensor y16 = conv2d(to(x_cl, DType::F16), to(w, DType::F16), to(b, DType::F16), {c.sh, c.sw}, {c.ph, c.pw});
  Tensor ref16 = conv2d(contiguous(to(x, DType::F16)), to(w, DType::F16), to(b, DType::F16), {c.sh, c.sw}, {c.ph, c.pw});
  EXPECT_TRUE(test::all_close(y16, ref16, 0, 0));
}

// Large enough that the column matrix is built in several blocks of output positions, the
// second starting mid-row: forward and both weight gradients against the loops.
TEST(Conv, BlockedColumnsMatchLoops) {
  const ConvCase c{1, 32, 90, 91, 4, 3, 3, 1, 1, 1, 1, true};
  Tensor x = random_tensor({c.N, c.C, c.H, c.W}, DType::F64, 401);
  Tensor w = random_tensor({c.O, c.C, c.kh, c.kw}, DType::F64, 402).set_requires_grad();
  Tensor b = random_tensor({c.O}, DType::F64, 403);
  x.set_requires_grad();
  Tensor y = conv2d(x, w, b, {c.sh, c.sw}, {c.ph, c.pw});
  EXPECT_TRUE(test::all_close(y, conv_loop(x, w, b, c), 1e-12, 1e-12));
  Tensor gy = random_tensor(y.shape(), DType::F64, 404);
  autograd::backward(y, gy);
  std::vector<double> dx, dw;
  conv_backward_loop(x, w, gy, c, dx, dw);
  EXPECT_TRUE(test::all_close(x.grad(), dx, 1e-12, 1e-12));
  EXPECT_TRUE(test::all_close(w.grad(), dw, 1e-11, 1e-11));
}

TEST(Conv, LowPrecisionBackwardMatchesLoops) {
  const ConvCase c{2, 3, 7, 5, 4, 3, 3, 2, 1, 1, 1, true};
  Tensor x = random_tensor({c.N, c.C, c.H, c.W}, DType::F64, 501);
  Tensor w = random_tensor({c.O, c.C, c.kh, c.kw}, DType::F64, 502);
  Tensor b = random_tensor({c.O}, DType::F64, 503);
  const Shape ys{c.N, c.O, out_size(c.H, c.kh, c.sh, c.ph), out_size(c.W, c.kw, c.sw, c.pw)};
  Tensor gy = random_tensor(ys, DType::F64, 504);
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    Tensor xl = to(x, dt).set_requires_grad(), wl = to(w, dt).set_requires_grad(), bl = to(b, dt).set_requires_grad();
    Tensor gl = to(gy, dt);
    autograd::backward(conv2d(xl, wl, bl, {c.sh, c.sw}, {c.ph, c.pw}), gl);
    std::vector<double> dx, dw;
    conv_backward_loop(to(xl, DType::F64), to(wl, DType::F64), to(gl, DType::F64), c, dx, dw);
    std::vector<double> db(c.O, 0.0), vg = to(gl, DType::F64).to_vector();
    const int64_t per = ys[2] * ys[3];
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t o = 0; o < c.O; ++o)
        for (int64_t k = 0; k < per; ++k) db[o] += vg[(n * c.O + o) * per + k];
    const double tol = dt == DType::F32 ? 1e-5 : (dt == DType::F16 ? 3e-3 : 2e-2);
    EXPECT_TRUE(test::all_close(xl.grad(), dx, tol, tol)) << dtype_name(dt);
    EXPECT_TRUE(test::all_close(wl.grad(), dw, tol, tol)) << dtype_name(dt);
    EXPECT_TRUE(test::all_close(bl.grad(), db, tol, tol)) << dtype_name(dt);
  }
}

TEST(Conv, BadArgumentsRaise) {
  Tensor x = zeros({2, 3, 5, 4}), w = zeros({2, 3, 3, 3}), b = zeros({2});
  EXPECT_NO_THROW(conv2d(x, w, b));
  EXPECT_THROW(conv2d(zeros({3, 5, 4}), w, b), Error);                 // 3-d input
  EXPECT_THROW(conv2d(x, zeros({2, 3, 3}), b), Error);                 // 3-d weight
  EXPECT_THROW(conv2d(x, zeros({2, 4, 3, 3}), b), Error);              // channel mismatch
  EXPECT_THROW(conv2d(x, w, zeros({3})), Error);                       // bias size
  EXPECT_THROW(conv2d(x, w, zeros({2, 1})), Error);                    // bias rank
  EXPECT_THROW(conv2d(x, zeros({2, 3, 3, 3}, DType::F16), b), Error);  // dtype mismatch
  EXPECT_THROW(conv2d(zeros({2, 3, 5, 4}, DType::I32), zeros({2, 3, 3, 3}, DType::I32)), Error);
  EXPECT_THROW(conv2d(x, zeros({2, 3, 6, 3}), b), Error);              // kernel taller than the input
  EXPECT_NO_THROW(conv2d(x, zeros({2, 3, 6, 3}), b, {1, 1}, {1, 0}));  // ... unless padded
  EXPECT_THROW(conv2d(x, w, b, {0, 1}), Error);
  EXPECT_THROW(conv2d(x, w, b, {1, 1}, {-1, 0}), Error);
  try {
    conv2d(x, zeros({2, 4, 3, 3}), b);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("conv2d"), std::string::npos) << e.what();
  }
}

// ---- gradients ----

Tensor conv_fn_out(const std::vector<Tensor>& in, const ConvCase& c) {
  return conv2d(in[0], in[1], in.size() > 2 ? in[2] : Tensor(), {c.sh, c.sw}, {c.ph, c.pw});
}

const ConvCase kGradCases[] = {
    {2, 3, 5, 4, 2, 3, 3, 1, 1, 1, 1, true},
    {2, 3, 5, 4, 2, 3, 3, 2, 2, 1, 1, true},
    {2, 3, 5, 4, 2, 1, 1, 1, 1, 0, 0, true},
    {2, 3, 5, 4, 2, 1, 1, 2, 1, 0, 0, false},
    {1, 2, 5, 4, 3, 2, 3, 1, 2, 0, 1, false},
    {1, 2, 6, 5, 2, 4, 3, 2, 1, 2, 0, true},
};

TEST(GradConv, InputWeightBias) {
  uint64_t seed = 600;
  for (const ConvCase& c : kGradCases) {
    std::vector<Tensor> in = {random_tensor({c.N, c.C, c.H, c.W}, DType::F64, ++seed),
                              random_tensor({c.O, c.C, c.kh, c.kw}, DType::F64, ++seed)};
    if (c.bias) in.push_back(random_tensor({c.O}, DType::F64, ++seed));
    EXPECT_TRUE(gradcheck([c](const std::vector<Tensor>& t) { return conv_fn_out(t, c); }, in)) << describe(c);
  }
}

TEST(GradConv, NonContiguousInput) {
  const ConvCase c{2, 3, 5, 4, 2, 3, 3, 2, 1, 1, 1, true};
  Tensor x = random_tensor({c.N, c.C, c.H, c.W}, DType::F64, 701);
  Tensor w = random_tensor({c.O, c.C, c.kh, c.kw}, DType::F64, 702);
  Tensor b = random_tensor({c.O}, DType::F64, 703);
  auto f = [c](const std::vector<Tensor>& t) { return conv_fn_out(t, c); };
  EXPECT_TRUE(gradcheck(f, {test::non_contiguous(x), test::non_contiguous(w), b}));
  // Channels-last storage seen as NCHW.
  Tensor x_cl = permute(contiguous(permute(x, {0, 2, 3, 1})), {0, 3, 1, 2});
  EXPECT_TRUE(gradcheck(f, {x_cl, w, b}));
}

TEST(GradConv, OnlySomeInputsNeedGrad) {
  const ConvCase c{2, 3, 5, 4, 2, 3, 3, 1, 1, 1, 1, true};
  std::vector<Tensor> in = {random_tensor({c.N, c.C, c.H, c.W}, DType::F64, 711),
                            random_tensor({c.O, c.C, c.kh, c.kw}, DType::F64, 712),
                            random_tensor({c.O}, DType::F64, 713)};
  auto f = [c](const std::vector<Tensor>& t) { return conv_fn_out(t, c); };
  EXPECT_TRUE(gradcheck(f, in, {.check = {true, false, false}}));
  EXPECT_TRUE(gradcheck(f, in, {.check = {false, true, false}}));
  EXPECT_TRUE(gradcheck(f, in, {.check = {false, false, true}}));
}

// Downsample2D of the VAE: pad right and bottom by one, then a stride-2 3x3 conv.
TEST(GradConv, AsymmetricPadThenStridedConv) {
  Tensor x = random_tensor({1, 2, 5, 6}, DType::F64, 721);
  Tensor w = random_tensor({3, 2, 3, 3}, DType::F64, 722);
  Tensor b = random_tensor({3}, DType::F64, 723);
  auto f = [](const std::vector<Tensor>& t) { return conv2d(pad2d(t[0], 0, 1, 0, 1), t[1], t[2], {2, 2}); };
  EXPECT_EQ(f({x, w, b}).shape(), (Shape{1, 3, 2, 3}));  // (5+1-3)/2+1, (6+1-3)/2+1
  EXPECT_TRUE(gradcheck(f, {x, w, b}));
}

// ---- pad2d ----

// Loop reference over the last two dims; leading dims flattened.
std::vector<double> pad_loop(const Tensor& x, int64_t l, int64_t r, int64_t t, int64_t b, double value) {
  const std::vector<double> v = x.to_vector();
  const int64_t H = x.size(-2), W = x.size(-1), planes = x.numel() / std::max<int64_t>(H * W, 1);
  const int64_t Ho = t + H + b, Wo = l + W + r;
  std::vector<double> out;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j) {
        const int64_t si = i - t, sj = j - l;
        out.push_back(si >= 0 && si < H && sj >= 0 && sj < W ? v[(p * H + si) * W + sj] : value);
      }
  return out;
}

struct PadCase {
  Shape shape;
  int64_t l, r, t, b;
  double value;
};
const PadCase kPadCases[] = {
    {{2, 3, 4, 5}, 0, 1, 0, 1, 0.0},
    {{2, 3, 4, 5}, 2, 1, 3, 0, -1.5},
    {{3, 5}, 1, 1, 1, 1, 0.0},
    {{2, 1, 2, 3, 3}, 0, 2, 1, 0, 0.25},
    {{1, 2, 3, 4}, 0, 0, 0, 0, 0.0},
};

TEST(Pad, ForwardMatchesLoop) {
  uint64_t seed = 800;
  for (const PadCase& c : kPadCases) {
    Tensor x = random_tensor(c.shape, DType::F64, ++seed);
    Tensor y = pad2d(x, c.l, c.r, c.t, c.b, c.value);
    Shape expect = c.shape;
    expect[expect.size() - 2] += c.t + c.b;
    expect.back() += c.l + c.r;
    EXPECT_EQ(y.shape(), expect);
    const std::vector<double> ref = pad_loop(x, c.l, c.r, c.t, c.b, c.value);
    EXPECT_TRUE(test::all_close(y, ref, 0, 0));
    EXPECT_TRUE(test::all_close(pad2d(test::non_contiguous(x), c.l, c.r, c.t, c.b, c.value), ref, 0, 0));
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      Tensor xl = to(x, dt);
      Tensor yl = pad2d(xl, c.l, c.r, c.t, c.b, c.value);
      EXPECT_EQ(yl.dtype(), dt);
      EXPECT_TRUE(test::all_close(yl, pad_loop(to(xl, DType::F64), c.l, c.r, c.t, c.b, c.value), 0, 0));
    }
  }
}

TEST(Pad, BadArgumentsRaise) {
  EXPECT_THROW(pad2d(zeros({4}), 1, 1, 1, 1), Error);
  EXPECT_THROW(pad2d(zeros({2, 4, 4}), -1, 0, 0, 0), Error);
  EXPECT_THROW(pad2d(Tensor(), 1, 1, 1, 1), Error);
}

TEST(GradPad, MatchesFiniteDifferences) {
  uint64_t seed = 900;
  for (const PadCase& c : kPadCases) {
    Tensor x = random_tensor(c.shape, DType::F64, ++seed);
    auto f = [c](const std::vector<Tensor>& t) { return pad2d(t[0], c.l, c.r, c.t, c.b, c.value); };
    EXPECT_TRUE(gradcheck(f, {x}));
    EXPECT_TRUE(gradcheck(f, {test::non_contiguous(x)}));
  }
}

}  // namespace
}  // namespace sd
