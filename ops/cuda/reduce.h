#pragma once
#include <vector>

#include "runtime/tensor.h"

namespace sd::cuda {

// Sum over `dims` (wrapped, sorted, unique), kept as size-1 dims; f32 accumulation (f64 for f64),
// a fixed summation order (deterministic run to run).
Tensor sum_keepdim(const Tensor& x, const std::vector<int64_t>& dims);

}  // namespace sd::cuda
