#include "ops/cpu/gemm.h"

#include <algorithm>
#include <mutex>
#include <vector>

#include "ops/cpu/gemm_bf16.h"
#include "runtime/parallel.h"
#ifdef SD_WITH_BLAS
#include <cblas.h>
#endif
#ifdef SD_WITH_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

namespace sd::cpu {

namespace {

#ifndef SD_WITH_BLAS
// Fallback when no BLAS is installed: cache-blocked, parallel over rows of C.
template <class T>
void gemm_fallback(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
                   int64_t ldb, T beta, T* C, int64_t ldc) {
  auto a_at = [&](int64_t i, int64_t k) { return ta ? A[k * lda + i] : A[i * lda + k]; };
  auto b_at = [&](int64_t k, int64_t j) { return tb ? B[j * ldb + k] : B[k * ldb + j]; };
  parallel_for(M, N * K, [&](int64_t m0, int64_t m1) {
    std::vector<T> row(N);
    for (int64_t i = m0; i < m1; ++i) {
      std::fill(row.begin(), row.end(), T(0));
      for (int64_t k = 0; k < K; ++k) {
        const T av = a_at(i, k);
        if (!tb) {
          const T* brow = B + k * ldb;
          for (int64_t j = 0; j < N; ++j) row[j] += av * brow[j];
        } else {
          for (int64_t j = 0; j < N; ++j) row[j] += av * b_at(k, j);
        }
      }
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = alpha * row[j] + (beta == T(0) ? T(0) : beta * C[i * ldc + j]);
    }
  });
}
#endif

// How a [B, R, C] operand is handed to GEMM without copying: row-major (ld = row stride) or
// transposed row-major (ld = column stride). Anything else is copied first.
struct Operand {
  Tensor t;  // possibly a contiguous copy
  bool trans = false;
  int64_t ld = 0;
  int64_t batch_stride = 0;
};

Operand as_gemm_operand(const Tensor& x, DType compute) {
  Tensor t = x.dtype() == compute ? x : copy_to(x, compute, Device::cpu());
  const int64_t R = t.size(1), C = t.size(2);
  const int64_t sr = t.stride(1), sc = t.stride(2);
  if ((sc == 1 || C == 1) && sr >= std::max<int64_t>(C, 1)) return {t, false, sr, t.stride(0)};
  if ((sr == 1 || R == 1) && sc >= std::max<int64_t>(R, 1)) return {t, true, sc, t.stride(0)};
  Tensor c = copy_to(t, compute, Device::cpu());
  return {c, false, std::max<int64_t>(C, 1), R * C};
}

template <class T>
void batched(const Operand& a, const Operand& b, Tensor& out, int64_t Bn, int64_t M, int64_t N, int64_t K) {
  const T* pa = static_cast<const T*>(a.t.data_ptr());
  const T* pb = static_cast<const T*>(b.t.data_ptr());
  T* pc = static_cast<T*>(out.data_ptr());
  for (int64_t i = 0; i < Bn; ++i)
    gemm(a.trans, b.trans, M, N, K, T(1), pa + i * a.batch_stride, a.ld, pb + i * b.batch_stride, b.ld, T(0),
         pc + i * M * N, std::max<int64_t>(N, 1));
}

}  // namespace

#ifdef SD_WITH_BLAS
#ifdef SD_WITH_DNNL
namespace {
// Columns [n0, n1) of C (all of them: 0, N) through oneDNN's sgemm, OpenBLAS where oneDNN refuses the
// arguments. Inside an OpenMP region it runs on the calling thread.
void gemm_columns(bool ta, bool tb, int64_t M, int64_t n0, int64_t n1, int64_t K, float alpha, const float* A,
                  int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const float* Bc = B + (tb ? n0 * ldb : n0);
  if (dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, n1 - n0, K, alpha, A, lda, Bc, ldb, beta, C + n0, ldc) !=
      dnnl_success)
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(n1 - n0),
                int(K), alpha, A, int(lda), Bc, int(ldb), beta, C + n0, int(ldc));
}
}  // namespace
#endif

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
#ifdef SD_WITH_DNNL
  // oneDNN's sgemm first: 7-35% faster than OpenBLAS on the UNet's linear layers (2 cores, K = 320
  // gains most). Same row-major convention; called inside an OpenMP loop it runs on the calling
  // thread (nested parallelism is off), as the attention and Winograd tiles expect.
  if (K > 0) {
    // Under 4096 rows oneDNN's own threading splits the product poorly on a few cores (2 cores:
    // 154 x 3072 x 768, the text encoder's fc2, 112 GFLOP/s; 2048 x 2560 x 640, 167). Each thread
    // taking its own columns through the single-threaded kernel gives 178-212 on the same shapes;
    // from 4096 rows oneDNN's split is as good or 5% better. Only where every thread gets 64 columns.
    const int threads = num_threads();
    if (threads > 1 && M < 4096 && N >= 64 * int64_t(threads) && !omp_in_parallel()) {
#pragma omp parallel num_threads(threads)
      {
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t n0 = t == 0 ? 0 : N * t / nt / 16 * 16, n1 = t + 1 == nt ? N : N * (t + 1) / nt / 16 * 16;
        if (n1 > n0) gemm_columns(ta, tb, M, n0, n1, K, alpha, A, lda, B, ldb, beta, C, ldc);
      }
    } else {
      gemm_columns(ta, tb, M, 0, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
    return;
  }
#endif
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N), int(K),
              alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N), int(K),
              alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}
