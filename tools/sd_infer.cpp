// sd_infer: text-to-image and image-to-image with Stable Diffusion models (SD1.x, SD2.x, SDXL,
// the SDXL refiner, SSD-1B, SDXL-Turbo, LCM), from a diffusers folder or a single-file checkpoint.
// See --help; the pipelines themselves are infer/generate.h.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "infer/generate.h"
#include "infer/image_io.h"
#include "infer/infotext.h"
#include "infer/pipeline.h"
#include "models/adapters/lora.h"
#include "models/adapters/textual_inversion.h"
#include "infer/scheduler.h"
#include "ops/view.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/safetensors.h"

namespace {

namespace fs = std::filesystem;
using namespace sd;
using namespace sd::infer;

void usage(FILE* out) {
  std::fprintf(out, "%s", R"(usage: sd_infer [--model <diffusers folder | file.safetensors | file.ckpt>] --prompt "..." [options]

Generates images with Stable Diffusion: SD1.x, SD2.x (epsilon and v-prediction), SDXL base, the SDXL
refiner, SSD-1B, SDXL-Turbo and LCM models, read from a diffusers pipeline folder (what
DiffusionPipeline.from_pretrained reads: model_index.json, unet/, vae/, text_encoder/, ...) or from a
single-file checkpoint as A1111/ComfyUI use them. Given the same starting latents it computes what
diffusers' StableDiffusion(XL)Pipeline computes. Writes one PNG per image into --output_dir, with the
generation parameters in the PNG text chunk "parameters" (A1111's format), never overwriting files.

model:
  --model PATH               diffusers folder, or .safetensors/.ckpt single file (default: the small
                             shapes model the project trained itself, infer/default_model, or
                             $SD_DATA_DIR/default_model: coloured shapes on coloured backgrounds, 64x64)
  --variant NAME             read <name>.<NAME>.safetensors weights (e.g. fp16), like variant="fp16"
  --family F                 single files: sd1|sd2|sdxl|sdxl_refiner|ssd1b when detection fails
  --prediction P             epsilon|v_prediction: overrides the scheduler config (SD2 768-v single
                             files default to v_prediction, as diffusers does)
  --tokenizer DIR            single files: a folder with vocab.json + merges.txt (default: the CLIP
                             vocabulary shipped in models/clip/vocab, or $SD_DATA_DIR/clip)
  --refiner PATH             SDXL refiner (folder or file) run after the base: the "ensemble of expert
                             denoisers" (base with denoising_end, refiner with denoising_start)
  --high_noise_frac F        the fraction of the schedule the base runs (default 0.8); alias --denoising_end
  --lora FILE[:SCALE]        LoRA adapter, kohya or diffusers/PEFT layout (repeatable; scale default 1)
  --embedding FILE           textual-inversion embedding: diffusers learned_embeds, A1111 emb_params,
                             SDXL clip_l/clip_g (repeatable); its trigger is the file's token or stem

prompt:
  --prompt TEXT              required, not empty. A1111 syntax: (word:1.3) weights, (word) x1.1,
                             [word] /1.1, BREAK; longer prompts are encoded in 75-token chunks
  --negative_prompt TEXT     SDXL without one uses zero negative conditioning (force_zeros_for_empty_prompt)
  --literal_prompt           take the prompt text literally and cut it at 77 tokens, as diffusers does
  --clip_skip N              diffusers' clip_skip (A1111's "Clip skip" is N+1); as diffusers, the
                             negative prompt is encoded without it

sampling:
  --steps N                  num_inference_steps (default: 50; SDXL-Turbo 1; LCM 4)
  --guidance_scale G         classifier-free guidance (default: SD 7.5, SDXL 5, Turbo 0, LCM 8.5 as
                             guidance embedding); CFG runs when G > 1
  --guidance_rescale R       rescale_noise_cfg factor in [0, 1] (default 0)
  --scheduler NAME           ddim, ddpm, pndm, euler, euler_a, heun, dpm++2m, dpm++2m_karras,
                             dpm++2m_sde, unipc, lcm: Class.from_config(model scheduler config);
                             default: the model's scheduler
  --timestep_spacing S       leading|linspace|trailing override (e.g. trailing for Turbo single files)
  --eta E                    DDIM eta (default 0)
  --width W, --height H      multiples of 8 (default: the UNet's sample_size x 8: 512 SD1, 768 SD2-768,
                             1024 SDXL, 512 Turbo)
  --num_images_per_prompt N  images to make (default 1)
  --batch_size B             images per UNet batch (default: all N at once, as one diffusers call)
  --seed S                   random seed (default: a random one, printed and saved in the PNG)
  --rng philox|torch-cuda    philox (default): the project's generator, the same on CPU and GPU;
                             torch-cuda: torch.randn on a CUDA generator, so a diffusers seed with
                             generator=torch.Generator("cuda").manual_seed(S) gives the same latents
  --latents FILE             starting latents (a .safetensors file with one tensor [N, 4, H/8, W/8]),
                             diffusers' latents= argument (multiplied by init_noise_sigma)

image-to-image:
  --init_image FILE          PNG/JPEG/... input (its size must be a multiple of 8; it sets the output size)
  --strength S               how much to change it (default 0.8; the refiner alone 0.3)

SDXL micro-conditioning (default: the output size, crop 0,0):
  --original_size WxH, --target_size WxH, --crops_coords_top_left TOP,LEFT,
  --negative_original_size WxH, --negative_target_size WxH, --negative_crops_coords_top_left TOP,LEFT,
  --aesthetic_score A, --negative_aesthetic_score A   (refiner; defaults 6 and 2.5)

runtime:
  --device cpu|cuda[:N]      (default cpu)
  --dtype fp32|fp16|bf16     UNet/text encoders (default fp32); the VAE stays fp32 where the model's
                             config asks (force_upcast, SDXL)
  --vae_tiling               decode (and encode) in tiles: large images in little memory
  --no_vae_upcast            run an fp16 VAE in fp16 (fp16-safe VAEs only)

output:
  --output_dir DIR           default outputs/
  --quiet                    no progress bar or messages (errors still go to stderr)
  --json                     print a JSON summary on stdout: files, parameters, timings per stage
                             (load, text encode, denoise, decode), it/s, peak memory
  --help

examples:
  sd_infer --prompt "a red circle on a blue background, top left"      (the built-in shapes model)
  sd_infer --model path/to/stable-diffusion-v1-5 --prompt "a cat" --steps 25 --dtype fp16 --device cuda
  sd_infer --model sd_xl_base_1.0.safetensors --prompt "a cat" --width 1024 --height 1024
)");
}

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::pair<int64_t, int64_t> parse_pair(const std::string& flag, const std::string& v, char sep) {
  const size_t p = v.find(sep);
  try {
    if (p != std::string::npos) {
      size_t a = 0, b = 0;
      const long long x = std::stoll(v.substr(0, p), &a), y = std::stoll(v.substr(p + 1), &b);
      if (a == p && b == v.size() - p - 1) return {x, y};
    }
  } catch (const std::exception&) {
  }
  throw UsageError(flag + ": expected two numbers separated by '" + std::string(1, sep) + "', got '" + v + "'");
}

// "WxH" -> (height, width), diffusers' order.
SizeHW parse_wh(const std::string& flag, const std::string& v) {
  auto [w, h] = parse_pair(flag, v, 'x');
  return {h, w};
}

double parse_double(const std::string& flag, const std::string& v) {
  try {
    size_t n = 0;
    const double d = std::stod(v, &n);
    if (n == v.size() && std::isfinite(d)) return d;
  } catch (const std::exception&) {
  }
  throw UsageError(flag + ": expected a number, got '" + v + "'");
}

int64_t parse_int(const std::string& flag, const std::string& v) {
  try {
    size_t n = 0;
    const long long i = std::stoll(v, &n);
    if (n == v.size()) return i;
  } catch (const std::exception&) {
  }
  throw UsageError(flag + ": expected an integer, got '" + v + "'");
}

// --lora FILE[:SCALE]: the scale is what follows the last ':' when it is a number (default 1).
struct LoraArg {
  std::string path;
  double scale = 1.0;
};
LoraArg parse_lora(const std::string& v) {
  const size_t p = v.rfind(':');
  if (p != std::string::npos && p > 0 && p + 1 < v.size()) {
    try {
      size_t n = 0;
      const double s = std::stod(v.substr(p + 1), &n);
      if (n == v.size() - p - 1 && std::isfinite(s)) return {v.substr(0, p), s};
    } catch (const std::exception&) {
    }
  }
  return {v, 1.0};
}

bool blank(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

struct Options {
  std::string model, refiner, variant, family, prediction, tokenizer;
  std::vector<LoraArg> loras;
  std::vector<std::string> embeddings;
  GenerateRequest req;
  bool have_prompt = false;
  std::optional<uint64_t> seed;
  std::string rng = "philox", latents_file, init_image, timestep_spacing;
  std::string device = "cpu", dtype = "fp32";
  bool vae_tiling = false, no_vae_upcast = false, quiet = false, json = false;
  std::string output_dir = "outputs";
  bool strength_given = false;
};

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage(stdout);
      std::exit(0);
    } else if (a == "--model") o.model = value();
    else if (a == "--refiner") o.refiner = value();
    else if (a == "--variant") o.variant = value();
    else if (a == "--tokenizer") o.tokenizer = value();
    else if (a == "--family") o.family = value();
    else if (a == "--prediction" || a == "--prediction_type") o.prediction = value();
    else if (a == "--lora") o.loras.push_back(parse_lora(value()));
    else if (a == "--embedding") o.embeddings.push_back(value());
    else if (a == "--prompt") o.req.prompt = value(), o.have_prompt = true;
    else if (a == "--negative_prompt") o.req.negative_prompt = value();
    else if (a == "--literal_prompt") o.req.prompt_options.a1111_syntax = false;
    else if (a == "--clip_skip") o.req.prompt_options.clip_skip = int(parse_int(a, value()));
    else if (a == "--steps" || a == "--num_inference_steps") {
      o.req.steps = parse_int(a, value());
      if (o.req.steps < 1) throw UsageError(a + " must be >= 1");
    }
    else if (a == "--guidance_scale" || a == "--cfg_scale") o.req.guidance_scale = parse_double(a, value());
    else if (a == "--guidance_rescale") o.req.guidance_rescale = parse_double(a, value());
    else if (a == "--scheduler" || a == "--sampler") o.req.scheduler = value();
    else if (a == "--timestep_spacing") o.timestep_spacing = value();
    else if (a == "--eta") o.req.eta = parse_double(a, value());
    else if (a == "--width") o.req.width = parse_int(a, value());
    else if (a == "--height") o.req.height = parse_int(a, value());
    else if (a == "--num_images_per_prompt" || a == "--num_images") o.req.num_images = parse_int(a, value());
    else if (a == "--batch_size") o.req.batch_size = parse_int(a, value());
    else if (a == "--seed") {
      const int64_t s = parse_int(a, value());
      if (s < 0) throw UsageError("--seed must be >= 0");
      o.seed = uint64_t(s);
    } else if (a == "--rng") o.rng = value();
    else if (a == "--latents") o.latents_file = value();
    else if (a == "--init_image" || a == "--image") o.init_image = value();
    else if (a == "--strength") o.req.strength = parse_double(a, value()), o.strength_given = true;
    else if (a == "--high_noise_frac" || a == "--denoising_end") o.req.denoising_end = parse_double(a, value());
    else if (a == "--original_size") o.req.original_size = parse_wh(a, value());
    else if (a == "--target_size") o.req.target_size = parse_wh(a, value());
    else if (a == "--negative_original_size") o.req.negative_original_size = parse_wh(a, value());
    else if (a == "--negative_target_size") o.req.negative_target_size = parse_wh(a, value());
    else if (a == "--crops_coords_top_left") o.req.crops_coords_top_left = parse_pair(a, value(), ',');
    else if (a == "--negative_crops_coords_top_left") o.req.negative_crops_coords_top_left = parse_pair(a, value(), ',');
    else if (a == "--aesthetic_score") o.req.aesthetic_score = parse_double(a, value());
    else if (a == "--negative_aesthetic_score") o.req.negative_aesthetic_score = parse_double(a, value());
    else if (a == "--device") o.device = value();
    else if (a == "--dtype") o.dtype = value();
    else if (a == "--vae_tiling") o.vae_tiling = true;
    else if (a == "--no_vae_upcast") o.no_vae_upcast = true;
    else if (a == "--output_dir" || a == "-o") o.output_dir = value();
    else if (a == "--quiet" || a == "-q") o.quiet = true;
    else if (a == "--json") o.json = true;
    else throw UsageError("unknown argument '" + a + "' (see --help)");
  }
  return o;
}

