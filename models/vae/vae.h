// diffusers' AutoencoderKL (the SD/SDXL VAE), built from its config.json, with the checkpoint's
// parameter names (models/autoencoders/autoencoder_kl.py, vae.py):
//
//   encoder.conv_in, encoder.down_blocks.{i} (DownEncoderBlock2D), encoder.mid_block,
//   encoder.conv_norm_out, encoder.conv_out                    image -> 2L moment channels
//   decoder.conv_in, decoder.mid_block, decoder.up_blocks.{i} (UpDecoderBlock2D),
//   decoder.conv_norm_out, decoder.conv_out                    latent -> image
//   quant_conv (2L -> 2L, 1x1), post_quant_conv (L -> L, 1x1)  (both optional)
//
//   encode: moments = quant_conv(encoder(x)); mean, logvar = the two halves along channels;
//           logvar clamped to [-30, 20] (diffusers' DiagonalGaussianDistribution)
//   decode: decoder(post_quant_conv(z)), z the UNSCALED latent (callers divide by scaling_factor)
//
// Images are [N, in_channels, H, W] in [-1, 1]; latents [N, L, H / s, W / s] with s = 2^(levels - 1)
// (8 for SD/SDXL). Every GroupNorm has eps 1e-6; the mid blocks are UNetMidBlock2D with one
// single-head attention (unless mid_block_add_attention is false).
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/nn/blocks.h"
#include "models/formats/tensor_source.h"
#include "models/unet/unet_blocks.h"
#include "models/vae/vae_config.h"
#include "runtime/rng.h"

namespace sd::nn {

// resnets.{j} (layers_per_block, no time embedding), then downsamplers.0 (Downsample2D with
// padding 0: pad right/bottom, stride-2 conv) except in the last block.
class DownEncoderBlock2D : public Module {
 public:
  DownEncoderBlock2D(int64_t in_channels, int64_t out_channels, int64_t num_layers, int64_t groups, bool add_downsample);
  Tensor forward(const Tensor& x) const;  // [N, Cin, H, W] -> [N, Cout, H/2, W/2] (floor; H with downsampler)
  std::vector<std::shared_ptr<ResnetBlock2D>> resnets;
  std::shared_ptr<Downsample2D> downsampler;  // null in the last block
};

// resnets.{j} (layers_per_block + 1; the first maps the previous block's width), then
// upsamplers.0 (nearest 2x + conv) except in the last block.
class UpDecoderBlock2D : public Module {
 public:
  UpDecoderBlock2D(int64_t prev_channels, int64_t out_channels, int64_t num_layers, int64_t groups, bool add_upsample);
  Tensor forward(const Tensor& x) const;  // [N, Cprev, H, W] -> [N, Cout, 2H, 2W] (H, W in the last block)
  std::vector<std::shared_ptr<ResnetBlock2D>> resnets;
  std::shared_ptr<Upsample2D> upsampler;  // null in the last block
};

class VaeEncoder : public Module {
 public:
  explicit VaeEncoder(const VaeConfig& c);
  Tensor forward(const Tensor& x) const;  // [N, in_channels, H, W] -> [N, 2L, h, w] (before quant_conv)
  bool channels_last = false;             // run channels-last inside (AutoencoderKL::set_channels_last)
  std::shared_ptr<Conv2d> conv_in, conv_out;
  std::vector<std::shared_ptr<DownEncoderBlock2D>> down_blocks;
  std::shared_ptr<UNetMidBlock2D> mid_block;
  std::shared_ptr<GroupNorm> conv_norm_out;  // followed by SiLU (fused)
};

class VaeDecoder : public Module {
 public:
  explicit VaeDecoder(const VaeConfig& c);
  Tensor forward(const Tensor& z) const;  // [N, L, h, w] (after post_quant_conv) -> [N, out_channels, s h, s w]
  bool channels_last = false;             // run channels-last inside (AutoencoderKL::set_channels_last)
  std::shared_ptr<Conv2d> conv_in, conv_out;
  std::shared_ptr<UNetMidBlock2D> mid_block;
  std::vector<std::shared_ptr<UpDecoderBlock2D>> up_blocks;
  std::shared_ptr<GroupNorm> conv_norm_out;  // followed by SiLU (fused)
};

// The encoder's posterior, a diagonal Gaussian per latent element.
struct DiagonalGaussian {
  Tensor mean;    // [N, L, h, w]
  Tensor logvar;  // [N, L, h, w], clamped to [-30, 20]
  Tensor std() const;                   // exp(0.5 logvar)
  Tensor sample(Generator& gen) const;  // mean + std * randn (the project's Philox stream)
  const Tensor& mode() const { return mean; }
};

// Tile sizes of the tiled encode/decode, as diffusers' tile_sample_min_size,
// tile_latent_min_size and tile_overlap_factor. 0 picks diffusers' defaults: tile_sample =
// config.sample_size, tile_latent = tile_sample / downscale. tile_latent * overlap_factor must be
// a whole number (else diffusers' tiles do not add up to the image size).
struct VaeTiling {
  int64_t tile_sample = 0;
  int64_t tile_latent = 0;
  double overlap_factor = 0.25;
};

class AutoencoderKL : public Module {
 public:
  explicit AutoencoderKL(const VaeConfig& config);

