// Scaled dot-product attention: forward (and saved log-sum-exp) against a float64 loop with
// Lq != Lk, D != Dv, float / Bool masks, causal masking and fully masked rows; backward
// against finite differences for q, k and v, including permuted (non-contiguous) inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "autograd/engine.h"
#include "ops/attention.h"
#include "ops/cpu/attention.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/softmax.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::gradcheck;
using test::random_tensor;

const double kInf = std::numeric_limits<double>::infinity();

struct RefAttention {
  std::vector<double> out, lse;
};

// Direct loops over the logical (row-major) values; the mask is broadcast by index
// arithmetic, right-aligned against [B, H, Lq, Lk].
RefAttention ref_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, double scale,
                           bool causal) {
  const std::vector<double> qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector();
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = k.size(2), Dv = v.size(3);
  if (scale == 0) scale = 1 / std::sqrt(double(D));
  const std::vector<double> mv = mask.defined() ? mask.to_vector() : std::vector<double>();
  const bool is_bool = mask.defined() && mask.dtype() == DType::Bool;
  auto mask_at = [&](int64_t b, int64_t h, int64_t i, int64_t j) {
    const int64_t idx[4] = {b, h, i, j};
    const int64_t md = mask.dim();
    int64_t flat = 0;
    for (int64_t d = 0; d < md; ++d) flat = flat * mask.size(d) + (mask.size(d) == 1 ? 0 : idx[4 - md + d]);
    return mv[flat];
  };
  RefAttention r;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Lq; ++i) {
        std::vector<double> s(Lk);
        double m = -kInf;
        for (int64_t j = 0; j < Lk; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += qv[((b * H + h) * Lq + i) * D + d] * kv[((b * H + h) * Lk + j) * D + d];
          s[j] = scale * dot;
          if (mask.defined()) {
            if (is_bool)
              s[j] = mask_at(b, h, i, j) != 0 ? s[j] : -kInf;
            else
              s[j] += mask_at(b, h, i, j);
          }
          if (causal && j > i) s[j] = -kInf;
          m = std::max(m, s[j]);
        }
        if (m == -kInf) {  // fully masked row: defined as 0
          for (int64_t c = 0; c < Dv; ++c) r.out.push_back(0);
          r.lse.push_back(-kInf);
          continue;
        }
        double sum = 0;
        for (int64_t j = 0; j < Lk; ++j) sum += std::exp(s[j] - m);
        for (int64_t c = 0; c < Dv; ++c) {
          double o = 0;
          for (int64_t j = 0; j < Lk; ++j) o += std::exp(s[j] - m) / sum * vv[((b * H + h) * Lk + j) * Dv + c];
          r.out.push_back(o);
        }
        r.lse.push_back(m + std::log(sum));
      }
  return r;
}

// The UNet's layout: a contiguous [B, L, H, E] tensor viewed as [B, H, L, E].
Tensor permuted(const Tensor& t) { return permute(contiguous(permute(t, {0, 2, 1, 3})), {0, 2, 1, 3}); }

struct MaskCase {
  std::string name;
  Tensor mask;
  bool causal;
  double scale;
};

// B=2, H=3, Lq=7, Lk=5: masks of several broadcast shapes, Bool masks with a fully masked
// row (batch 1, row 3), causal alone and with a mask.
std::vector<MaskCase> mask_cases() {
  const int64_t B = 2, Lq = 7, Lk = 5;
  std::vector<double> pad(B * Lk, 0.0);
  pad[0 * Lk + 3] = pad[0 * Lk + 4] = -kInf;  // batch 0 pads its last two keys
  std::vector<double> keep(B * Lq * Lk);
  for (size_t i = 0; i < keep.size(); ++i) keep[i] = (i * 7 + 3) % 5 != 0;
  for (int64_t j = 0; j < Lk; ++j) keep[(1 * Lq + 3) * Lk + j] = 0;
  for (int64_t j = 0; j < Lk; ++j) keep[(0 * Lq + 2) * Lk + j] = j == 4;  // a single key left
  return {
      {"none", Tensor(), false, 0.0},
      {"scale 0.3", Tensor(), false, 0.3},
      {"float [Lq, Lk]", random_tensor({Lq, Lk}, DType::F64, 30, -2, 1), false, 0.0},
      {"float [B, 1, 1, Lk] padding", from_vector(pad, {B, 1, 1, Lk}, DType::F64), false, 0.0},
      {"float [B, H, Lq, Lk]", random_tensor({B, 3, Lq, Lk}, DType::F64, 31, -1, 1), false, 0.0},
      {"bool [B, 1, Lq, Lk]", from_vector(keep, {B, 1, Lq, Lk}, DType::Bool), false, 0.0},
      {"causal", Tensor(), true, 0.0},
      {"causal + bool", from_vector(keep, {B, 1, Lq, Lk}, DType::Bool), true, 0.0},
      {"causal + float [Lk]", random_tensor({Lk}, DType::F64, 32, -1, 1), true, 0.5},
  };
}

