#pragma once
#include "runtime/tensor.h"

namespace sd::cuda {

// a [B, M, K] @ b [B, K, N] -> [B, M, N] through cuBLAS (f16/bf16 inputs accumulate in f32;
// f32 uses TF32 tensor cores only after set_allow_tf32(true)).
Tensor bmm(const Tensor& a, const Tensor& b);
void set_allow_tf32(bool on);
bool allow_tf32();

}  // namespace sd::cuda