// Everything that can be checked before any weight is read.
void check_options(Options& o) {
  if (o.model.empty()) {
    o.model = sd::infer::default_model_dir();
    if (!fs::exists(fs::path(o.model) / "model_index.json"))
      throw UsageError("no --model given and the built-in model is missing at '" + o.model +
                       "' (set SD_DATA_DIR, or pass --model: a diffusers folder or a .safetensors/.ckpt file)");
  }
  if (!o.have_prompt) throw UsageError("--prompt is required");
  if (blank(o.req.prompt)) throw UsageError("--prompt is empty: describe the image to generate");
  if (o.req.width < 0 || o.req.height < 0 || o.req.width % 8 != 0 || o.req.height % 8 != 0)
    throw UsageError("--width and --height must be positive multiples of 8, got " + std::to_string(o.req.width) + "x" +
                     std::to_string(o.req.height));
  if (o.req.num_images < 1) throw UsageError("--num_images_per_prompt must be >= 1");
  if (o.req.batch_size < 0) throw UsageError("--batch_size must be >= 1");
  if (o.req.prompt_options.clip_skip < 0) throw UsageError("--clip_skip must be >= 0");
  if (!o.req.scheduler.empty()) {
    const auto& names = scheduler_short_names();
    if (std::find(names.begin(), names.end(), o.req.scheduler) == names.end()) {
      std::string list;
      for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
      throw UsageError("unknown scheduler \"" + o.req.scheduler + "\" (known: " + list + ")");
    }
  }
  if (!o.timestep_spacing.empty()) {
    if (o.timestep_spacing != "leading" && o.timestep_spacing != "linspace" && o.timestep_spacing != "trailing")
      throw UsageError("--timestep_spacing must be leading, linspace or trailing, got '" + o.timestep_spacing + "'");
    o.req.scheduler_overrides = nlohmann::json{{"timestep_spacing", o.timestep_spacing}}.dump();
  }
  if (o.rng != "philox" && o.rng != "torch-cuda" && o.rng != "torch_cuda")
    throw UsageError("--rng must be philox or torch-cuda, got '" + o.rng + "'");
  if (o.dtype != "fp32" && o.dtype != "fp16" && o.dtype != "bf16" && o.dtype != "float32" && o.dtype != "float16" &&
      o.dtype != "bfloat16")
    throw UsageError("--dtype must be fp32, fp16 or bf16, got '" + o.dtype + "'");
  if (!o.init_image.empty() && !o.latents_file.empty())
    throw UsageError("--latents and --init_image exclude each other (img2img latents come from the image)");
  for (const auto& l : o.loras)
    if (!fs::is_regular_file(l.path)) throw UsageError("--lora '" + l.path + "' does not exist");
  for (const auto& e : o.embeddings)
    if (!fs::exists(e)) throw UsageError("--embedding '" + e + "' does not exist");
  if (!fs::exists(o.model)) throw UsageError("--model '" + o.model + "' does not exist");
  if (!o.refiner.empty() && !fs::exists(o.refiner)) throw UsageError("--refiner '" + o.refiner + "' does not exist");
  if (!o.init_image.empty() && !fs::is_regular_file(o.init_image))
    throw UsageError("--init_image '" + o.init_image + "' does not exist");
  if (!o.latents_file.empty() && !fs::is_regular_file(o.latents_file))
    throw UsageError("--latents '" + o.latents_file + "' does not exist");
}

