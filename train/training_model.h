// The models of a training run and what one micro-batch computes with them, method by method:
//
//   full   the UNet's parameters train (and every text-encoder parameter with train_text_encoder)
//   lora   the base weights are frozen; LoRA adapters on the UNet (and text encoders) train
//   textual inversion   new tokens ("<tok>", "<tok>_1", ...) are added to the tokenizer(s) and text
//          encoder(s), their rows starting from the initializer token's; the whole token-embedding table
//          gets gradients and optimizer updates and every other row is put back bit for bit after each
//          step (textual_inversion.py's index_no_updates), so only the new rows change
//
// Precision (diffusers' --mixed_precision): frozen weights and the forward/backward run in the weight
// dtype (f32, f16 or bf16); trainable tensors keep f32 masters in the optimizer, and the model holds
// their 16-bit copies. The VAE follows its config's force_upcast (SDXL: f32).
//
// Conditioning as the training scripts compute it:
//   SD1/SD2  context = text_encoder(ids).last_hidden_state
//   SDXL     context = cat(text_encoder(ids).hidden_states[-2], text_encoder_2(ids_2).hidden_states[-2]),
//            pooled = text_encoder_2 text_embeds, time_ids = original_size + crop_top_left + target_size
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "infer/pipeline.h"
#include "infer/scheduler.h"
#include "train/lora_training.h"
#include "train/objective.h"
#include "train/optimizer.h"
#include "train/train_args.h"

namespace sd::train {

struct TextualInversionOptions {
  std::string placeholder;   // "<cat-toy>"
  std::string initializer;   // a word that is one token, e.g. "toy"
  int64_t num_vectors = 1;
};

struct TrainingModelOptions {
  TrainMethod method = TrainMethod::Lora;
  DType weight_dtype = DType::F32;  // from --mixed_precision
  Device device = Device::cpu();
  bool train_text_encoder = false;
  bool gradient_checkpointing = false;
  LoraTrainConfig unet_lora;        // targets from --lora_target
  LoraTrainConfig text_lora;        // targets: q/k/v/out_proj
  uint64_t seed = 0;                // LoRA initialisation
  ObjectiveConfig objective;        // prediction filled from the model unless given
  std::string prediction_override;  // --prediction_type ("" = the scheduler config's)
  std::string variant;
  std::string model_config;  // single files: a diffusers folder whose configs give the architecture
  TextualInversionOptions ti;       // method TextualInversion
  bool freeze_vae_encoder = false;  // method Vae: decoder (and post_quant_conv) only
  double prior_loss_weight = 1.0;   // DreamBooth prior preservation
};

// Token ids of a batch of captions for each tokenizer the model has ([B, 77] i64).
struct TokenIds {
  Tensor ids;    // tokenizer (absent for the SDXL refiner)
  Tensor ids_2;  // tokenizer_2 (SDXL)
};

// One micro-batch's inputs after the data pipeline.
struct MicroBatch {
  Tensor latents;   // [B, 4, h, w] f32, already times the VAE scaling factor
  TokenIds tokens;
  Tensor time_ids;  // SDXL [B, 6]
  // Text conditioning computed elsewhere (the cache of a frozen text encoder): used when defined.
  Tensor context, pooled;
  // DreamBooth prior preservation: the last prior_examples examples are class images.
  int64_t prior_examples = 0;
};

struct TextConditioning {
  Tensor context;  // [B, 77, D]
  Tensor pooled;   // [B, P] (SDXL)
};

class TrainingModel {
 public:
  // Loads the pipeline (in f32, then places every part in its training dtype), attaches adapters,
  // and collects the trainable tensors with their f32 masters.
  static std::unique_ptr<TrainingModel> load(const std::string& model_path, const TrainingModelOptions& opt);
  // The same from an already loaded f32 pipeline (tests).
  TrainingModel(std::shared_ptr<infer::Pipeline> pipe, const TrainingModelOptions& opt);

