// GroupNorm and LayerNorm: forward (and saved statistics) against float64 loops, backward
// against finite differences, with and without the affine parameters and the fused SiLU.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>

#include "autograd/engine.h"
#include "ops/activation.h"
#include "ops/cpu/norm.h"
#include "ops/elementwise.h"
#include "ops/norm.h"
#include "ops/reduce.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::gradcheck;
using test::random_tensor;

struct RefNorm {
  std::vector<double> y, mean, rstd;
};

// Plain loops over x [N, C, S...] read row-major: group g of sample n is channels
// [g C/G, (g+1) C/G) and all their spatial positions.
RefNorm ref_group_norm(const Tensor& x, int64_t G, const Tensor& w, const Tensor& b, double eps, bool silu) {
  const std::vector<double> xv = x.to_vector();
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C), Cg = C / G;
  const std::vector<double> wv = w.defined() ? w.to_vector() : std::vector<double>(C, 1.0);
  const std::vector<double> bv = b.defined() ? b.to_vector() : std::vector<double>(C, 0.0);
  RefNorm r{std::vector<double>(xv.size()), {}, {}};
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      double sum = 0, sq = 0;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c)
        for (int64_t s = 0; s < S; ++s) sum += xv[(n * C + c) * S + s];
      const double mean = sum / double(Cg * S);
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c)
        for (int64_t s = 0; s < S; ++s) sq += std::pow(xv[(n * C + c) * S + s] - mean, 2);
      const double rstd = 1.0 / std::sqrt(sq / double(Cg * S) + eps);
      r.mean.push_back(mean);
      r.rstd.push_back(rstd);
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t i = (n * C + c) * S + s;
          const double z = (xv[i] - mean) * rstd * wv[c] + bv[c];
          r.y[i] = silu ? z / (1 + std::exp(-z)) : z;
        }
    }
  return r;
}

RefNorm ref_layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  const std::vector<double> xv = x.to_vector();
  const int64_t D = x.size(-1), R = x.numel() / D;
  const std::vector<double> wv = w.defined() ? w.to_vector() : std::vector<double>(D, 1.0);
  const std::vector<double> bv = b.defined() ? b.to_vector() : std::vector<double>(D, 0.0);
  RefNorm r{std::vector<double>(xv.size()), {}, {}};
  for (int64_t row = 0; row < R; ++row) {
    double sum = 0, sq = 0;
    for (int64_t d = 0; d < D; ++d) sum += xv[row * D + d];
    const double mean = sum / double(D);
    for (int64_t d = 0; d < D; ++d) sq += std::pow(xv[row * D + d] - mean, 2);
    const double rstd = 1.0 / std::sqrt(sq / double(D) + eps);
    r.mean.push_back(mean);
    r.rstd.push_back(rstd);
    for (int64_t d = 0; d < D; ++d) r.y[row * D + d] = (xv[row * D + d] - mean) * rstd * wv[d] + bv[d];
  }
  return r;
}

// Round-trips through dtype so the f64 reference sees the same inputs as the kernel.
Tensor rounded(const Tensor& t, DType dt) { return t.defined() ? to(to(t, dt), DType::F64) : t; }

// Output tolerance per dtype: f32 computes like f64 up to rounding, f16/bf16 round the output.
double tol_for(DType dt) {
  switch (dt) {
    case DType::F32:
      return 2e-5;
    case DType::F16:
      return 4e-3;
    case DType::BF16:
      return 3e-2;
    default:
      return 1e-12;
  }
}

struct GroupCase {
  Shape shape;
  int64_t groups;
};
const GroupCase kGroupCases[] = {
    {{2, 64, 4, 4}, 32},   // SD's GroupNorm(32) on 64 channels
    {{3, 6, 5, 7}, 3},     // odd channel and spatial sizes
    {{2, 6, 9}, 2},        // 1-d spatial
    {{1, 4, 3, 2, 5}, 2},  // 3-d spatial
    {{4, 6}, 3},           // no spatial dims
    {{2, 5, 3}, 1},        // one group (LayerNorm over C and spatial)
    {{2, 5, 3}, 5},        // one channel per group (InstanceNorm)
};

