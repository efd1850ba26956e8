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
#include <functional>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "infer/generate.h"
#include "infer/device_choice.h"
#include "runtime/cuda_api.h"
#include "infer/image_io.h"
#include "infer/infotext.h"
#include "infer/sha256.h"
#include "infer/pipeline.h"
#include "infer/prompt_weights.h"
#include "train/flags.h"
#include "models/adapters/lora.h"
#include "models/adapters/textual_inversion.h"
#include "infer/scheduler.h"
#include "models/clip/unicode_text.h"
#include "ops/view.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/safetensors.h"

namespace {

namespace fs = std::filesystem;
using namespace sd;
using namespace sd::infer;

const char* kSummary =
    R"(Generates images with Stable Diffusion: SD1.x, SD2.x (epsilon and v-prediction), SDXL base, the SDXL
refiner, SSD-1B, SDXL-Turbo and LCM models, read from a diffusers pipeline folder (what
DiffusionPipeline.from_pretrained reads: model_index.json, unet/, vae/, text_encoder/, ...) or from a
single-file checkpoint as A1111/ComfyUI use them. Given the same starting latents it computes what
diffusers' StableDiffusion(XL)Pipeline computes. Writes one PNG per image into --output_dir, with the
generation parameters in the PNG text chunk "parameters" (A1111's format), never overwriting files.)";

const char* kEpilog = R"(examples:
  sd_infer --prompt "a red circle on a blue background, top left"      (the built-in shapes model)
  sd_infer --model path/to/stable-diffusion-v1-5 --prompt "a cat" --steps 25 --dtype fp16 --device cuda
  sd_infer --model sd_xl_base_1.0.safetensors --prompt "a cat" --width 1024 --height 1024
  sd_infer --prompt_file prompts.txt --seed 42          (one image per line of prompts.txt)
  sd_infer --config my_run.toml --seed 7                (flags from a TOML file; the command line wins)

A run whose latents or decoded image become NaN/Inf (an fp16 UNet or VAE that overflows, a LoRA scale
far too large) stops with an error naming the step instead of writing a black image.
)";

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

// --lora FILE[:SCALE], resolved in check_options once the file system can be asked.
struct LoraArg {
  std::string spec;  // as given
  std::string path;
  double scale = 1.0;
};

std::optional<double> finite_number(const std::string& v) {
  try {
    size_t n = 0;
    const double d = std::stod(v, &n);
    if (n == v.size() && std::isfinite(d)) return d;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

// A LoRA path must be a file: a folder (e.g. the trainer's output_dir) gets its own message.
void check_lora_path(const std::string& path) {
  if (fs::is_directory(path))
    throw UsageError("--lora '" + path + "' is a directory; expected a LoRA file (.safetensors, or .bin/.pt/.ckpt)" +
                     (fs::is_regular_file(fs::path(path) / "pytorch_lora_weights.safetensors")
                          ? ", e.g. '" + (fs::path(path) / "pytorch_lora_weights.safetensors").string() + "'"
                          : ""));
  if (!fs::exists(path)) throw UsageError("--lora '" + path + "' does not exist");
  if (!fs::is_regular_file(path)) throw UsageError("--lora '" + path + "' is not a regular file");
}

// The whole spec is the path when such a file exists (names may hold ':'); otherwise the scale is
// what follows the last ':' and must be a finite number: "x.safetensors:nan" or ":abc" is a bad scale,
// not a missing file.
LoraArg resolve_lora(const std::string& spec) {
  if (fs::is_regular_file(spec)) return {spec, spec, 1.0};
  const size_t p = spec.rfind(':');
  if (p == std::string::npos || p == 0) {
    check_lora_path(spec);
    return {spec, spec, 1.0};
  }
  LoraArg a{spec, spec.substr(0, p), 1.0};
  check_lora_path(a.path);
  const std::string scale = spec.substr(p + 1);
  const std::optional<double> v = finite_number(scale);
  if (!v)
    throw UsageError("--lora '" + spec + "': the scale '" + scale +
                     "' is not a finite number (FILE[:SCALE], e.g. " + a.path + ":0.8)");
  a.scale = *v;
  return a;
}

// --embedding: a file, or a diffusers folder holding learned_embeds.(safetensors|bin).
void check_embedding_path(const std::string& e) {
  if (fs::is_directory(e)) {
    if (!fs::is_regular_file(fs::path(e) / "learned_embeds.safetensors") &&
        !fs::is_regular_file(fs::path(e) / "learned_embeds.bin"))
      throw UsageError("--embedding '" + e +
                       "' is a directory without learned_embeds.safetensors or learned_embeds.bin; expected an "
                       "embedding file (.safetensors, .pt, .bin) or a diffusers textual-inversion folder");
    return;
  }
  if (!fs::exists(e)) throw UsageError("--embedding '" + e + "' does not exist");
  if (!fs::is_regular_file(e)) throw UsageError("--embedding '" + e + "' is not a regular file");
}

bool blank(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

// One prompt to generate for: --prompt, or a line of --prompt_file.
struct PromptLine {
  std::string text;
  int64_t line = 0;  // 1-based line of --prompt_file; 0 for --prompt
};

// Larger than any list of prompts a person writes; reading an unbounded file into memory is not
// something a mistyped path should be able to make sd_infer do.
constexpr size_t kMaxPromptFileBytes = 16u << 20;

std::string trimmed(const std::string& s) {
  const char* ws = " \t\r\n\f\v";
  const size_t b = s.find_first_not_of(ws);
  return b == std::string::npos ? std::string() : s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// A1111's "prompts from file": every line trimmed, blank lines skipped (a UTF-8 byte-order mark is
// dropped too). The file is untrusted input: its size is capped, and a NUL byte or invalid UTF-8 is an
// error naming the line, before any model is loaded. Pipes (/dev/stdin, <(...)) are read as well.
std::vector<PromptLine> read_prompt_file(const std::string& path) {
  if (fs::is_directory(path))
    throw UsageError("--prompt_file '" + path + "' is a directory; expected a text file with one prompt per line");
  if (!fs::exists(path)) throw UsageError("--prompt_file '" + path + "' does not exist");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UsageError("--prompt_file '" + path + "' cannot be read: " + std::strerror(errno));
  std::string data(kMaxPromptFileBytes + 1, '\0');
  f.read(data.data(), std::streamsize(data.size()));
  data.resize(size_t(f.gcount()));
  if (data.size() > kMaxPromptFileBytes)
    throw UsageError("--prompt_file '" + path + "' is larger than " + std::to_string(kMaxPromptFileBytes >> 20) +
                     " MiB; expected a text file with one prompt per line");
  if (data.rfind("\xEF\xBB\xBF", 0) == 0) data.erase(0, 3);
  std::vector<PromptLine> out;
  std::istringstream lines(data);
  std::string line;
  for (int64_t n = 1; std::getline(lines, line); ++n) {
    const std::string where = "--prompt_file '" + path + "' line " + std::to_string(n);
    if (line.find('\0') != std::string::npos) throw UsageError(where + " holds a NUL byte: not a text file");
    try {
      text::decode_utf8(line, "prompt");
    } catch (const Error&) {
      throw UsageError(where + " is not valid UTF-8 text");
    }
    std::string t = trimmed(line);
    if (!t.empty()) out.push_back({std::move(t), n});
  }
  if (out.empty()) throw UsageError("--prompt_file '" + path + "' holds no prompt (only blank lines)");
  return out;
}

struct Options {
  std::string model, refiner, variant, family, prediction, tokenizer, model_config;
  std::vector<LoraArg> loras;
  std::vector<std::string> embeddings;
  GenerateRequest req;
  bool have_prompt = false;
  std::string prompt_file;
  std::vector<PromptLine> prompts;  // what to generate for, resolved by check_options
  std::vector<fs::path> created_dirs;  // folders this run created for --output_dir, deepest first
  std::optional<uint64_t> seed;
  std::string rng = "philox", latents_file, init_image, timestep_spacing;
  std::string device, dtype;  // "" = chosen by infer::choose_device (GPU fp16 when present, else CPU fp32)
  std::string device_choice;   // what was picked and why
  bool vae_tiling = false, no_vae_upcast = false, channels_last = false, quiet = false, json = false;
  std::string output_dir = "outputs";
  bool strength_given = false;
};

// The flags, in the one parser every tool uses (train/flags.h): --help, --flag=value, --config FILE.toml.
// Returns false when --help was printed.
bool parse_args(int argc, char** argv, Options& o) {
  using train::FlagParser;
  FlagParser p("sd_infer", kSummary);
  p.set_epilog(kEpilog);
  auto text = [](std::string& f) { return [&f](const std::string& v) { f = v; }; };
  auto on = [](bool& f) { return [&f](const std::string&) { f = true; }; };
  auto integer = [](int64_t& f, const char* flag) { return [&f, flag](const std::string& v) { f = parse_int(flag, v); }; };
  auto number = [](auto& f, const char* flag) { return [&f, flag](const std::string& v) { f = parse_double(flag, v); }; };
  auto size_wh = [](std::optional<SizeHW>& f, const char* flag) {
    return [&f, flag](const std::string& v) { f = parse_wh(flag, v); };
  };
  const std::string M = "model", P = "prompt", S = "sampling", I = "image-to-image",
                    X = "SDXL micro-conditioning (default: the output size, crop 0,0)", R = "runtime", O = "output";
  p.add({"model", "PATH", "the built-in shapes model",
         "diffusers folder, or .safetensors/.ckpt single file. Without it: the small shapes model the project trained "
         "itself (infer/default_model, or $SD_DATA_DIR/default_model: coloured shapes on coloured backgrounds, 64x64)",
         M, text(o.model)});
  p.add({"variant", "NAME", "", "read <name>.<NAME>.safetensors weights (e.g. fp16), like variant=\"fp16\"", M,
         text(o.variant)});
  p.add({"family", "F", "detected", "single files: sd1|sd2|sdxl|sdxl_refiner|ssd1b when detection fails", M,
         text(o.family)});
  p.add({"prediction", "P", "the scheduler config", "epsilon|v_prediction: overrides the scheduler config (SD2 768-v "
         "single files default to v_prediction, as diffusers does)", M, text(o.prediction), {"prediction_type"}});
  p.add({"tokenizer", "DIR", "models/clip/vocab", "single files: a tokenizer folder (vocab.json + merges.txt, or "
         "tokenizer.json) instead of the CLIP vocabulary shipped in models/clip/vocab ($SD_DATA_DIR/clip)", M,
         text(o.tokenizer)});
  p.add({"model_config", "DIR", "the family preset", "single files: a diffusers folder of the same model whose "
         "unet/, vae/, text_encoder(_2)/ config.json, scheduler/ and tokenizer(_2)/ give the architecture, as diffusers' "
         "from_single_file(config=DIR): for fine-tunes whose settings (GroupNorm groups, head counts) differ from the "
         "family's, which the weights do not record", M, text(o.model_config)});
  p.add({"refiner", "PATH", "", "SDXL refiner (folder or file) run after the base: the \"ensemble of expert "
         "denoisers\" (base with denoising_end, refiner with denoising_start)", M, text(o.refiner)});
  p.add({"high_noise_frac", "F", "0.8", "the fraction of the schedule the base runs before the refiner", M,
         [&o](const std::string& v) { o.req.denoising_end = parse_double("--high_noise_frac", v); }, {"denoising_end"}});
  p.add({"lora", "FILE[:SCALE]", "", "LoRA adapter, kohya or diffusers/PEFT layout (repeatable; scale default 1, any "
         "finite number). A file whose keys name no layer of the model, or that holds NaN/Inf, is an error", M,
         [&o](const std::string& v) { o.loras.push_back({v, "", 1.0}); }, {}, true});
  p.add({"embedding", "FILE|DIR", "", "textual-inversion embedding: diffusers learned_embeds (file or its folder), "
         "A1111 emb_params, SDXL clip_l/clip_g (repeatable); its trigger is the file's token or stem", M,
         [&o](const std::string& v) { o.embeddings.push_back(v); }, {}, true});

  p.add({"prompt", "TEXT", "", "required (or --prompt_file), not empty. A1111 syntax: (word:1.3) weights, (word) x1.1, "
         "[word] /1.1, BREAK; longer prompts are encoded in 75-token chunks; a weight beyond +-1000 is refused", P,
         [&o](const std::string& v) { o.req.prompt = v, o.have_prompt = true; }});
  p.add({"prompt_file", "FILE", "", "one prompt per line, as A1111's \"prompts from file\" (lines trimmed, blank lines "
         "skipped; the text is the prompt, options on a line are not read): each line makes --num_images_per_prompt "
         "images with the same --seed and the other flags, so each PNG's parameters reproduce it with --prompt. The "
         "model loads once. Excludes --prompt", P, text(o.prompt_file)});
  p.add({"negative_prompt", "TEXT", "", "SDXL without one uses zero negative conditioning "
         "(force_zeros_for_empty_prompt)", P, [&o](const std::string& v) { o.req.negative_prompt = v; }});
  p.add({"literal_prompt", "", "", "take the prompt text literally and cut it at 77 tokens, as diffusers does", P,
         [&o](const std::string&) { o.req.prompt_options.a1111_syntax = false; }});
  p.add({"clip_skip", "N", "", "diffusers' clip_skip (A1111's \"Clip skip\" is N+1); as diffusers, the negative "
         "prompt is encoded without it", P,
         [&o](const std::string& v) { o.req.prompt_options.clip_skip = int(parse_int("--clip_skip", v)); }});

  p.add({"steps", "N", "50; SDXL-Turbo 1; LCM 4", "num_inference_steps", S,
         [&o](const std::string& v) {
           o.req.steps = parse_int("--steps", v);
           if (o.req.steps < 1) throw UsageError("--steps must be >= 1");
         },
         {"num_inference_steps"}});
  p.add({"guidance_scale", "G", "SD 7.5, SDXL 5, Turbo 0, LCM 8.5 as guidance embedding",
         "classifier-free guidance; CFG runs when G > 1", S, number(o.req.guidance_scale, "--guidance_scale"),
         {"cfg_scale"}});
  p.add({"guidance_rescale", "R", "0", "rescale_noise_cfg factor in [0, 1]", S,
         number(o.req.guidance_rescale, "--guidance_rescale")});
  p.add({"scheduler", "NAME", "the model's scheduler", "ddim, ddpm, pndm, euler, euler_a, heun, dpm++2m, "
         "dpm++2m_karras, dpm++2m_sde, unipc, lcm: Class.from_config(model scheduler config)", S, text(o.req.scheduler),
         {"sampler"}});
  p.add({"timestep_spacing", "S", "", "leading|linspace|trailing override (e.g. trailing for Turbo single files)", S,
         text(o.timestep_spacing)});
  p.add({"eta", "E", "0", "DDIM eta", S, number(o.req.eta, "--eta")});
  p.add({"width", "W", "the UNet's sample_size x 8: 512 SD1, 768 SD2-768, 1024 SDXL, 512 Turbo", "a multiple of 8", S,
         integer(o.req.width, "--width")});
  p.add({"height", "H", "as --width", "a multiple of 8", S, integer(o.req.height, "--height")});
  p.add({"num_images_per_prompt", "N", "1", "images to make", S, integer(o.req.num_images, "--num_images_per_prompt"),
         {"num_images"}});
  p.add({"batch_size", "B", "all N at once, as one diffusers call", "images per UNet batch", S,
         integer(o.req.batch_size, "--batch_size")});
  p.add({"seed", "S", "a random one, printed and saved in the PNG", "random seed", S,
         [&o](const std::string& v) {
           const int64_t s = parse_int("--seed", v);
           if (s < 0) throw UsageError("--seed must be >= 0");
           o.seed = uint64_t(s);
         }});
  p.add({"rng", "philox|torch-cuda", "philox", "philox: the project's generator, the same on CPU and GPU; "
         "torch-cuda: torch.randn on a CUDA generator, so a diffusers seed with "
         "generator=torch.Generator(\"cuda\").manual_seed(S) gives the same latents", S, text(o.rng)});
  p.add({"latents", "FILE", "", "starting latents (a .safetensors file with one tensor [N, 4, H/8, W/8]), diffusers' "
         "latents= argument (multiplied by init_noise_sigma); the PNG records the file's name and hash", S,
         text(o.latents_file)});

  p.add({"init_image", "FILE", "", "PNG/JPEG/... input (its size must be a multiple of 8; it sets the output size)", I,
         text(o.init_image), {"image"}});
  p.add({"strength", "S", "0.8; the refiner alone 0.3", "how much to change it", I,
         [&o](const std::string& v) { o.req.strength = parse_double("--strength", v), o.strength_given = true; }});

  p.add({"original_size", "WxH", "", "", X, size_wh(o.req.original_size, "--original_size")});
  p.add({"target_size", "WxH", "", "", X, size_wh(o.req.target_size, "--target_size")});
  p.add({"crops_coords_top_left", "TOP,LEFT", "", "", X,
         [&o](const std::string& v) { o.req.crops_coords_top_left = parse_pair("--crops_coords_top_left", v, ','); }});
  p.add({"negative_original_size", "WxH", "", "", X, size_wh(o.req.negative_original_size, "--negative_original_size")});
  p.add({"negative_target_size", "WxH", "", "", X, size_wh(o.req.negative_target_size, "--negative_target_size")});
  p.add({"negative_crops_coords_top_left", "TOP,LEFT", "", "", X, [&o](const std::string& v) {
           o.req.negative_crops_coords_top_left = parse_pair("--negative_crops_coords_top_left", v, ',');
         }});
  p.add({"aesthetic_score", "A", "6", "refiner", X, number(o.req.aesthetic_score, "--aesthetic_score")});
  p.add({"negative_aesthetic_score", "A", "2.5", "refiner", X,
         number(o.req.negative_aesthetic_score, "--negative_aesthetic_score")});

  p.add({"device", "cpu|cuda[:N]", "the first CUDA device when this build has CUDA and a GPU is present, else the CPU",
         "the first line of output says which was picked, and why", R, text(o.device)});
  p.add({"dtype", "fp32|fp16|bf16", "fp16 on a GPU, fp32 on the CPU", "UNet/text encoders; the VAE stays fp32 where "
         "the model's config asks (force_upcast, SDXL)", R, text(o.dtype)});
  p.add({"vae_tiling", "", "", "decode (and encode) in tiles: large images in little memory", R, on(o.vae_tiling)});
  p.add({"no_vae_upcast", "", "", "run an fp16 VAE in fp16 (fp16-safe VAEs only)", R, on(o.no_vae_upcast)});
  p.add({"channels_last", "", "", "run the UNet and VAE channels-last (NHWC), as diffusers' "
         "to(memory_format=torch.channels_last); same images", R, on(o.channels_last)});

  p.add({"output_dir", "DIR", "outputs", "created when missing and checked writable before the model loads", O,
         text(o.output_dir), {"o"}});
  p.add({"quiet", "", "", "no progress bar or messages (errors still go to stderr)", O, on(o.quiet), {"q"}});
  p.add({"json", "", "", "print a JSON summary on stdout: files, parameters, timings per stage (load, text encode, "
         "denoise, decode), it/s, peak memory", O, on(o.json)});
  return p.parse(argc, argv);
}

// The A1111 emphasis of a prompt, parsed now so that a weight that overflows stops the run before the
// model loads (the same parse runs again when the prompt is encoded).
void check_prompt_weights(const std::string& text, const std::string& where) {
  try {
    parse_prompt_weights(text);
  } catch (const Error& e) {
    throw UsageError(where + ": " + e.what());
  }
}

// --prompt or --prompt_file (not both) into o.prompts, each checked.
void resolve_prompts(Options& o) {
  if (o.have_prompt && !o.prompt_file.empty())
    throw UsageError("--prompt and --prompt_file exclude each other (put the prompt into the file as one more line)");
  if (!o.prompt_file.empty()) {
    o.prompts = read_prompt_file(o.prompt_file);
  } else {
    if (!o.have_prompt) throw UsageError("--prompt is required (or --prompt_file FILE, one prompt per line)");
    if (blank(o.req.prompt)) throw UsageError("--prompt is empty: describe the image to generate");
    o.prompts = {{o.req.prompt, 0}};
  }
  if (!o.req.prompt_options.a1111_syntax) return;
  for (const PromptLine& p : o.prompts)
    check_prompt_weights(p.text, p.line ? "--prompt_file '" + o.prompt_file + "' line " + std::to_string(p.line) : "--prompt");
  if (o.req.negative_prompt) check_prompt_weights(*o.req.negative_prompt, "--negative_prompt");
}

// Everything that can be checked before any weight is read.
void check_options(Options& o) {
  if (o.model.empty()) {
    o.model = sd::infer::default_model_dir();
    if (!fs::exists(fs::path(o.model) / "model_index.json"))
      throw UsageError("no --model given and the built-in model is missing at '" + o.model +
                       "' (set SD_DATA_DIR, or pass --model: a diffusers folder or a .safetensors/.ckpt file)");
  }
  resolve_prompts(o);
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
  if (!o.dtype.empty() && o.dtype != "fp32" && o.dtype != "fp16" && o.dtype != "bf16" && o.dtype != "float32" &&
      o.dtype != "float16" && o.dtype != "bfloat16")
    throw UsageError("--dtype must be fp32, fp16 or bf16, got '" + o.dtype + "'");
  if (!o.init_image.empty() && !o.latents_file.empty())
    throw UsageError("--latents and --init_image exclude each other (img2img latents come from the image)");
  for (auto& l : o.loras) l = resolve_lora(l.spec);
  for (const auto& e : o.embeddings) check_embedding_path(e);
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

// Creates --output_dir when missing (remembering which folders, deepest first, so a failed run can take
// them away again) and proves it writable by creating, writing and removing a file in it: a read-only
// folder, a path through a file or a full disk is reported before minutes of loading and denoising,
// not after them.
void prepare_output_dir(Options& o) {
  const fs::path dir = o.output_dir;
  std::error_code ec;
  SD_CHECK(!fs::exists(dir, ec) || fs::is_directory(dir, ec), "--output_dir '", o.output_dir, "' is not a directory");
  for (fs::path q = fs::absolute(dir, ec); !q.empty() && !fs::exists(q, ec); q = q.parent_path()) {
    o.created_dirs.push_back(q);
    if (q == q.parent_path()) break;
  }
  fs::create_directories(dir, ec);
  SD_CHECK(!ec, "--output_dir '", o.output_dir, "' cannot be created: ", ec.message());
  SD_CHECK(fs::is_directory(dir), "--output_dir '", o.output_dir, "' is not a directory");
  const fs::path probe = dir / (".sd_infer_write_test." + std::to_string(::getpid()));
  const int fd = ::open(probe.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
  SD_CHECK(fd >= 0, "--output_dir '", o.output_dir, "' is not writable: cannot create a file in it (",
           std::strerror(errno), ")");
  const bool wrote = ::write(fd, "sd", 2) == 2;
  const int write_errno = errno;
  ::close(fd);
  ::unlink(probe.c_str());
  SD_CHECK(wrote, "--output_dir '", o.output_dir, "' is not writable: ", std::strerror(write_errno));
}

// After a failed run: the folders prepare_output_dir created, when they are still empty.
void remove_created_dirs(const Options& o) {
  for (const fs::path& d : o.created_dirs) {
    std::error_code ec;
    fs::remove(d, ec);  // refuses a non-empty folder, which is what we want
  }
}

// What this tool's flags offer against a run whose numbers broke (generate.h NonFiniteError).
std::string non_finite_hint(const NonFiniteError& e, const Options& o) {
  std::vector<std::string> tips;
  const bool half = is_half(e.dtype);
  switch (e.stage) {
    case NonFiniteError::Stage::Start:
      if (!o.latents_file.empty()) tips.push_back("--latents '" + o.latents_file + "' holds NaN/Inf values");
      else if (half) tips.push_back("the VAE ran in " + std::string(dtype_name(e.dtype)) + ": drop --no_vae_upcast or use --dtype fp32");
      break;
    case NonFiniteError::Stage::Denoise:
      if (half) tips.push_back("with --dtype " + (o.dtype.empty() ? std::string(dtype_name(e.dtype)) : o.dtype) +
                               " try --dtype fp32");
      if (!o.loras.empty()) tips.push_back("a --lora scale too large, or a LoRA for another model?");
      if (o.req.guidance_scale && std::fabs(*o.req.guidance_scale) > 50)
        tips.push_back("--guidance_scale " + format_number(*o.req.guidance_scale) + " is far beyond the usual 1-15");
      break;
    case NonFiniteError::Stage::Decode:
      if (half)
        tips.push_back(o.no_vae_upcast ? "an fp16 VAE overflows on most models: drop --no_vae_upcast"
                                       : "the VAE ran in " + std::string(dtype_name(e.dtype)) + ": try --dtype fp32");
      break;
  }
  if (tips.empty()) tips.push_back("the model's weights may hold NaN/Inf");
  std::string out;
  for (const std::string& t : tips) out += (out.empty() ? "" : "; ") + t;
  return out + "; no image was written for it";
}

// Model hashes, computed on a thread while the first prompt generates (they read every weight byte).
class Hasher {
 public:
  Hasher(const Pipeline& pipe, const Pipeline* refiner)
      : t_([this, &pipe, refiner] {
          try {
            model_ = pipe.model_hash();
            if (refiner) refiner_ = refiner->model_hash();
          } catch (const std::exception&) {
            // an unreadable weights file already failed loading; leave the hash out
          }
        }) {}
  ~Hasher() { wait(); }
  void wait() {
    if (t_.joinable()) t_.join();
  }
  const std::string& model() { return wait(), model_; }
  const std::string& refiner() { return wait(), refiner_; }
  // The starting-latents file's SHA-256, first 10 hex digits (as A1111's model hash); computed once.
  const std::string& latents(const std::string& path) {
    if (latents_.empty()) latents_ = sha256_files_hex({path}).substr(0, 10);
    return latents_;
  }

 private:
  std::string model_, refiner_, latents_;
  std::thread t_;  // last: starts once the strings exist
};

struct Loaded {
  std::shared_ptr<Pipeline> pipe, refiner;
  std::vector<nn::LoadedLora> loras;  // applied on the fly; kept alive for the run
  nn::TextualInversions embeddings;
};

// Adapters: LoRAs on the UNet and text encoders, embeddings as new tokens of the tokenizer(s) and
// rows of the text encoder(s).
void load_adapters(Options& o, Loaded& m) {
  Pipeline& pipe = *m.pipe;
  for (const auto& l : o.loras) {
    nn::LoraOptions lo;
    lo.multiplier = l.scale;
    m.loras.push_back(nn::load_lora(l.path, {pipe.unet.get(), pipe.text_encoder.get(), pipe.text_encoder_2.get()}, lo));
    if (!o.quiet) std::fprintf(stderr, "lora %s: %s\n", l.path.c_str(), m.loras.back().report().str().c_str());
  }
  for (const auto& e : o.embeddings) {
    nn::TextualInversionTargets targets;
    targets.first = {pipe.tokenizer ? &*pipe.tokenizer : nullptr, pipe.text_encoder.get()};
    targets.second = {pipe.tokenizer_2 ? &*pipe.tokenizer_2 : nullptr, pipe.text_encoder_2.get()};
    const auto& emb = m.embeddings.load(e, targets);
    if (!o.quiet) std::fprintf(stderr, "embedding %s: trigger '%s'\n", e.c_str(), emb.token.c_str());
  }
  if (!o.embeddings.empty()) o.req.prompt_options.embeddings = &m.embeddings;
}

// The A1111 parameters of image i of a result.
Infotext infotext_for(const Options& o, Loaded& m, Hasher& hashes, const GenerateResult& res, uint64_t seed, int64_t i) {
  const auto [sampler, schedule] = a1111_sampler_name(res.scheduler);
  Infotext info;
  info.prompt = o.req.prompt;
  info.negative_prompt = o.req.negative_prompt;
  info.steps = res.steps;
  info.sampler = sampler;
  info.schedule_type = schedule;
  info.cfg_scale = res.guidance_scale;
  info.seed = seed;
  if (!o.latents_file.empty())
    info.latents = fs::path(o.latents_file).filename().string() + " [" + hashes.latents(o.latents_file) + "]";
  info.width = res.width;
  info.height = res.height;
  info.model_hash = hashes.model();
  info.model_name = m.pipe->model_name();
  info.clip_skip = o.req.prompt_options.clip_skip > 0 ? o.req.prompt_options.clip_skip + 1 : 0;
  if (o.req.init_image.defined()) info.denoising_strength = o.req.strength;
  info.batch_size = res.images.size(0);
  info.batch_pos = i;
  if (o.req.guidance_rescale > 0) info.extra.emplace_back("Guidance rescale", format_number(o.req.guidance_rescale));
  if (m.refiner) {
    const std::string& rh = hashes.refiner();
    info.extra.emplace_back("Refiner", m.refiner->model_name() + (rh.empty() ? "" : " [" + rh + "]"));
    info.extra.emplace_back("Refiner switch at", format_number(o.req.denoising_end));
  }
  info.extra.emplace_back("RNG", o.rng == "philox" ? "philox" : "torch-cuda");
  info.extra.emplace_back("Version", "sd_infer");
  return info;
}

// One PNG per image of `res`, never overwriting; returns the paths.
std::vector<std::string> write_images(const Options& o, Loaded& m, Hasher& hashes, const GenerateResult& res,
                                      uint64_t seed) {
  std::vector<std::string> written;
  for (int64_t i = 0; i < res.images.size(0); ++i) {
    const std::string text = format_a1111_parameters(infotext_for(o, m, hashes, res, seed, i));
    const std::string path = reserve_png_path(o.output_dir, std::to_string(seed));
    try {
      save_png(path, select(res.images, 0, i), {{"parameters", text}});
    } catch (...) {
      std::error_code ec;
      fs::remove(path, ec);  // the empty reservation
      throw;
    }
    written.push_back(path);
    if (!o.quiet) std::fprintf(stderr, "wrote %s\n", path.c_str());
  }
  return written;
}

// generate() for one prompt; errors name the --prompt_file line, and a NaN/Inf stop gets the remedy.
GenerateResult generate_for(Options& o, Loaded& m, const PromptLine& p, uint64_t seed,
                            const std::function<void(const ProgressEvent&)>& on_step) {
  o.req.prompt = p.text;
  o.req.on_step = on_step;
  o.req.vae_tiling = o.vae_tiling;
  // Each prompt starts from the seed itself: its PNG's parameters reproduce it with --prompt.
  std::unique_ptr<NoiseStream> noise = make_noise_stream(o.rng, seed);
  const std::string where = p.line ? "--prompt_file '" + o.prompt_file + "' line " + std::to_string(p.line) + ": " : "";
  try {
    return generate(*m.pipe, o.req, *noise, m.refiner.get());
  } catch (const NonFiniteError& e) {
    throw Error(where + e.what() + "; " + non_finite_hint(e, o));
  } catch (const Error& e) {
    if (where.empty()) throw;
    throw Error(where + e.what());
  }
}

struct Totals {
  GenerateTimings timings;
  int64_t steps = 0;  // denoising steps run, all prompts and batches
};

void accumulate(Totals& t, const GenerateResult& res, int64_t batches) {
  t.timings.text_encode_s += res.timings.text_encode_s;
  t.timings.vae_encode_s += res.timings.vae_encode_s;
  t.timings.denoise_s += res.timings.denoise_s;
  t.timings.decode_s += res.timings.decode_s;
  t.timings.unet_evals += res.timings.unet_evals;
  t.steps += res.steps_run * batches;
}

void print_json(const Options& o, Loaded& m, Hasher& hashes, const GenerateResult& last, const Totals& t,
                const std::vector<std::string>& written, uint64_t seed, double load_s, double total_s, const PipelineOptions& po) {
  const auto [sampler, schedule] = a1111_sampler_name(last.scheduler);
  const double its = t.timings.denoise_s > 0 ? double(t.steps) / t.timings.denoise_s : 0.0;
  nlohmann::json j;
  j["images"] = written;
  j["model"] = o.model;
  j["family"] = m.pipe->describe_family();
  j["pipeline"] = m.pipe->pipeline_class;
  j["model_hash"] = hashes.model();
  if (m.refiner) j["refiner"] = o.refiner;
  if (o.prompt_file.empty()) j["prompt"] = o.prompts.front().text;
  else j["prompt_file"] = o.prompt_file;
  j["prompts"] = nlohmann::json::array();
  for (const PromptLine& p : o.prompts) j["prompts"].push_back(p.text);
  j["negative_prompt"] = o.req.negative_prompt ? nlohmann::json(*o.req.negative_prompt) : nlohmann::json();
  j["seed"] = seed;
  j["rng"] = o.rng;
  j["width"] = last.width;
  j["height"] = last.height;
  j["steps"] = last.steps;
  j["steps_run"] = last.steps_run;
  j["num_images"] = written.size();
  j["guidance_scale"] = last.guidance_scale;
  j["cfg"] = last.cfg;
  j["scheduler"] = last.scheduler.class_name;
  j["sampler"] = sampler + (schedule.empty() ? "" : " " + schedule);
  j["prompt_tokens"] = last.prompt_tokens;
  j["prompt_chunks"] = last.prompt_chunks;
  j["device"] = po.device.str();
  j["device_choice"] = o.device_choice;
  j["assumed_settings"] = m.pipe->assumed_settings;
  j["dtype"] = dtype_name(po.dtype);
  j["timings"] = {{"load_s", load_s},
                  {"text_encode_s", t.timings.text_encode_s},
                  {"vae_encode_s", t.timings.vae_encode_s},
                  {"denoise_s", t.timings.denoise_s},
                  {"decode_s", t.timings.decode_s},
                  {"total_s", total_s}};
  j["it_per_s"] = its;
  j["unet_evals"] = t.timings.unet_evals;
  j["peak_memory"] = {{"device_tensors_bytes", allocator_for(po.device).stats().peak_bytes},
                      {"cpu_tensors_bytes", cpu_allocator().stats().peak_bytes},
                      {"max_rss_bytes", max_rss_bytes()}};
  std::printf("%s\n", j.dump(2).c_str());
}

int run(Options& o) {
  using Clock = std::chrono::steady_clock;
  const auto t_start = Clock::now();
  const bool talk = !o.quiet;
  auto say = [&](const std::string& s) {
    if (talk) std::fprintf(stderr, "%s\n", s.c_str());
  };
  // The first line says where the run goes: a GPU in fp16 when there is one, unless told otherwise.
  const int gpus = cudart::device_count();
  const infer::DeviceChoice choice =
      infer::choose_device(o.device, o.dtype, gpus, gpus > 0 ? "" : cudart::unavailable_reason());
  o.device_choice = choice.why;
  say("device: " + choice.why);
  prepare_output_dir(o);

  PipelineOptions po;
  po.variant = o.variant;
  po.dtype = choice.dtype;
  po.device = choice.device;
  if (!o.family.empty()) po.family = nn::parse_family(o.family);
  if (!o.prediction.empty()) po.prediction = nn::parse_prediction(o.prediction);
  if (o.no_vae_upcast) po.vae_upcast = false;
  po.channels_last = o.channels_last;
  po.tokenizer_dir = o.tokenizer;
  po.model_config = o.model_config;
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
  Loaded m;
  m.pipe = Pipeline::load(o.model, po);
  if (!o.refiner.empty()) {
    PipelineOptions ro = po;
    ro.family = nn::ModelFamily::Unknown;
    m.refiner = Pipeline::load(o.refiner, ro);
  }
  // A single file does not record every setting of its architecture: say what the preset supplied.
  if (!m.pipe->assumed_settings.empty()) {
    say("single file: settings its weights do not record, assumed (if this model differs, give --model_config DIR, a "
        "diffusers folder of it):");
    for (const std::string& line : m.pipe->assumed_settings) say("  " + line);
  }
  load_adapters(o, m);
  const double load_s = std::chrono::duration<double>(Clock::now() - t_load).count();
  if (m.pipe->family == nn::ModelFamily::SDXLRefiner && !o.strength_given) o.req.strength = 0.3;
  Hasher hashes(*m.pipe, m.refiner.get());  // overlaps the first generation

  const uint64_t seed = o.seed ? *o.seed : [] {
    std::random_device rd;
    return (uint64_t(rd()) << 32 | rd()) % 4294967296ull;  // 32-bit, like A1111's random seeds
  }();
  Progress progress(talk);
  say("model: " + m.pipe->describe_family() + " (" + m.pipe->pipeline_class + "), " + dtype_name(po.dtype) + " on " +
      po.device.str() + (m.refiner ? ", refiner " + m.refiner->describe_family() : "") + ", seed " +
      std::to_string(seed) + " (" + make_noise_stream(o.rng, seed)->describe() + ")");
  allocator_for(po.device).reset_peak();
  if (!po.device.is_cpu()) cpu_allocator().reset_peak();

  const int64_t batch = o.req.batch_size > 0 ? std::min(o.req.batch_size, o.req.num_images) : o.req.num_images;
  const int64_t batches = (o.req.num_images + batch - 1) / batch;
  std::vector<std::string> written;
  GenerateResult res;
  Totals totals;
  for (size_t k = 0; k < o.prompts.size(); ++k) {
    const PromptLine& p = o.prompts[k];
    if (o.prompts.size() > 1)
      say("prompt " + std::to_string(k + 1) + "/" + std::to_string(o.prompts.size()) + " (line " +
          std::to_string(p.line) + "): " + p.text);
    res = generate_for(o, m, p, seed, [&](const ProgressEvent& e) { progress.update(e); });
    accumulate(totals, res, batches);
    for (std::string& path : write_images(o, m, hashes, res, seed)) written.push_back(std::move(path));
  }

  // ---- summary ----
  const double total_s = std::chrono::duration<double>(Clock::now() - t_start).count();
  if (talk) {
    const double its = totals.timings.denoise_s > 0 ? double(totals.steps) / totals.timings.denoise_s : 0.0;
    std::fprintf(stderr, "load %.2fs, text encode %.2fs, denoise %.2fs (%.2f it/s), decode %.2fs, total %.2fs\n", load_s,
                 totals.timings.text_encode_s, totals.timings.denoise_s, its, totals.timings.decode_s, total_s);
  }
  if (o.json) print_json(o, m, hashes, res, totals, written, seed, load_s, total_s, po);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    if (!parse_args(argc, argv, o)) return 0;
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
    remove_created_dirs(o);
    // A progress bar may have left the cursor mid-line.
    std::fprintf(stderr, "%ssd_infer: error: %s\n", isatty(fileno(stderr)) ? "\n" : "", e.what());
    return 1;
  }
}
