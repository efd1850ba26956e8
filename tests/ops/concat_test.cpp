// cat, split and chunk: values against index loops, views sharing storage, shape errors,
// and gradients through each (including non-contiguous pieces).
#include <gtest/gtest.h>

#include "autograd/engine.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::gradcheck;
using test::random_tensor;

// Concatenation by index arithmetic: out element (outer, k, inner) comes from the input
// whose range along dim holds k.
std::vector<double> cat_loop(const std::vector<Tensor>& ts, int64_t d) {
  const Shape& s0 = ts[0].shape();
  int64_t outer = 1, inner = 1, total = 0;
  for (int64_t i = 0; i < d; ++i) outer *= s0[i];
  for (size_t i = size_t(d) + 1; i < s0.size(); ++i) inner *= s0[i];
  std::vector<std::vector<double>> vals;
  for (const Tensor& t : ts) {
    vals.push_back(t.to_vector());
    total += t.size(d);
  }
  std::vector<double> out;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t k = 0; k < total; ++k) {
      size_t which = 0;
      int64_t kk = k;
      while (kk >= ts[which].size(d)) kk -= ts[which++].size(d);
      for (int64_t i = 0; i < inner; ++i) out.push_back(vals[which][size_t((o * ts[which].size(d) + kk) * inner + i)]);
    }
  return out;
}

struct CatCase {
  std::vector<Shape> shapes;
  int64_t dim;
};
const CatCase kCatCases[] = {
    {{{2, 3}, {4, 3}}, 0},
    {{{2, 3, 4}, {2, 1, 4}, {2, 5, 4}}, 1},
    {{{2, 3, 4}, {2, 3, 2}}, -1},
    {{{3}, {0}, {2}}, 0},  // an empty piece
    {{{1, 2, 3, 5}, {1, 2, 3, 5}}, 1},
};

std::vector<Tensor> make_inputs(const CatCase& c, DType dt, uint64_t seed) {
  std::vector<Tensor> ts;
  for (const Shape& s : c.shapes) ts.push_back(random_tensor(s, dt, ++seed));
  return ts;
}

TEST(Concat, CatMatchesLoop) {
  uint64_t seed = 1;
  for (const CatCase& c : kCatCases) {
    std::vector<Tensor> ts = make_inputs(c, DType::F64, seed += 10);
    const int64_t d = wrap_dim(c.dim, ts[0].dim(), "test");
    Tensor y = cat(ts, c.dim);
    Shape expect = ts[0].shape();
    expect[d] = 0;
    for (const Tensor& t : ts) expect[d] += t.size(d);
    EXPECT_EQ(y.shape(), expect);
    const std::vector<double> ref = cat_loop(ts, d);
    EXPECT_TRUE(test::all_close(y, ref, 0, 0));
    std::vector<Tensor> nc;
    for (const Tensor& t : ts) nc.push_back(test::non_contiguous(t));
    EXPECT_TRUE(test::all_close(cat(nc, c.dim), ref, 0, 0));
    for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::I64}) {
      std::vector<Tensor> lo;
      for (const Tensor& t : ts) lo.push_back(to(t, dt));
      Tensor yl = cat(lo, c.dim);
      EXPECT_EQ(yl.dtype(), dt);
      std::vector<Tensor> back;
      for (const Tensor& t : lo) back.push_back(to(t, DType::F64));
      EXPECT_TRUE(test::all_close(yl, cat_loop(back, d), 0, 0)) << dtype_name(dt);
    }
  }
}

TEST(Concat, CatBadArgumentsRaise) {
  EXPECT_THROW(cat({}, 0), Error);
  EXPECT_THROW(cat({zeros({2, 3}), zeros({2, 4})}, 0), Error);  // sizes differ off the cat dim
  EXPECT_THROW(cat({zeros({2, 3}), zeros({2, 3, 1})}, 0), Error);
  EXPECT_THROW(cat({zeros({2, 3}), zeros({2, 3}, DType::F16)}, 0), Error);
  EXPECT_THROW(cat({zeros({2, 3}), zeros({2, 3})}, 2), Error);
  EXPECT_THROW(cat({scalar_tensor(1.0), scalar_tensor(2.0)}, 0), Error);
  EXPECT_NO_THROW(cat({zeros({2, 3}), zeros({2, 4})}, 1));
}

