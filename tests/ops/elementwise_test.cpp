// Pointwise ops: forward against a float64 loop, backward against finite differences,
// on broadcast and non-contiguous inputs.
#include <gtest/gtest.h>

#include <cmath>

#include "ops/activation.h"
#include "ops/elementwise.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

using test::gradcheck;
using test::random_tensor;

std::vector<double> loop_binary(const Tensor& a, const Tensor& b, const Shape& out_shape,
                                double (*f)(double, double)) {
  // Explicit broadcast by index arithmetic, independent of the kernel's stride logic.
  std::vector<double> va = a.to_vector(), vb = b.to_vector(), out(shape_numel(out_shape));
  const size_t nd = out_shape.size();
  auto index_of = [&](const Shape& s, const Shape& idx) {
    int64_t flat = 0;
    const size_t lead = nd - s.size();
    for (size_t d = 0; d < s.size(); ++d) flat = flat * s[d] + (s[d] == 1 ? 0 : idx[lead + d]);
    return flat;
  };
  Shape idx(nd, 0);
  for (size_t i = 0; i < out.size(); ++i) {
    int64_t r = int64_t(i);
    for (int64_t d = int64_t(nd) - 1; d >= 0; --d) {
      idx[d] = r % out_shape[d];
      r /= out_shape[d];
    }
    out[i] = f(va[index_of(a.shape(), idx)], vb[index_of(b.shape(), idx)]);
  }
  return out;
}

struct BinaryCase {
  Shape a, b, out;
};
const BinaryCase kBinaryCases[] = {
    {{3, 4}, {3, 4}, {3, 4}},
    {{2, 3, 4}, {4}, {2, 3, 4}},
    {{2, 1, 4}, {3, 1}, {2, 3, 4}},
    {{1}, {5, 2}, {5, 2}},
    {{2, 3, 1, 1}, {2, 3, 5, 7}, {2, 3, 5, 7}},
};

TEST(Elementwise, BinaryForwardMatchesLoop) {
  struct Op {
    Tensor (*op)(const Tensor&, const Tensor&);
    double (*ref)(double, double);
  } ops[] = {{add, [](double x, double y) { return x + y; }},
             {sub, [](double x, double y) { return x - y; }},
             {mul, [](double x, double y) { return x * y; }},
             {div, [](double x, double y) { return x / y; }}};
  for (const auto& c : kBinaryCases) {
    for (const auto& o : ops) {
      Tensor a = random_tensor(c.a, DType::F64, 1), b = random_tensor(c.b, DType::F64, 2, 0.5, 2.0);
      Tensor out = o.op(a, b);
      EXPECT_EQ(out.shape(), c.out);
      EXPECT_TRUE(test::all_close(out, loop_binary(a, b, c.out, o.ref), 1e-15, 0));
      // Non-contiguous operands give the same values.
      EXPECT_TRUE(test::all_close(o.op(test::non_contiguous(a), test::non_contiguous(b)), out, 0, 0));
      // f32, f16, bf16 compute in f32 and round on store.
      for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
        Tensor lo = o.op(to(a, dt), to(b, dt));
        std::vector<double> ref = loop_binary(to(to(a, dt), DType::F64), to(to(b, dt), DType::F64), c.out, o.ref);
        double tol = dt == DType::F32 ? 1e-6 : (dt == DType::F16 ? 1e-3 : 8e-3);
        EXPECT_TRUE(test::all_close(lo, ref, tol, 1e-6)) << dtype_name(dt);
      }
    }
  }
}

TEST(Elementwise, MismatchedOperandsRaise) {
  EXPECT_THROW(add(zeros({2, 3}), zeros({4})), Error);
  EXPECT_THROW(add(zeros({2}), zeros({2}, DType::F16)), Error);
  EXPECT_THROW(exp(zeros({2}, DType::I32)), Error);
}

TEST(GradElementwise, BinaryOpsWithBroadcast) {
  for (const auto& c : kBinaryCases) {
    Tensor a = random_tensor(c.a, DType::F64, 3), b = random_tensor(c.b, DType::F64, 4, 0.5, 2.0);
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return add(in[0], in[1]); }, {a, b}));
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return sub(in[0], in[1]); }, {a, b}));
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return mul(in[0], in[1]); }, {a, b}));
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return div(in[0], in[1]); }, {a, b}));
  }
}

