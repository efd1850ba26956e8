#include "ops/timestep.h"

#include <cmath>
#include <vector>

#include "ops/cuda/timestep.h"
#include "ops/op_common.h"
#include "runtime/parallel.h"

namespace sd {

namespace {

// CPU path: the [N] timesteps and the frequency table -> [N, dim] f32.
Tensor embedding_cpu(const Tensor& timesteps, const std::vector<float>& freq, int64_t dim, bool flip_sin_to_cos,
                     float fscale) {
  const int64_t n = timesteps.size(0);
  const int64_t half = int64_t(freq.size());
  // The reference converts timesteps with .float() before anything else.
  std::vector<float> t(n);
  Tensor tc = contiguous_raw(timesteps);
  SD_DISPATCH_ALL(tc.dtype(), "timestep_embedding", [&] {
    const scalar_t* src = tc.data<scalar_t>();
    for (int64_t i = 0; i < n; ++i) t[i] = float(src[i]);
  });

  Tensor out = zeros({n, dim}, DType::F32);  // zeros: the odd-dim padding column
  float* o = out.data<float>();
  const int64_t sin_at = flip_sin_to_cos ? half : 0, cos_at = flip_sin_to_cos ? 0 : half;
  parallel_for(n, 2 * half * 20, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float* row = o + i * dim;
      for (int64_t j = 0; j < half; ++j) {
        const float arg = fscale * (t[i] * freq[j]);
        row[sin_at + j] = std::sin(arg);
        row[cos_at + j] = std::cos(arg);
      }
    }
  });
  return out;
}

}  // namespace

Tensor timestep_embedding(const Tensor& timesteps, int64_t dim, bool flip_sin_to_cos, double downscale_freq_shift,
                          double scale, int64_t max_period) {
  SD_NVTX_RANGE("timestep_embedding");
  SD_CHECK(timesteps.defined(), "timestep_embedding: undefined timesteps");
  detail::check_dim("timestep_embedding", timesteps, 1, "timesteps");
  SD_CHECK(dim >= 1, "timestep_embedding: dim must be >= 1, got ", dim);
  SD_CHECK(max_period > 0, "timestep_embedding: max_period must be > 0, got ", max_period);
  const int64_t half = dim / 2;
  SD_CHECK(half == 0 || double(half) - downscale_freq_shift != 0.0, "timestep_embedding: dim / 2 = ", half,
           " minus downscale_freq_shift ", downscale_freq_shift, " is zero");

  // Frequencies in f32, one rounding per step as in the reference:
  // exponent = (-ln(max_period) * arange(half)) / (half - shift); freq = exp(exponent).
  // Made here on the host for both devices, so the GPU uses the very same table.
  const float neg_log_period = float(-std::log(double(max_period)));
  const float denom = float(double(half) - downscale_freq_shift);
  const float fscale = float(scale);
  std::vector<float> freq(half);
  for (int64_t j = 0; j < half; ++j) freq[j] = std::exp((neg_log_period * float(j)) / denom);

  // The GPU path converts the timesteps on the device (.float() like the reference).
  return SD_DISPATCH_DEVICE(timesteps, embedding_cpu(timesteps, freq, dim, flip_sin_to_cos, fscale),
                            cuda::timestep_embedding(copy_to(timesteps, DType::F32, timesteps.device()), freq, dim,
                                                     flip_sin_to_cos, fscale));
}

}  // namespace sd
