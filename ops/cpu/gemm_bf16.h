// bf16 matrix products on CPUs with bf16 dot-product instructions (AVX512-BF16, AMX), through
// oneDNN's matmul: twice the f32 GEMM rate on such CPUs (432 vs 210 GFLOP/s on 2 Zen 4 cores).
// Elsewhere, or without oneDNN, bf16 tensors compute in f32 as before.
#pragma once
#include <cstdint>

#include "runtime/half.h"

namespace sd::cpu {

// Whether gemm_bf16 runs: oneDNN is linked, the CPU has AVX512-BF16 or AMX-BF16, and the
// environment does not say SD_CPU_BF16=0 (which keeps bf16 models on the f32 kernels).
bool bf16_gemm_available();

// C [M, N] (f32) = op(A) op(B) (+ C when accumulate), row-major, op transposing where the flag is
// set; A and B bf16, products accumulated in f32. Only when bf16_gemm_available().
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const BFloat16* A, int64_t lda,
               const BFloat16* B, int64_t ldb, bool accumulate, float* C, int64_t ldc);

}  // namespace sd::cpu
