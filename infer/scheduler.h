// Sampling schedulers, matching diffusers 0.42 for the same config (FORMATS.md §6):
//   DDPMScheduler, DDIMScheduler, PNDMScheduler (PLMS, and PRK warm-up when skip_prk_steps is
//   false), EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler,
//   DPMSolverMultistepScheduler (dpmsolver++ / sde-dpmsolver++, orders 1-3), UniPCMultistepScheduler
//   (bh1 / bh2, orders 1-3), LCMScheduler.
//
// A denoising loop, as diffusers' pipelines run it:
//   auto s = make_scheduler(config);
//   s->set_timesteps(n);                              // or (n, strength) for img2img
//   latents = noise * s->init_noise_sigma();          // img2img: s->add_noise(init, noise, s->timesteps()[0])
//   for (double t : s->timesteps()) {
//     Tensor in = s->scale_model_input(latents, t);   // UNet input (Euler family: / sqrt(sigma^2 + 1))
//     Tensor out = unet(in, t);                       // eps, v or x0 as config().prediction_type says
//     latents = s->step(out, t, latents, gen);        // multistep schedulers keep their history
//   }
//
// Arithmetic follows diffusers op by op: the schedule arrays are computed like numpy/torch
// (infer/schedule_math.h), the per-step scalars are float32 like diffusers' 0-dim float32
// tensors, and every tensor op is one sd op on the sample (float32 samples; other float types
// run through the same ops). The stochastic samplers (DDPM, DDIM with eta > 0, Euler ancestral,
// DPM++ SDE, LCM) draw their noise with randn(shape, dtype, device, gen), in diffusers' order.
//
// Timesteps are integers for every class except the Euler family (EulerDiscrete, Euler
// ancestral, Heun), whose timesteps are float32 values; both are handed out as doubles.
//
// Known differences from diffusers (measured in tests/infer/scheduler_golden_test.cpp):
// * torch evaluates float32 exp/log/expm1 with SLEEF and sqrt with MKL's vector routines, not
//   always correctly rounded; sd rounds the exact values (IEEE sqrt; exp/log/expm1 in double,
//   rounded once), the same on every machine. Step coefficients can differ in the last bit:
//   trajectories agree to ~1e-6 relative (most cases bit for bit).
// * numpy's float32 log (Karras / exponential sigmas -> timesteps) is a CPU-dependent SIMD
//   approximation: fractional Euler/Heun Karras timesteps agree to ~5e-7 relative.
// * UniPC with solver_type bh1 and a final sigma of 0: diffusers' last step is NaN
//   (alpha_t * B(h) * 0 with B(h) = -inf); sd returns the finite first-order update.
// * Half-precision samples run through the same ops (the Euler family and DPM-Solver upcast to
//   float32 as diffusers does) but are only checked against sd's own float32 results.
// * img2img and the step index: as diffusers, the first scale_model_input/step call fixes the
//   step index (from the timestep, or from the begin index set_timesteps(n, strength) sets).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "infer/scheduler_config.h"
#include "runtime/rng.h"
#include "runtime/tensor.h"

