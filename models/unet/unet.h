// diffusers' UNet2DConditionModel, built from its config.json, with the checkpoint's parameter
// names (conv_in, time_embedding, add_embedding, down_blocks, up_blocks, mid_block,
// conv_norm_out, conv_out). Covers SD1.x, SD2.x, SDXL base/refiner/Turbo, SSD-1B and
// LCM-distilled UNets (timestep_cond).
//
// forward:
//   t_emb = sinusoid(timestep, C0)                               [N, C0]
//   emb   = time_embedding(t_emb, timestep_cond)                 [N, 4 C0]
//   SDXL:   emb += add_embedding([text_embeds | sinusoid(time_ids).flatten])
//   h = conv_in(sample); down blocks (pushing skips); mid block; up blocks (popping skips)
//   out = conv_out(silu(conv_norm_out(h)))
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "models/nn/blocks.h"
#include "models/unet/unet_blocks.h"
#include "models/unet/unet_config.h"

namespace sd::nn {

// SDXL's extra conditioning (added_cond_kwargs).
struct UNetAddedCond {
  Tensor text_embeds;  // [N, pooled width] (SDXL: 1280, the pooled OpenCLIP-bigG output)
  Tensor time_ids;     // [N, k] micro-conditioning numbers (SDXL base: 6, refiner: 5)
};

class UNet2DConditionModel : public Module {
 public:
  explicit UNet2DConditionModel(const UNetConfig& config);

  // A diffusers unet/ folder: config.json plus diffusion_pytorch_model[.variant].safetensors,
  // or its shard index diffusion_pytorch_model.safetensors.index[.variant].json. Weights are
  // converted to `dtype` on `device` while loading; every parameter must be present and every
  // tensor of the file used.
  static std::shared_ptr<UNet2DConditionModel> from_pretrained(const std::string& dir, DType dtype = DType::F32,
                                                               Device device = Device::cpu(),
                                                               const std::string& variant = "");

  // sample [N, in_channels, H, W]; timestep [N], [1] or a 0-d tensor (any numeric dtype, may be
  // fractional); encoder_hidden_states [N, L, cross_attention_dim]; added: SDXL's text_embeds
  // and time_ids (required iff addition_embed_type is "text_time"); timestep_cond
  // [N, time_cond_proj_dim] (optional, LCM). Returns the prediction [N, out_channels, H, W]
  // in the parameters' dtype. H and W need not be multiples of 2^(levels - 1).
  Tensor forward(const Tensor& sample, const Tensor& timestep, const Tensor& encoder_hidden_states,
                 const UNetAddedCond& added = {}, const Tensor& timestep_cond = Tensor()) const;
  Tensor forward(const Tensor& sample, double timestep, const Tensor& encoder_hidden_states,
                 const UNetAddedCond& added = {}, const Tensor& timestep_cond = Tensor()) const;

  // Every Linear / Conv2d by full dotted name, for attaching LoRA adapters by name.
  std::vector<AdapterTarget> adapter_targets() { return nn::adapter_targets(*this); }

  // Recompute each resnet and transformer block's activations in backward (saves memory when
  // training; same gradients). Applies only while autograd records.
  bool gradient_checkpointing = false;

  // Run channels-last (NHWC activations and 3x3 weights, runtime/image_layout.h): forward converts
  // the sample once, every layer keeps the layout, and the prediction comes back contiguous. The
  // same numbers as NCHW on the CPU (tested); on the GPU it is the layout cuDNN's NHWC kernels and
  // the channels-last GroupNorm take. Call after the weights are loaded and placed (Module::to and
  // load give contiguous weights again, which stays correct but converts them on every call).
  void set_channels_last(bool on);
  bool channels_last() const { return channels_last_; }

  const UNetConfig& config() const { return config_; }

  std::shared_ptr<Conv2d> conv_in, conv_out;
  std::shared_ptr<TimestepEmbedding> time_embedding;
  std::shared_ptr<TimestepEmbedding> add_embedding;  // text_time only
  std::vector<std::shared_ptr<UNetDownBlock>> down_blocks;
  std::shared_ptr<UNetMidBlock> mid_block;           // null when mid_block_type is null
  std::vector<std::shared_ptr<UNetUpBlock>> up_blocks;
  std::shared_ptr<GroupNorm> conv_norm_out;

 private:
  Tensor time_embed(const Tensor& timestep, int64_t batch, const UNetAddedCond& added, const Tensor& timestep_cond,
                    DType dtype, Device device) const;
  UNetConfig config_;
  bool channels_last_ = false;
};

// diffusers' weight file for a model folder: <dir>/<base>[.variant].safetensors, else the shard
// index <dir>/<base>.safetensors.index[.variant].json; an error listing what was looked for.
// base is "diffusion_pytorch_model" for UNets and VAEs.
std::string find_diffusers_weights(const std::string& dir, const std::string& variant,
                                   const std::string& base = "diffusion_pytorch_model");

}  // namespace sd::nn
