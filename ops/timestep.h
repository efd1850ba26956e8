// Sinusoidal timestep embedding of the diffusion UNet (diffusers' get_timestep_embedding).
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd {

// timesteps [N] (any numeric dtype, converted to f32 first) -> [N, dim] f32:
//   half = dim / 2, freq_j = exp(-ln(max_period) * j / (half - downscale_freq_shift)),
//   arg_nj = scale * t_n * freq_j, out = [sin(arg), cos(arg)] ([cos, sin] when
//   flip_sin_to_cos), plus a zero column at the end when dim is odd.
// Computed in f32 step by step like the PyTorch reference. Not differentiable.
Tensor timestep_embedding(const Tensor& timesteps, int64_t dim, bool flip_sin_to_cos = true,
                          double downscale_freq_shift = 0.0, double scale = 1.0, int64_t max_period = 10000);

}  // namespace sd
