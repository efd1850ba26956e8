// Compares an op on the GPU with the same op on the CPU reference: forward output and the
// gradients of every floating input for a random upstream gradient, by relative error of
// the whole tensor. Device memory is poisoned (NaN) on allocation during the check, so an
// output element the kernel never writes makes the comparison fail.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace sd::test {

struct CudaCheckOptions {
  double tol = 0;           // 0: by dtype (f32/f64 1e-5, f16/bf16 1e-2)
  bool backward = true;
  std::vector<bool> grad;   // which inputs get gradients (default: every floating input)
};

// `inputs` are CPU tensors; floating ones are converted to `dtype` for both runs.
::testing::AssertionResult matches_cpu(const std::string& what, const Fn& f, const std::vector<Tensor>& inputs,
                                       DType dtype, CudaCheckOptions opt = {});

inline double default_tol(DType dt) { return (dt == DType::F16 || dt == DType::BF16) ? 1e-2 : 1e-5; }

}  // namespace sd::test