Tensor mask_as(const Tensor& mask, DType dt) {
  return mask.defined() && mask.dtype() != DType::Bool ? to(mask, dt) : mask;
}

TEST(Attention, ForwardMatchesLoop) {
  Tensor q = random_tensor({2, 3, 7, 8}, DType::F64, 1, -1.5, 1.5);
  Tensor k = random_tensor({2, 3, 5, 8}, DType::F64, 2, -1.5, 1.5);
  Tensor v = random_tensor({2, 3, 5, 6}, DType::F64, 3);
  for (const MaskCase& c : mask_cases()) {
    const RefAttention ref = ref_attention(q, k, v, c.mask, c.scale, c.causal);
    Tensor out = scaled_dot_product_attention(q, k, v, c.mask, c.scale, c.causal);
    EXPECT_EQ(out.shape(), (Shape{2, 3, 7, 6}));
    EXPECT_TRUE(test::all_close(out, ref.out, 1e-12, 1e-13)) << c.name;
    EXPECT_TRUE(
        test::all_close(scaled_dot_product_attention(permuted(q), permuted(k), permuted(v), c.mask, c.scale, c.causal),
                        ref.out, 1e-12, 1e-13))
        << c.name << " permuted";
    // A non-contiguous mask (and q with a stride-2 last dim).
    if (c.mask.defined() && c.mask.dtype() != DType::Bool) {
      EXPECT_TRUE(test::all_close(
          scaled_dot_product_attention(test::non_contiguous(q), k, v, test::non_contiguous(c.mask), c.scale, c.causal),
          ref.out, 1e-12, 1e-13))
          << c.name << " non-contiguous mask";
    }
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      auto rt = [dt](const Tensor& t) { return to(to(t, dt), DType::F64); };
      const Tensor m = mask_as(c.mask, dt);
      const RefAttention r = ref_attention(rt(q), rt(k), rt(v), mask_as(m, DType::F64), c.scale, c.causal);
      Tensor o = scaled_dot_product_attention(to(q, dt), to(k, dt), to(v, dt), m, c.scale, c.causal);
      EXPECT_EQ(o.dtype(), dt);
      const double tol = dt == DType::F32 ? 1e-5 : (dt == DType::F16 ? 2e-3 : 1.6e-2);
      EXPECT_TRUE(test::all_close(o, r.out, tol, tol)) << c.name << " " << dtype_name(dt);
    }
  }
}