#else
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_fallback<float>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_fallback<double>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
#endif

void warm_up_gemm() {
#ifdef SD_WITH_DNNL
  // Synchronous on purpose: a background thread still inside oneDNN's first-call set-up when the
  // process exits crashed in oneDNN's static destructors.
  static std::once_flag once;
  std::call_once(once, [] {
    float a[64], b[64], c[64];
    std::fill(a, a + 64, 0.0f);
    std::fill(b, b + 64, 0.0f);
    for (char ta : {'N', 'T'})
      for (char tb : {'N', 'T'}) dnnl_sgemm(ta, tb, 8, 8, 8, 1.0f, a, 8, b, 8, 0.0f, c, 8);
  });
#endif
}

Tensor bmm(const Tensor& a, const Tensor& b) {
  const int64_t Bn = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
  if (a.dtype() == DType::BF16 && b.dtype() == DType::BF16 && K > 0 && bf16_gemm_available()) {
    // bf16 operands as they are (no f32 copies of the weights), f32 products, rounded once.
    Operand oa = as_gemm_operand(a, DType::BF16), ob = as_gemm_operand(b, DType::BF16);
    Tensor out = empty({Bn, M, N}, DType::F32, Device::cpu());
    const BFloat16* pa = static_cast<const BFloat16*>(oa.t.data_ptr());
    const BFloat16* pb = static_cast<const BFloat16*>(ob.t.data_ptr());
    float* pc = out.data<float>();
    for (int64_t i = 0; i < Bn; ++i)
      gemm_bf16(oa.trans, ob.trans, M, N, K, pa + i * oa.batch_stride, oa.ld, pb + i * ob.batch_stride, ob.ld, false,
                pc + i * M * N, N);
    return copy_to(out, DType::BF16, Device::cpu());
  }
  const DType compute = a.dtype() == DType::F64 ? DType::F64 : DType::F32;
  Operand oa = as_gemm_operand(a, compute), ob = as_gemm_operand(b, compute);
  Tensor out = empty({Bn, M, N}, compute, Device::cpu());
  if (K == 0) {
    fill_(out, 0.0);
  } else if (compute == DType::F64) {
    batched<double>(oa, ob, out, Bn, M, N, K);
  } else {
    batched<float>(oa, ob, out, Bn, M, N, K);
  }
  return out.dtype() == a.dtype() ? out : copy_to(out, a.dtype(), Device::cpu());
}

}  // namespace sd::cpu
