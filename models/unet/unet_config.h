// UNet2DConditionModel configuration, read from a diffusers unet/config.json exactly as
// diffusers' UNet2DConditionModel.__init__ interprets it (models/unets/unet_2d_condition.py).
//
// Per-block settings are stored expanded: an int in the file means "the same for every block"
// (and, for transformer_layers_per_block, "for every layer of the block").
//
// Interpretation traps replicated from diffusers:
// * attention_head_dim holds attention HEAD COUNTS (num_attention_heads = num_attention_heads
//   or attention_head_dim; diffusers rejects num_attention_heads itself): SD1's 8 means 8 heads
//   of 40/80/160 channels, SD2's [5, 10, 20, 20] means heads of 64 channels. dim_head =
//   channels / heads (integer division).
// * Up block i uses the reversed per-block lists (heads, cross_attention_dim, layers_per_block
//   + 1 resnets, transformer layers) unless reverse_transformer_layers_per_block is given
//   (SSD-1B's asymmetric UNet), which then lists the up blocks' layers directly.
// * The mid block uses the last down block's heads/cross_attention_dim/transformer layers.
//
// Keys with a value this implementation does not support are an sd::Error naming the key.
// Keys that diffusers reads but that have no effect on the block types supported here
// (resnet_skip_time_act, resnet_out_scale_factor, cross_attention_norm,
// mid_block_only_cross_attention, addition_embed_type_num_heads), the metadata keys
// (_class_name, _diffusers_version, _name_or_path, _use_default_values) and keys diffusers
// does not know (it warns and ignores them) are accepted and listed in `ignored_keys`.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace sd::nn {

struct UNetConfig {
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  std::array<int64_t, 2> sample_size = {64, 64};  // latent size the model was trained at (informational)
  bool center_input_sample = false;               // sample -> 2 * sample - 1 first
  bool flip_sin_to_cos = true;                    // timestep sinusoid as [cos | sin]
  double freq_shift = 0.0;                        // downscale_freq_shift of the sinusoid

  std::vector<std::string> down_block_types;      // "CrossAttnDownBlock2D" | "DownBlock2D"
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";  // or "UNetMidBlock2D", or "" (none)
  std::vector<std::string> up_block_types;        // "CrossAttnUpBlock2D" | "UpBlock2D"
  std::vector<int64_t> block_out_channels;
  std::vector<int64_t> layers_per_block;          // per down block
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1.0;            // the mid block's resnet output_scale_factor
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  std::vector<int64_t> cross_attention_dim;       // per down block
  std::vector<int64_t> attention_heads;           // per down block (from attention_head_dim, see above)
  std::vector<std::vector<int64_t>> transformer_layers_per_block;          // [down block][layer]
  std::vector<std::vector<int64_t>> reverse_transformer_layers_per_block;  // [up block][layer]
  bool use_linear_projection = false;
  bool upcast_attention = false;                  // recorded; attention accumulates in f32 anyway

  int64_t time_embedding_dim = 0;                 // 0: 4 * block_out_channels[0]
  int64_t time_cond_proj_dim = 0;                 // LCM: timestep_cond width (0: none)
  std::string addition_embed_type;                // "" or "text_time" (SDXL)
  int64_t addition_time_embed_dim = 0;            // text_time: sinusoid width per time id
  int64_t projection_class_embeddings_input_dim = 0;  // text_time: add_embedding.linear_1 input width
  int64_t conv_in_kernel = 3;
  int64_t conv_out_kernel = 3;

  std::vector<std::string> ignored_keys;          // read from the file but without effect here

  // Parse diffusers' config.json text / file. Errors name the file and the key.
  static UNetConfig from_json_string(const std::string& json, const std::string& source = "config");
  static UNetConfig from_file(const std::string& path);

  // The hub configs (unet/config.json) of the released models.
  static UNetConfig sd15();          // runwayml/stable-diffusion-v1-5
  static UNetConfig sd21();          // stabilityai/stable-diffusion-2-1 (768, v-prediction)
  static UNetConfig sd21_base();     // stabilityai/stable-diffusion-2-1-base
  static UNetConfig sdxl_base();     // stabilityai/stable-diffusion-xl-base-1.0 (also SDXL-Turbo)
  static UNetConfig sdxl_refiner();  // stabilityai/stable-diffusion-xl-refiner-1.0
  static UNetConfig ssd1b();         // segmind/SSD-1B
  static UNetConfig lcm_sdxl();      // latent-consistency/lcm-sdxl: SDXL base + time_cond_proj_dim 256

  int64_t time_embed_dim() const { return time_embedding_dim > 0 ? time_embedding_dim : 4 * block_out_channels.at(0); }
  int64_t num_up_layers(size_t up_block) const {  // resnets of up block i
    return layers_per_block.at(layers_per_block.size() - 1 - up_block) + 1;
  }
  // Consistency checks (list lengths, divisibility); from_json_string calls it.
  void validate() const;
};

}  // namespace sd::nn
