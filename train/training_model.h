// The models of a training run and what one micro-batch computes with them, method by method:
//
//   full   the UNet's parameters train (and every text-encoder parameter with train_text_encoder)
//   lora   the base weights are frozen; LoRA adapters on the UNet (and text encoders) train
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
  bool text_encoder_trains() const { return opt_.train_text_encoder; }

  // The trainable tensors with their masters (group 0: UNet side, 1: text encoders).
  const std::vector<OptimizerParam>& trainable() const { return trainable_; }
  int64_t num_trainable_elements() const;
  // The LoRA adapters per component (lora method), for saving.
  std::vector<const TrainableLora*> loras() const;

  TokenIds tokenize(const std::vector<std::string>& captions) const;
  // Differentiable when the text encoder trains.
  TextConditioning encode_text(const TokenIds& ids) const;
  // SDXL micro-conditioning: original_size (h, w) + crop_top_left (top, left) + (res, res), [B, 6] f32.
  static Tensor sdxl_time_ids(const std::vector<std::array<int64_t, 2>>& original_sizes,
                              const std::vector<std::array<int64_t, 2>>& crops, int64_t resolution);

  // pixels [B, 3, H, W] in [-1, 1] -> the VAE posterior (mean, logvar) in f32, no gradient.
  std::pair<Tensor, Tensor> encode_posterior(const Tensor& pixels) const;
  // mean + exp(logvar / 2) * eps, times the scaling factor (f32).
  Tensor sample_latents(const Tensor& mean, const Tensor& logvar, const Tensor& eps) const;

  // The micro-batch's training loss (0-d f32, with autograd history when something trains).
  Tensor loss(const MicroBatch& batch, const NoiseDraws& draws) const;

  // Puts the masters (or the given f32 tensors, same order as trainable()) into the model's compute
  // copies: validation with EMA weights, and back.
  void load_compute_weights(const std::vector<Tensor>& f32_values);

 private:
  std::shared_ptr<infer::Pipeline> pipe_;
  TrainingModelOptions opt_;
  std::unique_ptr<infer::Scheduler> noise_scheduler_;
  std::vector<TrainableLora> loras_;
  std::vector<OptimizerParam> trainable_;
};

}  // namespace sd::train
