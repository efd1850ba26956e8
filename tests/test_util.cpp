#include "tests/test_util.h"

#include <sys/resource.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "autograd/engine.h"
#include "autograd/node.h"
#include "ops/elementwise.h"
#include "ops/view.h"
#include "runtime/rng.h"

namespace sd::test {

Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, double lo, double hi) {
  Tensor t = empty(shape, DType::F64);
  fill_uniform_(t, seed, 0, lo, hi);
  return copy_to(t, dtype, Device::cpu());
}

Tensor non_contiguous(const Tensor& t) {
  if (t.dim() == 0) return t;
  Shape storage_shape = t.shape();
  storage_shape.back() *= 2;
  if (t.dim() >= 2) std::swap(storage_shape[0], storage_shape[1]);
  Tensor big = zeros(storage_shape, t.dtype(), t.device());
  Shape strides = big.strides();
  Shape view_strides(t.dim());
  if (t.dim() >= 2) {
    view_strides[0] = strides[1];
    view_strides[1] = strides[0];
    for (int64_t d = 2; d < t.dim(); ++d) view_strides[d] = strides[d];
  } else {
    view_strides[0] = strides[0];
  }
  view_strides.back() *= 2;
  Tensor view = as_strided(big, t.shape(), view_strides, 0);
  copy_(view, t);
  return view;
}

double relative_error(const Tensor& actual, const Tensor& expected) {
  std::vector<double> a = actual.to_vector(), e = expected.to_vector();
  if (a.size() != e.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(e[i])) return INFINITY;
    num += (a[i] - e[i]) * (a[i] - e[i]);
    den += e[i] * e[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

::testing::AssertionResult all_close(const Tensor& actual, const std::vector<double>& e, double rtol, double atol) {
  std::vector<double> a = actual.to_vector();
  if (a.size() != e.size())
    return ::testing::AssertionFailure() << "size " << a.size() << " vs expected " << e.size();
  int bad = 0;
  std::ostringstream os;
  for (size_t i = 0; i < a.size(); ++i) {
    double tol = atol + rtol * std::fabs(e[i]);
    bool ok = std::fabs(a[i] - e[i]) <= tol || (std::isinf(e[i]) && a[i] == e[i]);
    if (!ok || std::isnan(a[i]) != std::isnan(e[i])) {
      if (bad < 8) os << "\n  [" << i << "] got " << a[i] << " expected " << e[i] << " (tol " << tol << ")";
      ++bad;
    }
  }
  if (bad) return ::testing::AssertionFailure() << bad << " of " << a.size() << " elements differ:" << os.str();
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult all_close(const Tensor& actual, const Tensor& expected, double rtol, double atol) {
  if (actual.shape() != expected.shape())
    return ::testing::AssertionFailure() << "shape " << shape_str(actual.shape()) << " vs expected "
                                         << shape_str(expected.shape());
  return all_close(actual, expected.to_vector(), rtol, atol);
}

namespace {

// Pointer to the storage element behind logical index `flat` of t.
double* element_ptr(const Tensor& t, int64_t flat) {
  int64_t off = t.offset();
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    off += (flat % t.shape()[d]) * t.strides()[d];
    flat /= t.shape()[d];
  }
  return static_cast<double*>(t.storage()->data()) + off;
}

double contract(const Tensor& out, const Tensor& weights) {
  std::vector<double> o = out.to_vector(), w = weights.to_vector();
  double s = 0;
  for (size_t i = 0; i < o.size(); ++i) s += o[i] * w[i];
  return s;
}

}  // namespace

::testing::AssertionResult gradcheck(const Fn& f, std::vector<Tensor> inputs, GradcheckOptions opt) {
  std::vector<bool> check = opt.check;
  if (check.empty())
    for (const Tensor& t : inputs) check.push_back(t.defined() && t.dtype() == DType::F64);
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!check[i]) continue;
    if (inputs[i].dtype() != DType::F64)
      return ::testing::AssertionFailure() << "gradcheck input " << i << " is " << inputs[i].str() << ", not f64";
    for (int64_t s : inputs[i].strides())
      if (s == 0) return ::testing::AssertionFailure() << "gradcheck input " << i << " has a stride-0 (expanded) dim";
    inputs[i] = detach(inputs[i]);
    inputs[i].set_requires_grad(true);
  }
  Tensor out = f(inputs);
  if (!out.requires_grad()) return ::testing::AssertionFailure() << "output does not require grad";
  Tensor weights = random_tensor(out.shape(), DType::F64, 977, -1.0, 1.0);
  autograd::backward(out, weights);

  std::ostringstream report;
  int bad = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!check[i]) continue;
    Tensor analytic = inputs[i].grad();
    std::vector<double> a = analytic.defined() ? analytic.to_vector() : std::vector<double>(inputs[i].numel(), 0.0);
    for (int64_t j = 0; j < inputs[i].numel(); ++j) {
      double* p = element_ptr(inputs[i], j);
      const double orig = *p;
      double plus, minus;
      {
        autograd::NoGrad ng;
        *p = orig + opt.eps;
        plus = contract(f(inputs), weights);
        *p = orig - opt.eps;
        minus = contract(f(inputs), weights);
        *p = orig;
      }
      const double numeric = (plus - minus) / (2 * opt.eps);
      const double tol = opt.atol + opt.rtol * std::fabs(numeric);
      if (!(std::fabs(numeric - a[j]) <= tol)) {
        if (bad < 8)
          report << "\n  input " << i << " element " << j << ": analytic " << a[j] << " numeric " << numeric;
        ++bad;
      }
    }
  }
  if (bad) return ::testing::AssertionFailure() << bad << " gradient elements differ:" << report.str();
  return ::testing::AssertionSuccess();
}

Tensor textured(int64_t h, int64_t w, uint32_t salt) {
  Tensor t = empty({h, w, 3}, DType::U8);
  uint8_t* p = t.data<uint8_t>();
  uint32_t s = 2166136261u ^ salt;
  for (int64_t i = 0; i < h * w * 3; ++i) {
    s = s * 1664525u + 1013904223u;
    p[i] = uint8_t((s >> 24) / 2 + uint32_t(i % 97));
  }
  return t;
}

std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const std::filesystem::path& p, const std::string& bytes) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f << bytes;
}

std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& p) {
  std::vector<nlohmann::json> v;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) v.push_back(nlohmann::json::parse(line));
  return v;
}

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;
}

}  // namespace sd::test
