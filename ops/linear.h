// Matrix products. matmul broadcasts batch dims like NumPy; linear is x @ W^T + b with
// PyTorch's weight layout [out_features, in_features].
#pragma once
#include "runtime/tensor.h"

namespace sd {

// a [..., M, K] @ b [..., K, N] -> [..., M, N]; a 2-d b is shared by every batch.
Tensor matmul(const Tensor& a, const Tensor& b);
// x [..., in] , weight [out, in], bias [out] or undefined -> [..., out]
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

}  // namespace sd