// Sizes that cross the f32 kernel's tiles (64 query rows, 256 keys) with partial last tiles,
// scores that grow along the keys (so later tiles raise the running max and earlier sums are
// rescaled), an additive mask that hides the whole first key tile from some rows, a Bool mask
// that hides every key from one row, and causal masking (whole key tiles skipped).
TEST(Attention, TiledForwardMatchesLoopAcrossTiles) {
  const int64_t B = 1, H = 2, Lq = 150, Lk = 600, D = 40, Dv = 24;
  Tensor q = random_tensor({B, H, Lq, D}, DType::F64, 41, -1, 1);
  Tensor k = random_tensor({B, H, Lk, D}, DType::F64, 42, -1, 1);
  Tensor v = random_tensor({B, H, Lk, Dv}, DType::F64, 43);
  std::vector<double> ramp(size_t(Lq * Lk)), keep(size_t(Lq * Lk), 1.0);
  for (int64_t i = 0; i < Lq; ++i)
    for (int64_t j = 0; j < Lk; ++j) {
      ramp[size_t(i * Lk + j)] = (i % 3 == 0 && j < 256) ? -kInf : 8.0 * double(j) / double(Lk);
      if (i == 77) keep[size_t(i * Lk + j)] = 0;
    }
  const std::vector<MaskCase> cases = {
      {"no mask", Tensor(), false, 0.0},
      {"growing scores, first tile hidden", from_vector(ramp, {Lq, Lk}, DType::F64), false, 0.0},
      {"bool, one row hidden", from_vector(keep, {1, 1, Lq, Lk}, DType::Bool), false, 0.0},
      {"causal", Tensor(), true, 0.0},
  };
  for (const MaskCase& c : cases) {
    const double scale = c.scale == 0 ? 1 / std::sqrt(double(D)) : c.scale;
    const RefAttention r = ref_attention(q, k, v, c.mask, scale, c.causal);
    cpu::AttentionForward f = cpu::attention_forward(to(q, DType::F32), to(k, DType::F32), to(v, DType::F32),
                                                     mask_as(c.mask, DType::F32), scale, c.causal);
    EXPECT_TRUE(test::all_close(f.out, r.out, 1e-5, 1e-5)) << c.name;
    EXPECT_TRUE(test::all_close(f.lse, r.lse, 1e-5, 1e-6)) << c.name;
  }
}

TEST(Attention, SavedLogSumExpMatchesLoop) {
  Tensor q = random_tensor({2, 3, 7, 8}, DType::F64, 4);
  Tensor k = random_tensor({2, 3, 5, 8}, DType::F64, 5);
  Tensor v = random_tensor({2, 3, 5, 6}, DType::F64, 6);
  for (const MaskCase& c : mask_cases()) {
    const double scale = c.scale == 0 ? 1 / std::sqrt(8.0) : c.scale;
    for (DType dt : {DType::F64, DType::BF16}) {
      auto rt = [dt](const Tensor& t) { return to(to(t, dt), DType::F64); };
      const Tensor m = mask_as(c.mask, dt);
      cpu::AttentionForward f = cpu::attention_forward(to(q, dt), to(k, dt), to(v, dt), m, scale, c.causal);
      const RefAttention r = ref_attention(rt(q), rt(k), rt(v), mask_as(m, DType::F64), scale, c.causal);
      EXPECT_EQ(f.lse.shape(), (Shape{2, 3, 7}));
      EXPECT_EQ(f.lse.dtype(), dt == DType::F64 ? DType::F64 : DType::F32);
      EXPECT_TRUE(test::all_close(f.lse, r.lse, dt == DType::F64 ? 1e-13 : 1e-5, 1e-6)) << c.name;
    }
  }
}

TEST(Attention, FullyMaskedRowsGiveZerosNotNaN) {
  Tensor q = random_tensor({1, 2, 3, 4}, DType::F32, 7);
  Tensor k = random_tensor({1, 2, 4, 4}, DType::F32, 8);
  Tensor v = random_tensor({1, 2, 4, 5}, DType::F32, 9);
  // Row 1 masked everywhere: by Bool false, and by an additive -inf mask.
  std::vector<double> keep(12, 1.0), add(12, 0.0);
  for (int j = 0; j < 4; ++j) {
    keep[4 + j] = 0;
    add[4 + j] = -kInf;
  }
  for (const Tensor& mask : {from_vector(keep, {3, 4}, DType::Bool), from_vector(add, {3, 4}, DType::F32)}) {
    Tensor qi = copy_to(q, DType::F32, Device::cpu()), ki = copy_to(k, DType::F32, Device::cpu()),
           vi = copy_to(v, DType::F32, Device::cpu());
    for (Tensor* t : {&qi, &ki, &vi}) t->set_requires_grad(true);
    Tensor out = scaled_dot_product_attention(qi, ki, vi, mask);
    const std::vector<double> o = out.to_vector();
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t c = 0; c < 5; ++c) EXPECT_EQ(o[(h * 3 + 1) * 5 + c], 0.0) << "head " << h;
    autograd::backward(out, random_tensor(out.shape(), DType::F32, 10));
    for (Tensor* t : {&qi, &ki, &vi})
      for (double g : t->grad().to_vector()) EXPECT_FALSE(std::isnan(g));
    const std::vector<double> gq = qi.grad().to_vector();
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t d = 0; d < 4; ++d) EXPECT_EQ(gq[(h * 3 + 1) * 4 + d], 0.0);
  }
}

