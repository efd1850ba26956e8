// CUDA embedding lookups (the GPU side of ops/embedding.h). ids (I32 or I64, on the
// weight's GPU) are already checked to lie in [0, V).
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cuda {

// weight [V, D] (any strides) -> [*ids.shape, D], contiguous.
Tensor embedding(const Tensor& weight, const Tensor& ids);
// grad [*ids.shape, D] -> dense [V, D] in grad's dtype: row v = sum of the grad rows whose id
// is v, in f32 (f64 for f64) and in increasing position order, as on the CPU. Deterministic
// (no atomics): the ids are copied to the host (one synchronisation) and grouped by value
// there; then one thread per (hit row, column) sums its group.
Tensor embedding_backward(const Tensor& grad, const Tensor& ids, int64_t V);

}  // namespace sd::cuda
