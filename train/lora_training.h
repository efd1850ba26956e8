// Trainable LoRA / LoCon adapters for `sd_train --method lora`: fresh adapters attached to the
// Linear / Conv2d layers of a UNet or CLIP text encoder, exposed as trainable tensors, and saved in
// the two layouts people load (FORMATS.md §4): diffusers/PEFT (`pytorch_lora_weights.safetensors`,
// what `pipe.load_lora_weights()` reads) and kohya-ss (`lora_unet_...`, what A1111 / ComfyUI read).
//
// Each adapted layer computes   y = W x + s * B(A(x))   (nn::Linear/Conv2d::loras, differentiable):
//   Linear  A [r, in]          B [out, r]
//   Conv2d  A [r, in, k, k]    B [out, r, 1, 1]   (A has the layer's stride and padding: LoCon)
//   s = alpha / r, or alpha / sqrt(r) with rsLoRA; alpha = 0 in the config means alpha = r (s = 1,
//   what diffusers' training scripts use).
// Initialisation as PEFT's default (init_lora_weights=True): A ~ kaiming_uniform_(a = sqrt(5)), i.e.
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in * k * k, B = 0, so the model's output is
// unchanged until B moves. A is drawn from the Philox stream `seed`, at block offset
// (component number << 56) + (index of the adapted layer << 32): the same seed gives the same values
// on every device, and the layers (and the components unet / text_encoder / text_encoder_2) draw
// from disjoint parts of the stream.
//
// Layer matching follows PEFT's target_modules lists: a target matches a Linear/Conv2d whose dotted
// module path equals it or ends with "." + target ("to_q", "to_out.0", "ff.net.2",
// "downsamplers.0.conv"). Only Linear and Conv2d layers are adapted.
//
// Names in the files (each file holds every component of one model):
//   diffusers  <component>.<module path>.lora_A.weight / .lora_B.weight   (component: unet,
//              text_encoder, text_encoder_2; the keys save_lora_weights writes for PEFT state dicts,
//              which load_lora_weights reads as they are).
//              Text-encoder paths keep transformers' "text_model." prefix
//              (text_encoder.text_model.encoder.layers.0.self_attn.q_proj...): diffusers 0.42 strips
//              it for the flattened CLIPTextModel of transformers >= 5.6, and older stacks need it.
//              When any component's scale is not 1 (alpha != r, or rsLoRA), the header gets
//              "lora_adapter_metadata": the LoraConfig of every component ("unet.r",
//              "unet.lora_alpha", "unet.use_rslora", "unet.target_modules" = the adapted module
//              paths, text encoders without "text_model."), JSON as diffusers writes it
//              (indent 2, sorted keys); diffusers and nn::load_lora take the scale from it.
//   kohya      lora_unet_<path with '_'> (SD1/SD2: the diffusers module path; SDXL: the original sgm
//              path, as kohya's SDXL trainer names it: input_blocks_4_1_transformer_blocks_0_attn1_to_q),
//              lora_te_ (SD1/SD2) or lora_te1_ / lora_te2_ (SDXL) + the transformers path with '_',
//              each with .lora_down.weight, .lora_up.weight and .alpha (a 0-d f32 tensor holding
//              s * r, so rsLoRA is folded into alpha: kohya has no rsLoRA flag). Metadata:
//              ss_network_module "networks.lora", ss_network_dim, ss_network_alpha,
//              ss_network_args {"conv_dim", "conv_alpha"} when convolutions are adapted (LoCon),
//              ss_base_model_version (sd_v1, sd_v2 when the UNet's cross attention is 1024 wide,
//              sdxl_base_v1-0 with sdxl), ss_v2.
// Both files also carry {"format": "pt"}; the caller's extra_metadata is added and replaces the
// defaults above (giving lora_adapter_metadata is an error: it comes from the configs). Tensors are
// written in `save_dtype` (f32, f16 or bf16), atomically (runtime/safetensors.h).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "models/nn/layers.h"
#include "runtime/tensor.h"