TEST(Attention, BadArgumentsRaise) {
  Tensor q = zeros({1, 2, 3, 4}), k = zeros({1, 2, 5, 4}), v = zeros({1, 2, 5, 6});
  EXPECT_NO_THROW(scaled_dot_product_attention(q, k, v));
  EXPECT_THROW(scaled_dot_product_attention(zeros({2, 3, 4}), k, v), Error);
  EXPECT_THROW(scaled_dot_product_attention(q, zeros({1, 2, 5, 3}), v), Error);  // D differs
  EXPECT_THROW(scaled_dot_product_attention(q, k, zeros({1, 2, 4, 6})), Error);  // Lk differs
  EXPECT_THROW(scaled_dot_product_attention(q, zeros({1, 3, 5, 4}), v), Error);  // H differs
  EXPECT_THROW(scaled_dot_product_attention(q, k, zeros({1, 2, 5, 6}, DType::F64)), Error);
  EXPECT_THROW(scaled_dot_product_attention(q, k, v, zeros({3, 4})), Error);        // not [.., Lq, Lk]
  EXPECT_THROW(scaled_dot_product_attention(q, k, v, zeros({2, 1, 3, 5})), Error);  // B differs
  EXPECT_THROW(scaled_dot_product_attention(q, k, v, zeros({3, 5}, DType::I32)), Error);
  EXPECT_THROW(scaled_dot_product_attention(q, k, v, zeros({3, 5}, DType::F16)), Error);
  EXPECT_THROW(scaled_dot_product_attention(q, k, v, zeros({1, 1, 1, 3, 5})), Error);
}

TEST(GradAttention, QueryKeyValue) {
  struct Shapes {
    int64_t B, H, Lq, Lk, D, Dv;
  };
  for (const Shapes s : {Shapes{1, 2, 3, 4, 3, 2}, Shapes{2, 1, 4, 3, 2, 3}}) {
    Tensor q = random_tensor({s.B, s.H, s.Lq, s.D}, DType::F64, 11, -1.5, 1.5);
    Tensor k = random_tensor({s.B, s.H, s.Lk, s.D}, DType::F64, 12, -1.5, 1.5);
    Tensor v = random_tensor({s.B, s.H, s.Lk, s.Dv}, DType::F64, 13);
    std::vector<double> keep(s.Lq * s.Lk);
    for (size_t i = 0; i < keep.size(); ++i) keep[i] = i % 3 != 1;
    for (int64_t j = 0; j < s.Lk; ++j) keep[1 * s.Lk + j] = 0;  // row 1 fully masked
    const std::vector<MaskCase> cases = {
        {"none", Tensor(), false, 0.0},
        {"float", random_tensor({s.Lq, s.Lk}, DType::F64, 14, -1, 1), false, 0.7},
        {"bool", from_vector(keep, {s.Lq, s.Lk}, DType::Bool), false, 0.0},
        {"causal", Tensor(), true, 0.0},
        {"causal + float", random_tensor({s.B, 1, 1, s.Lk}, DType::F64, 15, -1, 1), true, 0.0},
    };
    for (const MaskCase& c : cases) {
      auto f = [c](const std::vector<Tensor>& in) {
        return scaled_dot_product_attention(in[0], in[1], in[2], c.mask, c.scale, c.causal);
      };
      EXPECT_TRUE(gradcheck(f, {q, k, v})) << c.name;
      EXPECT_TRUE(gradcheck(f, {permuted(q), permuted(k), permuted(v)})) << c.name << " permuted";
      for (int i = 0; i < 3; ++i) {
        test::GradcheckOptions opt;
        opt.check = {i == 0, i == 1, i == 2};
        EXPECT_TRUE(gradcheck(f, {q, k, v}, opt)) << c.name << " only input " << i;
      }
    }
  }
}

