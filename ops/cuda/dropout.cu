// Dropout on the GPU: one thread per Philox block, i.e. per 4 consecutive elements, with the
// host/device Philox of runtime/rng_core.h, so the mask is the CPU's bit for bit.
#include "ops/cuda/cuda_common.cuh"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/dropout.h"
#include "runtime/rng_core.h"

namespace sd::cuda {

namespace {

template <class T>
__global__ void dropout_kernel(const T* in, T* out, int64_t n, uint64_t seed, uint64_t offset, double p,
                               acc_t<T> scale) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * blockDim.x) {
    uint32_t w[4];
    rng::philox_block(seed, offset + uint64_t(b), w);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = b * 4 + k;
      if (i >= n) break;
      // The comparison the CPU makes: the 24-bit uniform (exact in float and double) against p.
      const bool keep = double(rng::uniform_from_word(w[k])) >= p;
      out[i] = keep ? from_acc<T>(to_acc(in[i]) * scale) : from_acc<T>(acc_t<T>(0));
    }
  }
}

}  // namespace

Tensor dropout_masked(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  // Row-major logical order is what the mask is defined on: work on a contiguous copy.
  Tensor xc = contiguous_raw(x);
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  const int64_t n = x.numel();
  if (n == 0) return out;
  set_device_of(x);
  dispatch_float(x.dtype(), "dropout", [&]<class T>() {
    using A = acc_t<T>;
    const A scale = A(1.0 / (1.0 - p));  // rounded from double like the CPU's
    dropout_kernel<T><<<grid_1d((n + 3) / 4), 256, 0, stream()>>>(static_cast<const T*>(xc.data_ptr()),
                                                      static_cast<T*>(out.data_ptr()), n, seed, offset, p, scale);
    SD_CUDA_CHECK_LAUNCH("dropout");
  });
  return out;
}

}  // namespace sd::cuda
