// Optimizer kernels against plain float64 loops: fused AdamW over several steps with f16
// grads and an f16 model copy, EMA, gradient norm and clipping, non-finite detection.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "ops/optim.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::random_tensor;

struct RefState {
  std::vector<double> p, m, v;
};

// One PyTorch AdamW step in double, g already unscaled.
void adamw_ref(RefState& s, const std::vector<double>& g, const AdamWConfig& c, int64_t step) {
  const double bc1 = 1 - std::pow(c.beta1, double(step)), bc2 = 1 - std::pow(c.beta2, double(step));
  for (size_t i = 0; i < s.p.size(); ++i) {
    s.p[i] *= 1 - c.lr * c.weight_decay;
    s.m[i] = c.beta1 * s.m[i] + (1 - c.beta1) * g[i];
    s.v[i] = c.beta2 * s.v[i] + (1 - c.beta2) * g[i] * g[i];
    s.p[i] -= (c.lr / bc1) * s.m[i] / (std::sqrt(s.v[i]) / std::sqrt(bc2) + c.eps);
  }
}

AdamWSlot make_slot(const Shape& shape, uint64_t seed, DType copy_dtype) {
  AdamWSlot s;
  s.master = random_tensor(shape, DType::F32, seed);
  s.exp_avg = zeros(shape);
  s.exp_avg_sq = zeros(shape);
  if (copy_dtype != DType::F64) s.model_copy = to(s.master, copy_dtype);  // F64 = no copy
  return s;
}

void run_adamw_against_loop(DType grad_dtype, DType copy_dtype, double loss_scale) {
  // {300, 250} spans two 64K-element chunks; the others are small, odd sizes.
  const std::vector<Shape> shapes = {{7}, {3, 5}, {33, 17}, {300, 250}};
  AdamWConfig cfg;
  cfg.lr = 1e-2;
  cfg.weight_decay = 0.1;
  std::vector<AdamWSlot> slots;
  std::vector<RefState> ref;
  for (size_t k = 0; k < shapes.size(); ++k) {
    slots.push_back(make_slot(shapes[k], 10 + k, copy_dtype));
    const int64_t n = slots.back().master.numel();
    ref.push_back({slots.back().master.to_vector(), std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)});
  }
  for (int64_t step = 1; step <= 5; ++step) {
    for (size_t k = 0; k < slots.size(); ++k) {
      // Loss-scaled gradients, as fp16 training produces them.
      slots[k].grad = random_tensor(shapes[k], grad_dtype, 100 * step + k, -loss_scale, loss_scale);
      std::vector<double> g = slots[k].grad.to_vector();
      for (double& x : g) x /= loss_scale;
      adamw_ref(ref[k], g, cfg, step);
    }
    fused_adamw_(slots, cfg, step, 1.0 / loss_scale);
  }
  for (size_t k = 0; k < slots.size(); ++k) {
    const std::string what = "slot " + std::to_string(k) + " grads " + dtype_name(grad_dtype);
    EXPECT_TRUE(test::all_close(slots[k].master, ref[k].p, 1e-5, 1e-6)) << what;
    EXPECT_TRUE(test::all_close(slots[k].exp_avg, ref[k].m, 1e-5, 1e-7)) << what;
    EXPECT_TRUE(test::all_close(slots[k].exp_avg_sq, ref[k].v, 1e-5, 1e-9)) << what;
    if (slots[k].model_copy.defined()) {
      EXPECT_EQ(slots[k].model_copy.dtype(), copy_dtype);
      // The copy is the f32 master rounded once to 16 bits.
      EXPECT_TRUE(test::all_close(slots[k].model_copy, to(to(slots[k].master, copy_dtype), DType::F64), 0, 0))
          << what;
      EXPECT_TRUE(test::all_close(slots[k].model_copy, ref[k].p, copy_dtype == DType::F16 ? 1e-3 : 8e-3, 1e-6))
          << what;
    }
  }
}

TEST(Optim, FusedAdamWF16GradsAndCopyMatchLoop) { run_adamw_against_loop(DType::F16, DType::F16, 1024.0); }
TEST(Optim, FusedAdamWBf16GradsAndCopyMatchLoop) { run_adamw_against_loop(DType::BF16, DType::BF16, 8.0); }
TEST(Optim, FusedAdamWF32GradsNoCopyMatchLoop) { run_adamw_against_loop(DType::F32, DType::F64, 1.0); }

