// Nearest-neighbour upsampling by an integer factor (the UNet's and VAE's Upsample2D).
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd {

// x [N, C, H, W] -> [N, C, H*scale, W*scale]; out[.., i, j] = x[.., i / scale, j / scale].
Tensor upsample_nearest2d(const Tensor& x, int64_t scale = 2);

}  // namespace sd
