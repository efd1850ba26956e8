// Device-side helpers of the runtime itself (copies, fills), callable from plain C++.
// Defined by the CUDA backend library (sd_cuda); the CPU-only one (sd_nocuda) raises.
#pragma once
#include "runtime/tensor.h"

namespace sd::cuda_kernels {

// dst[i] = convert(src[i]); both on the same GPU, src already broadcast to dst's shape
// (stride 0 on broadcast dims), any strides and any dtypes.
void copy_strided(const Tensor& dst, const Tensor& src);
void fill(const Tensor& dst, double value);
// dst += alpha * src (src broadcast to dst's shape, same device).
void axpy(const Tensor& dst, const Tensor& src, double alpha);

}  // namespace sd::cuda_kernels

namespace sd::cuda_kernels {
// Philox fills with the element-to-counter mapping of runtime/rng.h.
void fill_uniform(const Tensor& t, uint64_t seed, uint64_t offset, double low, double high);
void fill_normal(const Tensor& t, uint64_t seed, uint64_t offset, double mean, double std);
}  // namespace sd::cuda_kernels
