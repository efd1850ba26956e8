// Sums and means over dims. CPU accumulates in double; results keep the input dtype.
#pragma once
#include <vector>

#include "runtime/tensor.h"

namespace sd {

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor sum_all(const Tensor& x);   // 0-d result
Tensor mean_all(const Tensor& x);  // 0-d result
// Sums x down to `shape` (the reverse of broadcasting `shape` up to x's shape).
Tensor sum_to(const Tensor& x, const Shape& shape);

}  // namespace sd