TEST(GroupNorm, ForwardMatchesLoop) {
  for (const auto& c : kGroupCases) {
    const int64_t C = c.shape[1];
    Tensor x = random_tensor(c.shape, DType::F64, 1, -2, 3);
    Tensor w = random_tensor({C}, DType::F64, 2, 0.5, 1.5), b = random_tensor({C}, DType::F64, 3);
    for (bool silu : {false, true}) {
      for (int affine = 0; affine < 4; ++affine) {  // weight and bias each on or off
        Tensor wa = affine & 1 ? w : Tensor(), ba = affine & 2 ? b : Tensor();
        const RefNorm ref = ref_group_norm(x, c.groups, wa, ba, 1e-5, silu);
        const std::string what = shape_str(c.shape) + " groups " + std::to_string(c.groups) + " silu " +
                                 std::to_string(silu) + " affine " + std::to_string(affine);
        Tensor y = group_norm(x, c.groups, wa, ba, 1e-5, silu);
        EXPECT_EQ(y.shape(), c.shape);
        EXPECT_TRUE(test::all_close(y, ref.y, 1e-12, 1e-12)) << what;
        EXPECT_TRUE(test::all_close(
            group_norm(test::non_contiguous(x), c.groups, wa.defined() ? test::non_contiguous(wa) : wa, ba, 1e-5, silu),
            ref.y, 1e-12, 1e-12))
            << what << " non-contiguous";
      }
      for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
        const RefNorm ref = ref_group_norm(rounded(x, dt), c.groups, rounded(w, dt), rounded(b, dt), 1e-5, silu);
        Tensor y = group_norm(to(x, dt), c.groups, to(w, dt), to(b, dt), 1e-5, silu);
        EXPECT_EQ(y.dtype(), dt);
        EXPECT_TRUE(test::all_close(y, ref.y, tol_for(dt), tol_for(dt))) << dtype_name(dt) << " " << shape_str(c.shape);
      }
    }
  }
}

TEST(GroupNorm, SavedStatisticsMatchLoop) {
  // The CUDA kernels will be compared on these too: mean/rstd are [N, groups] in f32
  // (f64 for f64 inputs).
  Tensor x = random_tensor({3, 6, 5, 7}, DType::F64, 4, -1, 2);
  for (DType dt : {DType::F64, DType::F32, DType::BF16}) {
    cpu::NormForward f = cpu::group_norm_forward(to(x, dt), 3, Tensor(), Tensor(), 1e-6, false);
    const RefNorm rr = ref_group_norm(rounded(x, dt), 3, Tensor(), Tensor(), 1e-6, false);
    EXPECT_EQ(f.mean.shape(), (Shape{3, 3}));
    EXPECT_EQ(f.mean.dtype(), dt == DType::F64 ? DType::F64 : DType::F32);
    EXPECT_EQ(f.rstd.dtype(), f.mean.dtype());
    const double tol = dt == DType::F64 ? 1e-13 : 1e-5;
    EXPECT_TRUE(test::all_close(f.mean, rr.mean, tol, tol)) << dtype_name(dt);
    EXPECT_TRUE(test::all_close(f.rstd, rr.rstd, tol, tol)) << dtype_name(dt);
  }
}

TEST(GroupNorm, LargeGroupsWithOffsetStayAccurateInF32) {
  // 16 channels of 64x64 per group, values 100 +- 1: a one-pass E[x^2] - E[x]^2 in f32
  // would lose most digits of the variance.
  Tensor x = random_tensor({1, 32, 64, 64}, DType::F64, 5, 99, 101);
  const RefNorm ref = ref_group_norm(rounded(x, DType::F32), 2, Tensor(), Tensor(), 1e-6, false);
  EXPECT_TRUE(test::all_close(group_norm(to(x, DType::F32), 2, Tensor(), Tensor(), 1e-6), ref.y, 1e-3, 1e-3));
}