// ---- progress bar on stderr ----
class Progress {
 public:
  explicit Progress(bool on) : on_(on), tty_(isatty(fileno(stderr))) {}
  void update(const ProgressEvent& e) {
    if (!on_) return;
    const auto now = std::chrono::steady_clock::now();
    if (e.step == 1) start_ = now;  // the first step includes warm-up: rates count from its end
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double rate = e.step > 1 && secs > 0 ? double(e.step - 1) / secs : 0.0;
    const double eta = rate > 0 ? double(e.total - e.step) / rate : 0.0;
    const int width = 30, fill = int(width * e.step / std::max<int64_t>(e.total, 1));
    std::string bar(size_t(fill), '=');
    if (fill < width) bar += '>' + std::string(size_t(width - fill - 1), ' ');
    char line[160];
    std::snprintf(line, sizeof(line), "%-7s %4lld/%-4lld [%s] %6.2f it/s  ETA %d:%02d", e.stage,
                  static_cast<long long>(e.step), static_cast<long long>(e.total), bar.c_str(), rate,
                  int(eta) / 60, int(eta) % 60);
    if (tty_) {
      std::fprintf(stderr, "\r%s", line);
      if (e.step == e.total) std::fprintf(stderr, "\n");
    } else if (e.step == e.total || e.step * 10 / e.total != (e.step - 1) * 10 / e.total) {
      std::fprintf(stderr, "%s\n", line);  // logs: about every 10%
    }
    std::fflush(stderr);
  }

