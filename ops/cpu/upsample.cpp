#include "ops/cpu/upsample.h"

#include <algorithm>
#include <vector>

#include "runtime/parallel.h"

namespace sd::cpu {

Tensor upsample_nearest2d(const Tensor& x_in, int64_t s) {
  Tensor x = contiguous_raw(x_in);
  const int64_t planes = x.size(0) * x.size(1), H = x.size(2), W = x.size(3), Wo = W * s;
  Tensor out = empty({x.size(0), x.size(1), H * s, Wo}, x.dtype(), Device::cpu());
  SD_DISPATCH_FLOAT(x.dtype(), "upsample_nearest2d", [&] {
    using T = scalar_t;
    const T* in = x.data<T>();
    T* o = out.data<T>();
    // One task per input row: widen it once, then repeat the wide row s times.
    parallel_for(planes * H, Wo * s, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* src = in + r * W;
        T* dst = o + r * s * Wo;
        for (int64_t j = 0; j < W; ++j)
          for (int64_t k = 0; k < s; ++k) dst[j * s + k] = src[j];
        for (int64_t k = 1; k < s; ++k) std::copy(dst, dst + Wo, dst + k * Wo);
      }
    });
  });
  return out;
}

Tensor upsample_nearest2d_backward(const Tensor& grad_in, int64_t s) {
  Tensor g = contiguous_raw(grad_in);
  const int64_t planes = g.size(0) * g.size(1), Ho = g.size(2), Wo = g.size(3), H = Ho / s, W = Wo / s;
  Tensor out = empty({g.size(0), g.size(1), H, W}, g.dtype(), Device::cpu());
  SD_DISPATCH_FLOAT(g.dtype(), "upsample_nearest2d backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* in = g.data<T>();
    T* o = out.data<T>();
    parallel_for(planes * H, Wo * s, [&](int64_t r0, int64_t r1) {
      std::vector<A> acc(static_cast<size_t>(W));
      for (int64_t r = r0; r < r1; ++r) {
        std::fill(acc.begin(), acc.end(), A(0));
        // Output row r gathers input rows r*s .. r*s + s-1 of the same plane.
        const T* src = in + r * s * Wo;
        for (int64_t k = 0; k < s; ++k, src += Wo)
          for (int64_t j = 0; j < Wo; ++j) acc[size_t(j / s)] += A(src[j]);
        for (int64_t j = 0; j < W; ++j) o[r * W + j] = T(acc[size_t(j)]);
      }
    });
  });
  return out;
}

}  // namespace sd::cpu
