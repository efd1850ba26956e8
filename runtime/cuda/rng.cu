// GPU side of the Philox fills: one thread per block of 4 (uniform) or 2 (normal) outputs,
// the same transforms as the CPU (runtime/rng_core.h), hence the same bits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/current_stream.cuh"
#include "runtime/cuda_api.h"
#include "runtime/cuda_kernels.h"
#include "runtime/rng_core.h"

namespace sd::cuda_kernels {

using cuda::stream;

namespace {

template <class T>
__device__ void store(T* p, double v);
template <> __device__ void store<float>(float* p, double v) { *p = float(v); }
template <> __device__ void store<double>(double* p, double v) { *p = v; }
template <> __device__ void store<__half>(__half* p, double v) { *p = __float2half_rn(float(v)); }
template <> __device__ void store<__nv_bfloat16>(__nv_bfloat16* p, double v) { *p = __float2bfloat16_rn(float(v)); }

template <class T>
__global__ void uniform_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, double low, double scale) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * blockDim.x) {
    uint32_t w[4];
    rng::philox_block(seed, offset + uint64_t(b), w);
    for (int k = 0; k < 4 && b * 4 + k < n; ++k)
      store(out + b * 4 + k, __fma_rn(scale, double(rng::uniform_from_word(w[k])), low));
  }
}

template <class T>
__global__ void normal_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double std) {
  const int64_t blocks = (n + 1) / 2;
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * blockDim.x) {
    double z[2];
    rng::normal_pair(seed, offset + uint64_t(b), &z[0], &z[1]);
    for (int k = 0; k < 2 && b * 2 + k < n; ++k) store(out + b * 2 + k, __fma_rn(std, z[k], mean));
  }
}

template <class F>
void launch_by_dtype(const Tensor& t, int64_t work_items, F&& launch) {
  const int grid = int(std::min<int64_t>((work_items + 255) / 256, 65535));
  cudart::set_device(t.device().index);
  switch (t.dtype()) {
    case DType::F32: launch(static_cast<float*>(t.data_ptr()), grid); break;
    case DType::F64: launch(static_cast<double*>(t.data_ptr()), grid); break;
    case DType::F16: launch(static_cast<__half*>(t.data_ptr()), grid); break;
    case DType::BF16: launch(static_cast<__nv_bfloat16*>(t.data_ptr()), grid); break;
    default: SD_FAIL("cuda random fill: needs a floating tensor, got ", t.str());
  }
}

}  // namespace

void fill_uniform(const Tensor& t, uint64_t seed, uint64_t offset, double low, double high) {
  const int64_t n = t.numel();
  if (n == 0) return;
  launch_by_dtype(t, (n + 3) / 4, [&](auto* p, int grid) {
    uniform_kernel<<<grid, 256, 0, stream()>>>(p, n, seed, offset, low, high - low);
    SD_CUDA_CHECK_LAUNCH("uniform_kernel");
  });
}

void fill_normal(const Tensor& t, uint64_t seed, uint64_t offset, double mean, double std) {
  const int64_t n = t.numel();
  if (n == 0) return;
  launch_by_dtype(t, (n + 1) / 2, [&](auto* p, int grid) {
    normal_kernel<<<grid, 256, 0, stream()>>>(p, n, seed, offset, mean, std);
    SD_CUDA_CHECK_LAUNCH("normal_kernel");
  });
}

}  // namespace sd::cuda_kernels