 private:
  bool on_, tty_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// Reserves a file name no other file has (created empty, exclusively), so concurrent runs never
// pick the same one; the PNG then replaces it atomically.
std::string reserve_png_path(const std::string& dir, const std::string& prefix) {
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const std::string p = next_free_png_path(dir, prefix);
    const int fd = ::open(p.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (fd >= 0) {
      ::close(fd);
      return p;
    }
    if (errno != EEXIST) SD_FAIL("cannot create '", p, "': ", std::strerror(errno));
  }
  SD_FAIL("no free file name in '", dir, "'");
}

int64_t max_rss_bytes() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return int64_t(u.ru_maxrss) * 1024;  // Linux: kilobytes
}

int run(Options& o) {
  using Clock = std::chrono::steady_clock;
  const auto t_start = Clock::now();
  const bool talk = !o.quiet;
  auto say = [&](const std::string& s) {
    if (talk) std::fprintf(stderr, "%s\n", s.c_str());
  };

  PipelineOptions po;
  po.variant = o.variant;
  po.dtype = parse_dtype(o.dtype);
  po.device = parse_device(o.device);
  if (!o.family.empty()) po.family = nn::parse_family(o.family);
  if (!o.prediction.empty()) po.prediction = nn::parse_prediction(o.prediction);
  if (o.no_vae_upcast) po.vae_upcast = false;
  po.tokenizer_dir = o.tokenizer;
  // Inputs first: a bad image or latents file fails before minutes of loading.
  if (!o.init_image.empty()) o.req.init_image = load_image(o.init_image);
  if (!o.latents_file.empty()) {
    SafetensorsFile f = SafetensorsFile::open(o.latents_file);
    const auto names = f.keys();
    SD_CHECK(names.size() == 1, "--latents '", o.latents_file, "' must hold exactly one tensor, it holds ", names.size());
    o.req.latents = copy_to(f.get(names.front()), DType::F32, Device::cpu());
  }

  say("loading " + o.model + " ...");
  const auto t_load = Clock::now();
  std::shared_ptr<Pipeline> pipe = Pipeline::load(o.model, po);
  std::shared_ptr<Pipeline> refiner;
  if (!o.refiner.empty()) {
    PipelineOptions ro = po;
    ro.family = nn::ModelFamily::Unknown;
    refiner = Pipeline::load(o.refiner, ro);
  }
  // Adapters: LoRAs on the UNet and text encoders (applied on the fly; kept alive for the run),
  // embeddings as new tokens of the tokenizer(s) and rows of the text encoder(s).
  std::vector<nn::LoadedLora> loras;
  for (const auto& l : o.loras) {
    nn::LoraOptions lo;
    lo.multiplier = l.scale;
    loras.push_back(nn::load_lora(l.path, {pipe->unet.get(), pipe->text_encoder.get(), pipe->text_encoder_2.get()}, lo));
    const nn::LoraReport& rep = loras.back().report();
    if (!o.quiet) std::fprintf(stderr, "lora %s: %s\n", l.path.c_str(), rep.str().c_str());
  }
  nn::TextualInversions embeddings;
  for (const auto& e : o.embeddings) {
    nn::TextualInversionTargets targets;
    targets.first = {pipe->tokenizer ? &*pipe->tokenizer : nullptr, pipe->text_encoder.get()};
    targets.second = {pipe->tokenizer_2 ? &*pipe->tokenizer_2 : nullptr, pipe->text_encoder_2.get()};
    const auto& emb = embeddings.load(e, targets);
    if (!o.quiet) std::fprintf(stderr, "embedding %s: trigger '%s'\n", e.c_str(), emb.token.c_str());
  }
  if (!o.embeddings.empty()) o.req.prompt_options.embeddings = &embeddings;
  const double load_s = std::chrono::duration<double>(Clock::now() - t_load).count();
  if (pipe->family == nn::ModelFamily::SDXLRefiner && !o.strength_given) o.req.strength = 0.3;
  // The model hash reads every weight byte: overlap it with the generation.
  std::string model_hash, refiner_hash;
  std::thread hasher([&] {
    try {
      model_hash = pipe->model_hash();
      if (refiner) refiner_hash = refiner->model_hash();
    } catch (const std::exception&) {
      // an unreadable weights file already failed loading; leave the hash out
    }
  });

  const uint64_t seed = o.seed ? *o.seed : [] {
    std::random_device rd;
    return (uint64_t(rd()) << 32 | rd()) % 4294967296ull;  // 32-bit, like A1111's random seeds
  }();
  std::unique_ptr<NoiseStream> noise = make_noise_stream(o.rng, seed);
  Progress progress(talk);
  o.req.on_step = [&](const ProgressEvent& e) { progress.update(e); };
  o.req.vae_tiling = o.vae_tiling;

  say("model: " + pipe->describe_family() + " (" + pipe->pipeline_class + "), " + dtype_name(po.dtype) + " on " +
      po.device.str() + (refiner ? ", refiner " + refiner->describe_family() : "") + ", seed " + std::to_string(seed) +
      " (" + noise->describe() + ")");
  allocator_for(po.device).reset_peak();
  if (!po.device.is_cpu()) cpu_allocator().reset_peak();
  GenerateResult res;
  try {
    res = generate(*pipe, o.req, *noise, refiner.get());
  } catch (...) {
    hasher.join();
    throw;
  }
  hasher.join();

  // ---- images ----
  const auto [sampler, schedule] = a1111_sampler_name(res.scheduler);
  std::vector<std::string> written;
  for (int64_t i = 0; i < res.images.size(0); ++i) {
    Infotext info;
    info.prompt = o.req.prompt;
    info.negative_prompt = o.req.negative_prompt;
    info.steps = res.steps;
    info.sampler = sampler;
    info.schedule_type = schedule;
    info.cfg_scale = res.guidance_scale;
    info.seed = seed;
    info.width = res.width;
    info.height = res.height;
    info.model_hash = model_hash;
    info.model_name = pipe->model_name();
    info.clip_skip = o.req.prompt_options.clip_skip > 0 ? o.req.prompt_options.clip_skip + 1 : 0;
    if (o.req.init_image.defined()) info.denoising_strength = o.req.strength;
    info.batch_size = res.images.size(0);
    info.batch_pos = i;
    if (o.req.guidance_rescale > 0) info.extra.emplace_back("Guidance rescale", format_number(o.req.guidance_rescale));
    if (refiner) {
      info.extra.emplace_back("Refiner", refiner->model_name() + (refiner_hash.empty() ? "" : " [" + refiner_hash + "]"));
      info.extra.emplace_back("Refiner switch at", format_number(o.req.denoising_end));
    }
    info.extra.emplace_back("RNG", o.rng == "philox" ? "philox" : "torch-cuda");
    info.extra.emplace_back("Version", "sd_infer");
    const std::string path = reserve_png_path(o.output_dir, std::to_string(seed));
    try {
      save_png(path, select(res.images, 0, i), {{"parameters", format_a1111_parameters(info)}});
    } catch (...) {
      std::error_code ec;
      fs::remove(path, ec);  // the empty reservation
      throw;
    }
    written.push_back(path);
    say("wrote " + path);
  }

  // ---- summary ----
  const double total_s = std::chrono::duration<double>(Clock::now() - t_start).count();
  const int64_t batch = o.req.batch_size > 0 ? std::min(o.req.batch_size, o.req.num_images) : o.req.num_images;
  const int64_t batches = (o.req.num_images + batch - 1) / batch;
  const double its = res.timings.denoise_s > 0 ? double(res.steps_run * batches) / res.timings.denoise_s : 0.0;
  if (talk) {
    std::fprintf(stderr, "load %.2fs, text encode %.2fs, denoise %.2fs (%.2f it/s), decode %.2fs, total %.2fs\n", load_s,
                 res.timings.text_encode_s, res.timings.denoise_s, its, res.timings.decode_s, total_s);
  }
  if (o.json) {
    nlohmann::json j;
    j["images"] = written;
    j["model"] = o.model;
    j["family"] = pipe->describe_family();
    j["pipeline"] = pipe->pipeline_class;
    j["model_hash"] = model_hash;
    if (refiner) j["refiner"] = o.refiner;
    j["prompt"] = o.req.prompt;
    j["negative_prompt"] = o.req.negative_prompt ? nlohmann::json(*o.req.negative_prompt) : nlohmann::json();
    j["seed"] = seed;
    j["rng"] = o.rng;
    j["width"] = res.width;
    j["height"] = res.height;
    j["steps"] = res.steps;
    j["steps_run"] = res.steps_run;
    j["num_images"] = res.images.size(0);
    j["guidance_scale"] = res.guidance_scale;
    j["cfg"] = res.cfg;
    j["scheduler"] = res.scheduler.class_name;
    j["sampler"] = sampler + (schedule.empty() ? "" : " " + schedule);
    j["prompt_tokens"] = res.prompt_tokens;
    j["prompt_chunks"] = res.prompt_chunks;
    j["device"] = po.device.str();
    j["dtype"] = dtype_name(po.dtype);
    j["timings"] = {{"load_s", load_s},
                    {"text_encode_s", res.timings.text_encode_s},
                    {"vae_encode_s", res.timings.vae_encode_s},
                    {"denoise_s", res.timings.denoise_s},
                    {"decode_s", res.timings.decode_s},
                    {"total_s", total_s}};
    j["it_per_s"] = its;
    j["unet_evals"] = res.timings.unet_evals;
    j["peak_memory"] = {{"device_tensors_bytes", allocator_for(po.device).stats().peak_bytes},
                        {"cpu_tensors_bytes", cpu_allocator().stats().peak_bytes},
                        {"max_rss_bytes", max_rss_bytes()}};
    std::printf("%s\n", j.dump(2).c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse_args(argc, argv);
    check_options(o);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "sd_infer: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sd_infer: %s\n", e.what());
    return 2;
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    // A progress bar may have left the cursor mid-line.
    std::fprintf(stderr, "%ssd_infer: error: %s\n", isatty(fileno(stderr)) ? "\n" : "", e.what());
    return 1;
  }
}
