// Activation functions. GEGLU is the feed-forward gate of diffusers' BasicTransformerBlock:
// the last dim holds [hidden | gate], the result is hidden * gelu(gate).
#pragma once
#include "runtime/tensor.h"

namespace sd {

Tensor silu(const Tensor& x);
Tensor gelu(const Tensor& x, bool tanh_approximation = false);
Tensor quick_gelu(const Tensor& x);  // x * sigmoid(1.702 x), OpenAI CLIP
Tensor sigmoid(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor geglu(const Tensor& x);

}  // namespace sd
