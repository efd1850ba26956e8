// Shared test helpers: random inputs, non-contiguous copies, closeness checks, the float64
// finite-difference gradient check, skips for tests that need a GPU, and the file reading the
// end-to-end tests do.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/cuda_api.h"
#include "runtime/error.h"
#include "runtime/tensor.h"

namespace sd::test {

// Uniform in [lo, hi) from the project's Philox stream `seed` (never zeros by accident).
Tensor random_tensor(const Shape& shape, DType dtype = DType::F64, uint64_t seed = 1, double lo = -1.0,
                     double hi = 1.0);
// Same values, laid out with a stride of 2 along the last dim and the first two dims
// swapped in storage: exercises kernels on non-contiguous inputs.
Tensor non_contiguous(const Tensor& t);
// ||a - b|| / max(||b||, tiny) over all elements, in double.
double relative_error(const Tensor& actual, const Tensor& expected);
// Elementwise |a - e| <= atol + rtol |e|; reports the first few offending elements.
::testing::AssertionResult all_close(const Tensor& actual, const Tensor& expected, double rtol, double atol);
::testing::AssertionResult all_close(const Tensor& actual, const std::vector<double>& expected, double rtol,
                                     double atol);

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

struct GradcheckOptions {
  double eps = 1e-6;
  double rtol = 1e-5;
  double atol = 1e-7;
  std::vector<bool> check;  // which inputs to check (default: every floating input)
};

// Backward of f against central finite differences, all in float64 on the CPU. Inputs must
// be f64; those checked get requires_grad. f's output is contracted with a random tensor
// so every output element contributes.
::testing::AssertionResult gradcheck(const Fn& f, std::vector<Tensor> inputs, GradcheckOptions opt = {});

inline bool has_cuda() { return cudart::device_count() > 0; }

// A [h, w, 3] u8 image with some texture (PNG-compresses poorly, so its file is not tiny); `salt`
// picks the pattern.
Tensor textured(int64_t h, int64_t w, uint32_t salt);
// The whole file, byte for byte ("" when it cannot be read).
std::string read_text(const std::filesystem::path& p);
// Writes `bytes` to p, creating its parent folders.
void write_text(const std::filesystem::path& p, const std::string& bytes);
// One JSON value per non-empty line (logs/train.jsonl, metadata.jsonl, reports).
std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& p);

// The message of the sd::Error f throws ("" when it throws none; other exceptions propagate).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
// Peak resident memory of this process so far, in MiB (getrusage's ru_maxrss), for bounding what a
// hostile input costs.
double peak_rss_mib();

}  // namespace sd::test

#define SD_REQUIRE_CUDA()                                                                \
  do {                                                                                   \
    if (!::sd::test::has_cuda()) GTEST_SKIP() << "needs a GPU: " << ::sd::cudart::unavailable_reason(); \
  } while (0)