  infer::Pipeline& pipeline() { return *pipe_; }
  std::shared_ptr<infer::Pipeline> pipeline_ptr() { return pipe_; }
  const TrainingModelOptions& options() const { return opt_; }
  const infer::Scheduler& noise_scheduler() const { return *noise_scheduler_; }
  const ObjectiveConfig& objective() const { return opt_.objective; }
  bool is_sdxl() const { return pipe_->is_sdxl(); }
  // The text encoder's forward records gradients (it trains, or textual inversion's new rows do).
  bool text_encoder_trains() const { return text_grad_; }

  // The trainable tensors with their masters (group 0: UNet side, 1: text encoders).
  const std::vector<OptimizerParam>& trainable() const { return trainable_; }
  int64_t num_trainable_elements() const;
  // Drops this object's references to the f32 masters: under ZeRO-1 the optimizer keeps only its
  // process's range of them, and the complete ones must be freed (trainable()[i].master is then undefined).
  void release_masters() {
    for (OptimizerParam& p : trainable_) p.master = Tensor();
  }
  // The LoRA adapters per component (lora method), for saving.
  std::vector<const TrainableLora*> loras() const;

  TokenIds tokenize(const std::vector<std::string>& captions) const;
  // Differentiable when the text encoder trains.
  TextConditioning encode_text(const TokenIds& ids) const;
  // SDXL micro-conditioning: original_size (h, w) + crop_top_left (top, left) + target (h, w), [B, 6] f32.
  static Tensor sdxl_time_ids(const std::vector<std::array<int64_t, 2>>& original_sizes,
                              const std::vector<std::array<int64_t, 2>>& crops, int64_t target_h, int64_t target_w);

  // pixels [B, 3, H, W] in [-1, 1] -> the VAE posterior (mean, logvar) in f32, no gradient.
  std::pair<Tensor, Tensor> encode_posterior(const Tensor& pixels) const;
  // mean + exp(logvar / 2) * eps, times the scaling factor (f32).
  Tensor sample_latents(const Tensor& mean, const Tensor& logvar, const Tensor& eps) const;

  // The micro-batch's training loss (0-d f32, with autograd history when something trains).
  Tensor loss(const MicroBatch& batch, const NoiseDraws& draws) const;

  // --method vae: pixels [B, 3, H, W] in [-1, 1] -> encode -> z = mean + std * eps -> decode; the
  // reconstruction error (mean |x - x'| for l1, mean (x - x')^2 for l2) plus kl_weight times the KL
  // divergence of the posterior from N(0, 1) (summed over latent elements, averaged over the batch),
  // with autograd history. reconstruction_out receives the first term's value.
  Tensor vae_loss(const Tensor& pixels, const Tensor& eps, bool l1, double kl_weight,
                  double* reconstruction_out = nullptr) const;

  // Puts the masters (or the given f32 tensors, same order as trainable()) into the model's compute
  // copies: validation with EMA weights, and back.
  void load_compute_weights(const std::vector<Tensor>& f32_values);

  // ---- textual inversion ----
  // After every optimizer step: every token-embedding row but the new tokens' back to its value.
  void after_optimizer_step();
  // "<tok> <tok>_1 ..." as captions spell the new tokens (the script's placeholder string).
  const std::string& placeholder_text() const { return ti_text_; }
  struct NewTokens {
    nn::ClipTextModel* encoder = nullptr;
    std::string component;           // "text_encoder", "text_encoder_2"
    int64_t first = 0, end = 0;      // the new rows
    Tensor master, param;            // the table's f32 master and compute copy
    Tensor original;                 // f32 copy of the table when training started
  };
  const std::vector<NewTokens>& new_tokens() const { return ti_; }

 private:
  std::shared_ptr<infer::Pipeline> pipe_;
  TrainingModelOptions opt_;
  std::unique_ptr<infer::Scheduler> noise_scheduler_;
  void setup_textual_inversion();

  std::vector<TrainableLora> loras_;
  std::vector<OptimizerParam> trainable_;
  std::vector<NewTokens> ti_;
  std::string ti_text_;
  bool text_grad_ = false;  // the text encoder's forward records (it trains, or its new rows do)
};

}  // namespace sd::train
