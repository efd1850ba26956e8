// Shapes and strides are counted in elements; negative dims count from the end.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sd {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);
std::string shape_str(const Shape& s);  // "(2, 3, 4)"
// Maps a possibly negative dim into [0, ndim); raises sd::Error naming `op` when out of range.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);
// NumPy broadcasting of two shapes; raises sd::Error naming `op` when they do not broadcast.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace sd
