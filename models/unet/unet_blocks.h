// The UNet's down, mid and up blocks with diffusers' names (models/unets/unet_2d_blocks.py):
//
//   CrossAttnDownBlock2D      resnets.{j}, attentions.{j}, downsamplers.0
//   DownBlock2D               resnets.{j}, downsamplers.0
//   UNetMidBlock2DCrossAttn   resnets.0, attentions.{j}, resnets.{j+1}
//   UNetMidBlock2D            resnets.0 [, attentions.{j}, resnets.{j+1}] (SSD-1B: one resnet;
//                             the VAE: one attention and a second resnet)
//   CrossAttnUpBlock2D        resnets.{j}, attentions.{j}, upsamplers.0
//   UpBlock2D                 resnets.{j}, upsamplers.0
//
// Skip connections: a down block appends each resnet(/attention) output and its downsampler
// output to `skips`; an up block pops one per resnet (last in, first out) and concatenates it
// after its hidden state along channels.
#pragma once
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "models/nn/attention_blocks.h"
#include "models/nn/blocks.h"

namespace sd::nn {

// What every block of one UNet forward sees.
struct BlockContext {
  Tensor temb;      // [N, temb_channels]
  Tensor context;   // encoder_hidden_states [N, Lk, cross_attention_dim] (cross-attention blocks)
  bool checkpoint = false;  // recompute each resnet and transformer block in backward
};

// Resnet call with optional activation recomputation (autograd::checkpoint with x and temb as
// inputs, so gradients reach the time embedding too).
Tensor run_resnet(const ResnetBlock2D& resnet, const Tensor& x, const BlockContext& ctx);

// Settings common to the blocks of one UNet (diffusers passes them to every get_*_block).
struct UNetBlockOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t prev_output_channels = 0;  // up blocks: channels coming from the block below
  int64_t temb_channels = 0;
  int64_t num_layers = 1;            // resnets (up blocks: layers_per_block + 1)
  std::vector<int64_t> transformer_layers;  // per resnet/attention pair (cross-attention blocks)
  int64_t heads = 1;                 // attention heads; dim_head = out_channels / heads
  int64_t cross_attention_dim = 0;
  int64_t resnet_groups = 32;
  double resnet_eps = 1e-5;
  double output_scale_factor = 1.0;  // mid blocks: mid_block_scale_factor
  bool add_sample = true;            // downsampler / upsampler at the end
  int64_t downsample_padding = 1;
  bool use_linear_projection = false;
  bool upcast_attention = false;
};

class UNetDownBlock : public Module {
 public:
  // x [N, Cin, H, W] -> [N, Cout, H', W'], appending the block's outputs to `skips`.
  virtual Tensor forward(const Tensor& x, const BlockContext& ctx, std::vector<Tensor>& skips) const = 0;
  std::vector<std::shared_ptr<ResnetBlock2D>> resnets;
  std::shared_ptr<Downsample2D> downsampler;  // "downsamplers.0", null for the last block
};

class UNetUpBlock : public Module {
 public:
  // x [N, Cprev, H, W] -> [N, Cout, 2H, 2W] (or H, W without an upsampler), popping one skip
  // per resnet. upsample_size: the next skip's spatial size, or {0, 0} for exactly 2x.
  virtual Tensor forward(const Tensor& x, const BlockContext& ctx, std::vector<Tensor>& skips,
                         std::array<int64_t, 2> upsample_size) const = 0;
  std::vector<std::shared_ptr<ResnetBlock2D>> resnets;
  std::shared_ptr<Upsample2D> upsampler;  // "upsamplers.0", null for the last block
};

class UNetMidBlock : public Module {
 public:
  virtual Tensor forward(const Tensor& x, const BlockContext& ctx) const = 0;
  std::vector<std::shared_ptr<ResnetBlock2D>> resnets;
};

class DownBlock2D : public UNetDownBlock {
 public:
  explicit DownBlock2D(const UNetBlockOptions& o);
  Tensor forward(const Tensor& x, const BlockContext& ctx, std::vector<Tensor>& skips) const override;
};

class CrossAttnDownBlock2D : public UNetDownBlock {
 public:
  explicit CrossAttnDownBlock2D(const UNetBlockOptions& o);
  Tensor forward(const Tensor& x, const BlockContext& ctx, std::vector<Tensor>& skips) const override;
  std::vector<std::shared_ptr<Transformer2DModel>> attentions;
};

class UNetMidBlock2DCrossAttn : public UNetMidBlock {
 public:
  explicit UNetMidBlock2DCrossAttn(const UNetBlockOptions& o);  // num_layers attentions (1 in every UNet)
  Tensor forward(const Tensor& x, const BlockContext& ctx) const override;
  std::vector<std::shared_ptr<Transformer2DModel>> attentions;
};

// resnets.0, then per layer (num_layers) attentions.{j} when add_attention (Attention with
// group_norm, residual, rescale by output_scale_factor, heads = C / attention_head_dim, q/k/v
// biases) and resnets.{j+1}. The VAE's mid block has 1 layer with attention; the UNet's
// "UNetMidBlock2D" (SSD-1B) has 0 layers, i.e. one resnet.
class UNetMidBlock2D : public UNetMidBlock {
 public:
  UNetMidBlock2D(const UNetBlockOptions& o, bool add_attention, int64_t attention_head_dim = 0 /* = C */);
  Tensor forward(const Tensor& x, const BlockContext& ctx) const override;
  std::vector<std::shared_ptr<Attention>> attentions;
};

class UpBlock2D : public UNetUpBlock {
 public:
  explicit UpBlock2D(const UNetBlockOptions& o);
  Tensor forward(const Tensor& x, const BlockContext& ctx, std::vector<Tensor>& skips,
                 std::array<int64_t, 2> upsample_size) const override;
};

class CrossAttnUpBlock2D : public UNetUpBlock {
 public:
  explicit CrossAttnUpBlock2D(const UNetBlockOptions& o);
  Tensor forward(const Tensor& x, const BlockContext& ctx, std::vector<Tensor>& skips,
                 std::array<int64_t, 2> upsample_size) const override;
  std::vector<std::shared_ptr<Transformer2DModel>> attentions;
};

}  // namespace sd::nn
