// matmul / linear: forward against float64 triple loops, gradients by finite differences.
#include <gtest/gtest.h>

#include <cmath>

#include "ops/cpu/gemm_bf16.h"
#include "ops/linear.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::random_tensor;

// Reference batched product over explicit batch indices with broadcasting of batch dims.
std::vector<double> loop_matmul(const Tensor& a, const Tensor& b) {
  const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  Shape ab(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes(ab, bb, "ref");
  std::vector<double> va = a.to_vector(), vb = b.to_vector();
  const int64_t B = shape_numel(batch);
  std::vector<double> out(B * M * N);
  auto offset = [&](const Shape& s, int64_t flat) {
    // map a flat batch index of `batch` into operand batch dims `s`
    Shape idx(batch.size());
    for (int64_t d = int64_t(batch.size()) - 1; d >= 0; --d) {
      idx[d] = flat % batch[d];
      flat /= batch[d];
    }
    int64_t o = 0;
    const size_t lead = batch.size() - s.size();
    for (size_t d = 0; d < s.size(); ++d) o = o * s[d] + (s[d] == 1 ? 0 : idx[lead + d]);
    return o;
  };
  for (int64_t bi = 0; bi < B; ++bi) {
    const double* pa = va.data() + offset(ab, bi) * M * K;
    const double* pb = vb.data() + offset(bb, bi) * K * N;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += pa[i * K + k] * pb[k * N + j];
        out[(bi * M + i) * N + j] = s;
      }
  }
  return out;
}

struct MatmulCase {
  Shape a, b;
};
const MatmulCase kCases[] = {
    {{3, 5}, {5, 4}},          {{2, 3, 5}, {5, 7}},       {{2, 3, 5}, {2, 5, 7}},
    {{2, 1, 3, 4}, {3, 4, 2}}, {{1, 7}, {7, 1}},          {{4, 2, 77, 40}, {4, 2, 40, 13}},
};

TEST(Matmul, ForwardMatchesLoopInEveryDtype) {
  for (const auto& c : kCases) {
    Tensor a = random_tensor(c.a, DType::F64, 1), b = random_tensor(c.b, DType::F64, 2);
    std::vector<double> ref = loop_matmul(a, b);
    EXPECT_TRUE(test::all_close(matmul(a, b), ref, 1e-12, 1e-13)) << shape_str(c.a);
    EXPECT_TRUE(test::all_close(matmul(test::non_contiguous(a), test::non_contiguous(b)), ref, 1e-12, 1e-13));
    EXPECT_LT(test::relative_error(matmul(to(a, DType::F32), to(b, DType::F32)), from_vector(ref, {int64_t(ref.size())})),
              1e-6);
    for (DType dt : {DType::F16, DType::BF16}) {
      Tensor out = matmul(to(a, dt), to(b, dt));
      EXPECT_EQ(out.dtype(), dt);
      EXPECT_LT(test::relative_error(reshape(out, {-1}), from_vector(ref, {int64_t(ref.size())})), 1e-2);
    }
  }
}

TEST(Matmul, TransposedViewsNeedNoCopyAndGiveTheSameResult) {
  Tensor a = random_tensor({6, 4}, DType::F64, 3), b = random_tensor({6, 5}, DType::F64, 4);
  Tensor at = transpose(a, 0, 1);  // [4, 6] as a view
  EXPECT_TRUE(test::all_close(matmul(at, b), loop_matmul(contiguous(at), b), 1e-12, 1e-13));
}

TEST(Matmul, BadShapesRaise) {
  EXPECT_THROW(matmul(zeros({2, 3}), zeros({4, 5})), Error);
  EXPECT_THROW(matmul(zeros({3}), zeros({3, 2})), Error);
  EXPECT_THROW(matmul(zeros({2, 2, 3}), zeros({3, 3, 4})), Error);
  EXPECT_THROW(linear(zeros({2, 3}), zeros({4, 5})), Error);
  EXPECT_THROW(linear(zeros({2, 3}), zeros({4, 3}), zeros({5})), Error);
}

