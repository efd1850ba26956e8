#include "infer/torch_rng.h"

#include <algorithm>
#include <cmath>

#include "runtime/parallel.h"
#include "runtime/rng_core.h"

namespace sd::infer {

Tensor TorchCudaGenerator::randn(const Shape& shape, DType dtype, Device device) {
  const int64_t n = shape_numel(shape);
  Tensor out = empty(shape, DType::F32);
  if (n == 0) return copy_to(out, dtype, device);
  // torch's calc_execution_policy for curand4 distributions.
  const uint64_t block = 256, unroll = 4;
  const uint64_t blocks = std::min<uint64_t>((uint64_t(n) + block - 1) / block,
                                             uint64_t(sms_) * uint64_t(threads_per_sm_ / int(block)));
  const uint64_t threads = block * blocks;
  const uint64_t counter_offset = ((uint64_t(n) - 1) / (threads * unroll) + 1) * 4;
  const uint64_t base = offset_ / 4;  // curand skipahead(offset): whole 128-bit blocks
  const uint32_t key[2] = {uint32_t(seed_), uint32_t(seed_ >> 32)};
  // curand's constants: 2^-32 and 2^-32 * 2 pi, in float.
  const float k2pow32_inv = 2.3283064e-10f;
  const float k2pow32_inv_2pi = 2.3283064e-10f * 6.2831855f;
  float* dst = out.data<float>();
  parallel_for(n, 64, [&](int64_t b, int64_t e) {
    for (int64_t li = b; li < e; ++li) {
      const uint64_t t = uint64_t(li) % threads, q = uint64_t(li) / threads;
      const uint64_t iter = q / unroll, lane = q % unroll;
      const uint64_t c = base + iter;
      const uint32_t ctr[4] = {uint32_t(c), uint32_t(c >> 32), uint32_t(t), uint32_t(t >> 32)};
      uint32_t w[4];
      rng::philox4x32_10(ctr, key, w);
      const uint32_t x = w[lane < 2 ? 0 : 2], y = w[lane < 2 ? 1 : 3];
      const float u = float(x) * k2pow32_inv + k2pow32_inv / 2.0f;
      const float v = float(y) * k2pow32_inv_2pi + k2pow32_inv_2pi / 2.0f;
      const float s = std::sqrt(-2.0f * std::log(u));
      dst[li] = (lane % 2 == 0) ? s * std::sin(v) : s * std::cos(v);
    }
  });
  offset_ += counter_offset;
  return copy_to(out, dtype, device);
}

}  // namespace sd::infer
