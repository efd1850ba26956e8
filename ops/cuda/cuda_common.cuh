// Shared pieces of the CUDA op kernels: storage-type traits (load as float, round on
// store, matching the CPU reference), strided index math, and launch helpers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda_api.h"
#include "runtime/tensor.h"

namespace sd::cuda {

template <class T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <class T> using acc_t = typename Acc<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <class T> __device__ __forceinline__ T from_acc(double v) { return T(v); }

constexpr int kMaxDims = 8;

// Element strides of up to N operands over one loop shape (dims merged where possible).
template <int N>
struct StridedIndexer {
  int ndim;
  int64_t sizes[kMaxDims];
  int64_t strides[N][kMaxDims];
  __device__ __forceinline__ void offsets(int64_t i, int64_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t idx = i % sizes[d];
      i /= sizes[d];
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += idx * strides[k][d];
    }
  }
};

// `views[k]` must already have the loop shape (broadcast dims with stride 0).
template <int N>
StridedIndexer<N> make_indexer(const Shape& shape, const Tensor* const (&views)[N]) {
  StridedIndexer<N> ix{};
  // Merge adjacent dims that are contiguous with each other for every operand.
  int nd = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (nd > 0) {
      bool merge = true;
      for (int k = 0; k < N; ++k) merge &= ix.strides[k][nd - 1] == views[k]->strides()[d] * shape[d];
      if (merge) {
        ix.sizes[nd - 1] *= shape[d];
        for (int k = 0; k < N; ++k) ix.strides[k][nd - 1] = views[k]->strides()[d];
        continue;
      }
    }
    SD_CHECK(nd < kMaxDims, "cuda op: more than ", kMaxDims, " non-mergeable dims");
    ix.sizes[nd] = shape[d];
    for (int k = 0; k < N; ++k) ix.strides[k][nd] = views[k]->strides()[d];
    ++nd;
  }
  ix.ndim = nd;
  return ix;
}

inline int grid_1d(int64_t n, int threads = 256) {
  return int(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, int64_t(1) << 20)));
}

// Runs f.template operator()<T>() with T the CUDA storage type of a floating dtype.
template <class F>
void dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F32: f.template operator()<float>(); break;
    case DType::F64: f.template operator()<double>(); break;
    case DType::F16: f.template operator()<__half>(); break;
    case DType::BF16: f.template operator()<__nv_bfloat16>(); break;
    default: SD_FAIL(op, ": needs a floating tensor, got ", dtype_name(dt));
  }
}

inline void set_device_of(const Tensor& t) { cudart::set_device(t.device().index); }

}  // namespace sd::cuda
