// Joining tensors along a dim, and splitting one into pieces along a dim. The pieces of
// split/chunk are views of the input; cat copies into a new tensor.
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace sd {

// Tensors of equal rank, dtype and device, with equal sizes except along dim.
Tensor cat(const std::vector<Tensor>& ts, int64_t dim);
// Pieces of the given sizes along dim; the sizes must add up to x.size(dim).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
// PyTorch's chunk: pieces of ceil(n / chunks) along dim, the last one smaller when n does
// not divide evenly (so fewer than `chunks` pieces can come back).
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim);

}  // namespace sd