TEST(Concat, SplitAndChunkAreViews) {
  Tensor x = random_tensor({3, 7, 2}, DType::F64, 50);
  const std::vector<double> v = x.to_vector();
  std::vector<Tensor> parts = split(x, {2, 0, 4, 1}, 1);
  ASSERT_EQ(parts.size(), 4u);
  int64_t start = 0;
  for (const Tensor& p : parts) {
    EXPECT_EQ(p.storage().get(), x.storage().get());
    std::vector<double> ref;
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t k = start; k < start + p.size(1); ++k)
        for (int64_t j = 0; j < 2; ++j) ref.push_back(v[size_t((i * 7 + k) * 2 + j)]);
    EXPECT_EQ(p.shape(), (Shape{3, p.size(1), 2}));
    EXPECT_TRUE(test::all_close(p, ref, 0, 0));
    start += p.size(1);
  }
  // Pieces put back together give the input.
  EXPECT_TRUE(test::all_close(cat(parts, 1), x, 0, 0));
  EXPECT_TRUE(test::all_close(cat(chunk(x, 3, -2), 1), x, 0, 0));
}

TEST(Concat, ChunkSizesFollowPyTorch) {
  auto sizes = [](int64_t n, int64_t chunks) {
    std::vector<int64_t> s;
    for (const Tensor& t : chunk(zeros({2, n}), chunks, 1)) s.push_back(t.size(1));
    return s;
  };
  EXPECT_EQ(sizes(6, 3), (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(sizes(7, 3), (std::vector<int64_t>{3, 3, 1}));
  EXPECT_EQ(sizes(5, 4), (std::vector<int64_t>{2, 2, 1}));  // ceil(5/4) = 2: only 3 pieces
  EXPECT_EQ(sizes(2, 5), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(sizes(0, 3), (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(sizes(8, 1), (std::vector<int64_t>{8}));
}

TEST(Concat, SplitBadArgumentsRaise) {
  EXPECT_THROW(split(zeros({2, 5}), {2, 2}, 1), Error);   // sizes do not add up
  EXPECT_THROW(split(zeros({2, 5}), {6, -1}, 1), Error);  // negative size
  EXPECT_THROW(split(zeros({2, 5}), {5}, 2), Error);      // bad dim
  EXPECT_THROW(chunk(zeros({2, 5}), 0, 1), Error);
}

TEST(GradConcat, Cat) {
  uint64_t seed = 100;
  for (const CatCase& c : kCatCases) {
    std::vector<Tensor> ts = make_inputs(c, DType::F64, seed += 10);
    const int64_t dim = c.dim;
    auto f = [dim](const std::vector<Tensor>& in) { return cat(in, dim); };
    EXPECT_TRUE(gradcheck(f, ts));
    std::vector<Tensor> nc;
    for (const Tensor& t : ts) nc.push_back(test::non_contiguous(t));
    EXPECT_TRUE(gradcheck(f, nc));
  }
}

TEST(GradConcat, CatWithSomeInputsConstant) {
  std::vector<Tensor> ts = {random_tensor({2, 3}, DType::F64, 200), random_tensor({2, 2}, DType::F64, 201),
                            random_tensor({2, 4}, DType::F64, 202)};
  auto f = [](const std::vector<Tensor>& in) { return cat(in, 1); };
  EXPECT_TRUE(gradcheck(f, ts, {.check = {false, true, false}}));
  // The same tensor twice: its gradient is the sum of both slabs.
  auto twice = [](const std::vector<Tensor>& in) { return cat({in[0], in[0]}, 0); };
  EXPECT_TRUE(gradcheck(twice, {ts[0]}));
}

TEST(GradConcat, SplitAndChunk) {
  Tensor x = random_tensor({3, 7, 2}, DType::F64, 300);
  // Each piece scaled differently and put back in another order, so a misplaced gradient shows.
  auto f_split = [](const std::vector<Tensor>& in) {
    std::vector<Tensor> p = split(in[0], {2, 4, 1}, 1);
    return cat({p[2] * 3.0, p[0] * -2.0, p[1]}, 1);
  };
  EXPECT_TRUE(gradcheck(f_split, {x}));
  EXPECT_TRUE(gradcheck(f_split, {test::non_contiguous(x)}));
  auto f_chunk = [](const std::vector<Tensor>& in) {
    std::vector<Tensor> p = chunk(in[0], 2, -1);
    return p[0] * p[1];  // the GEGLU pattern: halves of the last dim
  };
  EXPECT_TRUE(gradcheck(f_chunk, {x}));
  EXPECT_TRUE(gradcheck(f_chunk, {test::non_contiguous(x)}));
  // Only one piece used: the others get zero gradient.
  auto f_one = [](const std::vector<Tensor>& in) { return chunk(in[0], 3, 0)[1]; };
  EXPECT_TRUE(gradcheck(f_one, {x}));
}

}  // namespace
}  // namespace sd
