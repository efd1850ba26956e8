// embedding: forward against a row-gather loop for both id dtypes and any id shape, the
// out-of-range error, and the scatter-add gradient with repeated ids.
#include <gtest/gtest.h>

#include <string>

#include "autograd/engine.h"
#include "ops/embedding.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::gradcheck;
using test::random_tensor;

Tensor ids_tensor(const std::vector<double>& v, const Shape& shape, DType dt) { return from_vector(v, shape, dt); }

std::vector<double> gather_loop(const Tensor& w, const Tensor& ids) {
  const std::vector<double> vw = w.to_vector(), vi = ids.to_vector();
  const int64_t D = w.size(1);
  std::vector<double> out;
  for (double id : vi)
    for (int64_t j = 0; j < D; ++j) out.push_back(vw[size_t(int64_t(id) * D + j)]);
  return out;
}

std::vector<double> scatter_loop(const Tensor& g, const Tensor& ids, int64_t V, int64_t D) {
  const std::vector<double> vg = g.to_vector(), vi = ids.to_vector();
  std::vector<double> out(size_t(V * D), 0.0);
  for (size_t i = 0; i < vi.size(); ++i)
    for (int64_t j = 0; j < D; ++j) out[size_t(int64_t(vi[i]) * D + j)] += vg[i * size_t(D) + size_t(j)];
  return out;
}

struct Case {
  std::vector<double> ids;
  Shape shape;
};
const Case kCases[] = {
    {{3, 0, 4, 4, 1}, {5}},
    {{1, 2, 0, 6, 6, 6}, {2, 3}},
    {{5}, {}},                            // a 0-d id gives one row [D]
    {{0, 1, 2, 3, 4, 5, 6, 0}, {2, 2, 2}},
    {{}, {0}},                            // no ids
};

TEST(Embedding, ForwardMatchesLoop) {
  Tensor w = random_tensor({7, 5}, DType::F64, 1);
  for (const Case& c : kCases) {
    for (DType idt : {DType::I32, DType::I64}) {
      Tensor ids = ids_tensor(c.ids, c.shape, idt);
      Tensor y = embedding(w, ids);
      Shape expect = c.shape;
      expect.push_back(5);
      EXPECT_EQ(y.shape(), expect);
      const std::vector<double> ref = gather_loop(w, ids);
      EXPECT_TRUE(test::all_close(y, ref, 0, 0));
      EXPECT_TRUE(test::all_close(embedding(test::non_contiguous(w), test::non_contiguous(ids)), ref, 0, 0));
      for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
        Tensor wl = to(w, dt);
        Tensor yl = embedding(wl, ids);
        EXPECT_EQ(yl.dtype(), dt);
        EXPECT_TRUE(test::all_close(yl, gather_loop(to(wl, DType::F64), ids), 0, 0)) << dtype_name(dt);
      }
    }
  }
}

TEST(Embedding, OutOfRangeIdNamesIdAndTableSize) {
  Tensor w = zeros({5, 3});
  for (double bad : {5.0, 17.0, -1.0}) {
    for (DType idt : {DType::I32, DType::I64}) {
      try {
        embedding(w, ids_tensor({0, 2, bad, 1}, {4}, idt));
        FAIL() << "no error for id " << bad;
      } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("embedding"), std::string::npos) << msg;
        EXPECT_NE(msg.find("id " + std::to_string(int64_t(bad))), std::string::npos) << msg;
        EXPECT_NE(msg.find("V = 5"), std::string::npos) << msg;
      }
    }
  }
}

TEST(Embedding, BadArgumentsRaise) {
  EXPECT_THROW(embedding(zeros({5, 3}), zeros({2})), Error);                       // float ids
  EXPECT_THROW(embedding(zeros({5}), ids_tensor({0}, {1}, DType::I64)), Error);     // 1-d weight
  EXPECT_THROW(embedding(zeros({5, 3}, DType::I32), ids_tensor({0}, {1}, DType::I64)), Error);
  EXPECT_THROW(embedding(zeros({5, 3}), Tensor()), Error);
}

TEST(Embedding, LowPrecisionGradientSumsRepeatedRows) {
  // Row 2 is hit 40 times: the sum must be accumulated wider than bf16.
  std::vector<double> v;
  for (int i = 0; i < 40; ++i) v.push_back(2);
  v.push_back(0);
  v.push_back(3);
  Tensor ids = ids_tensor(v, {6, 7}, DType::I64);
  Tensor w = random_tensor({4, 3}, DType::F64, 5);
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    Tensor wl = to(w, dt).set_requires_grad();
    Tensor y = embedding(wl, ids);
    Tensor g = to(random_tensor(y.shape(), DType::F64, 6, 0.5, 1.0), dt);
    autograd::backward(y, g);
    const double tol = dt == DType::F32 ? 1e-6 : (dt == DType::F16 ? 1e-3 : 8e-3);
    EXPECT_TRUE(test::all_close(wl.grad(), scatter_loop(to(g, DType::F64), ids, 4, 3), tol, 1e-6)) << dtype_name(dt);
  }
}

TEST(GradEmbedding, RepeatedIds) {
  uint64_t seed = 10;
  for (const Case& c : kCases) {
    if (c.ids.empty()) continue;  // no output element to check against
    for (DType idt : {DType::I32, DType::I64}) {
      Tensor ids = ids_tensor(c.ids, c.shape, idt);
      auto f = [ids](const std::vector<Tensor>& t) { return embedding(t[0], ids); };
      Tensor w = random_tensor({7, 5}, DType::F64, ++seed);
      EXPECT_TRUE(gradcheck(f, {w}));
      EXPECT_TRUE(gradcheck(f, {test::non_contiguous(w)}));
    }
  }
}

}  // namespace
}  // namespace sd
