// 2-d convolution (PyTorch's Conv2d layout, groups = 1, dilation = 1) and constant padding
// of the last two dims (the VAE's Downsample2D pads right/bottom only before a stride-2 conv).
#pragma once
#include <array>
#include <cstdint>

#include "runtime/tensor.h"

namespace sd {

// x [N, C, H, W], weight [O, C, kh, kw], bias [O] or undefined -> [N, O, Ho, Wo] with
// Ho = (H + 2 padding[0] - kh) / stride[0] + 1 and Wo likewise. Zero padding.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
              std::array<int64_t, 2> stride = {1, 1}, std::array<int64_t, 2> padding = {0, 0});

// x [..., H, W] -> [..., top + H + bottom, left + W + right], the new border set to value.
Tensor pad2d(const Tensor& x, int64_t left, int64_t right, int64_t top, int64_t bottom, double value = 0.0);

}  // namespace sd
