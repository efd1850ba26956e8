#pragma once
#include "runtime/tensor.h"

namespace sd::cuda {

// a [B, M, K] @ b [B, K, N] -> [B, M, N] through cuBLAS (f16/bf16 inputs accumulate in f32;
// f32 uses TF32 tensor cores only after set_allow_tf32(true)).
Tensor bmm(const Tensor& a, const Tensor& b);
// y [M, N] = x [M, K] @ w[N, K]^T + bias[N] in one cuBLASLt call (bias epilogue); x and w
// row-major contiguous, f16/bf16/f32. The forward of Linear on the GPU.
Tensor linear_bias(const Tensor& x, const Tensor& w, const Tensor& bias);
void set_allow_tf32(bool on);
bool allow_tf32();

}  // namespace sd::cuda
