// The CUDA optimizer, dropout, timestep-embedding and loss kernels against the CPU ones:
// multi-tensor AdamW over three steps on slots of odd sizes (1, 77, 320*320+3, 2^20+5) with
// mixed grad and model-copy dtypes, EMA, gradient norm / clipping / non-finite checks,
// dropout masks bit for bit, timestep embeddings, and mse_loss through matches_cpu.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "ops/dropout.h"
#include "ops/loss.h"
#include "ops/optim.h"
#include "ops/timestep.h"
#include "ops/view.h"
#include "runtime/allocator.h"
#include "runtime/rng_core.h"
#include "tests/cuda/cuda_check.h"

namespace sd {
namespace {

using test::matches_cpu;
using test::random_tensor;

constexpr int64_t kBig = (int64_t(1) << 20) + 5;  // a last chunk of 5 elements
constexpr int64_t kMid = 320 * 320 + 3;

Tensor gpu(const Tensor& t) { return copy_to(t, t.dtype(), Device::cuda()); }
Tensor host(const Tensor& t) { return copy_to(t, t.dtype(), Device::cpu()); }

// Device allocations are filled with NaN while alive: outputs a kernel forgets to write fail.
struct Poison {
  Poison() { set_cuda_alloc_poison(true); }
  ~Poison() { set_cuda_alloc_poison(false); }
};

// Largest distance in units in the last place between two 16-bit float tensors of the same
// dtype and shape (bits mapped to a monotonic integer line; +0 and -0 coincide).
int64_t max_ulp_diff(const Tensor& a_any, const Tensor& b_any) {
  const Tensor a = host(a_any), b = host(b_any);
  EXPECT_EQ(a.dtype(), b.dtype());
  EXPECT_EQ(a.shape(), b.shape());
  auto bits = [](const Tensor& t, int64_t i) -> uint16_t {
    return t.dtype() == DType::F16 ? t.data<Half>()[i].bits : t.data<BFloat16>()[i].bits;
  };
  auto line = [](uint16_t u) -> int64_t { return (u & 0x8000u) ? -int64_t(u & 0x7fffu) : int64_t(u); };
  int64_t worst = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    worst = std::max<int64_t>(worst, std::llabs(line(bits(a, i)) - line(bits(b, i))));
  return worst;
}

// Exactly the same values, NaN matching NaN.
::testing::AssertionResult same_values(const Tensor& actual, const Tensor& expected) {
  const std::vector<double> a = host(actual).to_vector(), e = host(expected).to_vector();
  if (a.size() != e.size()) return ::testing::AssertionFailure() << a.size() << " vs " << e.size() << " elements";
  for (size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == e[i] || (std::isnan(a[i]) && std::isnan(e[i]))))
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs " << e[i];
  return ::testing::AssertionSuccess();
}

// f32/f64 state within 1e-6 relative (whole tensor and per element); 16-bit within one ulp.
::testing::AssertionResult state_matches(const Tensor& gpu_t, const Tensor& cpu_t) {
  if (gpu_t.dtype() == DType::F16 || gpu_t.dtype() == DType::BF16) {
    const int64_t d = max_ulp_diff(gpu_t, cpu_t);
    if (d > 1) return ::testing::AssertionFailure() << d << " ulp apart";
    return ::testing::AssertionSuccess();
  }
  const double e = test::relative_error(host(gpu_t), cpu_t);
  if (!(e <= 1e-6)) return ::testing::AssertionFailure() << "relative error " << e;
  return test::all_close(host(gpu_t), cpu_t, 1e-6, 1e-12);
}

// ---------------------------------------------------------------- AdamW

struct SlotSpec {
  Shape shape;
  DType grad;          // F64 here: the slot gets no gradient (skipped)
  DType copy;          // F64 here: no model copy
  bool strided_grad;   // the GPU grad is a non-contiguous view
};

AdamWSlot cpu_slot(const SlotSpec& sp, uint64_t seed) {
  AdamWSlot s;
  s.master = random_tensor(sp.shape, DType::F32, seed);
  s.exp_avg = random_tensor(sp.shape, DType::F32, seed + 1, -1e-2, 1e-2);
  s.exp_avg_sq = random_tensor(sp.shape, DType::F32, seed + 2, 0.0, 1e-4);
  if (sp.copy != DType::F64) s.model_copy = copy_to(s.master, sp.copy, Device::cpu());
  return s;
}

AdamWSlot to_gpu(const AdamWSlot& s) {
  AdamWSlot g;
  g.master = gpu(s.master);
  g.exp_avg = gpu(s.exp_avg);
  g.exp_avg_sq = gpu(s.exp_avg_sq);
  if (s.model_copy.defined()) g.model_copy = gpu(s.model_copy);
  return g;
}

TEST(CudaOptim, FusedAdamWMatchesCpuOverThreeSteps) {
  SD_REQUIRE_CUDA();
  Poison poison;
  const SlotSpec specs[] = {
      {{1}, DType::F32, DType::F64, false},
      {{7, 11}, DType::F32, DType::F16, true},  // 77 elements
      {{kMid}, DType::BF16, DType::BF16, false},
      {{kBig}, DType::F16, DType::BF16, false},
      {{33}, DType::F64, DType::F16, false},  // no grad this step: untouched
      {{5, 3}, DType::F16, DType::F64, false},
  };
  AdamWConfig cfg;
  cfg.lr = 1e-3;
  cfg.weight_decay = 1e-2;
  const double loss_scale = 1024.0;
  std::vector<AdamWSlot> cs, gs;
  for (size_t k = 0; k < std::size(specs); ++k) {
    cs.push_back(cpu_slot(specs[k], 10 * k + 1));
    gs.push_back(to_gpu(cs.back()));
  }
  const AdamWSlot skipped_before = cpu_slot(specs[4], 41);
  for (int64_t step = 1; step <= 3; ++step) {
    for (size_t k = 0; k < std::size(specs); ++k) {
      const SlotSpec& sp = specs[k];
      if (sp.grad == DType::F64) continue;
      cs[k].grad = random_tensor(sp.shape, sp.grad, 1000 * step + k, -loss_scale, loss_scale);
      gs[k].grad = sp.strided_grad ? test::non_contiguous(gpu(cs[k].grad)) : gpu(cs[k].grad);
      if (sp.strided_grad) ASSERT_FALSE(gs[k].grad.is_contiguous());
    }
    fused_adamw_(cs, cfg, step, 1.0 / loss_scale);
    fused_adamw_(gs, cfg, step, 1.0 / loss_scale);
    for (size_t k = 0; k < std::size(specs); ++k) {
      const std::string what = "step " + std::to_string(step) + " slot " + std::to_string(k);
      EXPECT_TRUE(state_matches(gs[k].master, cs[k].master)) << what << " master";
      EXPECT_TRUE(state_matches(gs[k].exp_avg, cs[k].exp_avg)) << what << " exp_avg";
      EXPECT_TRUE(state_matches(gs[k].exp_avg_sq, cs[k].exp_avg_sq)) << what << " exp_avg_sq";
      if (cs[k].model_copy.defined()) {
        EXPECT_TRUE(state_matches(gs[k].model_copy, cs[k].model_copy)) << what << " model_copy";
        // The copy is the GPU's own master rounded once.
        EXPECT_EQ(max_ulp_diff(gs[k].model_copy, copy_to(gs[k].master, specs[k].copy, Device::cpu())), 0) << what;
      }
    }
    // The slot without a gradient kept its values on the GPU.
    EXPECT_TRUE(same_values(gs[4].master, skipped_before.master));
    EXPECT_TRUE(same_values(gs[4].exp_avg_sq, skipped_before.exp_avg_sq));
    EXPECT_TRUE(same_values(gs[4].model_copy, skipped_before.model_copy));
  }
  // The state moved: the comparison is not between two untouched copies.
  EXPECT_FALSE(same_values(gs[3].master, cpu_slot(specs[3], 31).master));
}

TEST(CudaOptim, FusedAdamWRejectsMixedDevices) {
  SD_REQUIRE_CUDA();
  auto expect_error = [](std::vector<AdamWSlot> slots, const std::string& needle) {
    try {
      fused_adamw_(slots, AdamWConfig{}, 1);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const SlotSpec sp{{3, 4}, DType::F16, DType::F16, false};
  AdamWSlot c = cpu_slot(sp, 1);
  c.grad = random_tensor({3, 4}, DType::F16, 2);
  AdamWSlot g = to_gpu(c);
  g.grad = gpu(c.grad);
  AdamWSlot bad = g;
  bad.grad = c.grad;
  expect_error({bad}, "slot 0: grad");
  bad = g;
  bad.model_copy = c.model_copy;
  expect_error({g, bad}, "slot 1: model_copy");
  expect_error({g, c}, "slot 1: master");
}

// ---------------------------------------------------------------- EMA

TEST(CudaOptim, EmaMatchesCpu) {
  SD_REQUIRE_CUDA();
  Poison poison;
  struct Case {
    Shape shape;
    DType ema, param;
    bool strided;
  };
  const Case cases[] = {
      {{1}, DType::F32, DType::F32, false},      {{kMid}, DType::F32, DType::BF16, false},
      {{7, 11}, DType::BF16, DType::F32, false}, {{1000}, DType::F64, DType::F16, false},
      {{5}, DType::F16, DType::F64, false},      {{7, 11}, DType::F32, DType::F16, true},
      {{kBig}, DType::F32, DType::F32, false},
  };
  std::vector<Tensor> ce, cp, ge, gp;
  for (size_t k = 0; k < std::size(cases); ++k) {
    ce.push_back(random_tensor(cases[k].shape, cases[k].ema, 100 + k));
    cp.push_back(random_tensor(cases[k].shape, cases[k].param, 200 + k));
    ge.push_back(cases[k].strided ? test::non_contiguous(gpu(ce.back())) : gpu(ce.back()));
    gp.push_back(cases[k].strided ? test::non_contiguous(gpu(cp.back())) : gpu(cp.back()));
  }
  for (double decay : {0.99, 0.9999}) {
    ema_update_(ce, cp, decay);
    ema_update_(ge, gp, decay);
    for (size_t k = 0; k < std::size(cases); ++k)
      EXPECT_TRUE(state_matches(ge[k], ce[k])) << "case " << k << " decay " << decay;
  }
  EXPECT_THROW(ema_update_({ge[0]}, {cp[0]}, 0.9), Error);  // param on another device
}

// ---------------------------------------------------------------- norms and checks

// Grads of every floating dtype, one undefined, one strided on the GPU, odd sizes.
std::vector<Tensor> cpu_grads() {
  return {random_tensor({1}, DType::F32, 1, -2, 2),       Tensor(),
          random_tensor({7, 11}, DType::F16, 2, -3, 3),   random_tensor({kMid}, DType::BF16, 3),
          random_tensor({kBig}, DType::F32, 4, -0.5, 0.5), random_tensor({33}, DType::F64, 5)};
}

std::vector<Tensor> to_gpu(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  for (size_t k = 0; k < ts.size(); ++k) {
    if (!ts[k].defined()) {
      out.push_back(Tensor());
    } else {
      out.push_back(k == 2 ? test::non_contiguous(gpu(ts[k])) : gpu(ts[k]));
    }
  }
  return out;
}

TEST(CudaOptim, GradNormMatchesCpuAndIsDeterministic) {
  SD_REQUIRE_CUDA();
  Poison poison;
  const std::vector<Tensor> c = cpu_grads();
  const std::vector<Tensor> g = to_gpu(c);
  const double expected = global_grad_norm(c);
  const double got = global_grad_norm(g);
  EXPECT_NEAR(got, expected, 1e-6 * expected);
  EXPECT_GT(got, 0.0);
  // A fixed reduction order: the same bits every run.
  for (int r = 0; r < 3; ++r) EXPECT_EQ(global_grad_norm(g), got);
  EXPECT_EQ(global_grad_norm(std::vector<Tensor>{Tensor()}), 0.0);
  // One tensor alone (the big one: 65 chunks) also agrees.
  EXPECT_NEAR(global_grad_norm({g[4]}), global_grad_norm({c[4]}), 1e-6 * global_grad_norm({c[4]}));
}

TEST(CudaOptim, ClipGradNormMatchesCpu) {
  SD_REQUIRE_CUDA();
  Poison poison;
  {  // Above the threshold: every grad scaled by max_norm / (norm + 1e-6).
    std::vector<Tensor> c = cpu_grads();
    std::vector<Tensor> g = to_gpu(c);
    const double norm = global_grad_norm(c);
    const double cn = clip_grad_norm_(c, norm / 3);
    const double gn = clip_grad_norm_(g, norm / 3);
    EXPECT_NEAR(gn, cn, 1e-6 * cn);
    for (size_t k = 0; k < c.size(); ++k)
      if (c[k].defined()) EXPECT_TRUE(state_matches(g[k], c[k])) << "grad " << k;
    EXPECT_NEAR(global_grad_norm(g), norm / 3, 1e-3 * norm);
  }
  {  // Below the threshold: nothing changes.
    const std::vector<Tensor> c = cpu_grads();
    std::vector<Tensor> g = to_gpu(c);
    const double norm = global_grad_norm(c);
    EXPECT_NEAR(clip_grad_norm_(g, 2 * norm), norm, 1e-6 * norm);
    for (size_t k = 0; k < c.size(); ++k)
      if (c[k].defined()) EXPECT_TRUE(same_values(g[k], c[k])) << "grad " << k;
  }
  {  // A non-finite norm is returned as such and leaves the grads untouched.
    std::vector<Tensor> c = cpu_grads();
    c[4].data<float>()[kBig / 2] = INFINITY;
    std::vector<Tensor> g = to_gpu(c);
    EXPECT_TRUE(std::isinf(clip_grad_norm_(c, 1.0)));
    EXPECT_TRUE(std::isinf(clip_grad_norm_(g, 1.0)));
    for (size_t k = 0; k < c.size(); ++k)
      if (c[k].defined()) EXPECT_TRUE(same_values(g[k], c[k])) << "grad " << k;
    c[3].data<BFloat16>()[kMid - 1] = BFloat16(NAN);
    EXPECT_TRUE(std::isnan(global_grad_norm(to_gpu(c))));
  }
}

TEST(CudaOptim, NonFiniteDetection) {
  SD_REQUIRE_CUDA();
  Poison poison;
  auto grads = [] {
    return std::vector<Tensor>{random_tensor({77}, DType::F32, 1), random_tensor({kBig}, DType::F32, 2),
                               random_tensor({kBig}, DType::F16, 3), random_tensor({kBig}, DType::BF16, 4)};
  };
  auto check = [&](const std::vector<Tensor>& c, bool expected, const std::string& what) {
    EXPECT_EQ(has_non_finite(c), expected) << what << " (cpu)";
    std::vector<Tensor> g;
    for (const Tensor& t : c) g.push_back(gpu(t));
    EXPECT_EQ(has_non_finite(g), expected) << what;
    EXPECT_EQ(unscale_and_check_(g, 1.0), expected) << what << " unscale by 1";
    EXPECT_EQ(unscale_and_check_(g, 0.5), expected) << what << " unscale by 0.5";
  };
  check(grads(), false, "clean");
  std::vector<Tensor> c = grads();
  c[2].data<Half>()[kBig / 2] = Half(INFINITY);
  check(c, true, "inf in the middle of the f16 tensor");
  c = grads();
  c[1].data<float>()[kBig - 1] = NAN;
  check(c, true, "NaN at the very end of the f32 tensor");
  c = grads();
  c[3].data<BFloat16>()[kBig - 1] = BFloat16(-INFINITY);
  check(c, true, "-inf at the very end of the last tensor");
  c = grads();
  c[0].data<float>()[0] = NAN;
  check(c, true, "NaN at the first element");
  c = grads();
  c[1].data<float>()[(int64_t(1) << 14) - 1] = INFINITY;  // the last element of a chunk
  check(c, true, "inf at a chunk boundary");
  EXPECT_FALSE(has_non_finite({Tensor()}));
}

TEST(CudaOptim, UnscaleAndCheckMatchesCpu) {
  SD_REQUIRE_CUDA();
  Poison poison;
  std::vector<Tensor> c = {random_tensor({77}, DType::F32, 1, -512, 512), random_tensor({kBig}, DType::F16, 2, -512, 512),
                           random_tensor({kMid}, DType::BF16, 3, -512, 512),
                           random_tensor({7, 11}, DType::F32, 4, -512, 512), random_tensor({9}, DType::F64, 5)};
  std::vector<Tensor> g;
  for (size_t k = 0; k < c.size(); ++k) g.push_back(k == 3 ? test::non_contiguous(gpu(c[k])) : gpu(c[k]));
  EXPECT_FALSE(unscale_and_check_(c, 1.0 / 512));
  EXPECT_FALSE(unscale_and_check_(g, 1.0 / 512));
  // One rounded multiply per element (and one rounding to 16 bits): the same bits.
  for (size_t k = 0; k < c.size(); ++k) EXPECT_TRUE(same_values(g[k], c[k])) << k;

  // Overflow when rounding to f16 after the multiply: the stored inf is what is checked.
  c[1].data<Half>()[12345] = Half(40000.0f);
  g[1] = gpu(c[1]);
  EXPECT_TRUE(unscale_and_check_(c, 2.0));
  EXPECT_TRUE(unscale_and_check_(g, 2.0));
  for (size_t k = 0; k < c.size(); ++k) EXPECT_TRUE(same_values(g[k], c[k])) << k;
  EXPECT_TRUE(std::isinf(host(g[1]).to_vector()[12345]));
}

// ---------------------------------------------------------------- dropout

// The keep decision of element i, straight from the Philox stream (independent of both kernels).
std::vector<bool> philox_keep(int64_t n, double p, uint64_t seed, uint64_t offset) {
  std::vector<bool> keep(n);
  for (int64_t b = 0; b * 4 < n; ++b) {
    uint32_t w[4];
    rng::philox_block(seed, offset + uint64_t(b), w);
    for (int64_t k = 0; k < 4 && b * 4 + k < n; ++k) keep[b * 4 + k] = double(rng::uniform_from_word(w[k])) >= p;
  }
  return keep;
}

TEST(CudaDropout, MaskIsBitIdenticalToCpu) {
  SD_REQUIRE_CUDA();
  Poison poison;
  const double p = 0.3;
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::F64})
    for (const Shape& s : {Shape{1}, Shape{77}, Shape{5, 7, 33}, Shape{kBig}}) {
      const std::string what = std::string(dtype_name(dt)) + " " + shape_str(s);
      const Tensor x = random_tensor(s, dt, 7, 0.5, 2.0);  // never zero: a zero output means dropped
      Generator gc(2024), gg(2024);
      gc.advance(13);
      gg.advance(13);
      const uint64_t offset = gc.offset;
      const Tensor yc = dropout(x, p, true, gc);
      const Tensor yg = dropout(gpu(x), p, true, gg);
      ASSERT_TRUE(yg.is_cuda());
      EXPECT_EQ(gg.offset, gc.offset) << what;
      const std::vector<double> vc = yc.to_vector(), vg = host(yg).to_vector(), vx = x.to_vector();
      const std::vector<bool> keep = philox_keep(x.numel(), p, 2024, offset);
      int64_t mask_mismatch = 0, value_mismatch = 0, kept = 0;
      for (size_t i = 0; i < vc.size(); ++i) {
        mask_mismatch += (vg[i] != 0.0) != keep[i];
        value_mismatch += vg[i] != vc[i];  // kept values and zeros alike, bit for bit
        kept += keep[i];
      }
      EXPECT_EQ(mask_mismatch, 0) << what;
      EXPECT_EQ(value_mismatch, 0) << what;
      // Within 5 standard errors of the binomial fraction (1155 elements: +-0.067).
      if (x.numel() > 1000)
        EXPECT_NEAR(double(kept) / double(x.numel()), 1 - p, 5 * std::sqrt(p * (1 - p) / double(x.numel()))) << what;

      // A strided GPU input: the mask follows the logical (row-major) index.
      if (s.size() == 3) {
        Generator gs(2024);
        gs.advance(13);
        const Tensor ys = dropout(test::non_contiguous(gpu(x)), p, true, gs);
        EXPECT_TRUE(same_values(ys, yc)) << what << " strided";
      }
    }
}

TEST(CudaDropout, MatchesCpu) {
  SD_REQUIRE_CUDA();
  // A fresh generator per call: both devices draw the same mask, forward and backward.
  const test::Fn plain = [](const std::vector<Tensor>& x) {
    Generator g(99);
    return dropout(x[0], 0.25, true, g);
  };
  const test::Fn strided = [](const std::vector<Tensor>& x) {
    Generator g(5);
    g.advance(1000);
    return dropout(permute(x[0], {0, 2, 3, 1}), 0.5, true, g);  // channels-last view
  };
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    EXPECT_TRUE(matches_cpu("dropout", plain, {random_tensor({3, 77, 40}, DType::F32, 1)}, dt));
    EXPECT_TRUE(matches_cpu("dropout strided", strided, {random_tensor({2, 65, 7, 5}, DType::F32, 2)}, dt));
  }
}

