// A Stable Diffusion pipeline's components, loaded from a diffusers pipeline folder
// (model_index.json + unet/, vae/, text_encoder(_2)/, tokenizer(_2)/, scheduler/; FORMATS.md §2.1)
// or from a single-file checkpoint (.safetensors / .ckpt of A1111, ComfyUI, kohya: family
// detected from the keys, configs from the family presets of models/formats/diffusers_configs.h, the
// tokenizers from the CLIP vocabulary the project ships in models/clip/vocab).
//
// Families and what runs them (infer/generate.h):
//   SD1.x, SD2.x                StableDiffusionPipeline: one CLIP text encoder
//   SDXL base, SSD-1B, Turbo    StableDiffusionXLPipeline: two encoders, pooled embeddings,
//                               micro-conditioning time ids
//   SDXL refiner                StableDiffusionXLImg2ImgPipeline: text_encoder_2 only, aesthetic
//                               score time ids
//   LCM                         any of the above whose UNet has time_cond_proj_dim (guidance
//                               embedding instead of CFG) or whose scheduler is LCMScheduler
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "infer/scheduler_config.h"
#include "models/formats/checkpoint_keys.h"
#include "models/clip/clip_text.h"
#include "models/clip/clip_tokenizer.h"
#include "models/unet/unet.h"
#include "models/vae/vae.h"

namespace sd::infer {

struct PipelineOptions {
  // Weights files <name>.<variant>.safetensors (e.g. "fp16"); a component without them falls back
  // to the plain files, as diffusers does.
  std::string variant;
  DType dtype = DType::F32;          // UNet and text encoders; the VAE as `vae_upcast` says
  Device device = Device::cpu();
  // Single files: the family when detection is not wanted or fails (folders: their configs decide).
  nn::ModelFamily family = nn::ModelFamily::Unknown;
  // Replaces the scheduler config's prediction_type (e.g. an SD2 768-v single file: v_prediction).
  nn::Prediction prediction = nn::Prediction::Unknown;
  // VAE in float32 when dtype is fp16. Default: the VAE config's force_upcast for the SDXL family
  // (as diffusers' SDXL pipelines), off for SD1/SD2 (whose VAE is fp16-safe and whose pipelines
  // never upcast).
  std::optional<bool> vae_upcast;
  // Single files: the folder with vocab.json and merges.txt. Empty: clip_data_dir().
  std::string tokenizer_dir;
  bool use_ema = false;  // single files: the UNet's EMA copy (training checkpoints)
  // Single files: a diffusers folder of the same model whose <component>/config.json files (unet, vae,
  // text_encoder, text_encoder_2), scheduler/ and tokenizer(_2)/ replace the family preset, as diffusers'
  // from_single_file(config=DIR): for fine-tunes whose settings differ from the family's (GroupNorm
  // groups, head counts), which the weights do not record. Components it lacks use the preset.
  std::string model_config;
  // Run the UNet and the VAE channels-last (NHWC: UNet2DConditionModel::set_channels_last), the
  // layout of cuDNN's fastest convolutions. Same images; off by default until measured on a GPU.
  bool channels_last = false;
};

// Good-image defaults of a pipeline when the user gives none (diffusers' call defaults, and the
// model cards' for Turbo and LCM).
struct PipelineDefaults {
  int64_t width = 512, height = 512;
  int64_t steps = 50;
  double guidance_scale = 7.5;
};

class Pipeline {
 public:
  // A diffusers folder or a single file; sd::Error saying what is wrong otherwise (path missing,
  // a folder without model_index.json, a file no rule recognises, ...).
  static std::shared_ptr<Pipeline> load(const std::string& model, const PipelineOptions& options = {});

  std::string model_path;
  bool single_file = false;
  std::string pipeline_class;  // model_index.json's _class_name (single files: the diffusers class it maps to)
  nn::ModelFamily family = nn::ModelFamily::Unknown;
  bool turbo = false;          // SDXL-Turbo-like: SDXL with trailing timestep spacing at 512 px

  std::shared_ptr<nn::ClipTextModel> text_encoder;    // null for the SDXL refiner
  std::shared_ptr<nn::ClipTextModel> text_encoder_2;  // SDXL family only
  std::optional<ClipTokenizer> tokenizer, tokenizer_2;
  std::shared_ptr<nn::UNet2DConditionModel> unet;
  std::shared_ptr<nn::AutoencoderKL> vae;
  SchedulerConfig scheduler_config;
  bool force_zeros_for_empty_prompt = false;  // SDXL base: no negative prompt -> zero negative conditioning
  bool requires_aesthetics_score = false;     // SDXL refiner: 5 time ids ending in the aesthetic score
  DType dtype = DType::F32;
  Device device = Device::cpu();
  // The weight files read, in a fixed order (unet, text encoders, vae; shards in index order): the
  // model hash covers them.
  std::vector<std::string> weight_files;
  // Single files: each setting the weights do not record that came from the family preset, one line per
  // component ("unet (sd1 preset): norm_num_groups 32, attention_head_dim 8, ..."), for the user to
  // check against the model's card; empty for folders and for components given by model_config.
  std::vector<std::string> assumed_settings;

  // Uses SDXL's conditioning (two encoders or the refiner's one, pooled embeddings, time ids).
  bool is_sdxl() const { return text_encoder_2 != nullptr; }
  // LCM-distilled UNet: guidance as an embedding (time_cond_proj_dim), never CFG.
  bool has_guidance_embedding() const { return unet->config().time_cond_proj_dim > 0; }
  bool is_lcm() const { return has_guidance_embedding() || scheduler_config.class_name == "LCMScheduler"; }
  int64_t vae_scale_factor() const { return vae->downscale(); }
  PipelineDefaults defaults() const;
  // "sd1", "sd2", "sdxl", "sdxl_refiner", "ssd1b", with "+turbo" / "+lcm" where it applies.
  std::string describe_family() const;
  // A1111's "Model hash": the first 10 hex digits of the SHA-256 of the weights (a single file:
  // the file, as A1111; a folder: its weight files one after another). Reads every weight byte the
  // first time; remembered between runs while the files are unchanged (infer/hash_cache.h).
  std::string model_hash() const;
  // The model's name for image parameters: the file name without extension, or the folder's name.
  std::string model_name() const;

 private:
  mutable std::string hash_;
};

// Where the CLIP vocabulary for single files lives: $SD_DATA_DIR/clip when that environment
// variable is set, else the compile-time SD_CLIP_VOCAB_DIR (the source tree's models/clip/vocab).
std::string clip_data_dir();

// The model sd_infer uses when no --model is given: the small shapes model the project trained
// itself (infer/default_model, see its README). $SD_DATA_DIR/default_model when that environment
// variable is set, else the compile-time SD_DEFAULT_MODEL_DIR (the source tree's folder).
std::string default_model_dir();

// The tokenizer of a diffusers tokenizer/ folder: vocab.json + merges.txt, the pad token read from
// special_tokens_map.json / tokenizer_config.json ("<|endoftext|>" or "!"), model_max_length.
ClipTokenizer load_tokenizer_folder(const std::string& dir);

}  // namespace sd::infer
