// Counter-based random numbers (Philox4x32-10). A stream is a 64-bit seed; the numbers of a
// tensor come from consecutive 128-bit blocks starting at a block offset, so the same
// (seed, offset) gives the same bits on CPU and GPU, in any thread order.
//   uniform: element i <- word i%4 of block offset + i/4 (24-bit float in [0, 1))
//   normal:  element i <- Box-Muller output i%2 of block offset + i/2
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd {

struct Generator {
  uint64_t seed = 0;
  uint64_t offset = 0;  // blocks consumed so far
  explicit Generator(uint64_t s = 0) : seed(s) {}
  // Reserves `blocks` blocks and returns the first one.
  uint64_t advance(uint64_t blocks) {
    uint64_t o = offset;
    offset += blocks;
    return o;
  }
};

Generator& default_generator();
void manual_seed(uint64_t seed);  // reseeds the default generator, offset 0

inline uint64_t uniform_blocks(int64_t n) { return uint64_t(n + 3) / 4; }
inline uint64_t normal_blocks(int64_t n) { return uint64_t(n + 1) / 2; }

// Fill a contiguous floating tensor (CPU or CUDA).
void fill_uniform_(const Tensor& t, uint64_t seed, uint64_t offset, double low = 0.0, double high = 1.0);
void fill_normal_(const Tensor& t, uint64_t seed, uint64_t offset, double mean = 0.0, double std = 1.0);

Tensor rand(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu(),
            Generator& gen = default_generator());
Tensor randn(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu(),
             Generator& gen = default_generator());
// Standalone stream: randn of `seed` from block 0 (the same on every device).
Tensor randn_seeded(const Shape& shape, uint64_t seed, DType dtype = DType::F32, Device device = Device::cpu());

}  // namespace sd