TEST(CudaDropout, EvalAndZeroPAreIdentity) {
  SD_REQUIRE_CUDA();
  const Tensor x = gpu(random_tensor({4, 5}, DType::F32, 1));
  Generator g(1);
  EXPECT_TRUE(dropout(x, 0.5, false, g).same(x));
  EXPECT_TRUE(dropout(x, 0.0, true, g).same(x));
  EXPECT_EQ(g.offset, 0u);
}

// ---------------------------------------------------------------- timestep embedding

// Tolerance: the GPU gets the CPU's frequency table and forms each argument with the same two
// rounded f32 multiplies, so sin and cos see bit-identical arguments (up to ~1000 * scale
// rad). What differs is the function itself: CUDA's sinf/cosf are within 2 ulp (CUDA
// programming guide, math function accuracy), glibc's within 1 ulp. The outputs lie in
// [-1, 1], so the difference is at most about 3 * 2^-24 = 1.8e-7 absolute; near a zero of
// sin/cos that is a large relative error, so elements are compared absolutely (1e-6, 5x
// margin) and the whole tensor relatively (1e-6).
TEST(CudaTimestep, MatchesCpu) {
  SD_REQUIRE_CUDA();
  Poison poison;
  struct Case {
    int64_t dim;
    bool flip;
    double shift, scale;
    DType tdtype;
  };
  const Case cases[] = {{320, true, 0.0, 1.0, DType::F32},  {321, false, 1.0, 1.0, DType::I64},
                        {1, true, 0.0, 1.0, DType::F32},    {2, false, 0.0, 1.0, DType::F64},
                        {7, true, 1.0, 2.5, DType::F32},    {1280, true, 0.0, 1.0, DType::I32},
                        {256, false, 1.0, 1000.0, DType::F16}};
  const std::vector<double> tv = {0, 1, 999, 1000, 500, 17, 3, 750, 261};
  for (const Case& c : cases) {
    const std::string what = "dim " + std::to_string(c.dim) + " flip " + std::to_string(c.flip) + " " +
                             dtype_name(c.tdtype);
    // F16 timesteps with scale 1000 stand for the fractional timesteps of some samplers.
    const Tensor t = c.tdtype == DType::F16 ? random_tensor({9}, DType::F16, 3, 0.0, 1.0)
                                            : from_vector(tv, {int64_t(tv.size())}, c.tdtype);
    const Tensor ec = timestep_embedding(t, c.dim, c.flip, c.shift, c.scale);
    const Tensor eg = timestep_embedding(gpu(t), c.dim, c.flip, c.shift, c.scale);
    ASSERT_TRUE(eg.is_cuda()) << what;
    ASSERT_EQ(eg.shape(), ec.shape()) << what;
    EXPECT_TRUE(test::all_close(host(eg), ec, 0.0, 1e-6)) << what;
    EXPECT_LE(test::relative_error(host(eg), ec), 1e-6) << what;
    if (c.dim % 2 == 1) {  // the padding column is written as exactly zero
      const std::vector<double> v = host(eg).to_vector();
      for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(v[size_t(i * c.dim + c.dim - 1)], 0.0) << what;
    }
  }
  // A strided timesteps view.
  const Tensor t = from_vector(tv, {int64_t(tv.size())});
  const Tensor ec = timestep_embedding(slice(t, 0, 0, 9, 2), 64);
  const Tensor eg = timestep_embedding(slice(gpu(t), 0, 0, 9, 2), 64);
  EXPECT_TRUE(test::all_close(host(eg), ec, 0.0, 1e-6));
}

