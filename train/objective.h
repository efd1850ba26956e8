// The denoising objective of diffusers' training scripts (train_text_to_image.py and relatives):
//
//   noise     ~ N(0, 1) like the latents;  noise += noise_offset * N(0, 1)[B, C, 1, 1]   (--noise_offset)
//   t         ~ U{0, ..., T-1} per example
//   noisy     = scheduler.add_noise(latents, noise + input_perturbation * N(0, 1), t)  (perturbation optional)
//   target    = noise (epsilon) | scheduler.get_velocity(latents, noise, t) (v_prediction)
//   loss      = mean((pred - target)^2)                                  without --snr_gamma
//             = mean_b( w_b * mean((pred_b - target_b)^2) ),             Min-SNR:
//               w = min(SNR_t, gamma) / SNR_t (epsilon), / (SNR_t + 1) (v_prediction)
// computed in float32 whatever the model's dtype (the scripts call .float() on pred and target).
#pragma once
#include <cstdint>
#include <optional>

#include "infer/scheduler.h"
#include "models/formats/checkpoint_keys.h"
#include "runtime/tensor.h"

namespace sd::train {

struct ObjectiveConfig {
  nn::Prediction prediction = nn::Prediction::Epsilon;
  std::optional<double> snr_gamma;
  // The DreamBooth scripts (train_dreambooth*.py) weigh v-prediction with min(SNR, gamma)/SNR + 1 ("floored
  // to an SNR weight of one") where the text-to-image scripts use min(SNR, gamma)/(SNR + 1).
  bool dreambooth_snr = false;
  double noise_offset = 0.0;
  double input_perturbation = 0.0;
  int64_t num_train_timesteps = 1000;
};

// The random inputs of one micro-batch. The loop draws them (draw_noise); the golden tests feed
// the ones PyTorch used.
struct NoiseDraws {
  Tensor noise;         // [B, C, h, w] f32
  Tensor timesteps;     // [B] i64 in [0, T)
  Tensor offset_noise;  // [B, C, 1, 1] f32 (only with --noise_offset)
  Tensor perturbation;  // [B, C, h, w] f32 (only with --input_perturbation)
};

// Draws for the examples of one micro-batch: example j's numbers come from streams keyed by
// (seed, micro_step, example_ids[j]) -- the example's slot in the global batch -- so they do not
// depend on the process count or on how many draws came before (exact resume).
NoiseDraws draw_noise(const ObjectiveConfig& cfg, const Shape& latent_shape, uint64_t seed, uint64_t micro_step,
                      const std::vector<int64_t>& example_slots);

struct NoisyInput {
  Tensor noisy_latents;  // the UNet's sample input, f32
  Tensor target;         // f32
};
// latents [B, C, h, w] f32 (already times scaling_factor); scheduler: the training DDPM schedule.
NoisyInput make_noisy_input(const Tensor& latents, const NoiseDraws& draws, const infer::Scheduler& scheduler,
                            const ObjectiveConfig& cfg);

// Per-example loss weights (Min-SNR) or undefined without --snr_gamma.
Tensor snr_weights(const Tensor& timesteps, const infer::Scheduler& scheduler, const ObjectiveConfig& cfg);

// The scalar training loss (0-d f32), differentiable w.r.t. pred (any float dtype; computed in f32).
// `weights` ([B]) undefined = plain MSE over every element; else the per-example means are weighted
// and averaged over the batch, as the scripts compute Min-SNR.
Tensor diffusion_loss(const Tensor& pred, const Tensor& target, const Tensor& weights);

// DreamBooth with prior preservation (train_dreambooth.py): the batch is [instance examples, class
// examples] (n_prior of them at the end); the instance loss (Min-SNR weighted over the instance timesteps
// only, when on) plus prior_weight times the plain MSE of the class examples. n_prior = 0: the plain loss.
Tensor dreambooth_loss(const Tensor& pred, const Tensor& target, const Tensor& timesteps,
                       const infer::Scheduler& scheduler, const ObjectiveConfig& cfg, int64_t n_prior,
                       double prior_weight);

}  // namespace sd::train