TEST(Optim, FusedAdamWSkipsSlotsWithoutGrad) {
  std::vector<AdamWSlot> slots = {make_slot({4, 3}, 1, DType::F16), make_slot({5}, 2, DType::F64)};
  slots[1].grad = random_tensor({5}, DType::F32, 3);
  const std::vector<double> before = slots[0].master.to_vector();
  fused_adamw_(slots, AdamWConfig{}, 1);
  EXPECT_TRUE(test::all_close(slots[0].master, before, 0, 0));
  EXPECT_FALSE(test::all_close(slots[1].master, make_slot({5}, 2, DType::F64).master, 0, 0));
}

TEST(Optim, FusedAdamWBadSlotsRaiseNamingTheSlot) {
  auto expect_error = [](std::vector<AdamWSlot> slots, const std::string& needle) {
    try {
      fused_adamw_(slots, AdamWConfig{}, 1);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto good = [] {
    AdamWSlot s = make_slot({3, 4}, 1, DType::F16);
    s.grad = zeros({3, 4}, DType::F16);
    return s;
  };
  std::vector<AdamWSlot> slots = {good(), good()};
  slots[1].exp_avg = zeros({4, 3});
  expect_error(slots, "slot 1: exp_avg");
  slots = {good(), good()};
  slots[1].exp_avg_sq = zeros({3, 4}, DType::F16);
  expect_error(slots, "slot 1: exp_avg_sq");
  slots = {good()};
  slots[0].master = zeros({3, 4}, DType::BF16);
  expect_error(slots, "slot 0: master");
  slots = {good(), good(), good()};
  slots[2].grad = zeros({12});
  expect_error(slots, "slot 2: grad");
  slots = {good(), good()};
  slots[1].grad = zeros({3, 4}, DType::F64);
  expect_error(slots, "slot 1: grad");
  slots = {good(), good()};
  slots[0].model_copy = zeros({3, 4});
  expect_error(slots, "slot 0: model_copy");
  slots = {good(), good()};
  slots[1].model_copy = zeros({4, 3}, DType::F16);
  expect_error(slots, "slot 1: model_copy");
  slots = {good()};
  EXPECT_THROW(fused_adamw_(slots, AdamWConfig{}, 0), Error);  // steps count from 1
}

TEST(Optim, EmaMatchesLoop) {
  const double decay = 0.99;
  std::vector<Tensor> ema = {random_tensor({5}, DType::F32, 1), random_tensor({300, 250}, DType::F32, 2),
                             test::non_contiguous(random_tensor({3, 4}, DType::F32, 3))};
  std::vector<Tensor> params = {random_tensor({5}, DType::F32, 4), random_tensor({300, 250}, DType::BF16, 5),
                                test::non_contiguous(random_tensor({3, 4}, DType::F16, 6))};
  std::vector<std::vector<double>> expected;
  for (size_t k = 0; k < ema.size(); ++k) {
    std::vector<double> e = ema[k].to_vector(), p = params[k].to_vector();
    for (size_t i = 0; i < e.size(); ++i) e[i] = decay * e[i] + (1 - decay) * p[i];
    expected.push_back(e);
  }
  ema_update_(ema, params, decay);
  for (size_t k = 0; k < ema.size(); ++k) EXPECT_TRUE(test::all_close(ema[k], expected[k], 1e-6, 1e-7)) << k;
  EXPECT_THROW(ema_update_({zeros({3})}, {zeros({4})}, decay), Error);
  EXPECT_THROW(ema_update_({zeros({3})}, {}, decay), Error);
}

std::vector<Tensor> some_grads() {
  return {random_tensor({7}, DType::F32, 1, -2, 2), Tensor(), random_tensor({300, 250}, DType::F16, 2),
          random_tensor({3, 5}, DType::BF16, 3, -3, 3), test::non_contiguous(random_tensor({4, 6}, DType::F32, 4))};
}

double norm_ref(const std::vector<Tensor>& grads) {
  double s = 0;
  for (const Tensor& g : grads)
    if (g.defined())
      for (double x : g.to_vector()) s += x * x;
  return std::sqrt(s);
}

TEST(Optim, GlobalGradNormMatchesLoop) {
  std::vector<Tensor> grads = some_grads();
  EXPECT_NEAR(global_grad_norm(grads), norm_ref(grads), 1e-12 * norm_ref(grads));
  EXPECT_EQ(global_grad_norm({}), 0.0);
}

TEST(Optim, ClipGradNormMatchesLoop) {
  std::vector<Tensor> grads = some_grads();
  const double norm = norm_ref(grads);
  std::vector<std::vector<double>> before;
  for (const Tensor& g : grads) before.push_back(g.defined() ? g.to_vector() : std::vector<double>{});

  // Above the threshold: every grad scaled by max_norm / (norm + 1e-6).
  const double max_norm = norm / 3;
  EXPECT_NEAR(clip_grad_norm_(grads, max_norm), norm, 1e-12 * norm);
  const double coef = max_norm / (norm + 1e-6);
  for (size_t k = 0; k < grads.size(); ++k) {
    if (!grads[k].defined()) continue;
    std::vector<double> e = before[k];
    for (double& x : e) x *= coef;
    const double tol = grads[k].dtype() == DType::F32 ? 1e-6 : (grads[k].dtype() == DType::F16 ? 1e-3 : 8e-3);
    EXPECT_TRUE(test::all_close(grads[k], e, tol, 1e-7)) << k;
  }
  EXPECT_NEAR(global_grad_norm(grads), max_norm, 1e-3 * max_norm);

  // Below the threshold: nothing changes.
  std::vector<Tensor> g2 = some_grads();
  EXPECT_NEAR(clip_grad_norm_(g2, norm * 2), norm, 1e-12 * norm);
  for (size_t k = 0; k < g2.size(); ++k)
    if (g2[k].defined()) EXPECT_TRUE(test::all_close(g2[k], before[k], 0, 0)) << k;
}

TEST(Optim, NonFiniteDetection) {
  auto grads = [] {
    return std::vector<Tensor>{random_tensor({6}, DType::F32, 1), random_tensor({300, 250}, DType::F16, 2),
                               random_tensor({3, 5}, DType::BF16, 3)};
  };
  std::vector<Tensor> g = grads();
  EXPECT_FALSE(has_non_finite(g));
  g[0].data<float>()[3] = INFINITY;  // inf in the f32 tensor only
  EXPECT_TRUE(has_non_finite(g));
  g = grads();
  g[1].data<Half>()[300 * 250 - 1] = Half(NAN);  // NaN at the very end of the 2-chunk f16 tensor
  EXPECT_TRUE(has_non_finite(g));
  g = grads();
  g[2].data<BFloat16>()[0] = BFloat16(-INFINITY);
  EXPECT_TRUE(has_non_finite(g));
  EXPECT_TRUE(has_non_finite({Tensor(), test::non_contiguous(from_vector({1.0, NAN, 2.0}, {3}))}));
  EXPECT_FALSE(has_non_finite({Tensor()}));
}

TEST(Optim, UnscaleAndCheck) {
  std::vector<Tensor> g = {random_tensor({6}, DType::F32, 1, -512, 512), random_tensor({300, 250}, DType::F16, 2,
                                                                                      -512, 512),
                           test::non_contiguous(random_tensor({3, 4}, DType::F32, 3, -512, 512))};
  std::vector<std::vector<double>> before;
  for (const Tensor& t : g) before.push_back(t.to_vector());
  EXPECT_FALSE(unscale_and_check_(g, 1.0 / 512));
  for (size_t k = 0; k < g.size(); ++k) {
    std::vector<double> e = before[k];
    for (double& x : e) x /= 512;
    EXPECT_TRUE(test::all_close(g[k], e, g[k].dtype() == DType::F16 ? 1e-3 : 1e-6, 0)) << k;
  }
  // A NaN in one tensor and an inf in another are both reported.
  g[1].data<Half>()[12345] = Half(NAN);
  EXPECT_TRUE(unscale_and_check_(g, 1.0));
  g[1].data<Half>()[12345] = Half(0.0f);
  EXPECT_FALSE(unscale_and_check_(g, 1.0));
  g[0].data<float>()[5] = INFINITY;
  EXPECT_TRUE(unscale_and_check_(g, 0.5));
}

}  // namespace
}  // namespace sd