TEST(GradElementwise, NonContiguousInputs) {
  Tensor a = test::non_contiguous(random_tensor({3, 4, 5}, DType::F64, 5));
  Tensor b = test::non_contiguous(random_tensor({3, 4, 5}, DType::F64, 6, 0.5, 2.0));
  EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return div(mul(in[0], in[1]), in[1] + 3.0); }, {a, b}));
}

struct UnaryCase {
  const char* name;
  Tensor (*op)(const Tensor&);
  double (*ref)(double);
  double lo, hi;  // input range where the function is smooth
};

const UnaryCase kUnaryCases[] = {
    {"neg", [](const Tensor& x) { return neg(x); }, [](double x) { return -x; }, -2, 2},
    {"exp", [](const Tensor& x) { return exp(x); }, [](double x) { return std::exp(x); }, -2, 2},
    {"log", [](const Tensor& x) { return log(x); }, [](double x) { return std::log(x); }, 0.2, 3},
    {"sqrt", [](const Tensor& x) { return sqrt(x); }, [](double x) { return std::sqrt(x); }, 0.2, 3},
    {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, [](double x) { return 1 / std::sqrt(x); }, 0.2, 3},
    {"square", [](const Tensor& x) { return square(x); }, [](double x) { return x * x; }, -2, 2},
    {"abs", [](const Tensor& x) { return abs(x); }, [](double x) { return std::fabs(x); }, 0.1, 2},
    {"add_scalar", [](const Tensor& x) { return add_scalar(x, 1.5); }, [](double x) { return x + 1.5; }, -2, 2},
    {"mul_scalar", [](const Tensor& x) { return mul_scalar(x, -0.7); }, [](double x) { return x * -0.7; }, -2, 2},
    {"rsub_scalar", [](const Tensor& x) { return 2.0 - x; }, [](double x) { return 2.0 - x; }, -2, 2},
    {"pow_scalar", [](const Tensor& x) { return pow_scalar(x, 2.5); }, [](double x) { return std::pow(x, 2.5); }, 0.2, 2},
    {"clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.5); },
     [](double x) { return std::min(0.5, std::max(-0.5, x)); }, -2, 2},
    {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, [](double x) { return 1 / (1 + std::exp(-x)); }, -4, 4},
    {"tanh", [](const Tensor& x) { return tanh(x); }, [](double x) { return std::tanh(x); }, -3, 3},
    {"silu", [](const Tensor& x) { return silu(x); }, [](double x) { return x / (1 + std::exp(-x)); }, -4, 4},
    {"gelu", [](const Tensor& x) { return gelu(x); },
     [](double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }, -4, 4},
    {"gelu_tanh", [](const Tensor& x) { return gelu(x, true); },
     [](double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }, -4, 4},
    {"quick_gelu", [](const Tensor& x) { return quick_gelu(x); },
     [](double x) { return x / (1 + std::exp(-1.702 * x)); }, -4, 4},
    {"relu", [](const Tensor& x) { return relu(x); }, [](double x) { return x > 0 ? x : 0.0; }, -2, 2},
};

TEST(Elementwise, UnaryForwardMatchesLoop) {
  for (const auto& c : kUnaryCases) {
    for (const Shape& s : {Shape{7}, Shape{3, 5, 2}}) {
      Tensor x = random_tensor(s, DType::F64, 11, c.lo, c.hi);
      std::vector<double> ref;
      for (double v : x.to_vector()) ref.push_back(c.ref(v));
      EXPECT_TRUE(test::all_close(c.op(x), ref, 1e-14, 1e-15)) << c.name;
      EXPECT_TRUE(test::all_close(c.op(test::non_contiguous(x)), ref, 1e-14, 1e-15)) << c.name;
      Tensor xf = to(x, DType::F32);
      EXPECT_TRUE(test::all_close(c.op(xf), ref, 1e-5, 1e-6)) << c.name << " f32";
    }
  }
}

