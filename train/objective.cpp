#include "train/objective.h"

#include <algorithm>
#include <cmath>

#include "ops/elementwise.h"
#include "ops/loss.h"
#include "ops/view.h"
#include "runtime/error.h"
#include "train/random_draws.h"

namespace sd::train {

namespace {
// One example's draw of `purpose`: shape [1, ...rest of `shape`].
Tensor example_normal(const Shape& shape, uint64_t seed, DrawPurpose purpose, uint64_t micro_step, int64_t slot) {
  Shape one = shape;
  one[0] = 1;
  return draw_normal(one, draw_key(seed, purpose, micro_step, uint64_t(slot)));
}

Tensor stack_examples(const Shape& shape, uint64_t seed, DrawPurpose purpose, uint64_t micro_step,
                      const std::vector<int64_t>& slots) {
  Tensor out = empty(shape, DType::F32);
  const int64_t per = shape_numel(shape) / shape[0];
  for (size_t j = 0; j < slots.size(); ++j) {
    const Tensor e = example_normal(shape, seed, purpose, micro_step, slots[j]);
    std::copy_n(e.data<float>(), per, out.data<float>() + int64_t(j) * per);
  }
  return out;
}
}  // namespace

NoiseDraws draw_noise(const ObjectiveConfig& cfg, const Shape& latent_shape, uint64_t seed, uint64_t micro_step,
                      const std::vector<int64_t>& slots) {
  SD_CHECK(latent_shape.size() == 4 && latent_shape[0] == int64_t(slots.size()), "draw_noise: latents ",
           shape_str(latent_shape), " for ", slots.size(), " examples");
  NoiseDraws d;
  d.noise = stack_examples(latent_shape, seed, DrawPurpose::Noise, micro_step, slots);
  std::vector<double> ts;
  for (int64_t slot : slots) {
    const double u = draw_uniform(draw_key(seed, DrawPurpose::Timestep, micro_step, uint64_t(slot)));
    ts.push_back(std::min(double(cfg.num_train_timesteps - 1), std::floor(u * double(cfg.num_train_timesteps))));
  }
  d.timesteps = from_vector(ts, {int64_t(slots.size())}, DType::I64);
  if (cfg.noise_offset > 0)
    d.offset_noise = stack_examples({latent_shape[0], latent_shape[1], 1, 1}, seed, DrawPurpose::OffsetNoise,
                                    micro_step, slots);
  if (cfg.input_perturbation > 0)
    d.perturbation = stack_examples(latent_shape, seed, DrawPurpose::Perturbation, micro_step, slots);
  return d;
}

NoisyInput make_noisy_input(const Tensor& latents, const NoiseDraws& draws, const infer::Scheduler& scheduler,
                            const ObjectiveConfig& cfg) {
  SD_CHECK(latents.shape() == draws.noise.shape(), "training objective: latents ", latents.str(), " but noise ",
           draws.noise.str());
  const Device dev = latents.device();
  Tensor noise = to(draws.noise, dev);
  // train_text_to_image.py: noise += noise_offset * randn(B, C, 1, 1) (before the perturbation).
  if (cfg.noise_offset > 0) {
    SD_CHECK(draws.offset_noise.defined(), "training objective: --noise_offset without its draw");
    noise = noise + mul_scalar(to(draws.offset_noise, dev), cfg.noise_offset);
  }
  Tensor noised_with = noise;
  if (cfg.input_perturbation > 0) {
    SD_CHECK(draws.perturbation.defined(), "training objective: --input_perturbation without its draw");
    noised_with = noise + mul_scalar(to(draws.perturbation, dev), cfg.input_perturbation);
  }
  // add_noise and get_velocity only read the schedule (const in effect for the DDPM class).
  auto& s = const_cast<infer::Scheduler&>(scheduler);
  NoisyInput out;
  out.noisy_latents = s.add_noise(latents, noised_with, draws.timesteps);
  switch (cfg.prediction) {
    case nn::Prediction::Epsilon: out.target = noise; break;
    case nn::Prediction::VPrediction: out.target = scheduler.get_velocity(latents, noise, draws.timesteps); break;
    default: SD_FAIL("training objective: unknown prediction type");
  }
  return out;
}

Tensor snr_weights(const Tensor& timesteps, const infer::Scheduler& scheduler, const ObjectiveConfig& cfg) {
  if (!cfg.snr_gamma) return Tensor();
  const std::vector<float> snr = scheduler.compute_snr(timesteps).to_float_vector();
  std::vector<float> w;
  const float gamma = float(*cfg.snr_gamma);
  for (float s : snr) {
    // torch.stack([snr, gamma * ones]).min(dim=1)[0] / snr (or / (snr + 1)), all float32.
    const float m = std::min(s, gamma);
    if (cfg.prediction != nn::Prediction::VPrediction) w.push_back(m / s);
    else w.push_back(cfg.dreambooth_snr ? m / s + 1.0f : m / (s + 1.0f));
  }
  return from_floats(w, {int64_t(w.size())});
}

Tensor diffusion_loss(const Tensor& pred, const Tensor& target, const Tensor& weights) {
  const Tensor p = pred.dtype() == DType::F32 ? pred : to(pred, DType::F32);
  const Tensor t = target.dtype() == DType::F32 ? target : to(target, DType::F32);
  if (!weights.defined()) return mse_loss(p, t, Reduction::Mean);
  return mse_loss(p, t, Reduction::Mean, to(weights, pred.device()));
}

Tensor dreambooth_loss(const Tensor& pred, const Tensor& target, const Tensor& timesteps,
                       const infer::Scheduler& scheduler, const ObjectiveConfig& cfg, int64_t n_prior,
                       double prior_weight) {
  const int64_t B = pred.size(0), n = B - n_prior;
  SD_CHECK(n_prior >= 0 && n > 0, "DreamBooth loss: ", n_prior, " class examples in a batch of ", B);
  if (n_prior == 0) return diffusion_loss(pred, target, snr_weights(timesteps, scheduler, cfg));
  // torch.chunk(model_pred, 2): instance half first, class half second.
  const Tensor pi = narrow(pred, 0, 0, n), pp = narrow(pred, 0, n, n_prior);
  const Tensor ti = narrow(target, 0, 0, n), tp = narrow(target, 0, n, n_prior);
  const Tensor prior = diffusion_loss(pp, tp, Tensor());
  const Tensor instance = diffusion_loss(pi, ti, snr_weights(narrow(timesteps, 0, 0, n), scheduler, cfg));
  return instance + mul_scalar(prior, prior_weight);
}

}  // namespace sd::train
