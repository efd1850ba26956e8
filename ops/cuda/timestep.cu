// Timestep embedding on the GPU: one thread per output element. The arguments are the CPU's
// f32 values bit for bit (same frequency table, the same two rounded multiplies); only
// sinf/cosf differ from the host libm, by at most a few ulp of a value in [-1, 1].
#include <cuda_runtime.h>

#include "ops/cuda/cuda_common.cuh"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/timestep.h"

namespace sd::cuda {

namespace {

// out is [n, dim]; columns [0, half) and [half, 2*half) hold the two functions of frequency
// j = column mod half; a column 2*half (odd dim) is zero.
__global__ void timestep_kernel(const float* t, const float* freq, float* out, int64_t n, int64_t dim, int64_t half,
                                bool cos_first, float scale) {
  const int64_t total = n * dim;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / dim, c = k % dim;
    float v = 0.0f;
    if (c < 2 * half) {
      const bool first = c < half;
      const int64_t j = first ? c : c - half;
      // The CPU's fscale * (t[i] * freq[j]), each product rounded once.
      const float arg = __fmul_rn(scale, __fmul_rn(t[i], freq[j]));
      v = (first == cos_first) ? cosf(arg) : sinf(arg);
    }
    out[k] = v;
  }
}

}  // namespace

Tensor timestep_embedding(const Tensor& t, const std::vector<float>& freq, int64_t dim, bool flip_sin_to_cos,
                          float scale) {
  const int64_t n = t.numel();
  const int64_t half = int64_t(freq.size());
  const Device dev = t.device();
  set_device_of(t);
  Tensor out = empty({n, dim}, DType::F32, dev);
  if (n * dim == 0) return out;
  Tensor freq_dev = empty({std::max<int64_t>(half, 1)}, DType::F32, dev);
  if (half > 0)
    // From pageable memory: staged before the call returns, ordered before the kernel.
    SD_CUDA_CHECK(cudaMemcpyAsync(freq_dev.data_ptr(), freq.data(), size_t(half) * sizeof(float),
                                  cudaMemcpyHostToDevice, stream()));
  timestep_kernel<<<grid_1d(n * dim), 256, 0, stream()>>>(static_cast<const float*>(t.data_ptr()),
                                             static_cast<const float*>(freq_dev.data_ptr()),
                                             static_cast<float*>(out.data_ptr()), n, dim, half, flip_sin_to_cos,
                                             scale);
  SD_CUDA_CHECK_LAUNCH("timestep_embedding");
  return out;
}

}  // namespace sd::cuda
