// Everything sd_train can be told, named as in diffusers' training scripts (train_text_to_image.py,
// train_text_to_image_lora.py, their _sdxl versions), so that a user's existing command works by
// swapping the launcher. parse_train_args() reads the command line; validate_train_args() rejects
// contradictory settings with a sentence before any model is loaded.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sd::train {

// What trains. DreamBooth is a data recipe on top of Full / Lora (TrainArgs::dreambooth).
enum class TrainMethod { Full, Lora, TextualInversion, Vae };
const char* method_name(TrainMethod m);

enum class MixedPrecision { No, Fp16, Bf16 };
const char* mixed_precision_name(MixedPrecision p);

struct TrainArgs {
  TrainMethod method = TrainMethod::Lora;
  bool dreambooth = false;      // --method dreambooth | dreambooth-lora
  std::string method_text;      // as given: full, lora, dreambooth, dreambooth-lora, textual-inversion

  // ---- model / output ----
  std::string pretrained_model_name_or_path;  // diffusers folder or single file
  std::string variant;                        // <name>.<variant>.safetensors weights
  std::string model_config;                   // single files: a diffusers folder with the architecture
  std::string output_dir;                     // default by method (diffusers' defaults)
  bool save_single_file = false;              // full: also <output_dir>/<name>.safetensors
  std::string save_precision = "fp16";        // fp32|fp16|bf16 of the saved weights
  std::string save_format = "diffusers";      // lora: diffusers (PEFT) | kohya
  std::string output_name;                    // file stem of single files / kohya LoRAs
  std::string device;                         // "" = cuda when available, else cpu

  // ---- data ----
  std::string train_data_dir;   // image folder with metadata.jsonl or .txt captions
  std::string dataset_name;     // a Hugging Face dataset saved locally (parquet shards)
  std::string image_column = "image";
  std::string caption_column = "text";
  std::optional<int64_t> max_train_samples;
  int64_t resolution = 0;       // 0 = the model's (UNet sample_size x VAE factor: 512, 768, 1024)
  bool center_crop = false;
  bool random_flip = false;
  std::string image_interpolation_mode = "lanczos";
  double caption_dropout = 0.0;  // diffusers' --proportion_empty_prompts
  bool cache_latents = false;

  // ---- DreamBooth (train_dreambooth.py) ----
  std::string instance_data_dir;
  std::string instance_prompt;
  bool with_prior_preservation = false;
  std::string class_data_dir;
  std::string class_prompt;
  int64_t num_class_images = 100;
  double prior_loss_weight = 1.0;
  int64_t sample_batch_size = 4;
  std::string prior_generation_precision;  // "" = the training precision; fp32|fp16|bf16
  bool offset_noise = false;               // train_dreambooth.py's switch: noise += 0.1 * N(0, 1)[B, C, 1, 1]

  // ---- textual inversion (textual_inversion.py) ----
  std::string placeholder_token;
  std::string initializer_token;
  int64_t num_vectors = 1;
  std::string learnable_property = "object";  // object | style
  int64_t repeats = 100;
  int64_t save_steps = 500;

  // ---- VAE (--method vae) ----
  std::string vae_loss = "l1";      // l1 | l2: the reconstruction term
  double kl_weight = 1e-6;          // weight of the KL term (the latent-diffusion autoencoders' value)
  bool freeze_vae_encoder = false;  // a decoder-only fine-tune (as sd-vae-ft-mse)

  // ---- aspect-ratio buckets (kohya) ----
  bool enable_bucket = false;
  int64_t min_bucket_reso = 256, max_bucket_reso = 1024, bucket_reso_steps = 64;
  bool bucket_no_upscale = false;

  // ---- processes ----
  double bucket_mb = 25;  // gradient all-reduce bucket size
  int64_t zero_stage = 0;  // 1: optimizer state sharded across processes
  bool sync_grad_reduce = false;  // reduce gradients after backward, not overlapped with it

  // ---- steps ----
  int64_t train_batch_size = 16;
  int64_t num_train_epochs = 100;
  std::optional<int64_t> max_train_steps;
  int64_t gradient_accumulation_steps = 1;
  bool gradient_checkpointing = false;
  uint64_t seed = 0;

  // ---- optimizer / schedule ----
  double learning_rate = 1e-4;
  std::optional<double> text_encoder_lr;
  bool scale_lr = false;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_weight_decay = 1e-2, adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;
  std::string lr_scheduler = "constant";
  int64_t lr_warmup_steps = 500;
  int64_t lr_num_cycles = 1;
  double lr_power = 1.0;

  // ---- objective ----
  std::optional<double> snr_gamma;
  double noise_offset = 0.0;
  double input_perturbation = 0.0;
  std::string prediction_type;  // "" = the model's scheduler config

  // ---- what trains ----
  bool train_text_encoder = false;
  int64_t rank = 4;
  std::optional<double> lora_alpha;  // default: rank
  bool use_rslora = false;
  std::vector<std::string> lora_target = {"attn"};

  // ---- EMA ----
  bool use_ema = false;
  bool offload_ema = false;
  double ema_decay = 0.9999, ema_min_decay = 0.0, ema_inv_gamma = 1.0, ema_power = 2.0 / 3.0;
  int64_t ema_update_after_step = 0;
  bool use_ema_warmup = false;

  // ---- precision ----
  MixedPrecision mixed_precision = MixedPrecision::No;
  bool allow_tf32 = false;

  // ---- checkpoints ----
  int64_t checkpointing_steps = 500;
  std::optional<int64_t> checkpoints_total_limit;
  std::string resume_from_checkpoint;  // a checkpoint dir or "latest"

  // ---- validation ----
  std::vector<std::string> validation_prompts;
  int64_t num_validation_images = 4;
  std::optional<int64_t> validation_steps;
  std::optional<int64_t> validation_epochs;
  int64_t validation_inference_steps = 25;
  double validation_guidance_scale = 7.5;

  // ---- logs ----
  std::string report_to = "tensorboard";  // tensorboard | none
  std::string logging_dir = "logs";        // relative to output_dir, as accelerate joins them
  bool quiet = false;

  // This run's flags as a TOML file for --config (FlagParser::effective_config): every flag given or
  // set from another's value, the rest as commented defaults. sd_train writes it into output_dir.
  std::string effective_config;
};

// The file name of that configuration inside output_dir.
inline constexpr const char* kRunConfigFile = "sd_train_config.toml";

// Parses the command line (and --config FILE.toml files). Returns nullopt when --help was printed. sd::Error with a sentence for an
// unknown flag, a bad value, or a contradiction (validate_train_args runs at the end).
std::optional<TrainArgs> parse_train_args(int argc, const char* const* argv);
void validate_train_args(const TrainArgs& a);
std::string train_help();

}  // namespace sd::train
