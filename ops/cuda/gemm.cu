#include <cublasLt.h>
#include <cublas_v2.h>

#include <map>
#include <mutex>
#include <tuple>
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

namespace {

// One cuBLASLt handle and workspace per device, and the algorithm picked for each shape.
struct LtState {
  cublasLtHandle_t handle = nullptr;
  Tensor workspace;
  std::map<std::tuple<int64_t, int64_t, int64_t, int>, cublasLtMatmulAlgo_t> algos;
};

LtState& lt_state(int device) {
  static std::mutex mu;
  static std::map<int, LtState> states;
  std::lock_guard<std::mutex> lock(mu);
  LtState& st = states[device];
  if (!st.handle) {
    cudart::set_device(device);
    SD_CUBLAS_CHECK(cublasLtCreate(&st.handle));
    st.workspace = empty({32 << 20}, DType::U8, Device::cuda(device));
  }
  return st;
}

struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  ~LtDescs() {
    if (op) cublasLtMatmulDescDestroy(op);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
  }
};

}  // namespace

Tensor linear_bias(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  SD_CHECK(x.is_contiguous() && w.is_contiguous() && bias.is_contiguous(), "linear_bias: needs contiguous operands");
  Tensor y = empty({M, N}, x.dtype(), x.device());
  if (y.numel() == 0) return y;
  set_device_of(x);
  LtState& st = lt_state(x.device().index);
  const cudaDataType_t type = cuda_type(x.dtype());
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if (x.dtype() == DType::F32 && g_allow_tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  SD_CHECK(x.dtype() != DType::F64, "linear_bias: f64 goes through bmm");
  // Column-major view: D^T [N, M] = op(W) [N, K] * X^T [K, M], W stored [N, K] row-major = [K, N] col-major.
  LtDescs d;
  SD_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, compute, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  SD_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  SD_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
  SD_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  const void* bias_ptr = bias.data_ptr();
  SD_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr)));
  const cudaDataType_t bias_type = type;
  SD_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  SD_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a, type, uint64_t(K), uint64_t(N), int64_t(K)));
  SD_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b, type, uint64_t(K), uint64_t(M), int64_t(K)));
  SD_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.c, type, uint64_t(N), uint64_t(M), int64_t(N)));
  const auto key = std::make_tuple(M, N, K, int(x.dtype()));
  auto it = st.algos.find(key);
  if (it == st.algos.end()) {
    cublasLtMatmulPreference_t pref = nullptr;
    SD_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = uint64_t(st.workspace.nbytes());
    SD_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    cublasStatus_t stt = cublasLtMatmulAlgoGetHeuristic(st.handle, d.op, d.a, d.b, d.c, d.c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    SD_CHECK(stt == CUBLAS_STATUS_SUCCESS && found > 0, "linear_bias: cuBLASLt has no algorithm for ", M, "x", N,
             "x", K, " ", dtype_name(x.dtype()));
    it = st.algos.emplace(key, result.algo).first;
  }
  const float alpha = 1.0f, beta = 0.0f;
  SD_CUBLAS_CHECK(cublasLtMatmul(st.handle, d.op, &alpha, w.data_ptr(), d.a, x.data_ptr(), d.b, &beta, y.data_ptr(),
                                 d.c, y.data_ptr(), d.c, &it->second, st.workspace.data_ptr(),
                                 size_t(st.workspace.nbytes()), stream()));
  return y;
}

}  // namespace sd::cuda
