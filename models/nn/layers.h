// The basic layers, with PyTorch's parameter names and shapes. Linear and Conv2d can carry
// low-rank adapters (LoRA) applied on the fly: y = base(x) + sum_i scale_i * up_i(down_i(x)).
#pragma once
#include <array>
#include <vector>

#include "models/nn/module.h"

namespace sd::nn {

// One low-rank adapter: down [r, in] (conv: [r, in, kh, kw]), up [out, r] (conv: [out, r, 1, 1]);
// `scale` already includes alpha / r and the user's multiplier.
struct LoraAdapter {
  Tensor down, up;
  double scale = 1.0;
};

class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias = true);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;  // [out, in], [out]
  std::vector<LoraAdapter> loras;
  int64_t in_features, out_features;
};

class Conv2d : public Module {
 public:
  Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t padding = 0, bool bias = true);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;  // [out, in, k, k], [out]
  std::vector<LoraAdapter> loras;
  int64_t in_channels, out_channels, kernel, stride, padding;
};

class GroupNorm : public Module {
 public:
  GroupNorm(int64_t groups, int64_t channels, double eps = 1e-5, bool affine = true);
  // fuse_silu: the activation that follows every GroupNorm in the UNet and VAE, in one pass.
  Tensor forward(const Tensor& x, bool fuse_silu = false) const;
  Tensor weight, bias;
  int64_t groups, channels;
  double eps;
};

class LayerNorm : public Module {
 public:
  LayerNorm(int64_t dim, double eps = 1e-5, bool affine = true);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;
  double eps;
};

class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim);
  Tensor forward(const Tensor& ids) const;
  Tensor weight;  // [num, dim]
};

}  // namespace sd::nn