TEST(GradAttention, ThroughUNetStyleViews) {
  // q, k, v come from [B, L, H*D] projections reshaped to [B, L, H, D] and permuted; the
  // gradient must flow back through those views to the projection outputs.
  Tensor x = random_tensor({2, 5, 6}, DType::F64, 16);
  Tensor y = random_tensor({2, 4, 6}, DType::F64, 17);
  auto f = [](const std::vector<Tensor>& in) {
    auto heads = [](const Tensor& t) { return permute(reshape(t, {t.size(0), t.size(1), 2, 3}), {0, 2, 1, 3}); };
    return scaled_dot_product_attention(heads(in[0]), heads(in[1]), heads(in[1] * 0.5));
  };
  EXPECT_TRUE(gradcheck(f, {x, y}));
}

TEST(GradAttention, LowPrecisionBackwardMatchesF64) {
  Tensor q = random_tensor({2, 2, 7, 8}, DType::F64, 18), k = random_tensor({2, 2, 5, 8}, DType::F64, 19);
  Tensor v = random_tensor({2, 2, 5, 6}, DType::F64, 20), go = random_tensor({2, 2, 7, 6}, DType::F64, 21);
  auto grads = [&](DType dt) {
    std::vector<Tensor> in = {copy_to(q, dt, Device::cpu()), copy_to(k, dt, Device::cpu()),
                              copy_to(v, dt, Device::cpu())};
    for (Tensor& t : in) t.set_requires_grad(true);
    autograd::backward(scaled_dot_product_attention(in[0], in[1], in[2], Tensor(), 0.0, true), to(go, dt));
    return std::vector<Tensor>{in[0].grad(), in[1].grad(), in[2].grad()};
  };
  const std::vector<Tensor> ref = grads(DType::F64);
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    const std::vector<Tensor> g = grads(dt);
    const double tol = dt == DType::F32 ? 1e-5 : (dt == DType::F16 ? 5e-3 : 3e-2);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(g[i].dtype(), dt);
      EXPECT_LT(test::relative_error(g[i], ref[i]), tol) << dtype_name(dt) << " input " << i;
    }
  }
}

TEST(GradAttention, MatchesComposedOpsAtSize) {
  // Large enough for the parallel paths and several row blocks per head (forward items are
  // blocks of query rows): compare with autograd through matmul and softmax, with a
  // finite additive mask and causal masking.
  const int64_t B = 2, H = 3, Lq = 70, Lk = 45, D = 16, Dv = 8;
  Tensor q = random_tensor({B, H, Lq, D}, DType::F64, 22), k = random_tensor({B, H, Lk, D}, DType::F64, 23);
  Tensor v = random_tensor({B, H, Lk, Dv}, DType::F64, 24), go = random_tensor({B, H, Lq, Dv}, DType::F64, 25);
  Tensor mask = random_tensor({B, 1, Lq, Lk}, DType::F64, 26, -1, 1);
  std::vector<double> tri(Lq * Lk);
  for (int64_t i = 0; i < Lq; ++i)
    for (int64_t j = 0; j < Lk; ++j) tri[i * Lk + j] = j > i ? -1e300 : 0.0;  // finite: no inf - inf
  Tensor causal_add = from_vector(tri, {Lq, Lk}, DType::F64);
  const double scale = 0.3;
  auto grads = [&](bool fused) {
    std::vector<Tensor> in = {copy_to(q, DType::F64, Device::cpu()), copy_to(k, DType::F64, Device::cpu()),
                              copy_to(v, DType::F64, Device::cpu())};
    for (Tensor& t : in) t.set_requires_grad(true);
    Tensor out = fused ? scaled_dot_product_attention(in[0], in[1], in[2], mask, scale, true)
                       : matmul(softmax(matmul(in[0], transpose(in[1], -1, -2)) * scale + mask + causal_add), in[2]);
    autograd::backward(out, go);
    return std::vector<Tensor>{out, in[0].grad(), in[1].grad(), in[2].grad()};
  };
  const std::vector<Tensor> ref = grads(false), got = grads(true);
  for (size_t i = 0; i < 4; ++i) EXPECT_TRUE(test::all_close(got[i], ref[i], 1e-10, 1e-12)) << "output/grad " << i;
}

}  // namespace
}  // namespace sd