// ---------------------------------------------------------------- mse_loss

TEST(CudaLoss, MseMatchesCpu) {
  SD_REQUIRE_CUDA();
  test::CudaCheckOptions opt;
  opt.grad = {true, true, false};  // no gradient flows into the weights
  for (DType dt : {DType::F32, DType::F16, DType::BF16})
    for (Reduction r : {Reduction::None, Reduction::Mean, Reduction::Sum})
      for (bool weighted : {false, true}) {
        const std::string what = std::string("mse reduction ") + std::to_string(int(r)) + (weighted ? " weighted" : "");
        const test::Fn f = [r](const std::vector<Tensor>& x) { return mse_loss(x[0], x[1], r, x[2]); };
        const test::Fn channels_last = [r](const std::vector<Tensor>& x) {
          return mse_loss(permute(x[0], {0, 2, 3, 1}), permute(x[1], {0, 2, 3, 1}), r, x[2]);
        };
        auto weights = [&](int64_t n) { return weighted ? random_tensor({n}, DType::F32, 9, 0.1, 2.0) : Tensor(); };
        EXPECT_TRUE(matches_cpu(what, f,
                                {random_tensor({4, 3, 7, 5}, DType::F32, 1), random_tensor({4, 3, 7, 5}, DType::F32, 2),
                                 weights(4)},
                                dt, opt));
        EXPECT_TRUE(matches_cpu(what + " 1-d", f,
                                {random_tensor({77}, DType::F32, 3), random_tensor({77}, DType::F32, 4), weights(77)},
                                dt, opt));
        EXPECT_TRUE(matches_cpu(what + " channels-last", channels_last,
                                {random_tensor({2, 65, 7, 5}, DType::F32, 5), random_tensor({2, 65, 7, 5}, DType::F32, 6),
                                 weights(2)},
                                dt, opt));
      }
}

TEST(CudaLoss, MseRejectsMixedDevices) {
  SD_REQUIRE_CUDA();
  const Tensor p = random_tensor({4, 6}, DType::F32, 1), t = random_tensor({4, 6}, DType::F32, 2);
  const Tensor w = random_tensor({4}, DType::F32, 3);
  EXPECT_THROW(mse_loss(gpu(p), gpu(t), Reduction::Mean, w), Error);
  EXPECT_THROW(mse_loss(gpu(p), t), Error);
  EXPECT_NO_THROW(mse_loss(gpu(p), gpu(t), Reduction::Mean, gpu(w)));
}

}  // namespace
}  // namespace sd
