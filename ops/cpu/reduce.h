#pragma once
#include <vector>

#include "runtime/tensor.h"

namespace sd::cpu {

// Sum over `dims` (already wrapped, sorted, unique), result shape with those dims kept as 1.
Tensor sum_keepdim(const Tensor& x, const std::vector<int64_t>& dims);

}  // namespace sd::cpu
