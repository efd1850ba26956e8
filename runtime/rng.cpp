// CPU side of the Philox fills. Compiled with -ffp-contract=off (see CMakeLists.txt): the
// transforms in rng_core.h must not be fused differently from the GPU's.
#include "runtime/rng.h"

#include "runtime/parallel.h"
#include "runtime/rng_core.h"
#include "runtime/cuda_kernels.h"

namespace sd {

Generator& default_generator() {
  static Generator g(0);
  return g;
}
void manual_seed(uint64_t seed) {
  default_generator().seed = seed;
  default_generator().offset = 0;
}

namespace {

template <class T>
inline void store(T* p, double v) {
  if constexpr (std::is_same_v<T, double>) {
    *p = v;
  } else {
    *p = T(float(v));  // f16/bf16 round from float, as the GPU does
  }
}

void check_fill_target(const Tensor& t, const char* op) {
  SD_CHECK(is_floating(t.dtype()), op, ": needs a floating tensor, got ", t.str());
  SD_CHECK(t.is_contiguous(), op, ": needs a contiguous tensor, got ", t.str());
}

}  // namespace

void fill_uniform_(const Tensor& t, uint64_t seed, uint64_t offset, double low, double high) {
  check_fill_target(t, "fill_uniform_");
  if (t.is_cuda()) return cuda_kernels::fill_uniform(t, seed, offset, low, high);
  const int64_t n = t.numel();
  const double scale = high - low;
  SD_DISPATCH_FLOAT(t.dtype(), "fill_uniform_", [&] {
    scalar_t* out = t.data<scalar_t>();
    parallel_for(int64_t(uniform_blocks(n)), 64, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        uint32_t w[4];
        rng::philox_block(seed, offset + uint64_t(b), w);
        for (int k = 0; k < 4 && b * 4 + k < n; ++k)
          store(out + b * 4 + k, std::fma(scale, double(rng::uniform_from_word(w[k])), low));
      }
    });
  });
}

void fill_normal_(const Tensor& t, uint64_t seed, uint64_t offset, double mean, double std) {
  check_fill_target(t, "fill_normal_");
  if (t.is_cuda()) return cuda_kernels::fill_normal(t, seed, offset, mean, std);
  const int64_t n = t.numel();
  SD_DISPATCH_FLOAT(t.dtype(), "fill_normal_", [&] {
    scalar_t* out = t.data<scalar_t>();
    parallel_for(int64_t(normal_blocks(n)), 256, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        double z[2];
        rng::normal_pair(seed, offset + uint64_t(b), &z[0], &z[1]);
        for (int k = 0; k < 2 && b * 2 + k < n; ++k) store(out + b * 2 + k, std::fma(std, z[k], mean));
      }
    });
  });
}

Tensor rand(const Shape& shape, DType dtype, Device device, Generator& gen) {
  Tensor t = empty(shape, dtype, device);
  fill_uniform_(t, gen.seed, gen.advance(uniform_blocks(t.numel())));
  return t;
}

Tensor randn(const Shape& shape, DType dtype, Device device, Generator& gen) {
  Tensor t = empty(shape, dtype, device);
  fill_normal_(t, gen.seed, gen.advance(normal_blocks(t.numel())));
  return t;
}

Tensor randn_seeded(const Shape& shape, uint64_t seed, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  fill_normal_(t, seed, 0);
  return t;
}

}  // namespace sd