TEST(GroupNorm, BadArgumentsRaise) {
  Tensor x = zeros({2, 6, 3});
  try {
    group_norm(x, 4, Tensor(), Tensor(), 1e-5);
    FAIL() << "C=6 with groups=4 must raise";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("C=6"), std::string::npos) << msg;
    EXPECT_NE(msg.find("groups=4"), std::string::npos) << msg;
  }
  EXPECT_THROW(group_norm(x, 0, Tensor(), Tensor(), 1e-5), Error);
  EXPECT_THROW(group_norm(zeros({6}), 3, Tensor(), Tensor(), 1e-5), Error);
  EXPECT_THROW(group_norm(x, 3, zeros({5}), Tensor(), 1e-5), Error);
  EXPECT_THROW(group_norm(x, 3, Tensor(), zeros({6, 1}), 1e-5), Error);
  EXPECT_THROW(group_norm(x, 3, zeros({6}, DType::F64), Tensor(), 1e-5), Error);
  EXPECT_THROW(group_norm(zeros({2, 6, 3}, DType::I32), 3, Tensor(), Tensor(), 1e-5), Error);
}

TEST(GradGroupNorm, EveryInputWithAndWithoutSilu) {
  const GroupCase cases[] = {{{2, 4, 3}, 2}, {{2, 6, 2, 3}, 3}, {{3, 4}, 2}, {{1, 4, 2, 1, 2}, 1}};
  for (const auto& c : cases) {
    const int64_t C = c.shape[1], G = c.groups;
    Tensor x = random_tensor(c.shape, DType::F64, 6, -2, 2);
    Tensor w = random_tensor({C}, DType::F64, 7, 0.5, 1.5), b = random_tensor({C}, DType::F64, 8);
    for (bool silu : {false, true}) {
      auto f = [G, silu](const std::vector<Tensor>& in) { return group_norm(in[0], G, in[1], in[2], 1e-5, silu); };
      EXPECT_TRUE(gradcheck(f, {x, w, b})) << shape_str(c.shape) << " silu " << silu;
      EXPECT_TRUE(gradcheck(f, {test::non_contiguous(x), test::non_contiguous(w), b}))
          << shape_str(c.shape) << " silu " << silu << " non-contiguous";
      // Affine off, and one input at a time (the backward skips what is not needed).
      auto plain = [G, silu](const std::vector<Tensor>& in) {
        return group_norm(in[0], G, Tensor(), Tensor(), 1e-5, silu);
      };
      EXPECT_TRUE(gradcheck(plain, {x})) << shape_str(c.shape) << " silu " << silu << " no affine";
      for (int i = 0; i < 3; ++i) {
        test::GradcheckOptions opt;
        opt.check = {i == 0, i == 1, i == 2};
        EXPECT_TRUE(gradcheck(f, {x, w, b}, opt)) << shape_str(c.shape) << " only input " << i;
      }
    }
  }
}

TEST(GradGroupNorm, LowPrecisionBackwardMatchesF64) {
  Tensor x = random_tensor({2, 8, 3, 5}, DType::F64, 9, -2, 2);
  Tensor w = random_tensor({8}, DType::F64, 10, 0.5, 1.5), b = random_tensor({8}, DType::F64, 11);
  Tensor gy = random_tensor({2, 8, 3, 5}, DType::F64, 12);
  auto grads = [&](DType dt) {
    // Fresh leaves (copies): to() would return x itself for f64.
    Tensor xi = copy_to(x, dt, Device::cpu()), wi = copy_to(w, dt, Device::cpu()), bi = copy_to(b, dt, Device::cpu());
    xi.set_requires_grad(true);
    wi.set_requires_grad(true);
    bi.set_requires_grad(true);
    autograd::backward(group_norm(xi, 4, wi, bi, 1e-5, true), to(gy, dt));
    return std::vector<Tensor>{xi.grad(), wi.grad(), bi.grad()};
  };
  const std::vector<Tensor> ref = grads(DType::F64);
  for (DType dt : {DType::F32, DType::BF16}) {
    const std::vector<Tensor> g = grads(dt);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(g[i].dtype(), dt);
      EXPECT_LT(test::relative_error(g[i], ref[i]), dt == DType::F32 ? 1e-5 : 3e-2) << dtype_name(dt) << " " << i;
    }
  }
}

