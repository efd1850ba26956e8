// Text-to-image and image-to-image with a loaded pipeline, step for step as diffusers'
// StableDiffusionPipeline / StableDiffusionImg2ImgPipeline / StableDiffusionXLPipeline /
// StableDiffusionXLImg2ImgPipeline / LatentConsistencyModelPipeline run (FORMATS.md §6):
//
//   text:      encode_prompts (infer/prompt_encoder.h); with CFG the UNet batch is
//              [uncond x B, cond x B]
//   latents:   txt2img: randn([B, C, H/f, W/f]) * init_noise_sigma (or the given `latents` times it)
//              img2img: z = (mean + std * randn([1, C, h, w])) * scaling_factor from the VAE posterior of
//              the init image, repeated B times, then scheduler.add_noise(z, randn([B, ...]), t_start)
//              with the strength subset of the schedule (t_start its first timestep)
//   each step: x = scheduler.scale_model_input(latents (twice with CFG), t); eps = unet(x, t, context,
//              SDXL: text_embeds + time_ids, LCM: timestep_cond); CFG: u + g (c - u), then
//              guidance_rescale (std ratio, unbiased std per image); latents = scheduler.step(...)
//   decode:    vae.decode(latents / scaling_factor) (tiled on request)
//   checks:    the starting latents, the latents after each step and the images are checked for
//              NaN/Inf (GenerateRequest::check_finite): a run that breaks stops with NonFiniteError
//              naming the step instead of handing back a black image
//
// Randomness comes from one NoiseStream in diffusers' order (starting latents or posterior sample
// then img2img noise, then the stochastic samplers' per-step noise), batch after batch.
//
// SDXL base + refiner (diffusers' "ensemble of expert denoisers"): the base runs the timesteps
// t >= round(T (1 - denoising_end)) and returns latents; the refiner (StableDiffusionXLImg2ImgPipeline
// with denoising_start = the same fraction) sets the same number of steps, runs the timesteps below
// that cutoff (one more for 2nd-order samplers with an even count) with no noise added, and
// decodes with its VAE.
//
// Latents stay float32 whatever the model dtype (the UNet input and output are converted), which
// diffusers does only inside some schedulers: fp16/bf16 runs differ from diffusers' fp16 runs by
// the rounding of the latents between steps.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "infer/noise.h"
#include "infer/pipeline.h"
#include "infer/prompt_encoder.h"
#include "infer/scheduler.h"
#include "runtime/error.h"

namespace sd::infer {

using SizeHW = std::pair<int64_t, int64_t>;  // (height, width), diffusers' order

struct ProgressEvent {
  const char* stage;     // "denoise"; with a refiner "base" then "refiner"
  int64_t step;          // 1-based, over all stages
  int64_t total;         // steps of all stages
};

struct GenerateRequest {
  std::string prompt;
  std::optional<std::string> negative_prompt;  // nullopt: none given (see encode_prompts)
  int64_t width = 0, height = 0;    // 0: the pipeline's default (img2img: the init image's size)
  int64_t steps = 0;                // num_inference_steps; 0: the pipeline's default
  std::optional<double> guidance_scale;  // nullopt: the pipeline's default
  double guidance_rescale = 0.0;
  PromptEncodeOptions prompt_options;
  int64_t num_images = 1;           // num_images_per_prompt
  int64_t batch_size = 0;           // images per UNet batch (0: all at once, as one diffusers call)

  std::string scheduler;            // --scheduler short name (infer/scheduler.h); "": the model's own
  std::string scheduler_overrides;  // JSON object applied on top (e.g. {"timestep_spacing": "trailing"})
  double eta = 0.0;                 // DDIM eta

  Tensor init_image;                // img2img: [3, H, W] or [1, 3, H, W] in [-1, 1]
  double strength = 0.8;            // img2img (diffusers' default; the refiner alone: 0.3)

  // SDXL micro-conditioning, (height, width); nullopt = the output size.
  std::optional<SizeHW> original_size, target_size, negative_original_size, negative_target_size;
  SizeHW crops_coords_top_left{0, 0}, negative_crops_coords_top_left{0, 0};
  double aesthetic_score = 6.0, negative_aesthetic_score = 2.5;  // refiner

  // With a refiner: the fraction of the schedule the base runs (diffusers' denoising_end /
  // high_noise_frac). Ignored without a refiner.
  double denoising_end = 0.8;

  // diffusers' `latents=` argument: [num_images, C, h, w] unscaled starting noise (txt2img only);
  // multiplied by init_noise_sigma like diffusers does.
  Tensor latents;
  bool vae_tiling = false;
  std::function<void(const ProgressEvent&)> on_step;
  // Check the starting latents, the latents after every step and the decoded images for NaN/Inf and
  // stop with NonFiniteError at the first. Costs one pass over the latents per step (and a wait for
  // the GPU to finish the step); off, a broken run returns NaN images, which save as black.
  bool check_finite = true;
};

// What generate() throws when the numbers stop being numbers: the latents or the decoded image hold
// NaN or Inf (an fp16 UNet or VAE overflowing, a LoRA scale or guidance far too large, damaged
// weights). The fields say where, so that a tool can suggest the remedy its own flags offer.
class NonFiniteError : public Error {
 public:
  enum class Stage { Start, Denoise, Decode };
  NonFiniteError(const std::string& what, Stage stage, int64_t step, int64_t total, DType dtype)
      : Error(what), stage(stage), step(step), total(total), dtype(dtype) {}
  Stage stage;
  int64_t step, total;  // Denoise: the step (1-based over all batches and stages) and their number
  DType dtype;          // of the model part that produced the values: the UNet, or the VAE (Decode)
};

struct GenerateTimings {
  double text_encode_s = 0, vae_encode_s = 0, denoise_s = 0, decode_s = 0;
  int64_t unet_evals = 0;  // UNet forward calls (a CFG call counts once)
};

struct GenerateResult {
  Tensor images;   // [N, 3, H, W] float32 as decoded (not clamped; [-1, 1] for a working model)
  Tensor latents;  // [N, C, h, w] float32: what was decoded, times scaling_factor
  // What actually ran (defaults resolved):
  int64_t width = 0, height = 0, steps = 0;   // steps: num_inference_steps asked of the scheduler
  int64_t steps_run = 0;                      // denoising steps run, all stages
  double guidance_scale = 0;
  bool cfg = false;
  SchedulerConfig scheduler;                  // the base's scheduler config after --scheduler / overrides
  int64_t prompt_tokens = 0, prompt_chunks = 1;
  GenerateTimings timings;
};

GenerateResult generate(const Pipeline& pipe, const GenerateRequest& request, NoiseStream& noise,
                        const Pipeline* refiner = nullptr);

// LatentConsistencyModelPipeline.get_guidance_scale_embedding: w * 1000 times
// exp(-ln(10000) i / (d/2 - 1)), [sin | cos] (zero-padded to an odd d), float32, [n, d].
Tensor guidance_scale_embedding(double w, int64_t dim, int64_t n);

// The scheduler config a request runs with (the model's, --scheduler, overrides, DDIM eta).
SchedulerConfig request_scheduler_config(const Pipeline& pipe, const GenerateRequest& request);

// A1111's sampler name and schedule type for a scheduler config: ("DPM++ 2M", "Karras"),
// ("Euler a", ""), ("PLMS", ""), ...
std::pair<std::string, std::string> a1111_sampler_name(const SchedulerConfig& config);

}  // namespace sd::infer
