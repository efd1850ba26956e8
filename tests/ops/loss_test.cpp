// mse_loss: forward against float64 loops for every reduction with and without per-sample
// weights, on several shapes, dtypes and non-contiguous inputs; gradients by finite
// differences.
#include <gtest/gtest.h>

#include "autograd/engine.h"
#include "ops/loss.h"
#include "ops/reduce.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::gradcheck;
using test::random_tensor;

// The definition, element by element in double. weights empty = unweighted.
std::vector<double> mse_ref(const Tensor& pred, const Tensor& target, Reduction r, const std::vector<double>& w) {
  std::vector<double> p = pred.to_vector(), t = target.to_vector();
  const int64_t n = pred.size(0), per = pred.numel() / n;
  std::vector<double> sq(p.size());
  for (size_t i = 0; i < p.size(); ++i) sq[i] = (p[i] - t[i]) * (p[i] - t[i]);
  if (r == Reduction::None) {
    if (!w.empty())
      for (size_t i = 0; i < sq.size(); ++i) sq[i] *= w[i / per];
    return sq;
  }
  double total = 0;
  for (int64_t s = 0; s < n; ++s) {
    double sample = 0;
    for (int64_t k = 0; k < per; ++k) sample += sq[s * per + k];
    if (!w.empty()) {
      if (r == Reduction::Mean) sample /= double(per);  // per-sample mean first, then weight
      sample *= w[s];
    }
    total += sample;
  }
  if (r == Reduction::Mean) total /= w.empty() ? double(p.size()) : double(n);
  return {total};
}

const Shape kShapes[] = {{5}, {3, 4}, {2, 3, 5}, {1, 7}, {4, 2, 3, 3}};
const Reduction kReductions[] = {Reduction::None, Reduction::Mean, Reduction::Sum};

TEST(Loss, MseMatchesLoopF64) {
  for (const Shape& s : kShapes) {
    Tensor pred = random_tensor(s, DType::F64, 1), target = random_tensor(s, DType::F64, 2);
    Tensor w = random_tensor({s[0]}, DType::F64, 3, 0.2, 3.0);
    for (Reduction r : kReductions) {
      Tensor plain = mse_loss(pred, target, r);
      Tensor weighted = mse_loss(pred, target, r, w);
      EXPECT_EQ(plain.shape(), r == Reduction::None ? s : Shape{});
      EXPECT_EQ(weighted.shape(), plain.shape());
      EXPECT_TRUE(test::all_close(plain, mse_ref(pred, target, r, {}), 1e-13, 0)) << shape_str(s);
      EXPECT_TRUE(test::all_close(weighted, mse_ref(pred, target, r, w.to_vector()), 1e-13, 0)) << shape_str(s);
      // Strided inputs give the same values.
      EXPECT_TRUE(test::all_close(mse_loss(test::non_contiguous(pred), test::non_contiguous(target), r,
                                           test::non_contiguous(w)),
                                  weighted, 1e-14, 0));
    }
  }
}

TEST(Loss, MseWeightedMeanIsMeanOfWeightedSampleMeans) {
  // Unit weights: (1/N) sum_n mean_n = the plain mean when every sample has as many elements.
  Tensor pred = random_tensor({3, 4, 5}, DType::F64, 4), target = random_tensor({3, 4, 5}, DType::F64, 5);
  EXPECT_NEAR(mse_loss(pred, target, Reduction::Mean, ones({3}, DType::F64)).item(),
              mse_loss(pred, target).item(), 1e-14);
  // A zero weight removes that sample entirely.
  Tensor w = from_vector({0.0, 1.0, 0.0}, {3}, DType::F64);
  const double only1 = mse_loss(select(pred, 0, 1), select(target, 0, 1)).item();
  EXPECT_NEAR(mse_loss(pred, target, Reduction::Mean, w).item(), only1 / 3.0, 1e-14);
}

