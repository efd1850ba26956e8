#include "ops/cuda/cuda_common.cuh"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/reduce.h"

namespace sd::cuda {

namespace {

constexpr int kThreads = 256;

template <class A>
__device__ A block_sum(A v) {
  __shared__ A warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  A total = 0;
  if (warp == 0) {
    total = lane < kThreads / 32 ? warp_sums[lane] : A(0);
    for (int o = 16; o > 0; o >>= 1) total += __shfl_down_sync(0xffffffffu, total, o);
  }
  return total;  // valid in thread 0
}

// Pass 1: block (row, split) sums its slice of row `row` (rows are contiguous, length inner).
template <class T>
__global__ void partial_sums(const T* in, acc_t<T>* partial, int64_t inner, int splits) {
  using A = acc_t<T>;
  const int64_t row = blockIdx.x;
  const int split = blockIdx.y;
  const int64_t chunk = (inner + splits - 1) / splits;
  const int64_t begin = split * chunk, end = min(inner, begin + chunk);
  const T* p = in + row * inner;
  A acc = 0;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) acc += to_acc(p[j]);
  A total = block_sum(acc);
  if (threadIdx.x == 0) partial[row * splits + split] = total;
}

template <class T>
__global__ void finish_sums(const acc_t<T>* partial, T* out, int splits) {
  using A = acc_t<T>;
  const int64_t row = blockIdx.x;
  A acc = 0;
  for (int j = threadIdx.x; j < splits; j += blockDim.x) acc += partial[row * splits + j];
  A total = block_sum(acc);
  if (threadIdx.x == 0) out[row] = from_acc<T>(total);
}

}  // namespace

Tensor sum_keepdim(const Tensor& x, const std::vector<int64_t>& dims) {
  const int64_t nd = x.dim();
  std::vector<bool> reduced(nd, false);
  for (int64_t d : dims) reduced[d] = true;
  Shape perm_shape, perm_strides, out_shape(x.shape());
  int64_t outer = 1, inner = 1;
  for (int pass = 0; pass < 2; ++pass)
    for (int64_t d = 0; d < nd; ++d) {
      if (reduced[d] != (pass == 1)) continue;
      perm_shape.push_back(x.shape()[d]);
      perm_strides.push_back(x.strides()[d]);
      (pass ? inner : outer) *= x.shape()[d];
      if (pass) out_shape[d] = 1;
    }
  Tensor dense = contiguous_raw(as_strided(x, perm_shape, perm_strides, x.offset()));
  Tensor out = empty(out_shape, x.dtype(), x.device());
  if (outer == 0) return out;
  set_device_of(x);
  // Enough blocks to fill the GPU when there are few rows; one block per row otherwise.
  const int splits = int(std::clamp<int64_t>(inner / 8192, 1, outer >= 264 ? 1 : 1024));
  dispatch_float(x.dtype(), "sum", [&]<class T>() {
    using A = acc_t<T>;
    Tensor partial = empty({outer, splits}, std::is_same_v<A, double> ? DType::F64 : DType::F32, x.device());
    partial_sums<T><<<dim3(unsigned(outer), unsigned(splits)), kThreads, 0, stream()>>>(
        static_cast<const T*>(dense.data_ptr()), static_cast<A*>(partial.data_ptr()), inner, splits);
    SD_CUDA_CHECK_LAUNCH("partial_sums");
    finish_sums<T><<<unsigned(outer), kThreads, 0, stream()>>>(static_cast<const A*>(partial.data_ptr()),
                                                 static_cast<T*>(out.data_ptr()), splits);
    SD_CUDA_CHECK_LAUNCH("finish_sums");
  });
  return out;
}

}  // namespace sd::cuda