// The f32 activations run vectorised polynomial exp / erfc / tanh (ops/cpu/vec_math.h): checked
// against libm in f64 over a dense grid far past the range the layers see, and a NaN input
// must give NaN (a NaN loss has to stay visible).
TEST(Elementwise, F32ActivationsMatchLibmAcrossTheRange) {
  std::vector<double> grid;
  for (double v = -40; v <= 40; v += 0.0173) grid.push_back(v);
  const Tensor xf = from_vector(grid, {int64_t(grid.size())}, DType::F32);
  const std::vector<double> xs = xf.to_vector();  // the grid as f32 values
  for (const char* name : {"exp", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh", "quick_gelu"}) {
    const UnaryCase* c = nullptr;
    for (const auto& u : kUnaryCases)
      if (std::string(u.name) == name) c = &u;
    ASSERT_NE(c, nullptr) << name;
    std::vector<double> ref;
    for (double v : xs) ref.push_back(c->ref(v));
    EXPECT_TRUE(test::all_close(c->op(xf), ref, 1e-5, 1e-6)) << name;
    const Tensor nan = from_vector({std::nan("")}, {1}, DType::F32);
    EXPECT_TRUE(std::isnan(c->op(nan).to_vector()[0])) << name;
  }
}

TEST(GradElementwise, UnaryOps) {
  for (const auto& c : kUnaryCases) {
    for (const Shape& s : {Shape{6}, Shape{2, 3, 4}}) {
      Tensor x = random_tensor(s, DType::F64, 12, c.lo, c.hi);
      if (std::string(c.name) == "clamp" || std::string(c.name) == "relu") {
        // Keep inputs away from the kinks, where finite differences are not defined.
        std::vector<double> v = x.to_vector();
        for (double& e : v)
          if (std::fabs(std::fabs(e) - 0.5) < 0.05 || std::fabs(e) < 0.05) e += 0.1;
        x = from_vector(v, s, DType::F64);
      }
      auto op = c.op;
      EXPECT_TRUE(gradcheck([op](const std::vector<Tensor>& in) { return op(in[0]); }, {x})) << c.name;
      EXPECT_TRUE(gradcheck([op](const std::vector<Tensor>& in) { return op(in[0]); }, {test::non_contiguous(x)}))
          << c.name << " non-contiguous";
    }
  }
}

TEST(Elementwise, GegluSplitsHiddenAndGate) {
  Tensor x = random_tensor({2, 3, 8}, DType::F64, 13, -3, 3);
  Tensor y = geglu(x);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 4}));
  std::vector<double> v = x.to_vector(), ref;
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t j = 0; j < 4; ++j) {
      double h = v[r * 8 + j], g = v[r * 8 + 4 + j];
      ref.push_back(h * 0.5 * g * (1 + std::erf(g / std::sqrt(2.0))));
    }
  EXPECT_TRUE(test::all_close(y, ref, 1e-14, 1e-15));
  EXPECT_THROW(geglu(zeros({2, 3})), Error);
}

// Inference on the CPU fuses the split, GELU and product into one pass (f32, bf16): it matches the
// f64 formula, and the composite (which autograd records) where the input needs a gradient.
TEST(Elementwise, GegluFusedOnTheCpuMatchesTheFormula) {
  Tensor x64 = random_tensor({3, 5, 2 * 37}, DType::F64, 15, -6, 6);
  std::vector<double> v = x64.to_vector(), ref;
  for (int64_t r = 0; r < 15; ++r)
    for (int64_t j = 0; j < 37; ++j) {
      double h = v[r * 74 + j], g = v[r * 74 + 37 + j];
      ref.push_back(h * 0.5 * g * (1 + std::erf(g / std::sqrt(2.0))));
    }
  Tensor x32 = copy_to(x64, DType::F32, Device::cpu());
  Tensor fused = geglu(x32);
  EXPECT_EQ(fused.shape(), (Shape{3, 5, 37}));
  EXPECT_TRUE(test::all_close(fused, ref, 2e-6, 1e-6));
  Tensor xbf = copy_to(x64, DType::BF16, Device::cpu());
  std::vector<double> vb = xbf.to_vector(), refb;
  for (int64_t r = 0; r < 15; ++r)
    for (int64_t j = 0; j < 37; ++j) {
      double h = vb[r * 74 + j], g = vb[r * 74 + 37 + j];
      refb.push_back(h * 0.5 * g * (1 + std::erf(g / std::sqrt(2.0))));
    }
  EXPECT_TRUE(test::all_close(geglu(xbf), refb, 8e-3, 1e-3));  // one bf16 rounding of the product
  Tensor xg = clone(x32);
  xg.set_requires_grad(true);
  Tensor composite = geglu(xg);
  EXPECT_TRUE(composite.requires_grad());
  EXPECT_TRUE(test::all_close(composite, fused, 0, 0));
}

TEST(GradElementwise, Geglu) {
  for (const Shape& s : {Shape{4, 6}, Shape{2, 3, 10}}) {
    EXPECT_TRUE(gradcheck([](const std::vector<Tensor>& in) { return geglu(in[0]); },
                          {random_tensor(s, DType::F64, 14, -3, 3)}));
  }
}

}  // namespace
}  // namespace sd
