// Views, layout changes and reductions: values against index arithmetic, gradients by
// finite differences.
#include <gtest/gtest.h>

#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::gradcheck;
using test::random_tensor;

TEST(Reduce, SumAndMeanOverDimsMatchLoops) {
  Tensor x = random_tensor({3, 4, 5}, DType::F64, 1);
  std::vector<double> v = x.to_vector();
  auto at = [&](int i, int j, int k) { return v[(i * 4 + j) * 5 + k]; };
  std::vector<double> s1, m02, all(1, 0.0);
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 5; ++k) {
      double s = 0;
      for (int j = 0; j < 4; ++j) s += at(i, j, k);
      s1.push_back(s);
    }
  for (int j = 0; j < 4; ++j) {
    double s = 0;
    for (int i = 0; i < 3; ++i)
      for (int k = 0; k < 5; ++k) s += at(i, j, k);
    m02.push_back(s / 15);
  }
  for (double e : v) all[0] += e;
  Tensor y = sum(x, {1});
  EXPECT_EQ(y.shape(), (Shape{3, 5}));
  EXPECT_TRUE(test::all_close(y, s1, 1e-14, 1e-15));
  EXPECT_EQ(sum(x, {1}, true).shape(), (Shape{3, 1, 5}));
  EXPECT_TRUE(test::all_close(mean(x, {0, -1}), m02, 1e-14, 1e-15));
  EXPECT_TRUE(test::all_close(sum_all(x), all, 1e-14, 1e-15));
  EXPECT_TRUE(test::all_close(sum(test::non_contiguous(x), {1}), s1, 1e-14, 1e-15));
  EXPECT_EQ(sum_all(x).dim(), 0);
  for (DType dt : {DType::F32, DType::F16, DType::BF16})
    EXPECT_TRUE(test::all_close(sum(to(x, dt), {1}), s1, 2e-2, 2e-2)) << dtype_name(dt);
  EXPECT_THROW(sum(x, {3}), Error);
  EXPECT_THROW(sum(x, {1, 1}), Error);
}

TEST(Reduce, SumToReversesBroadcast) {
  Tensor x = random_tensor({2, 3, 4}, DType::F64, 2);
  Tensor r = sum_to(x, {3, 1});
  EXPECT_EQ(r.shape(), (Shape{3, 1}));
  std::vector<double> v = x.to_vector(), ref(3, 0.0);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) ref[j] += v[(i * 3 + j) * 4 + k];
  EXPECT_TRUE(test::all_close(r, ref, 1e-14, 1e-15));
  EXPECT_THROW(sum_to(x, {5}), Error);
}

TEST(GradReduce, SumMeanAndSumTo) {
  Tensor x = random_tensor({3, 4, 2}, DType::F64, 3);
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return sum(in[0], {1}); }, {x}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return mean(in[0], {0, 2}, true); }, {x}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return mean_all(in[0]); }, {test::non_contiguous(x)}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return sum_to(in[0], {4, 1}); }, {x}));
}

TEST(GradView, EveryViewOp) {
  Tensor x = random_tensor({2, 3, 4}, DType::F64, 4);
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return reshape(in[0], {4, -1}) * 2.0; }, {x}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return permute(in[0], {2, 0, 1}) * 1.5; }, {x}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return transpose(in[0], 0, 2) * 1.5; }, {x}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return slice(in[0], 2, 1, 4, 2) * 3.0; }, {x}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return select(in[0], 1, 2) * 3.0; }, {x}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return unsqueeze(in[0], 1) * 3.0; }, {x}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return expand(unsqueeze(in[0], 0), {3, 2, 3, 4}) * 1.0; },
                        {x}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return contiguous(transpose(in[0], 1, 2)); }, {x}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return flatten(in[0], 1) * 2.0; },
                        {test::non_contiguous(x)}));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return to(to(in[0], DType::F32), DType::F64) * 1.0; },
                        {random_tensor({3}, DType::F64, 5, 0.25, 0.75)},
                        {.eps = 1e-3, .rtol = 1e-4, .atol = 1e-6}));
}

}  // namespace
}  // namespace sd
