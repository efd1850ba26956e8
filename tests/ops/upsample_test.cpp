// upsample_nearest2d: forward against an index loop, backward against finite differences
// and against the block-sum loop in low precision.
#include <gtest/gtest.h>

#include "autograd/engine.h"
#include "ops/upsample.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::gradcheck;
using test::random_tensor;

std::vector<double> upsample_loop(const Tensor& x, int64_t s) {
  const std::vector<double> v = x.to_vector();
  const int64_t planes = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  std::vector<double> out;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t i = 0; i < H * s; ++i)
      for (int64_t j = 0; j < W * s; ++j) out.push_back(v[(p * H + i / s) * W + j / s]);
  return out;
}

// Sum of each s x s block of g [N, C, H*s, W*s].
std::vector<double> block_sum_loop(const Tensor& g, int64_t s) {
  const std::vector<double> v = g.to_vector();
  const int64_t planes = g.size(0) * g.size(1), Ho = g.size(2), Wo = g.size(3), H = Ho / s, W = Wo / s;
  std::vector<double> out(size_t(planes * H * W), 0.0);
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j) out[size_t((p * H + i / s) * W + j / s)] += v[size_t((p * Ho + i) * Wo + j)];
  return out;
}

struct Case {
  Shape shape;
  int64_t scale;
};
const Case kCases[] = {
    {{1, 1, 1, 1}, 2}, {{2, 3, 4, 5}, 2}, {{1, 2, 3, 7}, 3}, {{2, 1, 5, 3}, 1}, {{3, 2, 2, 1}, 4},
};

TEST(Upsample, ForwardMatchesLoop) {
  uint64_t seed = 10;
  for (const Case& c : kCases) {
    Tensor x = random_tensor(c.shape, DType::F64, ++seed);
    Tensor y = upsample_nearest2d(x, c.scale);
    EXPECT_EQ(y.shape(), (Shape{c.shape[0], c.shape[1], c.shape[2] * c.scale, c.shape[3] * c.scale}));
    const std::vector<double> ref = upsample_loop(x, c.scale);
    EXPECT_TRUE(test::all_close(y, ref, 0, 0));
    EXPECT_TRUE(test::all_close(upsample_nearest2d(test::non_contiguous(x), c.scale), ref, 0, 0));
    // Channels-last storage seen as NCHW.
    Tensor x_cl = permute(contiguous(permute(x, {0, 2, 3, 1})), {0, 3, 1, 2});
    EXPECT_TRUE(test::all_close(upsample_nearest2d(x_cl, c.scale), ref, 0, 0));
    // A copy: every dtype reproduces its own values exactly.
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      Tensor xl = to(x, dt);
      Tensor yl = upsample_nearest2d(xl, c.scale);
      EXPECT_EQ(yl.dtype(), dt);
      EXPECT_TRUE(test::all_close(yl, upsample_loop(to(xl, DType::F64), c.scale), 0, 0)) << dtype_name(dt);
    }
  }
}

TEST(Upsample, DefaultScaleIsTwo) {
  Tensor x = random_tensor({1, 2, 3, 3}, DType::F32, 20);
  EXPECT_EQ(upsample_nearest2d(x).shape(), (Shape{1, 2, 6, 6}));
}

TEST(Upsample, BadArgumentsRaise) {
  EXPECT_THROW(upsample_nearest2d(zeros({2, 3, 4}), 2), Error);
  EXPECT_THROW(upsample_nearest2d(zeros({1, 2, 3, 4}), 0), Error);
  EXPECT_THROW(upsample_nearest2d(zeros({1, 2, 3, 4}, DType::I32), 2), Error);
}

TEST(Upsample, LowPrecisionBackwardSumsBlocks) {
  Tensor x = random_tensor({2, 3, 5, 4}, DType::F64, 30);
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    Tensor xl = to(x, dt).set_requires_grad();
    Tensor y = upsample_nearest2d(xl, 3);
    Tensor g = to(random_tensor(y.shape(), DType::F64, 31), dt);
    autograd::backward(y, g);
    const double tol = dt == DType::F32 ? 1e-6 : (dt == DType::F16 ? 1e-3 : 8e-3);
    EXPECT_TRUE(test::all_close(xl.grad(), block_sum_loop(to(g, DType::F64), 3), tol, tol)) << dtype_name(dt);
  }
}

TEST(GradUpsample, MatchesFiniteDifferences) {
  uint64_t seed = 40;
  for (const Case& c : kCases) {
    Tensor x = random_tensor(c.shape, DType::F64, ++seed);
    auto f = [c](const std::vector<Tensor>& t) { return upsample_nearest2d(t[0], c.scale); };
    EXPECT_TRUE(gradcheck(f, {x}));
    EXPECT_TRUE(gradcheck(f, {test::non_contiguous(x)}));
  }
}

}  // namespace
}  // namespace sd
