// CPU matrix products: OpenBLAS where it was found, a blocked OpenMP loop otherwise.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cpu {

// C = alpha * op(A) * op(B) + beta * C, row-major; op transposes when the flag is set.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

// Does, once per process, what the first GEMMs would otherwise pay for inside the first model
// call: oneDNN generates its kernels on first use (30 ms for the first call, more over the
// transpose variants: a tenth of a CPU text encode). Pipelines call it while loading, so the
// stage timings measure the model. A no-op without oneDNN.
void warm_up_gemm();

// a [B, M, K] @ b [B, K, N] -> [B, M, N] (any strides; batch stride 0 allowed).
// f16/bf16 compute in f32 and round the result.
Tensor bmm(const Tensor& a, const Tensor& b);

}  // namespace sd::cpu
