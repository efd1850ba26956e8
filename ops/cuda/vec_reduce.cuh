// Pieces shared by the row-wise CUDA kernels (GroupNorm, LayerNorm, softmax): 16-byte
// vector loads/stores, sums and maxima over the threads that share a row, exp/sqrt that
// pick the f32 or f64 function by the compute type, and the SM count for grid sizing.
#pragma once
#include <cstdint>

#include "ops/cuda/cuda_common.cuh"

namespace sd::cuda {

// Elements of T per 16-byte access (8 for f16/bf16, 4 for f32, 2 for f64).
template <class T>
constexpr int kVec = int(16 / sizeof(T));

// V consecutive elements moved as one aligned access.
template <class T, int V>
struct alignas(sizeof(T) * V) VecT {
  T v[V];
};

template <class T, int V>
__device__ __forceinline__ void load_vec(const T* p, acc_t<T> (&out)[V]) {
  const VecT<T, V> raw = *reinterpret_cast<const VecT<T, V>*>(p);
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = to_acc(raw.v[k]);
}

template <class T, int V>
__device__ __forceinline__ void store_vec(T* p, const acc_t<T> (&in)[V]) {
  VecT<T, V> raw;
#pragma unroll
  for (int k = 0; k < V; ++k) raw.v[k] = from_acc<T>(in[k]);
  *reinterpret_cast<VecT<T, V>*>(p) = raw;
}

// True when p may be read with 16-byte accesses.
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

__device__ __forceinline__ float dev_exp(float v) { return expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return exp(v); }
__device__ __forceinline__ float dev_log(float v) { return logf(v); }
__device__ __forceinline__ double dev_log(double v) { return log(v); }
__device__ __forceinline__ float dev_rsqrt_exact(float v) { return 1.0f / sqrtf(v); }  // IEEE, as the CPU
__device__ __forceinline__ double dev_rsqrt_exact(double v) { return 1.0 / sqrt(v); }

// Sum of v over the TPR threads of a row group; every thread of the group gets the same
// value. TPR <= 32: aligned lanes of one warp, xor butterfly (a + b == b + a bitwise, so
// all lanes agree). TPR > 32: the whole block is one row group, `scratch` holds one value
// per warp and every thread adds them in the same order. All threads of the group call it.
template <int TPR, class A>
__device__ __forceinline__ A group_sum(A v, A* scratch) {
#pragma unroll
  for (int o = (TPR < 32 ? TPR : 32) / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if constexpr (TPR > 32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();  // a previous call may still be reading scratch
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = scratch[0];
    for (int w = 1; w < TPR / 32; ++w) v += scratch[w];
  }
  return v;
}

template <int TPR, class A>
__device__ __forceinline__ A group_max(A v, A* scratch) {
#pragma unroll
  for (int o = (TPR < 32 ? TPR : 32) / 2; o > 0; o >>= 1) {
    const A other = __shfl_xor_sync(0xffffffffu, v, o);
    v = other > v ? other : v;
  }
  if constexpr (TPR > 32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = scratch[0];
    for (int w = 1; w < TPR / 32; ++w) v = scratch[w] > v ? scratch[w] : v;
  }
  return v;
}

// p[i] as the compute type, or `fallback` when the parameter is absent (p null).
template <class T>
__device__ __forceinline__ acc_t<T> param_or(const T* p, int64_t i, acc_t<T> fallback) {
  return p ? to_acc(p[i]) : fallback;
}

// Row kernels (LayerNorm, softmax) run kRowThreads-thread blocks and give each row either
// one warp (TPR = 32, rows up to 2048 elements) or the whole block (TPR = kRowThreads).
constexpr int kRowThreads = 256;

template <class F>
void dispatch_row_threads(int64_t row_len, F&& f) {
  if (row_len > 2048)
    f.template operator()<kRowThreads>();
  else
    f.template operator()<32>();
}

template <int TPR>
__device__ __forceinline__ int64_t row_index() {
  return TPR > 32 ? int64_t(blockIdx.x) : int64_t(blockIdx.x) * (kRowThreads / 32) + threadIdx.x / 32;
}

template <int TPR>
__device__ __forceinline__ int thread_in_row() {
  return TPR > 32 ? int(threadIdx.x) : int(threadIdx.x % 32);
}

// Streaming multiprocessors of the current device (grids are sized to fill them).
inline int sm_count() {
  int dev = 0, n = 0;
  SD_CUDA_CHECK(cudaGetDevice(&dev));
  SD_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n > 0 ? n : 1;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for `rows` rows of a row kernel launched with TPR threads per row.
inline unsigned row_grid(int64_t rows, int tpr) {
  const int64_t blocks = tpr > 32 ? rows : ceil_div(rows, kRowThreads / 32);
  SD_CHECK(blocks < (int64_t(1) << 31), "row kernel: too many rows (", rows, ")");
  return unsigned(blocks);
}

}  // namespace sd::cuda
