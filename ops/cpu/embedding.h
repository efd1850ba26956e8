// CPU kernels for embedding lookups. ids are I32 or I64 and already checked to be in range.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cpu {

// weight [V, D] -> [*ids.shape, D].
Tensor embedding(const Tensor& weight, const Tensor& ids);
// grad [*ids.shape, D] -> dense [V, D]: row ids[i] += grad row i, summed in f32 (f64 for f64).
Tensor embedding_backward(const Tensor& grad, const Tensor& ids, int64_t V);
// The first id outside [0, V), if any; returns false when all are in range.
bool find_bad_id(const Tensor& ids, int64_t V, int64_t& bad);

}  // namespace sd::cpu
