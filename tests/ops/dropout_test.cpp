// dropout: the mask is the Philox uniform stream compared with p (checked against
// fill_uniform_ of the same seed and offset), kept values are scaled by 1/(1-p), the
// generator advances, and backward regenerates the same mask.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/engine.h"
#include "ops/dropout.h"
#include "ops/reduce.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::gradcheck;
using test::random_tensor;

// out[i] = u[i] >= p ? x[i] / (1-p) : 0 with u the uniforms of (seed, offset), in double.
std::vector<double> dropout_ref(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  Tensor u = empty(x.shape(), DType::F64);
  fill_uniform_(u, seed, offset);
  std::vector<double> xv = x.to_vector(), uv = u.to_vector(), out(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) out[i] = uv[i] >= p ? xv[i] / (1.0 - p) : 0.0;
  return out;
}

TEST(Dropout, FractionKeptAndScale) {
  for (double p : {0.1, 0.3, 0.5, 0.9}) {
    Generator gen(123);
    Tensor out = dropout(ones({400, 250}), p, true, gen);
    std::vector<double> v = out.to_vector();
    int64_t kept = 0;
    bool scaled = true;
    for (double x : v) {
      if (x != 0) {
        ++kept;
        scaled &= std::fabs(x - 1.0 / (1.0 - p)) <= 1e-6 * (1.0 / (1.0 - p));
      }
    }
    const double frac = double(kept) / double(v.size());
    // 100000 Bernoulli draws: the standard deviation of the fraction is <= 0.0016.
    EXPECT_NEAR(frac, 1.0 - p, 0.01) << "p = " << p;
    EXPECT_TRUE(scaled) << "p = " << p;
  }
}

TEST(Dropout, MaskIsThePhiloxUniformStream) {
  const double p = 0.4;
  for (const Shape& s : {Shape{7}, Shape{3, 5, 7}, Shape{2, 1, 6}}) {  // numel not a multiple of 4
    Tensor x = random_tensor(s, DType::F64, 1);
    Generator gen(77);
    gen.offset = 5;
    Tensor out = dropout(x, p, true, gen);
    EXPECT_EQ(gen.offset, 5 + uniform_blocks(x.numel()));
    EXPECT_TRUE(test::all_close(out, dropout_ref(x, p, 77, 5), 1e-15, 0)) << shape_str(s);
    // Strided input: the mask follows the logical (row-major) index, not storage.
    Generator gen2(77);
    gen2.offset = 5;
    EXPECT_TRUE(test::all_close(dropout(test::non_contiguous(x), p, true, gen2), out, 0, 0)) << shape_str(s);
  }
}

TEST(Dropout, LowPrecisionDtypes) {
  Tensor x = random_tensor({5, 9}, DType::F64, 2);
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    Tensor xl = to(x, dt);
    Generator gen(9);
    Tensor out = dropout(xl, 0.25, true, gen);
    EXPECT_EQ(out.dtype(), dt);
    const double tol = dt == DType::F32 ? 1e-6 : (dt == DType::F16 ? 1e-3 : 8e-3);
    EXPECT_TRUE(test::all_close(out, dropout_ref(to(xl, DType::F64), 0.25, 9, 0), tol, 0)) << dtype_name(dt);
  }
}

TEST(Dropout, DeterministicForSameStateDifferentForNextCall) {
  Tensor x = random_tensor({64, 33}, DType::F32, 3);
  Generator a(42), b(42);
  Tensor a1 = dropout(x, 0.5, true, a), b1 = dropout(x, 0.5, true, b);
  EXPECT_TRUE(test::all_close(a1, b1, 0, 0));
  Tensor a2 = dropout(x, 0.5, true, a);  // the generator moved on: a new mask
  std::vector<double> v1 = a1.to_vector(), v2 = a2.to_vector();
  int64_t differ = 0;
  for (size_t i = 0; i < v1.size(); ++i) differ += (v1[i] == 0) != (v2[i] == 0);
  EXPECT_GT(differ, int64_t(v1.size()) / 4);  // about half the mask bits differ
  Generator c(43);
  EXPECT_FALSE(test::all_close(dropout(x, 0.5, true, c), a1, 0, 0));  // another seed
}

TEST(Dropout, IdentityWhenEvalOrZeroP) {
  Tensor x = random_tensor({3, 4}, DType::F32, 4);
  Generator gen(1);
  EXPECT_TRUE(dropout(x, 0.5, false, gen).same(x));
  EXPECT_TRUE(dropout(x, 0.0, true, gen).same(x));
  EXPECT_EQ(gen.offset, 0u);  // no randomness consumed
}

TEST(Dropout, BadProbabilityRaises) {
  Generator gen(1);
  EXPECT_THROW(dropout(zeros({3}), -0.1, true, gen), Error);
  EXPECT_THROW(dropout(zeros({3}), 1.0, true, gen), Error);
  EXPECT_THROW(dropout(zeros({3}), std::nan(""), true, gen), Error);
  EXPECT_THROW(dropout(zeros({3}), 1.5, false, gen), Error);
  EXPECT_THROW(dropout(zeros({3}, DType::I32), 0.5, true, gen), Error);
}

TEST(GradDropout, BackwardReusesTheMask) {
  Tensor x = random_tensor({6, 7}, DType::F64, 5).set_requires_grad(true);
  Generator gen(8);
  const double p = 0.3;
  Tensor y = dropout(x, p, true, gen);
  autograd::backward(sum_all(y));
  std::vector<double> yv = y.to_vector(), g = x.grad().to_vector();
  for (size_t i = 0; i < yv.size(); ++i) EXPECT_DOUBLE_EQ(g[i], yv[i] != 0 ? 1.0 / (1.0 - p) : 0.0) << i;
}

TEST(GradDropout, Gradcheck) {
  // Every forward of the check must draw the same mask: a fresh generator per call.
  auto f = [](const std::vector<Tensor>& in) {
    Generator gen(1234);
    return dropout(in[0], 0.35, true, gen);
  };
  EXPECT_TRUE(gradcheck(f, {random_tensor({3, 4}, DType::F64, 6)}));
  EXPECT_TRUE(gradcheck(f, {random_tensor({2, 3, 5}, DType::F64, 7)}));
  EXPECT_TRUE(gradcheck(f, {test::non_contiguous(random_tensor({3, 2, 3}, DType::F64, 8))}));
}

}  // namespace
}  // namespace sd
