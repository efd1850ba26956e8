#include <cublas_v2.h>

#include <mutex>
#include <vector>

#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/gemm.h"
#include "runtime/cuda/current_stream.cuh"

namespace sd::cuda {

namespace {

bool g_allow_tf32 = false;

cublasHandle_t handle_for(int device) {
  static std::mutex mu;
  static std::vector<cublasHandle_t> handles;
  std::lock_guard<std::mutex> lock(mu);
  if (int(handles.size()) <= device) handles.resize(device + 1, nullptr);
  if (!handles[device]) {
    cudart::set_device(device);
    SD_CUBLAS_CHECK(cublasCreate(&handles[device]));
  }
  return handles[device];
}

// How a [B, R, C] operand reaches cuBLAS without a copy (see ops/cpu/gemm.cpp).
struct Operand {
  Tensor t;
  bool trans = false;
  int64_t ld = 0;
  int64_t batch_stride = 0;
};

Operand as_operand(const Tensor& t) {
  const int64_t R = t.size(1), C = t.size(2), sr = t.stride(1), sc = t.stride(2);
  if ((sc == 1 || C == 1) && sr >= std::max<int64_t>(C, 1)) return {t, false, sr, t.stride(0)};
  if ((sr == 1 || R == 1) && sc >= std::max<int64_t>(R, 1)) return {t, true, sc, t.stride(0)};
  Tensor c = copy_to(t, t.dtype(), t.device());
  return {c, false, std::max<int64_t>(C, 1), R * C};
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F64: return CUDA_R_64F;
    default: SD_FAIL("cuda matmul: unsupported dtype ", dtype_name(t));
  }
}

}  // namespace

void set_allow_tf32(bool on) { g_allow_tf32 = on; }
bool allow_tf32() { return g_allow_tf32; }

Tensor bmm(const Tensor& a, const Tensor& b) {
  const int64_t Bn = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
  Tensor out = empty({Bn, M, N}, a.dtype(), a.device());
  if (out.numel() == 0) return out;
  if (K == 0) {
    fill_(out, 0.0);
    return out;
  }
  set_device_of(a);
  Operand oa = as_operand(a), ob = as_operand(b);
  const cudaDataType_t type = cuda_type(a.dtype());
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if (a.dtype() == DType::F64) compute = CUBLAS_COMPUTE_64F;
  if (a.dtype() == DType::F32 && g_allow_tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  const double one_d = 1.0, zero_d = 0.0;
  const float one_f = 1.0f, zero_f = 0.0f;
  const void* alpha = a.dtype() == DType::F64 ? static_cast<const void*>(&one_d) : &one_f;
  const void* beta = a.dtype() == DType::F64 ? static_cast<const void*>(&zero_d) : &zero_f;
  cublasHandle_t handle = handle_for(a.device().index);
  SD_CUBLAS_CHECK(cublasSetStream(handle, stream()));
  // Row-major C = A B is column-major C^T = B^T A^T: pass b first.
  SD_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, ob.trans ? CUBLAS_OP_T : CUBLAS_OP_N, oa.trans ? CUBLAS_OP_T : CUBLAS_OP_N,
      int(N), int(M), int(K), alpha, ob.t.data_ptr(), type, int(ob.ld), ob.batch_stride, oa.t.data_ptr(), type,
      int(oa.ld), oa.batch_stride, beta, out.data_ptr(), type, int(N), M * N, int(Bn), compute,
      CUBLAS_GEMM_DEFAULT));
  return out;
}

}  // namespace sd::cuda
