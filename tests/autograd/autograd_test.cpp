// The tape: reverse-order backward, gradient sums for reused tensors, accumulation across
// backward calls, no-grad, detach, retain_graph, grad-ready hooks and checkpointing.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/checkpoint.h"
#include "autograd/engine.h"
#include "autograd/node.h"
#include "ops/activation.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/reduce.h"
#include "ops/view.h"
#include "runtime/allocator.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::random_tensor;

Tensor param(const Shape& s, uint64_t seed) {
  Tensor p = random_tensor(s, DType::F64, seed);
  p.set_requires_grad(true);
  return p;
}

TEST(Autograd, SharedSubexpressionGetsSummedGradient) {
  Tensor x = param({5}, 1);
  Tensor y = sum_all(x * x + x);  // dy/dx = 2x + 1
  autograd::backward(y);
  std::vector<double> xv = x.to_vector(), expected;
  for (double v : xv) expected.push_back(2 * v + 1);
  EXPECT_TRUE(test::all_close(x.grad(), expected, 1e-14, 0));
}

TEST(Autograd, TensorUsedTwiceDownstream) {
  Tensor a = param({3}, 2), b = param({3}, 3);
  Tensor z = a * b;
  Tensor out = sum_all(z * z + z);  // d/da = (2z + 1) b
  autograd::backward(out);
  std::vector<double> av = a.to_vector(), bv = b.to_vector(), ga, gb;
  for (int i = 0; i < 3; ++i) {
    double zi = av[i] * bv[i];
    ga.push_back((2 * zi + 1) * bv[i]);
    gb.push_back((2 * zi + 1) * av[i]);
  }
  EXPECT_TRUE(test::all_close(a.grad(), ga, 1e-14, 0));
  EXPECT_TRUE(test::all_close(b.grad(), gb, 1e-14, 0));
}

TEST(Autograd, GradientsAccumulateAcrossBackwardCalls) {
  Tensor x = param({4}, 4);
  autograd::backward(sum_all(x * 3.0));
  autograd::backward(sum_all(x * 3.0));
  EXPECT_TRUE(test::all_close(x.grad(), std::vector<double>(4, 6.0), 0, 0));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
  autograd::backward(sum_all(x * 2.0));
  EXPECT_TRUE(test::all_close(x.grad(), std::vector<double>(4, 2.0), 0, 0));
}

TEST(Autograd, NoGradRecordsNothing) {
  Tensor x = param({3}, 5);
  Tensor y;
  {
    autograd::NoGrad ng;
    y = x * 2.0;
  }
  EXPECT_FALSE(y.requires_grad());
  EXPECT_FALSE(y.grad_fn());
  EXPECT_THROW(autograd::backward(sum_all(y)), Error);
  // Grad mode is restored after the scope.
  EXPECT_TRUE((x * 2.0).requires_grad());
}

TEST(Autograd, DetachStopsGradient) {
  Tensor x = param({3}, 6);
  Tensor y = sum_all(x * detach(x));  // only the first factor carries gradient: d/dx = x
  autograd::backward(y);
  EXPECT_TRUE(test::all_close(x.grad(), x.to_vector(), 0, 0));
}

TEST(Autograd, GraphIsFreedUnlessRetained) {
  Tensor x = param({3}, 7);
  Tensor y = sum_all(exp(x));
  autograd::backward(y, Tensor(), /*retain_graph=*/true);
  autograd::backward(y);
  std::vector<double> expected;
  for (double v : x.to_vector()) expected.push_back(2 * std::exp(v));
  EXPECT_TRUE(test::all_close(x.grad(), expected, 1e-14, 0));
  EXPECT_THROW(autograd::backward(y), Error);
}

TEST(Autograd, NonScalarRootNeedsExplicitGradient) {
  Tensor x = param({3}, 8);
  Tensor y = x * 2.0;
  EXPECT_THROW(autograd::backward(y), Error);
  autograd::backward(y, from_vector({1, 2, 3}, {3}, DType::F64));
  EXPECT_TRUE(test::all_close(x.grad(), {2, 4, 6}, 0, 0));
}

TEST(Autograd, GradientThroughViews) {
  Tensor x = param({2, 6}, 9);
  Tensor v = reshape(transpose(slice(x, 1, 1, 5), 0, 1), {-1});  // elements x[:, 1:5], transposed
  autograd::backward(sum_all(v * v));
  std::vector<double> xv = x.to_vector(), expected(12, 0.0);
  for (int r = 0; r < 2; ++r)
    for (int c = 1; c < 5; ++c) expected[r * 6 + c] = 2 * xv[r * 6 + c];
  EXPECT_TRUE(test::all_close(x.grad(), expected, 1e-14, 0));
}

TEST(Autograd, GradReadyHookFiresOncePerPassWithTheCompleteGradient) {
  Tensor w = param({3}, 10);
  int calls = 0;
  std::vector<double> seen;
  w.add_grad_hook([&](const Tensor& p) {
    ++calls;
    seen = p.grad().to_vector();
  });
  Tensor x = random_tensor({3}, DType::F64, 11);
  // w is used by three ops: the hook must wait for all three contributions.
  Tensor y = sum_all(w * x + w * w + w);
  autograd::backward(y);
  EXPECT_EQ(calls, 1);
  std::vector<double> wv = w.to_vector(), xv = x.to_vector(), expected;
  for (int i = 0; i < 3; ++i) expected.push_back(xv[i] + 2 * wv[i] + 1);
  EXPECT_TRUE(test::all_close(w.grad(), expected, 1e-14, 0));
  EXPECT_EQ(seen, w.grad().to_vector());
}