TEST(Loss, MseLowPrecisionForward) {
  Tensor pred = random_tensor({4, 3, 5}, DType::F64, 6), target = random_tensor({4, 3, 5}, DType::F64, 7);
  Tensor w = random_tensor({4}, DType::F64, 8, 0.2, 3.0);
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    Tensor p = to(pred, dt), t = to(target, dt);
    // Reference from the rounded inputs; the kernel rounds after sub, square and the reduction.
    Tensor p64 = to(p, DType::F64), t64 = to(t, DType::F64);
    const double tol = dt == DType::F32 ? 1e-6 : (dt == DType::F16 ? 3e-3 : 2e-2);
    for (Reduction r : kReductions) {
      Tensor out = mse_loss(p, t, r, to(w, DType::F32));  // weights converted to pred's dtype
      EXPECT_EQ(out.dtype(), dt);
      std::vector<double> wv = to(to(w, dt), DType::F64).to_vector();
      EXPECT_TRUE(test::all_close(out, mse_ref(p64, t64, r, wv), tol, 1e-6)) << dtype_name(dt);
      EXPECT_TRUE(test::all_close(mse_loss(p, t, r), mse_ref(p64, t64, r, {}), tol, 1e-6)) << dtype_name(dt);
    }
  }
}

TEST(Loss, MseBadInputsRaise) {
  EXPECT_THROW(mse_loss(zeros({2, 3}), zeros({3, 2})), Error);
  EXPECT_THROW(mse_loss(zeros({2, 3}), zeros({2, 3}, DType::F16)), Error);
  EXPECT_THROW(mse_loss(zeros({2, 3}, DType::I32), zeros({2, 3}, DType::I32)), Error);
  EXPECT_THROW(mse_loss(zeros({2, 3}), zeros({2, 3}), Reduction::Mean, zeros({3})), Error);
  EXPECT_THROW(mse_loss(zeros({2, 3}), zeros({2, 3}), Reduction::Mean, zeros({2, 1})), Error);
  EXPECT_THROW(mse_loss(zeros({2, 3}), zeros({2, 3}), Reduction::Mean, zeros({2}, DType::I64)), Error);
}

TEST(GradLoss, MseAllReductions) {
  for (const Shape& s : {Shape{4}, Shape{3, 4}, Shape{2, 3, 2}}) {
    Tensor pred = random_tensor(s, DType::F64, 11), target = random_tensor(s, DType::F64, 12);
    Tensor w = random_tensor({s[0]}, DType::F64, 13, 0.2, 3.0);
    for (Reduction r : kReductions) {
      EXPECT_TRUE(gradcheck([r](const std::vector<Tensor>& in) { return mse_loss(in[0], in[1], r); },
                            {pred, target}))
          << shape_str(s);
      test::GradcheckOptions opt;
      opt.check = {true, true, false};  // weights are constants
      EXPECT_TRUE(gradcheck([r](const std::vector<Tensor>& in) { return mse_loss(in[0], in[1], r, in[2]); },
                            {pred, target, w}, opt))
          << shape_str(s);
    }
  }
}

TEST(GradLoss, MseNonContiguous) {
  Tensor pred = test::non_contiguous(random_tensor({3, 2, 4}, DType::F64, 14));
  Tensor target = test::non_contiguous(random_tensor({3, 2, 4}, DType::F64, 15));
  Tensor w = random_tensor({3}, DType::F64, 16, 0.2, 3.0);
  test::GradcheckOptions opt;
  opt.check = {true, true, false};
  EXPECT_TRUE(gradcheck(
      [](const std::vector<Tensor>& in) { return mse_loss(in[0], in[1], Reduction::Sum, in[2]); },
      {pred, target, w}, opt));
}

TEST(GradLoss, MseNoGradientIntoWeights) {
  Tensor pred = random_tensor({3, 4}, DType::F64, 17).set_requires_grad(true);
  Tensor w = random_tensor({3}, DType::F64, 18).set_requires_grad(true);
  autograd::backward(mse_loss(pred, zeros({3, 4}, DType::F64), Reduction::Mean, w));
  EXPECT_TRUE(pred.grad().defined());
  EXPECT_FALSE(w.grad().defined());
}

}  // namespace
}  // namespace sd