namespace sd::train {

// One trainable tensor, named as it is saved in the diffusers/PEFT file, e.g.
// "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight".
struct TrainableParam {
  std::string name;
  Tensor tensor;
};

struct LoraTrainConfig {
  int64_t rank = 4;
  double alpha = 0;         // 0 = rank (scale 1)
  bool use_rslora = false;  // scale alpha / sqrt(rank)
  // Module-name suffixes, matched on whole dotted components like PEFT's target_modules: e.g.
  // {"to_q", "to_k", "to_v", "to_out.0"} for the UNet, {"q_proj", "k_proj", "v_proj", "out_proj"}
  // for the text encoders (diffusers' defaults). Every target must match at least one layer.
  std::vector<std::string> targets;
};

// Expands the user's --lora_target words (each may also be a comma-separated list):
//   attn -> to_q, to_k, to_v, to_out.0        ff   -> ff.net.0.proj, ff.net.2
//   proj -> proj_in, proj_out                 conv -> conv1, conv2, downsamplers.0.conv,
//                                                     upsamplers.0.conv (LoCon: the 3x3 convs)
// anything else is kept as a literal suffix (a word that matches no layer fails at attach time).
// Duplicates are dropped, the order kept; no words at all means "attn".
std::vector<std::string> unet_lora_targets(const std::vector<std::string>& user_words);

// diffusers' text-encoder targets: q_proj, k_proj, v_proj, out_proj.
std::vector<std::string> text_encoder_lora_targets();

class TrainableLora {
 public:
  struct Layer {
    std::string path;        // module path in the model: "down_blocks.0.attentions.0.proj_in"
    std::string kohya_path;  // UNet: the original sgm path where the layer has one, else == path
    nn::Linear* linear = nullptr;  // exactly one of linear / conv
    nn::Conv2d* conv = nullptr;
    Tensor down, up;         // A, B (the tensors in the layer's `loras` list)
  };

  TrainableLora() = default;
  TrainableLora(const TrainableLora&) = delete;
  TrainableLora& operator=(const TrainableLora&) = delete;
  TrainableLora(TrainableLora&& o) noexcept { *this = std::move(o); }
  TrainableLora& operator=(TrainableLora&& o) noexcept;

  // Attaches one adapter per matching Linear/Conv2d of `model` (component "unet", "text_encoder"
  // or "text_encoder_2"): A, B of `dtype` on `device`, both requires_grad, initialised as above.
  // The model's own parameters are left as they are (freeze them with set_requires_grad(false)).
  // Errors (before anything is attached): unknown component, rank < 1, alpha < 0, no targets, a
  // target that matches no layer. The model must outlive this object.
  static TrainableLora attach(nn::Module& model, const std::string& component, const LoraTrainConfig& cfg,
                              uint64_t seed, DType dtype, Device device);

  std::vector<TrainableParam> params() const;  // A then B per layer, in model order
  int64_t num_layers() const { return int64_t(layers_.size()); }
  int64_t num_parameters() const;              // elements of all A and B
  const std::vector<Layer>& layers() const { return layers_; }
  const std::string& component() const { return component_; }
  const LoraTrainConfig& config() const { return config_; }
  double alpha() const;  // config alpha, or rank when it is 0
  double scale() const;  // alpha / rank, or alpha / sqrt(rank) with rsLoRA
  bool attached() const { return attached_; }
  // A UNet with 1024-wide cross attention (SD2.x), for kohya's ss_base_model_version.
  bool sd2_unet() const { return sd2_unet_; }
  // Takes the adapters out of the layers again (the tensors stay valid here). Twice does nothing.
  void remove();

 private:
  std::string component_;
  LoraTrainConfig config_;
  std::vector<Layer> layers_;
  bool attached_ = false;
  bool sd2_unet_ = false;
};

// Values to save instead of the adapters' own tensors, by their diffusers/PEFT name (params() names):
// the trainer's f32 masters, which a mixed-precision model holds only as 16-bit copies.
using LoraValues = std::map<std::string, Tensor>;

// `loras`: the adapters of each component of one model (at most one per component).
void save_lora_diffusers(const std::string& path, const std::vector<const TrainableLora*>& loras,
                         DType save_dtype = DType::F32, const std::map<std::string, std::string>& extra_metadata = {},
                         const LoraValues* values = nullptr);
// sdxl: SDXL names (sgm UNet paths, lora_te1 / lora_te2) and ss_base_model_version; a text_encoder_2
// component without it is an error.
void save_lora_kohya(const std::string& path, const std::vector<const TrainableLora*>& loras, bool sdxl,
                     DType save_dtype = DType::F32, const std::map<std::string, std::string>& extra_metadata = {},
                     const LoraValues* values = nullptr);

}  // namespace sd::train