TEST(Linear, MatchesLoopWithBias) {
  Tensor x = random_tensor({2, 5, 8}, DType::F64, 5), w = random_tensor({3, 8}, DType::F64, 6),
         b = random_tensor({3}, DType::F64, 7);
  std::vector<double> xv = x.to_vector(), wv = w.to_vector(), bv = b.to_vector(), ref;
  for (int64_t r = 0; r < 10; ++r)
    for (int64_t o = 0; o < 3; ++o) {
      double s = bv[o];
      for (int64_t i = 0; i < 8; ++i) s += xv[r * 8 + i] * wv[o * 8 + i];
      ref.push_back(s);
    }
  Tensor y = linear(x, w, b);
  EXPECT_EQ(y.shape(), (Shape{2, 5, 3}));
  EXPECT_TRUE(test::all_close(y, ref, 1e-12, 1e-13));
}

TEST(GradMatmul, AllBroadcastCases) {
  const MatmulCase small[] = {{{3, 5}, {5, 4}}, {{2, 3, 5}, {5, 2}}, {{2, 3, 4}, {2, 4, 2}}, {{2, 1, 2, 3}, {3, 3, 2}}};
  for (const auto& c : small) {
    Tensor a = random_tensor(c.a, DType::F64, 8), b = random_tensor(c.b, DType::F64, 9);
    EXPECT_TRUE(test::gradcheck([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }, {a, b}))
        << shape_str(c.a) << " @ " << shape_str(c.b);
    EXPECT_TRUE(test::gradcheck([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); },
                                {test::non_contiguous(a), test::non_contiguous(b)}));
  }
}

TEST(GradLinear, InputWeightAndBias) {
  Tensor x = random_tensor({2, 3, 4}, DType::F64, 10), w = random_tensor({5, 4}, DType::F64, 11),
         b = random_tensor({5}, DType::F64, 12);
  EXPECT_TRUE(test::gradcheck([](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); }, {x, w, b}));
  EXPECT_TRUE(test::gradcheck([](const std::vector<Tensor>& in) { return linear(in[0], in[1]); },
                              {random_tensor({4}, DType::F64, 13), w}));
}

}  // namespace
}  // namespace sd

namespace sd {
namespace {

// The bf16 GEMM (oneDNN matmul, on CPUs with bf16 dot products): f32 products of the bf16 inputs,
// every transpose combination, with and without accumulating into C, against a float64 loop
// over the same bf16 values.
TEST(GemmBf16, MatchesLoopOverTheRoundedInputs) {
  if (!cpu::bf16_gemm_available()) GTEST_SKIP() << "no bf16 GEMM on this CPU / build";
  const int64_t M = 37, N = 29, K = 70;
  const std::vector<double> av = random_tensor({M * K}, DType::F64, 21).to_vector(),
                            bv = random_tensor({K * N}, DType::F64, 22).to_vector();
  std::vector<BFloat16> a(av.begin(), av.end()), b(bv.begin(), bv.end());
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (bool acc : {false, true}) {
        // A is [M, K] (or stored [K, M] when transposed), B is [K, N] (or [N, K]).
        auto a_at = [&](int64_t i, int64_t k) { return double(float(ta ? a[size_t(k * M + i)] : a[size_t(i * K + k)])); };
        auto b_at = [&](int64_t k, int64_t j) { return double(float(tb ? b[size_t(j * K + k)] : b[size_t(k * N + j)])); };
        std::vector<float> c(size_t(M * N), 0.5f);
        cpu::gemm_bf16(ta, tb, M, N, K, a.data(), ta ? M : K, b.data(), tb ? K : N, acc, c.data(), N);
        double worst = 0;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            double s = acc ? 0.5 : 0.0;
            for (int64_t k = 0; k < K; ++k) s += a_at(i, k) * b_at(k, j);
            worst = std::max(worst, std::fabs(double(c[size_t(i * N + j)]) - s) / (1.0 + std::fabs(s)));
          }
        EXPECT_LT(worst, 1e-5) << "trans_a " << ta << " trans_b " << tb << " accumulate " << acc;
      }
}

}  // namespace
}  // namespace sd
