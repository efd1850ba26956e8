// Softmax and log-softmax: forward against float64 loops along every dim (including
// extreme inputs), backward against finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "ops/elementwise.h"
#include "ops/softmax.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::gradcheck;
using test::random_tensor;

// Softmax of x along dim by index arithmetic on the row-major values; the max is
// subtracted here too, or the extreme-input case would overflow the reference itself.
std::vector<double> ref_softmax(const Tensor& x, int64_t dim, bool log) {
  const std::vector<double> v = x.to_vector();
  const Shape& s = x.shape();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= s[d];
  for (size_t d = size_t(dim) + 1; d < s.size(); ++d) inner *= s[d];
  const int64_t L = s[dim];
  std::vector<double> out(v.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      auto at = [&](int64_t l) { return o * L * inner + l * inner + i; };
      double m = -INFINITY, sum = 0;
      for (int64_t l = 0; l < L; ++l) m = std::max(m, v[at(l)]);
      for (int64_t l = 0; l < L; ++l) sum += std::exp(v[at(l)] - m);
      for (int64_t l = 0; l < L; ++l) out[at(l)] = log ? v[at(l)] - m - std::log(sum) : std::exp(v[at(l)] - m) / sum;
    }
  return out;
}

struct Case {
  Shape shape;
  int64_t dim;
};
const Case kCases[] = {{{4, 7}, -1}, {{4, 7}, 0}, {{3, 5, 6}, 1}, {{2, 3, 4, 5}, 2}, {{11}, 0}, {{2, 1, 3}, 1}};

TEST(Softmax, ForwardMatchesLoop) {
  for (bool log : {false, true}) {
    auto op = log ? log_softmax : softmax;
    for (const auto& c : kCases) {
      Tensor x = random_tensor(c.shape, DType::F64, 1, -4, 4);
      const int64_t dim = c.dim < 0 ? c.dim + int64_t(c.shape.size()) : c.dim;
      const std::vector<double> ref = ref_softmax(x, dim, log);
      EXPECT_TRUE(test::all_close(op(x, c.dim), ref, 1e-13, 1e-14)) << shape_str(c.shape) << " dim " << c.dim;
      EXPECT_TRUE(test::all_close(op(test::non_contiguous(x), c.dim), ref, 1e-13, 1e-14))
          << shape_str(c.shape) << " dim " << c.dim << " non-contiguous";
      for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
        const std::vector<double> r = ref_softmax(to(to(x, dt), DType::F64), dim, log);
        const double tol = dt == DType::F32 ? 1e-5 : (dt == DType::F16 ? 2e-3 : 1.6e-2);
        Tensor y = op(to(x, dt), c.dim);
        EXPECT_EQ(y.dtype(), dt);
        EXPECT_TRUE(test::all_close(y, r, tol, log ? tol : 1e-6)) << dtype_name(dt) << " " << shape_str(c.shape);
      }
    }
  }
}

TEST(Softmax, ExtremeInputsStayFinite) {
  // exp(1000) overflows even in f64: only max subtraction keeps these finite.
  Tensor x = from_vector({1000, 1001, 999, -1000, -1e30, 0}, {2, 3}, DType::F32);
  Tensor y = softmax(x);
  EXPECT_TRUE(test::all_close(y, ref_softmax(to(x, DType::F64), 1, false), 1e-6, 1e-7));
  EXPECT_TRUE(test::all_close(log_softmax(x), ref_softmax(to(x, DType::F64), 1, true), 1e-6, 1e-5));
  // -inf entries get probability 0.
  const double inf = std::numeric_limits<double>::infinity();
  Tensor m = from_vector({0.5, -inf, 1.5}, {3}, DType::F64);
  EXPECT_TRUE(test::all_close(softmax(m), {1 / (1 + std::exp(1.0)), 0, 1 / (1 + std::exp(-1.0))}, 1e-15, 1e-16));
}

TEST(Softmax, BadArgumentsRaise) {
  EXPECT_THROW(softmax(zeros({2, 3}), 2), Error);
  EXPECT_THROW(log_softmax(zeros({2, 3}), -3), Error);
  EXPECT_THROW(softmax(zeros({2, 3}, DType::I32)), Error);
  EXPECT_THROW(softmax(scalar_tensor(1.0)), Error);
}

TEST(GradSoftmax, SoftmaxAndLogSoftmax) {
  const Case cases[] = {{{3, 5}, -1}, {{3, 5}, 0}, {{2, 3, 4}, 1}, {{7}, 0}};
  for (const auto& c : cases) {
    Tensor x = random_tensor(c.shape, DType::F64, 2, -3, 3);
    const int64_t dim = c.dim;
    for (bool log : {false, true}) {
      auto op = log ? log_softmax : softmax;
      auto f = [op, dim](const std::vector<Tensor>& in) { return op(in[0], dim); };
      EXPECT_TRUE(gradcheck(f, {x})) << shape_str(c.shape) << " dim " << dim << " log " << log;
      EXPECT_TRUE(gradcheck(f, {test::non_contiguous(x)})) << shape_str(c.shape) << " non-contiguous";
      // Composed with another op so the incoming gradient is not the plain seed.
      auto g = [op, dim](const std::vector<Tensor>& in) { return square(op(in[0] * 1.5, dim)); };
      EXPECT_TRUE(gradcheck(g, {x})) << shape_str(c.shape) << " composed";
    }
  }
}

}  // namespace
}  // namespace sd
