// Attention building blocks with diffusers' parameter names (models/attention_processor.py,
// attention.py, activations.py, transformers/transformer_2d.py):
//
//   Attention              to_q, to_k, to_v, to_out.0 [, group_norm (VAE mid block)]
//   GEGLU / FeedForward    ff.net.0.proj, ff.net.2
//   BasicTransformerBlock  norm1, attn1, norm2, attn2, norm3, ff
//   Transformer2DModel     norm, proj_in, transformer_blocks.{k}, proj_out
#pragma once
#include <memory>
#include <vector>

#include "models/nn/layers.h"

namespace sd::nn {

// diffusers' Attention with the default processor (no mask, no qk-norm, no added kv).
struct AttentionOptions {
  int64_t query_dim = 0;
  int64_t cross_attention_dim = 0;  // 0: self-attention (keys/values from the queries' input)
  int64_t heads = 8;
  int64_t dim_head = 64;
  bool bias = false;                // to_q/to_k/to_v biases (the VAE's attention has them)
  bool out_bias = true;             // to_out.0 bias
  // diffusers computes QK^T and the softmax in f32 for these; our attention kernels always
  // accumulate scores and softmax in f32, so both are recorded only.
  bool upcast_attention = false;
  bool upcast_softmax = false;
  // The VAE mid block's form (diffusers' _from_deprecated_attn_block): GroupNorm over the
  // channels first (norm_num_groups > 0, eps), then out = (attention + x) / rescale.
  int64_t norm_num_groups = 0;
  double eps = 1e-5;
  bool residual_connection = false;
  double rescale_output_factor = 1.0;
};

class Attention : public Module {
 public:
  explicit Attention(const AttentionOptions& opt);
  // x [B, L, query_dim] or [B, query_dim, H, W] (flattened to L = H*W tokens and back);
  // context [B, Lk, cross_attention_dim] for cross-attention, undefined for self-attention.
  // Returns x's shape. softmax(q k^T / sqrt(dim_head)) v per head.
  Tensor forward(const Tensor& x, const Tensor& context = Tensor()) const;

  std::shared_ptr<GroupNorm> group_norm;  // null unless norm_num_groups > 0
  std::shared_ptr<Linear> to_q, to_k, to_v, to_out;  // to_out is registered as "to_out.0"
  AttentionOptions opt;
  int64_t inner_dim;
};

// Linear to 2*dim_out, then value * gelu_exact(gate) with [value | gate] halves of the last dim.
class GEGLU : public Module {
 public:
  GEGLU(int64_t dim_in, int64_t dim_out);
  Tensor forward(const Tensor& x) const;  // [..., dim_in] -> [..., dim_out]
  std::shared_ptr<Linear> proj;
};

// diffusers' FeedForward with activation "geglu" and dropout 0: net.0 = GEGLU(dim, mult*dim),
// net.1 = dropout (no parameters), net.2 = Linear(mult*dim, dim).
class FeedForward : public Module {
 public:
  FeedForward(int64_t dim, int64_t mult = 4);
  Tensor forward(const Tensor& x) const;  // [..., dim] -> [..., dim]
  std::shared_ptr<GEGLU> act;             // "net.0"
  std::shared_ptr<Linear> out;            // "net.2"
};

// norm_type "layer_norm", no only_cross_attention / double_self_attention:
//   x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x))
class BasicTransformerBlock : public Module {
 public:
  BasicTransformerBlock(int64_t dim, int64_t heads, int64_t dim_head, int64_t cross_attention_dim,
                        bool upcast_attention = false, double norm_eps = 1e-5);
  // x [B, L, dim], context [B, Lk, cross_attention_dim] -> [B, L, dim]
  Tensor forward(const Tensor& x, const Tensor& context) const;
  std::shared_ptr<LayerNorm> norm1, norm2, norm3;
  std::shared_ptr<Attention> attn1, attn2;
  std::shared_ptr<FeedForward> ff;
};

// The UNet's spatial transformer (continuous input): GroupNorm (eps 1e-6), proj_in (1x1 conv,
// or Linear when use_linear_projection), `num_layers` BasicTransformerBlocks over the H*W
// tokens, proj_out, plus the input as residual. inner_dim = heads * dim_head.
class Transformer2DModel : public Module {
 public:
  struct Options {
    int64_t heads = 8;
    int64_t dim_head = 64;
    int64_t in_channels = 0;
    int64_t num_layers = 1;
    int64_t cross_attention_dim = 0;
    int64_t norm_num_groups = 32;
    bool use_linear_projection = false;
    bool upcast_attention = false;
  };
  explicit Transformer2DModel(const Options& opt);
  // x [B, C, H, W], context [B, Lk, cross_attention_dim] -> [B, C, H, W]. checkpoint: each
  // transformer block recomputes its activations in backward (autograd::checkpoint).
  Tensor forward(const Tensor& x, const Tensor& context, bool checkpoint = false) const;

  std::shared_ptr<GroupNorm> norm;
  std::shared_ptr<Linear> proj_in_linear, proj_out_linear;  // use_linear_projection: "proj_in", "proj_out"
  std::shared_ptr<Conv2d> proj_in_conv, proj_out_conv;      // otherwise (1x1 convs, same names)
  std::vector<std::shared_ptr<BasicTransformerBlock>> transformer_blocks;
  Options opt;
  int64_t inner_dim;
};

}  // namespace sd::nn
