#include "models/nn/layers.h"

#include "ops/conv.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/norm.h"

namespace sd::nn {

Linear::Linear(int64_t in, int64_t out, bool has_bias) : in_features(in), out_features(out) {
  register_parameter("weight", &weight, {out, in}, Init::Uniform, in);
  if (has_bias) register_parameter("bias", &bias, {out}, Init::Uniform, in);
}

Tensor Linear::forward(const Tensor& x) const {
  Tensor y = linear(x, checked(weight, "Linear.weight"), bias);
  for (const LoraAdapter& l : loras) y = y + linear(linear(x, l.down), l.up) * l.scale;
  return y;
}

Conv2d::Conv2d(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, bool has_bias)
    : in_channels(in), out_channels(out), kernel(k), stride(s), padding(p) {
  register_parameter("weight", &weight, {out, in, k, k}, Init::Uniform, in * k * k);
  if (has_bias) register_parameter("bias", &bias, {out}, Init::Uniform, in * k * k);
}

Tensor Conv2d::forward(const Tensor& x) const {
  Tensor y = conv2d(x, checked(weight, "Conv2d.weight"), bias, {stride, stride}, {padding, padding});
  for (const LoraAdapter& l : loras) {
    // down has the layer's kernel, stride and padding; up is 1x1.
    Tensor h = conv2d(x, l.down, Tensor(), {stride, stride}, {padding, padding});
    y = y + conv2d(h, l.up) * l.scale;
  }
  return y;
}

GroupNorm::GroupNorm(int64_t g, int64_t c, double e, bool affine) : groups(g), channels(c), eps(e) {
  if (affine) {
    register_parameter("weight", &weight, {c}, Init::Ones);
    register_parameter("bias", &bias, {c}, Init::Zeros);
  }
}

Tensor GroupNorm::forward(const Tensor& x, bool fuse_silu) const {
  return group_norm(x, groups, weight, bias, eps, fuse_silu);
}

LayerNorm::LayerNorm(int64_t dim, double e, bool affine) : eps(e) {
  if (affine) {
    register_parameter("weight", &weight, {dim}, Init::Ones);
    register_parameter("bias", &bias, {dim}, Init::Zeros);
  }
}

Tensor LayerNorm::forward(const Tensor& x) const { return layer_norm(x, weight, bias, eps); }

Embedding::Embedding(int64_t num, int64_t dim) {
  register_parameter("weight", &weight, {num, dim}, Init::Uniform, 1);
}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(checked(weight, "Embedding.weight"), ids); }

}  // namespace sd::nn
