// Convolutional building blocks shared by the UNet and the VAE, with diffusers' parameter
// names (models/resnet.py, downsampling.py, upsampling.py, embeddings.py):
//
//   ResnetBlock2D      norm1, conv1, time_emb_proj (optional), norm2, conv2, conv_shortcut (when
//                      the channel count changes)
//   Downsample2D       conv (3x3, stride 2)
//   Upsample2D         conv (3x3 after nearest 2x)
//   TimestepEmbedding  linear_1, linear_2, cond_proj (optional, LCM)
//
// Every GroupNorm that diffusers follows with SiLU runs as one fused group_norm(fuse_silu).
#pragma once
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "models/nn/layers.h"

namespace sd::nn {

// diffusers' ResnetBlock2D with time_embedding_norm "default", pre-norm, SiLU, dropout 0:
//   h = conv1(silu(norm1(x))) [+ time_emb_proj(silu(temb))[:, :, None, None]]
//   h = conv2(silu(norm2(h)))
//   out = (shortcut(x) + h) / output_scale_factor
// temb_channels 0 builds the block without time_emb_proj (the VAE's blocks).
class ResnetBlock2D : public Module {
 public:
  struct Options {
    int64_t in_channels = 0;
    int64_t out_channels = 0;     // 0: same as in_channels
    int64_t temb_channels = 0;    // 0: no time embedding (VAE)
    int64_t groups = 32;
    int64_t groups_out = 0;       // 0: same as groups
    double eps = 1e-6;
    double output_scale_factor = 1.0;
  };
  explicit ResnetBlock2D(const Options& opt);
  // x [N, Cin, H, W], temb [N, temb_channels] (must be given iff temb_channels > 0) -> [N, Cout, H, W]
  Tensor forward(const Tensor& x, const Tensor& temb = Tensor()) const;

  std::shared_ptr<GroupNorm> norm1, norm2;
  std::shared_ptr<Conv2d> conv1, conv2;
  std::shared_ptr<Linear> time_emb_proj;   // null without a time embedding
  std::shared_ptr<Conv2d> conv_shortcut;   // 1x1, null when Cin == Cout
  int64_t in_channels, out_channels;
  double output_scale_factor;
};

// Stride-2 3x3 convolution. padding 1 (the UNet's): symmetric zero padding. padding 0 (the
// VAE's): zero-pad one row at the bottom and one column at the right first, then convolve
// without padding (diffusers' Downsample2D pads (0, 1, 0, 1) when padding == 0).
class Downsample2D : public Module {
 public:
  Downsample2D(int64_t channels, int64_t out_channels = 0, int64_t padding = 1);
  // x [N, C, H, W] -> [N, Cout, H', W']; padding 1: H' = (H - 1) / 2 + 1; padding 0: H' = H / 2 (H >= 2).
  Tensor forward(const Tensor& x) const;
  std::shared_ptr<Conv2d> conv;
  int64_t padding;
};

// Nearest-neighbour 2x upsampling followed by a 3x3 convolution (padding 1).
class Upsample2D : public Module {
 public:
  explicit Upsample2D(int64_t channels, int64_t out_channels = 0);
  // x [N, C, H, W] -> [N, Cout, 2H, 2W]. With `size` = {h, w} (the skip connection's size when
  // the UNet's input is not a multiple of its total downsampling) the 2x result is cut to
  // h x w before the conv: for h in {2H - 1, 2H} that equals PyTorch's nearest interpolation
  // straight to size h (source row floor(i * H / h) == floor(i / 2)). Other sizes are an error.
  Tensor forward(const Tensor& x, std::array<int64_t, 2> size = {0, 0}) const;
  std::shared_ptr<Conv2d> conv;
};

// diffusers' TimestepEmbedding (act_fn silu, no post activation):
//   out = linear_2(silu(linear_1(sample + cond_proj(condition))))
// cond_proj (no bias) exists when cond_proj_dim > 0 (LCM's guidance-scale embedding).
class TimestepEmbedding : public Module {
 public:
  TimestepEmbedding(int64_t in_channels, int64_t time_embed_dim, int64_t cond_proj_dim = 0);
  // sample [N, in_channels], condition [N, cond_proj_dim] or undefined -> [N, time_embed_dim]
  Tensor forward(const Tensor& sample, const Tensor& condition = Tensor()) const;
  std::shared_ptr<Linear> linear_1, linear_2, cond_proj;
};

// Every Linear and Conv2d below `root`, by full dotted name ("down_blocks.0.attentions.0.proj_in"):
// the names that LoRA files use to address the layers their adapters attach to.
struct AdapterTarget {
  std::string name;
  Linear* linear = nullptr;  // exactly one of linear / conv is set
  Conv2d* conv = nullptr;
};
std::vector<AdapterTarget> adapter_targets(Module& root, const std::string& prefix = "");

}  // namespace sd::nn