  // A diffusers vae/ folder: config.json plus diffusion_pytorch_model[.variant].safetensors (or
  // its shard index). Legacy attention names (query/key/value/proj_attn) are accepted. `dtype` is
  // the dtype callers work in; with dtype F16 and upcast (default: config.force_upcast) the
  // parameters are kept, and everything computed, in F32 (see dtype()).
  static std::shared_ptr<AutoencoderKL> from_pretrained(const std::string& dir, DType dtype = DType::F32,
                                                        Device device = Device::cpu(),
                                                        const std::string& variant = "",
                                                        std::optional<bool> upcast = std::nullopt);

  // x [N, in_channels, H, W] (any float dtype; cast to the compute dtype) -> mean/logvar
  // [N, L, H/s, W/s] in dtype(). Differentiable (w.r.t. x and the parameters).
  DiagonalGaussian encode(const Tensor& x) const;
  // z [N, L, h, w], unscaled -> [N, out_channels, s h, s w] in dtype(). Differentiable.
  Tensor decode(const Tensor& z) const;

  // diffusers' decode/encode with enable_tiling(): inputs larger than one tile are cut into
  // overlapping tiles (tile_latent / tile_sample wide, starting every tile * (1 - overlap)),
  // each decoded (encoded) alone, and the overlaps blended linearly (blend_v from the tile above,
  // then blend_h from the tile to the left). Results match diffusers' tiled_decode /
  // _tiled_encode. Inputs within one tile go through decode / encode.
  // Memory: one tile's activations at a time (diffusers keeps every decoded tile); beyond that
  // only the output and one blend strip per tile column are held. No gradient (runs under NoGrad).
  Tensor decode_tiled(const Tensor& z, const VaeTiling& tiling = {}) const;
  DiagonalGaussian encode_tiled(const Tensor& x, const VaeTiling& tiling = {}) const;

  // mean + exp(0.5 logvar) * noise, noise ~ N(0, 1) from `gen` in mean's dtype/device.
  static Tensor sample(const Tensor& mean, const Tensor& logvar, Generator& gen);

  // ---- precision ----
  // The dtype callers work in: outputs come back in it. Set by from_pretrained/place; otherwise
  // the parameters' dtype.
  DType dtype() const;
  // The parameters' dtype, which every computation uses: F32 when dtype() is F16 and upcast is on.
  DType compute_dtype() const;
  bool upcast() const { return upcast_; }
  // Turn the f16 upcast on or off (off for fp16-safe VAEs such as madebyollin/sdxl-vae-fp16-fix);
  // converts the parameters when dtype() is F16.
  void set_upcast(bool on);
  // Move/convert the parameters for callers working in `dtype` (honouring upcast).
  void place(DType dtype, Device device);
  // Run the encoder and decoder channels-last (see UNet2DConditionModel::set_channels_last):
  // inputs converted once, outputs contiguous, 3x3 weights stored channels-last (kept so by
  // set_upcast; call after place).
  void set_channels_last(bool on);
  bool channels_last() const { return decoder->channels_last; }

  int64_t downscale() const { return config_.downscale(); }
  const VaeConfig& config() const { return config_; }

  std::shared_ptr<VaeEncoder> encoder;
  std::shared_ptr<VaeDecoder> decoder;
  std::shared_ptr<Conv2d> quant_conv;       // null without use_quant_conv
  std::shared_ptr<Conv2d> post_quant_conv;  // null without use_post_quant_conv

 private:
  Tensor moments(const Tensor& x) const;  // quant_conv(encoder(x)) in the compute dtype
  Tensor decode_raw(const Tensor& z) const;  // decoder(post_quant_conv(z)) in the compute dtype
  DiagonalGaussian posterior(const Tensor& moments) const;
  DType param_dtype_for(DType dtype) const { return dtype == DType::F16 && upcast_ ? DType::F32 : dtype; }

  VaeConfig config_;
  bool upcast_;
  std::optional<DType> io_dtype_;
};

// Serves a source's legacy mid-block attention keys under the current names, as diffusers'
// _fix_state_dict_keys_on_load does: "<...>mid_block.attentions.<i>.query|key|value|proj_attn.*"
// appear as "...to_q|to_k|to_v|to_out.0.*" (same shapes). Other keys pass through; a legacy key
// whose current name also exists is left as is (and reported unexpected when loading).
class LegacyAttentionNames final : public TensorSource {
 public:
  explicit LegacyAttentionNames(std::shared_ptr<const TensorSource> inner);
  bool contains(const std::string& key) const override;
  Shape shape(const std::string& key) const override;
  Tensor get(const std::string& key, DType dtype, Device device) const override;
  std::vector<std::string> keys() const override;
  std::string describe() const override { return inner_->describe(); }
  size_t renamed() const { return to_legacy_.size(); }  // how many keys were served under new names

 private:
  const std::string& inner_key(const std::string& key) const;
  std::shared_ptr<const TensorSource> inner_;
  std::map<std::string, std::string> to_legacy_;  // current name -> the inner (legacy) key
};

}  // namespace sd::nn