namespace sd::infer {

// Where a stochastic sampler gets its noise; the default is randn(shape, dtype, device, gen).
using NoiseSource = std::function<Tensor(const Shape& shape, DType dtype, Device device, Generator& gen)>;

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config);
  virtual ~Scheduler() = default;
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  const SchedulerConfig& config() const { return cfg_; }
  const std::string& class_name() const { return cfg_.class_name; }
  // diffusers' class attribute `order`: model evaluations per step (Heun 2, others 1).
  virtual int order() const { return 1; }

  // The schedule for `num_inference_steps`. strength < 1 keeps the img2img tail the way
  // diffusers' img2img pipelines do (get_timesteps: skip the first n - int(n * strength)
  // steps, times `order`, and start the step counter there); LCM applies strength its own way
  // (LCMScheduler.set_timesteps(strength=...)). Resets all multistep state.
  void set_timesteps(int64_t num_inference_steps, double strength = 1.0);
  // Runs all_timesteps()[first:] from now on, as diffusers' pipelines slice scheduler.timesteps and
  // call set_begin_index(first) where the class has one (SDXL img2img / refiner with
  // denoising_start; SDXL txt2img calls it with 0).
  void start_at(int64_t first);
  // The timesteps to run (after the strength subset) and the whole schedule.
  const std::vector<double>& timesteps() const { return run_timesteps_; }
  const std::vector<double>& all_timesteps() const { return timesteps_; }
  DType timestep_dtype() const { return float_timesteps() ? DType::F32 : DType::I64; }
  // The sigma of each timestep plus the final one (sigma-based samplers; empty for the others).
  const std::vector<float>& sigmas() const { return sigmas_; }
  // Scale of the initial noise: 1, or the largest sigma (sqrt(sigma^2 + 1) with "leading").
  double init_noise_sigma() const;
  // diffusers' num_inference_steps after set_timesteps (before the strength subset).
  int64_t num_inference_steps() const { return num_inference_steps_; }

  // The UNet input for this step (identity except for the Euler family).
  virtual Tensor scale_model_input(const Tensor& sample, double t);
  // One denoising step from `sample` at timestep t given the model output there.
  virtual Tensor step(const Tensor& model_output, double t, const Tensor& sample,
                      Generator& gen = default_generator()) = 0;
  // The clean-sample estimate of the last step (LCM: its `denoised`, which the LCM pipeline
  // decodes); undefined for the samplers that do not return one (PNDM, DPM-Solver, UniPC).
  const Tensor& pred_original_sample() const { return pred_original_; }

  // Forward process x_t for each batch element at its timestep (img2img, training), as the
  // class's diffusers add_noise: sqrt(ac) x0 + sqrt(1 - ac) noise for the alpha-based classes,
  // x0 + sigma noise (Euler family) or alpha_t x0 + sigma_t noise (DPM-Solver, UniPC) with the
  // sigma of the schedule position (the begin index once img2img set one).
  // timesteps: [B] integer or float tensor (or one value for every element).
  virtual Tensor add_noise(const Tensor& original, const Tensor& noise, const Tensor& timesteps);
  Tensor add_noise(const Tensor& original, const Tensor& noise, double t);
  // v-prediction target sqrt(ac_t) noise - sqrt(1 - ac_t) sample (diffusers' get_velocity of
  // DDPMScheduler, which the training scripts use); timesteps [B] integers.
  Tensor get_velocity(const Tensor& sample, const Tensor& noise, const Tensor& timesteps) const;
  // SNR (sqrt(ac) / sqrt(1 - ac))^2 per timestep, float32 (diffusers.training_utils.compute_snr).
  Tensor compute_snr(const Tensor& timesteps) const;

  const std::vector<float>& betas() const { return betas_; }
  const std::vector<float>& alphas_cumprod() const { return alphas_cumprod_; }

  // DDIM's eta (noise amount; 0 = deterministic). The other classes ignore it, as diffusers'
  // pipelines do.
  void set_eta(double eta) { eta_ = eta; }
  // Test hook: replaces randn for the noise the stochastic samplers draw.
  void set_noise_source(NoiseSource fn) { noise_ = std::move(fn); }
  // diffusers' set_begin_index / step_index (-1 = not set yet).
  void set_begin_index(int64_t i) { begin_index_ = i; }
  int64_t begin_index() const { return begin_index_; }
  int64_t step_index() const { return step_index_; }

 protected:
  // Fills timesteps_ / sigmas_ / num_inference_steps_ and resets the class's state.
  virtual void compute_schedule(int64_t n, double strength) = 0;
  virtual bool float_timesteps() const { return false; }
  // Whether the class has set_begin_index (DDPM, DDIM and PNDM do not).
  virtual bool has_begin_index() const { return true; }
  // The LCM rule: strength is applied inside compute_schedule.
  virtual bool strength_in_schedule() const { return false; }
  virtual double init_noise_sigma_value() const { return 1.0; }

  // diffusers' index_for_timestep: the second match when t appears twice (so img2img that
  // starts in the middle of a repeated pair picks the right one), the first otherwise; -1 when
  // absent.
  int64_t index_for_timestep(double t) const;
  // Step index on the first scale_model_input/step call: the begin index when set, else the
  // timestep's position (absent: an error, or the last step for the multistep solvers).
  void init_step_index(double t, bool absent_is_last = false);
  // The schedule position add_noise uses for t (sigma-based classes): the step index once
  // stepping started or the begin index once img2img set one, else t's own position.
  int64_t noise_index(double t, bool absent_is_last = false) const;
  Tensor draw_noise(const Shape& shape, DType dtype, Device device, Generator& gen);
  // Per-batch coefficient tensor [B, 1, ..., 1] for a sample of `like`'s rank, dtype and device.
  static Tensor batch_coeff(const std::vector<float>& values, const Tensor& like);
  // Timestep values of a [B] (or scalar) tensor.
  static std::vector<double> timestep_values(const Tensor& timesteps);
  void require_timesteps(const char* op) const;
  // add_noise of the sigma-parameterised multistep solvers (DPM-Solver, UniPC): x0 alpha_t + n sigma_t
  // with (alpha_t, sigma_t) from the schedule's sigma at each timestep.
  Tensor add_noise_alpha_sigma(const Tensor& original, const Tensor& noise, const Tensor& timesteps) const;

  SchedulerConfig cfg_;
  std::vector<float> betas_, alphas_cumprod_;
  std::vector<double> timesteps_, run_timesteps_;
  std::vector<float> sigmas_;
  int64_t num_inference_steps_ = 0;
  int64_t step_index_ = -1, begin_index_ = -1;
  double eta_ = 0.0;
  Tensor pred_original_;
  NoiseSource noise_;
};

// A scheduler for config.class_name.
std::unique_ptr<Scheduler> make_scheduler(const SchedulerConfig& config);
// `--scheduler NAME` on top of a model's scheduler config, the way diffusers users switch:
// ddim, ddpm, pndm, euler, euler_a, heun, dpm++2m, dpm++2m_karras, dpm++2m_sde, unipc, lcm
// (`Class.from_config(model_config, **overrides)`; dpm++2m* set algorithm_type, solver_order 2
// and use_karras_sigmas; pndm sets skip_prk_steps as SD does). Unknown name -> sd::Error.
SchedulerConfig scheduler_config_for(const std::string& short_name, const SchedulerConfig& model_config);
std::unique_ptr<Scheduler> make_scheduler(const std::string& short_name, const SchedulerConfig& model_config);
const std::vector<std::string>& scheduler_short_names();

}  // namespace sd::infer