// Gradients of x, weight and bias for the seed `gy`, with fresh leaves.
std::vector<Tensor> grads_of(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> in,
                             const Tensor& gy) {
  for (Tensor& t : in) {
    t = copy_to(t, t.dtype(), Device::cpu());
    t.set_requires_grad(true);
  }
  autograd::backward(f(in), gy);
  std::vector<Tensor> g;
  for (const Tensor& t : in) g.push_back(t.grad());
  return g;
}

TEST(GradGroupNorm, MatchesComposedOpsAtSize) {
  // Large enough for the kernels' parallel paths (several threads, many groups), where a
  // finite-difference check would be too slow: compare with autograd through plain ops.
  const int64_t N = 2, C = 64, G = 32;
  Tensor x = random_tensor({N, C, 12, 10}, DType::F64, 13, -2, 2);
  Tensor w = random_tensor({C}, DType::F64, 14, 0.5, 1.5), b = random_tensor({C}, DType::F64, 15);
  Tensor gy = random_tensor(x.shape(), DType::F64, 16);
  for (bool fuse : {false, true}) {
    auto composed = [&](const std::vector<Tensor>& in) {
      Tensor xr = reshape(in[0], {N, G, -1});
      Tensor centered = xr - mean(xr, {2}, true);
      Tensor xhat = reshape(centered * rsqrt(mean(square(centered), {2}, true) + 1e-5), x.shape());
      Tensor z = xhat * reshape(in[1], {C, 1, 1}) + reshape(in[2], {C, 1, 1});
      return fuse ? silu(z) : z;
    };
    auto fused = [&](const std::vector<Tensor>& in) { return group_norm(in[0], G, in[1], in[2], 1e-5, fuse); };
    const std::vector<Tensor> ref = grads_of(composed, {x, w, b}, gy), got = grads_of(fused, {x, w, b}, gy);
    for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(test::all_close(got[i], ref[i], 1e-10, 1e-11)) << "input " << i;
  }
}

// ------------------------------------------------------------------------- LayerNorm

TEST(LayerNorm, ForwardMatchesLoop) {
  for (const Shape& s : {Shape{5, 7}, Shape{2, 3, 16}, Shape{9}, Shape{4, 1}, Shape{3, 2, 77}}) {
    const int64_t D = s.back();
    Tensor x = random_tensor(s, DType::F64, 20, -2, 3);
    Tensor w = random_tensor({D}, DType::F64, 21, 0.5, 1.5), b = random_tensor({D}, DType::F64, 22);
    for (int affine = 0; affine < 4; ++affine) {
      Tensor wa = affine & 1 ? w : Tensor(), ba = affine & 2 ? b : Tensor();
      const RefNorm ref = ref_layer_norm(x, wa, ba, 1e-5);
      EXPECT_TRUE(test::all_close(layer_norm(x, wa, ba, 1e-5), ref.y, 1e-12, 1e-12)) << shape_str(s);
      EXPECT_TRUE(
          test::all_close(layer_norm(test::non_contiguous(x), wa, ba.defined() ? test::non_contiguous(ba) : ba, 1e-5),
                          ref.y, 1e-12, 1e-12))
          << shape_str(s) << " non-contiguous";
    }
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      const RefNorm ref = ref_layer_norm(rounded(x, dt), rounded(w, dt), rounded(b, dt), 1e-5);
      Tensor y = layer_norm(to(x, dt), to(w, dt), to(b, dt), 1e-5);
      EXPECT_EQ(y.dtype(), dt);
      EXPECT_TRUE(test::all_close(y, ref.y, tol_for(dt), tol_for(dt))) << dtype_name(dt) << " " << shape_str(s);
    }
  }
}

