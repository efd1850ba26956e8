// Table lookup: rows of a weight matrix picked by integer ids (token and position embeddings).
#pragma once
#include "runtime/tensor.h"

namespace sd {

// weight [V, D], ids I32 or I64 of any shape -> [*ids.shape, D]. An id outside [0, V) raises
// sd::Error naming it. The gradient w.r.t. weight is dense [V, D] (repeated ids add up);
// ids get none.
Tensor embedding(const Tensor& weight, const Tensor& ids);

}  // namespace sd
