// Differentiable views and layout changes. Views share storage with their input; reshape
// copies only when the input's strides do not allow a view.
#pragma once
#include <vector>

#include "runtime/tensor.h"

namespace sd {

Tensor reshape(const Tensor& x, const Shape& shape);  // one dim may be -1
Tensor flatten(const Tensor& x, int64_t start_dim = 0, int64_t end_dim = -1);
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor squeeze(const Tensor& x, int64_t dim);
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
// Elements start, start+step, ... < end along dim (end clamps to the size).
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor select(const Tensor& x, int64_t dim, int64_t index);  // drops dim
Tensor expand(const Tensor& x, const Shape& shape);           // -1 keeps a dim
Tensor contiguous(const Tensor& x);
// x [N, C, H, W] with channels-last memory (a copy unless it already is; gradients pass through
// in whatever layout they come): the entry of a model run channels-last.
Tensor to_channels_last(const Tensor& x);
Tensor clone(const Tensor& x);
Tensor to(const Tensor& x, DType dtype);
Tensor to(const Tensor& x, Device device);

}  // namespace sd
