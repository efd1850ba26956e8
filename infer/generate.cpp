#include "infer/generate.h"

#include <chrono>
#include <cmath>
#include <sstream>

#include "autograd/node.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/optim.h"
#include "ops/reduce.h"
#include "ops/view.h"
#include "runtime/cuda_api.h"
#include "runtime/error.h"
#include "runtime/nvtx.h"

namespace sd::infer {
namespace {

using Clock = std::chrono::steady_clock;

// Wall time since t0; waits for the GPU first so a stage's time is its own.
double elapsed(Clock::time_point t0, Device d) {
  if (d.is_cuda()) cudart::synchronize();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// [1, ...] -> [n, ...] (contiguous copies, as torch's repeat)
Tensor repeat_rows(const Tensor& x, int64_t n) {
  if (n == 1) return x;
  Shape s = x.shape();
  s[0] = n;
  return contiguous(expand(x, s));
}

// Unbiased standard deviation over all dims but the first, keepdim: [B, 1, ..., 1] (torch.std).
Tensor std_per_sample(const Tensor& x) {
  std::vector<int64_t> dims;
  int64_t n = 1;
  for (int64_t d = 1; d < x.dim(); ++d) {
    dims.push_back(d);
    n *= x.size(d);
  }
  const Tensor centred = x - mean(x, dims, true);
  return sqrt(sum(centred * centred, dims, true) / double(n - 1));
}

// x / s with a true division, as torch's tensor / python float (x * (1/s) rounds differently).
Tensor div_scalar(const Tensor& x, double s) { return div(x, scalar_tensor(s, x.dtype(), x.device())); }

struct UNetInputs {
  Tensor context;               // [B or 2B, L, D]
  nn::UNetAddedCond added;      // SDXL
  Tensor timestep_cond;         // LCM
};

struct StageSetup {
  const Pipeline* pipe = nullptr;
  EncodedPrompts prompts;
  std::vector<double> pos_ids, neg_ids;  // SDXL time ids
};

// diffusers' _get_add_time_ids of StableDiffusionXLPipeline (txt2img) and
// StableDiffusionXLImg2ImgPipeline (img2img / refiner: aesthetic score when the pipeline requires
// it; the negative ids default to the positive sizes).
void sdxl_time_ids(const Pipeline& p, const GenerateRequest& r, int64_t H, int64_t W, bool img2img_class,
                   StageSetup& s) {
  const SizeHW out{H, W};
  const SizeHW orig = r.original_size.value_or(out), target = r.target_size.value_or(out);
  const SizeHW crop = r.crops_coords_top_left, ncrop = r.negative_crops_coords_top_left;
  auto ids = [](SizeHW a, SizeHW b, std::vector<double> tail) {
    std::vector<double> v{double(a.first), double(a.second), double(b.first), double(b.second)};
    v.insert(v.end(), tail.begin(), tail.end());
    return v;
  };
  if (!img2img_class) {
    s.pos_ids = ids(orig, crop, {double(target.first), double(target.second)});
    s.neg_ids = r.negative_original_size && r.negative_target_size
                    ? ids(*r.negative_original_size, ncrop,
                          {double(r.negative_target_size->first), double(r.negative_target_size->second)})
                    : s.pos_ids;
  } else {
    const SizeHW norig = r.negative_original_size.value_or(orig), ntarget = r.negative_target_size.value_or(target);
    if (p.requires_aesthetics_score) {
      s.pos_ids = ids(orig, crop, {r.aesthetic_score});
      s.neg_ids = ids(norig, ncrop, {r.negative_aesthetic_score});
    } else {
      s.pos_ids = ids(orig, crop, {double(target.first), double(target.second)});
      s.neg_ids = ids(norig, crop, {double(ntarget.first), double(ntarget.second)});  // diffusers: crop, not ncrop
    }
  }
  const nn::UNetConfig& u = p.unet->config();
  const int64_t pooled = p.text_encoder_2->config().projection_dim;
  const int64_t passed = u.addition_time_embed_dim * int64_t(s.pos_ids.size()) + pooled;
  SD_CHECK(passed == u.projection_class_embeddings_input_dim, "pipeline '", p.model_path, "': the UNet's add_embedding takes ",
           u.projection_class_embeddings_input_dim, " inputs but ", s.pos_ids.size(), " time ids and a ", pooled,
           "-wide pooled embedding make ", passed,
           p.requires_aesthetics_score ? "" : " (an SDXL refiner UNet needs requires_aesthetics_score in model_index.json)");
}

UNetInputs unet_inputs(const StageSetup& s, bool cfg, int64_t B, double guidance) {
  const Pipeline& p = *s.pipe;
  const DType dt = p.dtype;
  UNetInputs in;
  auto both = [&](const Tensor& uncond, const Tensor& cond) {
    return cfg ? cat({repeat_rows(uncond, B), repeat_rows(cond, B)}, 0) : repeat_rows(cond, B);
  };
  in.context = to(both(s.prompts.uncond.context, s.prompts.cond.context), dt);
  if (p.is_sdxl()) {
    in.added.text_embeds = to(both(s.prompts.uncond.pooled, s.prompts.cond.pooled), dt);
    const int64_t k = int64_t(s.pos_ids.size());
    const Tensor pos = from_vector(s.pos_ids, {1, k}, dt, p.device), neg = from_vector(s.neg_ids, {1, k}, dt, p.device);
    // Rows follow the context: [negative x B, positive x B]. (diffusers tiles [neg, pos] B times,
    // which differs only for B > 1 with negative sizes unlike the positive ones.)
    in.added.time_ids = both(neg, pos);
  }
  if (p.has_guidance_embedding())  // LCM: the guidance as an embedding, for every row
    in.timestep_cond = copy_to(guidance_scale_embedding(guidance - 1.0, p.unet->config().time_cond_proj_dim, cfg ? 2 * B : B),
                               dt, p.device);
  return in;
}

struct LoopState {
  const GenerateRequest* req;
  int64_t* step;
  int64_t total;
  GenerateTimings* timings;
};

bool finite(const Tensor& t) { return !has_non_finite({t}); }

// The starting latents of a batch: given ones (--latents) or the init image's VAE encoding can hold
// NaN/Inf before any step ran.
void check_start(const Tensor& latents, const GenerateRequest& r, const Pipeline& p, bool img2img) {
  if (!r.check_finite || finite(latents)) return;
  throw NonFiniteError(img2img ? "the starting latents hold NaN/Inf: the VAE (" + std::string(dtype_name(p.vae->dtype())) +
                                     ") encoded the init image to non-finite values"
                               : std::string("the starting latents hold NaN/Inf: the given latents are not finite"),
                       NonFiniteError::Stage::Start, 0, 0, img2img ? p.vae->dtype() : DType::F32);
}

// After a step: the first step whose latents are not finite is named (every later one would be too).
void check_step(const Tensor& latents, const Pipeline& p, const char* stage, const LoopState& ls) {
  if (!ls.req->check_finite || finite(latents)) return;
  std::ostringstream s;
  s << "latents became NaN/Inf at step " << *ls.step << " of " << ls.total << " (" << stage << ", UNet "
    << dtype_name(p.dtype) << ")";
  throw NonFiniteError(s.str(), NonFiniteError::Stage::Denoise, *ls.step, ls.total, p.dtype);
}

// The images of finite latents: a VAE that overflows (the classic fp16 SDXL VAE) ends here.
void check_decoded(const Tensor& images, const Pipeline& p, const GenerateRequest& r) {
  if (!r.check_finite || finite(images)) return;
  throw NonFiniteError("the decoded image holds NaN/Inf though its latents are finite (VAE decoder in " +
                           std::string(dtype_name(p.vae->dtype())) + ")",
                       NonFiniteError::Stage::Decode, 0, 0, p.vae->dtype());
}

Tensor denoise(const Pipeline& p, Scheduler& s, const std::vector<double>& ts, Tensor latents, const UNetInputs& in,
               bool cfg, double g, double rescale, const char* stage, LoopState& ls) {
  for (double t : ts) {
    SD_NVTX_RANGE("denoise_step");
    Tensor x = cfg ? cat({latents, latents}, 0) : latents;
    x = s.scale_model_input(x, t);
    Tensor out = to(p.unet->forward(to(x, p.dtype), t, in.context, in.added, in.timestep_cond), DType::F32);
    ls.timings->unet_evals++;
    if (cfg) {
      const std::vector<Tensor> parts = chunk(out, 2, 0);
      const Tensor& uncond = parts[0];
      const Tensor& cond = parts[1];
      out = uncond + (cond - uncond) * g;
      if (rescale > 0.0) {
        // rescale_noise_cfg (Lin et al. 2023): back towards the conditional prediction's std.
        const Tensor rescaled = out * (std_per_sample(cond) / std_per_sample(out));
        out = rescaled * rescale + out * (1.0 - rescale);
      }
    }
    latents = s.step(out, t, latents);
    ++*ls.step;
    check_step(latents, p, stage, ls);
    if (ls.req->on_step) ls.req->on_step(ProgressEvent{stage, *ls.step, ls.total});
  }
  return latents;
}

Tensor decode(const Pipeline& p, const Tensor& latents, bool tiling) {
  SD_NVTX_RANGE("vae_decode");
  const nn::VaeConfig& c = p.vae->config();
  Tensor z;
  if (!c.latents_mean.empty() && !c.latents_std.empty()) {
    // diffusers' SDXL pipelines: latents * std / scaling_factor + mean (per channel).
    const int64_t C = latents.size(1);
    SD_CHECK(int64_t(c.latents_mean.size()) == C && int64_t(c.latents_std.size()) == C,
             "VAE config: latents_mean/latents_std need ", C, " values");
    const Tensor mean_t = from_vector(c.latents_mean, {1, C, 1, 1}, DType::F32, latents.device());
    const Tensor std_t = from_vector(c.latents_std, {1, C, 1, 1}, DType::F32, latents.device());
    z = div_scalar(latents * std_t, c.scaling_factor) + mean_t;
  } else {
    z = div_scalar(latents, c.scaling_factor);
  }
  z = to(z, p.vae->dtype());
  return to(tiling ? p.vae->decode_tiled(z) : p.vae->decode(z), DType::F32);
}

// Steps the base runs before the refiner (StableDiffusionXLPipeline with denoising_end).
size_t base_steps_before(const std::vector<double>& ts, double denoising_end, int64_t T) {
  const double cutoff = std::nearbyint(double(T) - denoising_end * double(T));  // Python round: half to even
  size_t n = 0;
  for (double t : ts)
    if (t >= cutoff) ++n;
  return n;
}

// StableDiffusionXLImg2ImgPipeline.get_timesteps with denoising_start: where the refiner starts.
int64_t refiner_start(const Scheduler& s, double denoising_start) {
  const int64_t T = s.config().num_train_timesteps;
  const double cutoff = std::nearbyint(double(T) - denoising_start * double(T));
  int64_t n = 0;
  for (double t : s.all_timesteps())
    if (t < cutoff) ++n;
  if (s.order() == 2 && n % 2 == 0) ++n;  // end after a 2nd-order step's second half
  return int64_t(s.all_timesteps().size()) - n;
}

}  // namespace

Tensor guidance_scale_embedding(double w, int64_t dim, int64_t n) {
  SD_CHECK(dim >= 4, "guidance_scale_embedding: dim must be >= 4, got ", dim);
  // float32 throughout, as the pipeline: w * 1000, log(10000) / (half - 1), exp(arange * -emb).
  const float ww = float(w) * 1000.0f;
  const int64_t half = dim / 2;
  const float step = float(std::log(10000.0f)) / float(half - 1);
  std::vector<float> row(size_t(dim), 0.0f);
  for (int64_t i = 0; i < half; ++i) {
    const float f = float(std::exp(double(float(i) * -step)));
    const float a = ww * f;
    row[size_t(i)] = float(std::sin(double(a)));
    row[size_t(half + i)] = float(std::cos(double(a)));
  }
  std::vector<float> all;
  for (int64_t b = 0; b < n; ++b) all.insert(all.end(), row.begin(), row.end());
  return from_floats(all, {n, dim});
}

SchedulerConfig request_scheduler_config(const Pipeline& pipe, const GenerateRequest& r) {
  SchedulerConfig c = r.scheduler.empty() ? pipe.scheduler_config : scheduler_config_for(r.scheduler, pipe.scheduler_config);
  if (!r.scheduler_overrides.empty()) c = c.with_class(c.class_name, r.scheduler_overrides);
  return c;
}

std::pair<std::string, std::string> a1111_sampler_name(const SchedulerConfig& c) {
  std::string schedule = c.use_karras_sigmas ? "Karras" : c.use_exponential_sigmas ? "Exponential" : "";
  const std::string& k = c.class_name;
  if (k == "DDIMScheduler") return {"DDIM", schedule};
  if (k == "DDPMScheduler") return {"DDPM", schedule};
  if (k == "PNDMScheduler") return {"PLMS", schedule};
  if (k == "EulerDiscreteScheduler") return {"Euler", schedule};
  if (k == "EulerAncestralDiscreteScheduler") return {"Euler a", schedule};
  if (k == "HeunDiscreteScheduler") return {"Heun", schedule};
  if (k == "UniPCMultistepScheduler") return {"UniPC", schedule};
  if (k == "LCMScheduler") return {"LCM", schedule};
  if (k == "DPMSolverMultistepScheduler") {
    const std::string order = c.solver_order == 1 ? "DPM++ 1S" : c.solver_order == 3 ? "DPM++ 3M" : "DPM++ 2M";
    return {order + (c.algorithm_type == "sde-dpmsolver++" ? " SDE" : ""), schedule};
  }
  return {k, schedule};
}

GenerateResult generate(const Pipeline& pipe, const GenerateRequest& r, NoiseStream& noise, const Pipeline* refiner) {
  SD_NVTX_RANGE("generate");
  autograd::NoGrad no_grad;
  const PipelineDefaults defaults = pipe.defaults();
  const bool img2img = r.init_image.defined();
  GenerateResult res;

  // ---- resolve and check the request ----
  Tensor init_image;
  if (img2img) {
    init_image = r.init_image.dim() == 3 ? unsqueeze(r.init_image, 0) : r.init_image;
    SD_CHECK(init_image.dim() == 4 && init_image.size(0) == 1 && init_image.size(1) == 3,
             "img2img: the init image must be [3, H, W] or [1, 3, H, W], got ", init_image.str());
    SD_CHECK(r.width == 0 || r.width == init_image.size(3), "img2img: --width ", r.width,
             " differs from the init image's width ", init_image.size(3), " (resize the image instead)");
    SD_CHECK(r.height == 0 || r.height == init_image.size(2), "img2img: --height ", r.height,
             " differs from the init image's height ", init_image.size(2), " (resize the image instead)");
    res.width = init_image.size(3);
    res.height = init_image.size(2);
    SD_CHECK(r.strength > 0.0 && r.strength <= 1.0, "img2img: strength must be in (0, 1], got ", r.strength);
    SD_CHECK(!r.latents.defined(), "img2img: starting latents cannot be given (they come from the init image)");
  } else {
    SD_CHECK(pipe.family != nn::ModelFamily::SDXLRefiner,
             "the SDXL refiner refines images: give it an --init_image, or use it as --refiner of an SDXL base model");
    res.width = r.width > 0 ? r.width : defaults.width;
    res.height = r.height > 0 ? r.height : defaults.height;
  }
  const int64_t H = res.height, W = res.width, f = pipe.vae_scale_factor();
  SD_CHECK(H % 8 == 0 && W % 8 == 0 && H % f == 0 && W % f == 0, "height and width must be multiples of ",
           std::max<int64_t>(8, f), ", got ", W, "x", H, " (width x height)");
  SD_CHECK(H > 0 && W > 0, "height and width must be positive");
  res.steps = r.steps > 0 ? r.steps : defaults.steps;
  res.guidance_scale = r.guidance_scale.value_or(defaults.guidance_scale);
  res.cfg = res.guidance_scale > 1.0 && !pipe.has_guidance_embedding();
  SD_CHECK(r.num_images >= 1, "num_images_per_prompt must be >= 1, got ", r.num_images);
  SD_CHECK(r.guidance_rescale >= 0.0 && r.guidance_rescale <= 1.0, "guidance_rescale must be in [0, 1], got ",
           r.guidance_rescale);
  const int64_t batch = r.batch_size > 0 ? std::min(r.batch_size, r.num_images) : r.num_images;
  const int64_t C = pipe.unet->config().in_channels, h = H / f, w = W / f;
  if (r.latents.defined())
    SD_CHECK(r.latents.dim() == 4 && r.latents.size(0) == r.num_images && r.latents.size(1) == C &&
                 r.latents.size(2) == h && r.latents.size(3) == w,
             "latents must be [", r.num_images, ", ", C, ", ", h, ", ", w, "] for ", r.num_images, " image(s) of ", W,
             "x", H, ", got ", r.latents.str());
  if (refiner) {
    SD_CHECK(pipe.is_sdxl() && refiner->is_sdxl(), "a refiner works with SDXL-type pipelines (base ",
             pipe.describe_family(), ", refiner ", refiner->describe_family(), ")");
    SD_CHECK(!img2img, "--refiner with --init_image is not supported: run the refiner alone on the image");
    SD_CHECK(r.denoising_end > 0.0 && r.denoising_end < 1.0, "denoising_end (high_noise_frac) must be in (0, 1), got ",
             r.denoising_end);
    SD_CHECK(refiner->vae_scale_factor() == f && refiner->unet->config().in_channels == C,
             "the refiner's latents differ from the base's");
  }

  // ---- text ----
  auto t0 = Clock::now();
  StageSetup base;
  base.pipe = &pipe;
  base.prompts = encode_prompts(pipe, r.prompt, r.negative_prompt, res.cfg, r.prompt_options);
  if (pipe.is_sdxl()) sdxl_time_ids(pipe, r, H, W, img2img, base);
  StageSetup ref;
  bool ref_cfg = false;
  if (refiner) {
    ref.pipe = refiner;
    ref_cfg = res.guidance_scale > 1.0 && !refiner->has_guidance_embedding();
    ref.prompts = encode_prompts(*refiner, r.prompt, r.negative_prompt, ref_cfg, r.prompt_options);
    sdxl_time_ids(*refiner, r, H, W, /*img2img_class=*/true, ref);
  }
  res.timings.text_encode_s = elapsed(t0, pipe.device);
  res.prompt_tokens = base.prompts.tokens;
  res.prompt_chunks = base.prompts.chunks;

  // ---- schedules ----
  res.scheduler = request_scheduler_config(pipe, r);
  std::unique_ptr<Scheduler> sched = make_scheduler(res.scheduler);
  sched->set_eta(r.eta);
  sched->set_noise_source([&noise](const Shape& s, DType dt, Device d, Generator&) { return noise.randn(s, dt, d); });
  auto start_base = [&] {
    sched->set_timesteps(res.steps, img2img ? r.strength : 1.0);
    if (pipe.is_sdxl() && !img2img) sched->start_at(0);  // StableDiffusionXLPipeline: set_begin_index(0)
  };
  // diffusers' img2img pipelines refuse a strength that leaves int(steps * strength) < 1 steps.
  SD_CHECK(!img2img || res.scheduler.class_name == "LCMScheduler" || int64_t(double(res.steps) * r.strength) >= 1,
           "img2img: strength ", r.strength, " with ", res.steps,
           " steps leaves no denoising step: raise it or the number of steps");
  start_base();
  std::vector<double> base_ts = sched->timesteps();
  if (refiner) base_ts.resize(base_steps_before(base_ts, r.denoising_end, sched->config().num_train_timesteps));
  SD_CHECK(!base_ts.empty(), img2img ? "img2img: strength " : "denoising_end ", img2img ? r.strength : r.denoising_end,
           " with ", res.steps, " steps leaves no denoising step: raise it or the number of steps");
  std::unique_ptr<Scheduler> rsched;
  std::vector<double> ref_ts;
  int64_t ref_first = 0;
  if (refiner) {
    rsched = make_scheduler(request_scheduler_config(*refiner, r));
    rsched->set_eta(r.eta);
    rsched->set_noise_source([&noise](const Shape& s, DType dt, Device d, Generator&) { return noise.randn(s, dt, d); });
    rsched->set_timesteps(res.steps);
    ref_first = refiner_start(*rsched, r.denoising_end);
    rsched->start_at(ref_first);
    ref_ts = rsched->timesteps();
  }
  int64_t step = 0;
  const int64_t batches = (r.num_images + batch - 1) / batch;
  LoopState ls{&r, &step, batches * int64_t(base_ts.size() + ref_ts.size()), &res.timings};
  res.steps_run = int64_t(base_ts.size() + ref_ts.size());

  // ---- img2img: the init image's posterior ----
  nn::DiagonalGaussian posterior;
  if (img2img) {
    t0 = Clock::now();
    const Tensor x = copy_to(init_image, pipe.vae->dtype(), pipe.device);
    posterior = r.vae_tiling ? pipe.vae->encode_tiled(x) : pipe.vae->encode(x);
    posterior.mean = to(posterior.mean, DType::F32);
    posterior.logvar = to(posterior.logvar, DType::F32);
    SD_CHECK(posterior.mean.size(2) == h && posterior.mean.size(3) == w, "img2img: the VAE made latents ",
             posterior.mean.str(), " for a ", W, "x", H, " image");
    res.timings.vae_encode_s = elapsed(t0, pipe.device);
  }

  std::vector<Tensor> images, latents_out;
  for (int64_t first = 0; first < r.num_images; first += batch) {
    const int64_t B = std::min(batch, r.num_images - first);
    Tensor latents;
    if (first > 0) start_base();  // fresh scheduler state for this batch
    if (img2img) {
      const Tensor eps = noise.randn(posterior.mean.shape(), DType::F32, pipe.device);
      const Tensor z = (posterior.mean + posterior.std() * eps) * pipe.vae->config().scaling_factor;
      const Tensor n = noise.randn({B, C, h, w}, DType::F32, pipe.device);
      latents = sched->add_noise(repeat_rows(z, B), n, base_ts.front());
    } else {
      const Tensor n = r.latents.defined() ? copy_to(narrow(r.latents, 0, first, B), DType::F32, pipe.device)
                                           : noise.randn({B, C, h, w}, DType::F32, pipe.device);
      latents = n * sched->init_noise_sigma();
    }
    check_start(latents, r, pipe, img2img);
    t0 = Clock::now();
    latents = denoise(pipe, *sched, base_ts, latents, unet_inputs(base, res.cfg, B, res.guidance_scale), res.cfg,
                      res.guidance_scale, r.guidance_rescale, refiner ? "base" : "denoise", ls);
    const Pipeline* last = &pipe;
    if (refiner) {
      if (first > 0) {
        rsched->set_timesteps(res.steps);
        rsched->start_at(ref_first);
      }
      latents = denoise(*refiner, *rsched, ref_ts, latents, unet_inputs(ref, ref_cfg, B, res.guidance_scale), ref_cfg,
                        res.guidance_scale, r.guidance_rescale, "refiner", ls);
      last = refiner;
    }
    res.timings.denoise_s += elapsed(t0, pipe.device);
    t0 = Clock::now();
    images.push_back(decode(*last, latents, r.vae_tiling));
    check_decoded(images.back(), *last, r);
    res.timings.decode_s += elapsed(t0, pipe.device);
    latents_out.push_back(latents);
  }
  res.images = copy_to(images.size() == 1 ? images[0] : cat(images, 0), DType::F32, Device::cpu());
  res.latents = copy_to(latents_out.size() == 1 ? latents_out[0] : cat(latents_out, 0), DType::F32, Device::cpu());
  return res;
}

}  // namespace sd::infer