TEST(Autograd, HooksRunInReverseUseOrder) {
  // The parameter used last in the forward gets its gradient first: the order that lets
  // data-parallel all-reduce start while backward continues.
  Tensor w1 = param({2, 2}, 12), w2 = param({2, 2}, 13);
  std::vector<int> order;
  w1.add_grad_hook([&](const Tensor&) { order.push_back(1); });
  w2.add_grad_hook([&](const Tensor&) { order.push_back(2); });
  Tensor x = random_tensor({3, 2}, DType::F64, 14);
  Tensor h = tanh(linear(x, w1));
  autograd::backward(sum_all(linear(h, w2)));
  EXPECT_EQ(order, (std::vector<int>{2, 1}));
}

// A small residual block: x + W2 silu(W1 x + b1).
Tensor block(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2) {
  return x + linear(silu(linear(x, w1, b1)), w2);
}

TEST(Autograd, CheckpointGivesTheSameGradientsAndSavesLess) {
  const Shape xs = {64, 16};
  Tensor w1 = param({64, 16}, 20), b1 = param({64}, 21), w2 = param({16, 64}, 22);
  Tensor x0 = random_tensor(xs, DType::F64, 23);

  auto run = [&](bool use_checkpoint, std::vector<Tensor>& grads) {
    for (Tensor* p : {&w1, &b1, &w2}) p->zero_grad();
    Tensor x = detach(x0);
    x.set_requires_grad(true);
    autograd::reset_saved_bytes_peak();
    const int64_t base = autograd::saved_bytes();
    Tensor h = x;
    for (int i = 0; i < 4; ++i) {
      if (use_checkpoint) {
        h = autograd::checkpoint([&](const Tensor& in) { return block(in, w1, b1, w2); }, h);
      } else {
        h = block(h, w1, b1, w2);
      }
    }
    Tensor loss = sum_all(h * h);
    const int64_t peak = autograd::saved_bytes_peak() - base;
    autograd::backward(loss);
    grads = {x.grad(), w1.grad(), b1.grad(), w2.grad()};
    return peak;
  };
  std::vector<Tensor> plain, ckpt;
  const int64_t peak_plain = run(false, plain);
  const int64_t peak_ckpt = run(true, ckpt);
  for (size_t i = 0; i < plain.size(); ++i) {
    ASSERT_TRUE(ckpt[i].defined()) << i;
    EXPECT_TRUE(test::all_close(ckpt[i], plain[i], 1e-12, 1e-14)) << "gradient " << i;
  }
  EXPECT_LT(peak_ckpt * 2, peak_plain) << "checkpointed peak " << peak_ckpt << " vs plain " << peak_plain;
  EXPECT_GT(peak_ckpt, 0);
}

TEST(Autograd, CheckpointWithoutGradRequiringInputStillTrainsParameters) {
  // The first block of a UNet sees latents that need no gradient; its weights still do.
  Tensor w = param({4, 4}, 30);
  Tensor x = random_tensor({2, 4}, DType::F64, 31);
  Tensor y = autograd::checkpoint([&](const Tensor& in) { return tanh(linear(in, w)); }, x);
  autograd::backward(sum_all(y));
  ASSERT_TRUE(w.grad().defined());
  Tensor w_ref = detach(w);
  w_ref.set_requires_grad(true);
  autograd::backward(sum_all(tanh(linear(x, w_ref))));
  EXPECT_TRUE(test::all_close(w.grad(), w_ref.grad(), 1e-14, 0));
}

// Once a parameter's gradient is in its .grad, backward holds no second copy of it for the rest of
// the pass (that doubled the parameter-gradient memory of a whole UNet step at the backward peak).
TEST(Autograd, AFinishedLeafGradientIsNotHeldTwice) {
  const int64_t n = int64_t(4) << 20;  // 16 MiB of f32
  for (bool second_pass : {false, true}) {
    Tensor u = from_vector({1, 2, 3}, {3}).set_requires_grad(true);
    Tensor w = full({n}, 0.5).set_requires_grad(true);
    if (second_pass) w.set_grad(zeros({n}));  // accumulation into an existing .grad
    // w's gradient is complete before u's node runs (tape order), which measures what is held then.
    Tensor v = mul_scalar(u, 3.0);
    Tensor out = add(sum_all(mul_scalar(w, 2.0)), sum_all(v));
    int64_t during = 0;
    auto orig = v.grad_fn()->backward;
    v.grad_fn()->backward = [orig, &during](Node& self, const std::vector<Tensor>& go) {
      during = cpu_allocator().stats().current_bytes;
      return orig(self, go);
    };
    const int64_t before = cpu_allocator().stats().current_bytes;
    autograd::backward(out);
    const int64_t held = during - before - (second_pass ? 0 : int64_t(w.nbytes()));
    EXPECT_LT(held, int64_t(w.nbytes()) / 4) << (second_pass ? "accumulating" : "first") << " pass: "
                                             << held << " bytes beyond w.grad while a later node runs";
    EXPECT_EQ(w.grad().to_vector()[n - 1], 2.0);
  }
}

TEST(GradAutograd, ComposedExpressionMatchesFiniteDifferences) {
  auto f = [](const std::vector<Tensor>& in) {
    Tensor h = tanh(matmul(in[0], in[1]));
    return sum(h * h + in[0] * 0.5, {1}) / 3.0;
  };
  EXPECT_TRUE(test::gradcheck(f, {random_tensor({3, 4}, DType::F64, 40), random_tensor({4, 4}, DType::F64, 41)}));
}

}  // namespace
}  // namespace sd
