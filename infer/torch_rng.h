// torch's CUDA randn reproduced on the CPU, so a seed from diffusers or A1111 (generator on
// "cuda") gives the same starting latents here, on any device.
//
// torch fills a float tensor with curand's Philox4x32-10: thread t of a launch of G blocks of
// 256 threads calls curand_init(seed, subsequence = t, offset) and draws curand_normal4 per
// loop iteration; element li comes from thread li % (256 G), iteration li / (1024 G), lane
// (li / (256 G)) % 4, through Box-Muller (s sin v, s cos v of the words pairs). G =
// min(ceil(n / 256), SMs * 2048 / 256): tensors up to 1024 * SMs * 8 elements (270,336 on a
// 132-SM H100/H200) do not depend on the GPU; larger ones do, and take the SM count.
// Values agree with torch's to ~1e-6 (torch uses the approximate __sincosf).
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::infer {

class TorchCudaGenerator {
 public:
  explicit TorchCudaGenerator(uint64_t seed, int sm_count = 132, int max_threads_per_sm = 2048)
      : seed_(seed), sms_(sm_count), threads_per_sm_(max_threads_per_sm) {}
  // The next torch.randn(shape, generator=g, device="cuda") of this generator.
  Tensor randn(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  uint64_t offset() const { return offset_; }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;  // torch's philox offset (in 32-bit words, a multiple of 4)
  int sms_, threads_per_sm_;
};

}  // namespace sd::infer