TEST(LayerNorm, SavedStatisticsMatchLoop) {
  Tensor x = random_tensor({2, 3, 10}, DType::F64, 23);
  for (DType dt : {DType::F64, DType::F16}) {
    cpu::NormForward f = cpu::layer_norm_forward(to(x, dt), Tensor(), Tensor(), 1e-5);
    const RefNorm ref = ref_layer_norm(rounded(x, dt), Tensor(), Tensor(), 1e-5);
    EXPECT_EQ(f.mean.shape(), (Shape{2, 3}));
    EXPECT_EQ(f.rstd.dtype(), dt == DType::F64 ? DType::F64 : DType::F32);
    const double tol = dt == DType::F64 ? 1e-13 : 1e-5;
    EXPECT_TRUE(test::all_close(f.mean, ref.mean, tol, tol));
    EXPECT_TRUE(test::all_close(f.rstd, ref.rstd, tol, tol));
  }
}

TEST(LayerNorm, BadArgumentsRaise) {
  EXPECT_THROW(layer_norm(zeros({2, 4}), zeros({3}), Tensor(), 1e-5), Error);
  EXPECT_THROW(layer_norm(zeros({2, 4}), Tensor(), zeros({2, 4}), 1e-5), Error);
  EXPECT_THROW(layer_norm(zeros({2, 4}), zeros({4}, DType::F16), Tensor(), 1e-5), Error);
  EXPECT_THROW(layer_norm(scalar_tensor(1.0), Tensor(), Tensor(), 1e-5), Error);
  EXPECT_THROW(layer_norm(zeros({2, 4}, DType::I64), Tensor(), Tensor(), 1e-5), Error);
}

TEST(GradLayerNorm, EveryInput) {
  // 40 rows cover more than one of the backward's fixed row blocks for dweight/dbias.
  for (const Shape& s : {Shape{3, 5}, Shape{2, 3, 4}, Shape{40, 3}, Shape{6}}) {
    const int64_t D = s.back();
    Tensor x = random_tensor(s, DType::F64, 24, -2, 2);
    Tensor w = random_tensor({D}, DType::F64, 25, 0.5, 1.5), b = random_tensor({D}, DType::F64, 26);
    auto f = [](const std::vector<Tensor>& in) { return layer_norm(in[0], in[1], in[2], 1e-5); };
    EXPECT_TRUE(gradcheck(f, {x, w, b})) << shape_str(s);
    EXPECT_TRUE(gradcheck(f, {test::non_contiguous(x), w, test::non_contiguous(b)})) << shape_str(s) << " non-contig";
    EXPECT_TRUE(
        gradcheck([](const std::vector<Tensor>& in) { return layer_norm(in[0], Tensor(), Tensor(), 1e-5); }, {x}))
        << shape_str(s) << " no affine";
    for (int i = 0; i < 3; ++i) {
      test::GradcheckOptions opt;
      opt.check = {i == 0, i == 1, i == 2};
      EXPECT_TRUE(gradcheck(f, {x, w, b}, opt)) << shape_str(s) << " only input " << i;
    }
  }
}

TEST(GradLayerNorm, MatchesComposedOpsAtSize) {
  const int64_t D = 96;
  Tensor x = random_tensor({3, 77, D}, DType::F64, 27, -2, 2);
  Tensor w = random_tensor({D}, DType::F64, 28, 0.5, 1.5), b = random_tensor({D}, DType::F64, 29);
  Tensor gy = random_tensor(x.shape(), DType::F64, 30);
  auto composed = [](const std::vector<Tensor>& in) {
    Tensor centered = in[0] - mean(in[0], {-1}, true);
    return centered * rsqrt(mean(square(centered), {-1}, true) + 1e-5) * in[1] + in[2];
  };
  auto fused = [](const std::vector<Tensor>& in) { return layer_norm(in[0], in[1], in[2], 1e-5); };
  const std::vector<Tensor> ref = grads_of(composed, {x, w, b}, gy), got = grads_of(fused, {x, w, b}, gy);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(test::all_close(got[i], ref[i], 1e-10, 1e-11)) << "input " << i;
}

}  // namespace
}  // namespace sd
