// AutoencoderKL configuration, read from a diffusers vae/config.json exactly as diffusers'
// AutoencoderKL.__init__ interprets it (models/autoencoders/autoencoder_kl.py, vae.py).
//
// Absent keys take diffusers' defaults, which are NOT the Stable Diffusion values (one block of
// 64 channels, layers_per_block 1): real files list every structural key. Keys with a value this
// implementation does not support (another block type or activation) are an sd::Error naming
// the key. Metadata keys (_class_name, _diffusers_version, _name_or_path, _use_default_values)
// and keys diffusers does not know (it warns and ignores them) are listed in `ignored_keys`.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sd::nn {

struct VaeConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> down_block_types = {"DownEncoderBlock2D"};  // the only supported type
  std::vector<std::string> up_block_types = {"UpDecoderBlock2D"};      // the only supported type
  std::vector<int64_t> block_out_channels = {64};
  int64_t layers_per_block = 1;   // encoder resnets per block; the decoder has one more
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  // Image size the VAE was trained at; diffusers' default tile size (tile_sample_min_size), and
  // tile_latent_min_size = sample_size / 2^(levels - 1). A [h, w] list keeps h, as diffusers does
  // for the latent tile.
  int64_t sample_size = 32;
  // Latent scaling used by the pipelines, not by the model: z = sample * scaling_factor for the
  // UNet, decode(z / scaling_factor). SD1/SD2 0.18215, SDXL 0.13025.
  double scaling_factor = 0.18215;
  std::optional<double> shift_factor;     // null for SD/SDXL (SD3/Flux: z = (x - shift) * scale)
  std::vector<double> latents_mean;       // empty (null) for SD/SDXL; the pipelines apply them
  std::vector<double> latents_std;
  // In fp16 the SDXL VAE overflows: with force_upcast an f16 model computes in f32. diffusers'
  // default is true; only the SDXL pipelines read it, SD1/SD2 files omit it.
  bool force_upcast = true;
  bool use_quant_conv = true;       // quant_conv [2L, 2L, 1, 1] after the encoder
  bool use_post_quant_conv = true;  // post_quant_conv [L, L, 1, 1] before the decoder
  bool mid_block_add_attention = true;

  std::vector<std::string> ignored_keys;  // read from the file but without effect here

  // Parse diffusers' config.json text / file. Errors name the file and the key.
  static VaeConfig from_json_string(const std::string& json, const std::string& source = "config");
  static VaeConfig from_file(const std::string& path);

  // The hub configs (vae/config.json) of the released VAEs.
  static VaeConfig sd();    // stabilityai/sd-vae-ft-mse (the SD1.x/SD2.x VAE; sample_size 256)
  static VaeConfig sd15();  // runwayml/stable-diffusion-v1-5 vae/ (same weights layout, sample_size 512)
  static VaeConfig sdxl();  // the SDXL VAE (stabilityai/sdxl-vae, SDXL base/Turbo vae/), force_upcast

  size_t levels() const { return block_out_channels.size(); }
  int64_t downscale() const { return int64_t(1) << (levels() - 1); }  // image pixels per latent pixel
  // Consistency checks (list lengths, divisibility); from_json_string calls it.
  void validate() const;
};

}  // namespace sd::nn
