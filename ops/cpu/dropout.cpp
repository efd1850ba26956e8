#include "ops/cpu/dropout.h"

#include "runtime/parallel.h"
#include "runtime/rng.h"
#include "runtime/rng_core.h"

namespace sd::cpu {

Tensor dropout_masked(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  // Row-major logical order is what the mask is defined on: work on a contiguous copy.
  Tensor xc = contiguous_raw(x);
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  const int64_t n = x.numel();
  SD_DISPATCH_FLOAT(x.dtype(), "dropout", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const A scale = A(1.0 / (1.0 - p));
    const T* in = xc.data<T>();
    T* o = out.data<T>();
    // One Philox block gives the uniforms of 4 consecutive elements.
    parallel_for(int64_t(uniform_blocks(n)), 64, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        uint32_t w[4];
        rng::philox_block(seed, offset + uint64_t(b), w);
        for (int k = 0; k < 4 && b * 4 + k < n; ++k) {
          const int64_t i = b * 4 + k;
          const bool keep = double(rng::uniform_from_word(w[k])) >= p;
          o[i] = keep ? T(A(in[i]) * scale) : T(A(0));
        }
      }
    });
  });
  return out;
}

}  // namespace sd::cpu
