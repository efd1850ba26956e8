// Every CUDA op kernel against the CPU reference, forward and backward, in f32/f16/bf16,
// on shapes with odd sizes (77 tokens, head dim 40, channels not a multiple of 64).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/reduce.h"
#include "ops/view.h"
#include "tests/cuda/cuda_check.h"
#include "autograd/engine.h"
#ifdef SD_WITH_CUDA
#include "ops/cuda/attention.h"
#include "ops/cuda/pointwise.h"
#endif

namespace sd {
namespace {

using test::matches_cpu;
using test::random_tensor;

const DType kDtypes[] = {DType::F32, DType::F16, DType::BF16};

TEST(CudaOps, BinaryWithBroadcast) {
  SD_REQUIRE_CUDA();
  const std::pair<Shape, Shape> shapes[] = {{{77, 40}, {77, 40}}, {{2, 3, 17, 9}, {3, 1, 9}}, {{5, 1}, {1, 333}}};
  for (DType dt : kDtypes)
    for (const auto& [sa, sb] : shapes) {
      std::vector<Tensor> in = {random_tensor(sa, DType::F32, 1), random_tensor(sb, DType::F32, 2, 0.5, 2.0)};
      EXPECT_TRUE(matches_cpu("add", [](const std::vector<Tensor>& x) { return add(x[0], x[1]); }, in, dt));
      EXPECT_TRUE(matches_cpu("sub", [](const std::vector<Tensor>& x) { return sub(x[0], x[1]); }, in, dt));
      EXPECT_TRUE(matches_cpu("mul", [](const std::vector<Tensor>& x) { return mul(x[0], x[1]); }, in, dt));
      EXPECT_TRUE(matches_cpu("div", [](const std::vector<Tensor>& x) { return div(x[0], x[1]); }, in, dt));
    }
}

TEST(CudaOps, UnaryAndActivations) {
  SD_REQUIRE_CUDA();
  const test::Fn fns[] = {
      [](const std::vector<Tensor>& x) { return silu(x[0]); },
      [](const std::vector<Tensor>& x) { return gelu(x[0]); },
      [](const std::vector<Tensor>& x) { return gelu(x[0], true); },
      [](const std::vector<Tensor>& x) { return quick_gelu(x[0]); },
      [](const std::vector<Tensor>& x) { return exp(x[0]) * 0.5 + sqrt(abs(x[0]) + 1.0); },
      [](const std::vector<Tensor>& x) { return geglu(x[0]); },
      [](const std::vector<Tensor>& x) { return tanh(permute(x[0], {1, 0, 2})); },  // strided input
  };
  for (DType dt : kDtypes)
    for (size_t i = 0; i < std::size(fns); ++i)
      EXPECT_TRUE(matches_cpu("unary #" + std::to_string(i), fns[i], {random_tensor({3, 77, 40}, DType::F32, 3, -3, 3)},
                              dt));
}

TEST(CudaOps, SumAndMean) {
  SD_REQUIRE_CUDA();
  for (DType dt : kDtypes) {
    std::vector<Tensor> in = {random_tensor({4, 333, 65}, DType::F32, 4)};
    EXPECT_TRUE(matches_cpu("sum dim1", [](const std::vector<Tensor>& x) { return sum(x[0], {1}); }, in, dt));
    EXPECT_TRUE(matches_cpu("mean 0,2", [](const std::vector<Tensor>& x) { return mean(x[0], {0, 2}, true); }, in, dt));
    EXPECT_TRUE(matches_cpu("sum all", [](const std::vector<Tensor>& x) { return sum_all(x[0]); }, in, dt));
    std::vector<Tensor> big = {random_tensor({3, 1 << 20}, DType::F32, 5)};  // split rows
    EXPECT_TRUE(matches_cpu("sum big", [](const std::vector<Tensor>& x) { return sum(x[0], {1}); }, big, dt));
  }
}

TEST(CudaOps, MatmulAndLinear) {
  SD_REQUIRE_CUDA();
  for (DType dt : kDtypes) {
    EXPECT_TRUE(matches_cpu("matmul 2d", [](const std::vector<Tensor>& x) { return matmul(x[0], x[1]); },
                            {random_tensor({77, 40}, DType::F32, 6), random_tensor({40, 333}, DType::F32, 7)}, dt));
    EXPECT_TRUE(matches_cpu("matmul batched broadcast",
                            [](const std::vector<Tensor>& x) { return matmul(x[0], x[1]); },
                            {random_tensor({2, 3, 17, 24}, DType::F32, 8), random_tensor({3, 24, 9}, DType::F32, 9)}, dt));
    EXPECT_TRUE(matches_cpu("matmul transposed",
                            [](const std::vector<Tensor>& x) { return matmul(transpose(x[0], -1, -2), x[1]); },
                            {random_tensor({4, 24, 17}, DType::F32, 10), random_tensor({4, 24, 9}, DType::F32, 11)}, dt));
    EXPECT_TRUE(matches_cpu("linear", [](const std::vector<Tensor>& x) { return linear(x[0], x[1], x[2]); },
                            {random_tensor({2, 77, 320}, DType::F32, 12), random_tensor({640, 320}, DType::F32, 13, -0.1, 0.1),
                             random_tensor({640}, DType::F32, 14)},
                            dt));
  }
}

struct AttnCase {
  int64_t B, H, Lq, Lk, D;
  bool causal;
  int mask;  // 0 none, 1 float [Lq, Lk] broadcast, 2 bool [B, 1, 1, Lk] (padding keys)
};

// Every attention case against the CPU, forward and the q/k/v gradients; `tag` names the mode.
void expect_attention_cases(const std::string& tag) {
  const AttnCase cases[] = {
      {2, 3, 77, 77, 64, true, 0},    // CLIP text encoder self-attention
      {2, 2, 130, 77, 40, false, 0},  // SD1 cross-attention, head dim 40
      {1, 2, 200, 200, 80, false, 0}, {1, 2, 64, 77, 160, false, 0}, {1, 1, 96, 150, 128, false, 0},
      {2, 2, 100, 90, 64, false, 1},  {2, 2, 70, 33, 64, false, 2},   {1, 2, 50, 50, 24, false, 0},  // plain kernel
      {1, 2, 513, 300, 48, true, 0},
  };
  for (const AttnCase& c : cases) {
    std::vector<Tensor> in = {random_tensor({c.B, c.H, c.Lq, c.D}, DType::F32, 20, -2, 2),
                              random_tensor({c.B, c.H, c.Lk, c.D}, DType::F32, 21, -2, 2),
                              random_tensor({c.B, c.H, c.Lk, c.D}, DType::F32, 22)};
    Tensor mask;
    if (c.mask == 1) mask = random_tensor({c.Lq, c.Lk}, DType::F32, 23, -3, 0);
    if (c.mask == 2) {
      std::vector<double> keep(c.B * c.Lk);
      for (size_t i = 0; i < keep.size(); ++i) keep[i] = (i % 5) != 3;
      mask = from_vector(keep, {c.B, 1, 1, c.Lk}, DType::Bool);
    }
    const bool causal = c.causal;
    for (DType dt : kDtypes) {
      Tensor m = mask;
      std::vector<Tensor> args = in;
      args.push_back(m);
      auto f = [causal](const std::vector<Tensor>& x) {
        Tensor mk = x[3];
        return scaled_dot_product_attention(x[0], x[1], x[2], mk, 0.0, causal);
      };
      test::CudaCheckOptions opt;
      opt.grad = {true, true, true, false};
      EXPECT_TRUE(matches_cpu("attention B" + std::to_string(c.B) + " Lq" + std::to_string(c.Lq) + " Lk" +
                                  std::to_string(c.Lk) + " D" + std::to_string(c.D) + tag,
                              f, args, dt, opt));
    }
  }
}

TEST(CudaOps, AttentionAgainstCpu) {
  SD_REQUIRE_CUDA();
  expect_attention_cases("");
}

#ifdef SD_WITH_CUDA
// Deterministic flash backward (cuda::set_attention_deterministic): the CPU's values on every
// case, and the same bits on a second run where the default kernels add dQ (and the dK/dV of
// split query ranges) with float atomics: self-attention with many key blocks, cross-attention
// with 77 keys (whose queries the default splits), a causal one, head dims 40/64/160.
TEST(CudaOps, AttentionDeterministicBackward) {
  SD_REQUIRE_CUDA();
  const bool was = cuda::attention_deterministic();
  cuda::set_attention_deterministic(true);
  expect_attention_cases(" (deterministic)");
  struct Shape4 {
    int64_t B, H, Lq, Lk, D;
    bool causal;
  };
  for (const Shape4& c : {Shape4{2, 4, 1024, 1024, 40, false}, Shape4{2, 8, 1024, 77, 64, false},
                          Shape4{1, 2, 700, 700, 64, true}, Shape4{1, 2, 256, 256, 160, false}})
    for (DType dt : {DType::F16, DType::BF16}) {
      auto dev = [&](uint64_t seed, int64_t L) {
        return copy_to(random_tensor({c.B, c.H, L, c.D}, DType::F32, seed, -2, 2), dt, Device::cuda());
      };
      const Tensor q0 = dev(40, c.Lq), k0 = dev(41, c.Lk), v0 = dev(42, c.Lk), g = dev(43, c.Lq);
      auto grads = [&] {
        Tensor q = detach(q0), k = detach(k0), v = detach(v0);
        for (Tensor* t : {&q, &k, &v}) t->set_requires_grad(true);
        autograd::backward(scaled_dot_product_attention(q, k, v, Tensor(), 0.0, c.causal), g);
        return std::vector<Tensor>{copy_to(q.grad(), DType::F32, Device::cpu()),
                                   copy_to(k.grad(), DType::F32, Device::cpu()),
                                   copy_to(v.grad(), DType::F32, Device::cpu())};
      };
      const auto first = grads(), second = grads();
      cuda::set_attention_deterministic(false);
      const auto fast = grads();
      cuda::set_attention_deterministic(true);
      const char* names[] = {"dq", "dk", "dv"};
      for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(first[i].to_vector(), second[i].to_vector())
            << names[i] << " differs between two deterministic runs, Lq " << c.Lq << " Lk " << c.Lk << " "
            << dtype_name(dt);
        EXPECT_LT(test::relative_error(first[i], fast[i]), 1e-2) << names[i] << " vs the default kernels";
      }
    }
  cuda::set_attention_deterministic(was);
}
#endif

#ifdef SD_WITH_CUDA
// Flash forward v3 (cuda::set_flash_forward_v3: two row tiles per warp up to head dim 64, one
// barrier per key tile) computes each row exactly as today's kernel: the same output and
// log-sum-exp bits on self- and cross-attention, odd lengths, masks and causal rows, every
// compiled head dim; and every attention case still matches the CPU with it (the backward reads
// its log-sum-exp).
TEST(CudaOps, FlashForwardV3GivesTheSameBits) {
  SD_REQUIRE_CUDA();
  const bool was = cuda::flash_forward_v3();
  struct Case {
    int64_t B, H, Lq, Lk, D;
    bool causal;
    int mask;
  };
  for (const Case& c : {Case{2, 8, 4096, 4096, 40, false, 0}, Case{2, 8, 4096, 77, 40, false, 0},
                        Case{2, 10, 1000, 1000, 64, false, 0}, Case{1, 2, 513, 300, 48, true, 0},
                        Case{2, 2, 100, 90, 64, false, 1}, Case{2, 2, 70, 33, 64, false, 2},
                        Case{1, 8, 1024, 1024, 80, false, 0}, Case{1, 4, 256, 256, 160, false, 0},
                        Case{1, 2, 190, 77, 32, false, 0}, Case{1, 2, 130, 200, 96, false, 0},
                        Case{1, 2, 130, 200, 128, false, 0}})
    for (DType dt : {DType::F16, DType::BF16}) {
      auto dev = [&](uint64_t seed, int64_t L) {
        return copy_to(random_tensor({c.B, c.H, L, c.D}, DType::F32, seed, -2, 2), dt, Device::cuda());
      };
      const Tensor q = dev(70, c.Lq), k = dev(71, c.Lk), v = dev(72, c.Lk);
      Tensor mask;
      if (c.mask == 1) mask = copy_to(random_tensor({c.B, c.H, c.Lq, c.Lk}, DType::F32, 73, -3, 0), dt, Device::cuda());
      if (c.mask == 2) {
        std::vector<double> keep(size_t(c.B * c.H * c.Lq * c.Lk));
        for (size_t i = 0; i < keep.size(); ++i) keep[i] = (i % 7) != 3;
        mask = copy_to(from_vector(keep, {c.B, c.H, c.Lq, c.Lk}, DType::Bool), DType::Bool, Device::cuda());
      }
      cuda::set_flash_forward_v3(false);
      const auto today = cuda::attention_forward(q, k, v, mask, 1.0 / std::sqrt(double(c.D)), c.causal);
      cuda::set_flash_forward_v3(true);
      const auto v3 = cuda::attention_forward(q, k, v, mask, 1.0 / std::sqrt(double(c.D)), c.causal);
      const std::string what = "Lq " + std::to_string(c.Lq) + " Lk " + std::to_string(c.Lk) + " D " +
                               std::to_string(c.D) + " " + dtype_name(dt);
      EXPECT_EQ(copy_to(v3[0], DType::F32, Device::cpu()).to_vector(),
                copy_to(today[0], DType::F32, Device::cpu()).to_vector()) << "output, " << what;
      EXPECT_EQ(copy_to(v3[1], DType::F32, Device::cpu()).to_vector(),
                copy_to(today[1], DType::F32, Device::cpu()).to_vector()) << "log-sum-exp, " << what;
    }
  cuda::set_flash_forward_v3(true);
  expect_attention_cases(" (forward v3)");
  cuda::set_flash_forward_v3(was);
}

// The fused GEGLU kernels (cuda::set_fused_geglu) against the CPU composite: forward and the
// gradient of [hidden | gate], with the feed-forward widths of SD1 (320 -> 2 x 1280) and odd ones.
TEST(CudaOps, FusedGegluMatchesTheComposite) {
  SD_REQUIRE_CUDA();
  const bool was = cuda::fused_geglu();
  cuda::set_fused_geglu(true);
  const auto f = [](const std::vector<Tensor>& x) { return geglu(x[0]); };
  for (const Shape& s : {Shape{2, 77, 2 * 1280}, Shape{3, 5, 2 * 37}, Shape{1, 2 * 8}})
    for (DType dt : kDtypes) EXPECT_TRUE(matches_cpu("geglu " + shape_str(s), f, {random_tensor(s, DType::F32, 60, -3, 3)}, dt));
  cuda::set_fused_geglu(was);
}
#endif

TEST(CudaOps, AttentionOnPermutedProjections) {
  SD_REQUIRE_CUDA();
  // The UNet makes q, k, v by viewing [B, L, H*D] as [B, L, H, D] and permuting to [B, H, L, D].
  auto f = [](const std::vector<Tensor>& x) {
    auto heads = [](const Tensor& t) { return permute(reshape(t, {2, -1, 8, 40}), {0, 2, 1, 3}); };
    return scaled_dot_product_attention(heads(x[0]), heads(x[1]), heads(x[2]));
  };
  for (DType dt : {DType::F16, DType::BF16})
    EXPECT_TRUE(matches_cpu("attention permuted", f,
                            {random_tensor({2, 256, 320}, DType::F32, 30), random_tensor({2, 77, 320}, DType::F32, 31),
                             random_tensor({2, 77, 320}, DType::F32, 32)},
                            dt));
}

}  // namespace
}  // namespace sd
