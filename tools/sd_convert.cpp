// sd_convert: Stable Diffusion checkpoints between diffusers folders and single files
// (.safetensors / .ckpt), LoRA files between the kohya and diffusers/PEFT layouts, and LoRAs merged into a
// model. See models/formats/single_file.h and models/adapters/lora_export.h.
#include <cmath>
#include <cstdio>
#include <set>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "infer/pipeline.h"
#include "models/adapters/lora.h"
#include "models/adapters/lora_export.h"
#include "models/clip/clip_text.h"
#include "models/formats/single_file.h"
#include "models/unet/unet.h"
#include "models/vae/vae.h"
#include "runtime/safetensors.h"
#include "runtime/error.h"
#include "train/flags.h"
#include "train/model_saving.h"

namespace {

namespace fs = std::filesystem;
using namespace sd;
using namespace sd::nn;

const char* kSummary = R"(Converts Stable Diffusion weights:
  folder -> file.safetensors    a diffusers folder (unet/, vae/, text_encoder/ ...) to one safetensors file
                                with original (ldm/sgm) names, as A1111, ComfyUI and kohya use them
  file   -> file.safetensors    re-save a single file (e.g. a .ckpt as safetensors, EMA weights, fp16)
  file   -> dir                 a single file to a diffusers folder (weights, configs, scheduler, tokenizers)
  --lora FILE                   a LoRA file to the other layout (kohya <-> diffusers/PEFT) against the model
                                given by --from, which resolves kohya's names
  --merge_lora FILE[:SCALE]     LoRAs merged into the --from model, written as a folder or a single file
  --init                        a new model with random weights from the configs of the --from folder
                                (model_index.json, unet/, vae/, text_encoder(_2)/config.json, tokenizer(s),
                                scheduler): what training from scratch starts with
.ckpt files are read without Python and without running their pickle: only tensors and inert training
metadata are accepted; any other Python global is refused by name.
diffusers' convert_diffusers_to_original_stable_diffusion.py flags work too: --model_path DIR
--checkpoint_path OUT.safetensors [--half] [--use_safetensors].)";

struct Options {
  std::string from, to, variant, tokenizer_from, lora, lora_format = "diffusers", precision;
  std::vector<std::string> merge;
  std::string family, prediction;
  bool use_ema = false, half = false, info = false, init = false;
  uint64_t seed = 0;
};

std::optional<DType> save_dtype(const Options& o) {
  if (o.half || o.precision == "fp16") return DType::F16;
  if (o.precision == "bf16") return DType::BF16;
  if (o.precision == "fp32") return DType::F32;
  return std::nullopt;
}

bool is_safetensors_path(const std::string& p) {
  return p.size() > 12 && p.compare(p.size() - 12, 12, ".safetensors") == 0;
}

int info(const Options& o, ModelFamily family) {
  if (fs::is_directory(o.from)) {
    DiffusersFolder f = read_diffusers_folder(o.from, o.variant);
    std::printf("diffusers folder, family %s\n", family_name(f.family));
    for (auto& [name, tensors] : f.components) std::printf("  %s: %zu tensors\n", name.c_str(), tensors.size());
    return 0;
  }
  SingleFileLoadOptions lo;
  lo.family = family;
  lo.use_ema = o.use_ema;
  SingleFileCheckpoint ck = load_single_file(o.from, lo);
  std::printf("single file: %s\n", ck.detected.describe().c_str());
  if (ck.global_step) std::printf("  global_step %lld\n", static_cast<long long>(*ck.global_step));
  for (auto& [name, src] : ck.components) std::printf("  %s: %zu tensors\n", name.c_str(), src->keys().size());
  std::printf("  ignored: %zu keys, unknown: %zu keys\n", ck.ignored.size(), ck.unknown.size());
  for (size_t i = 0; i < ck.unknown.size() && i < 20; ++i) std::printf("    unknown: %s\n", ck.unknown[i].c_str());
  return 0;
}

std::shared_ptr<infer::Pipeline> load_model(const Options& o, ModelFamily family) {
  infer::PipelineOptions po;
  po.variant = o.variant;
  po.family = family;
  po.vae_upcast = true;
  if (!o.prediction.empty()) po.prediction = parse_prediction(o.prediction);
  return infer::Pipeline::load(o.from, po);
}

LoraTargets targets_of(infer::Pipeline& p) {
  return {p.unet.get(), p.text_encoder.get(), p.text_encoder_2.get()};
}

// A LoRA file in the other layout, resolved against the model.
void convert_lora(const Options& o, ModelFamily family) {
  SD_CHECK(!o.from.empty(), "--lora needs --from: the model the LoRA is for (kohya names are resolved against its "
           "layers)");
  SD_CHECK(is_safetensors_path(o.to), "--lora writes a .safetensors file, not '", o.to, "'");
  auto pipe = load_model(o, family);
  LoraOptions lo;
  lo.strict = true;  // every key must address a layer, or the conversion would drop it
  LoadedLora lora = load_lora(o.lora, targets_of(*pipe), lo);
  LoraExportOptions eo;
  eo.format = o.lora_format == "kohya" ? LoraFormat::Kohya : LoraFormat::Diffusers;
  eo.sdxl = pipe->is_sdxl();
  eo.unet = pipe->unet.get();
  eo.dtype = save_dtype(o);
  save_lora(o.to, lora, eo);
  std::printf("%s -> %s (%s layout)\n", lora.report().str().c_str(), o.to.c_str(), o.lora_format.c_str());
}

// LoRAs merged into the weights, then the model written like a trained full fine-tune.
void merge_loras(const Options& o, ModelFamily family) {
  auto pipe = load_model(o, family);
  std::vector<LoadedLora> merged;
  for (const std::string& spec : o.merge) {
    std::string file = spec;
    double scale = 1.0;
    if (const size_t c = spec.rfind(':'); c != std::string::npos && !fs::exists(spec)) {
      file = spec.substr(0, c);
      scale = train::parse_double(spec.substr(c + 1));
      SD_CHECK(std::isfinite(scale), "--merge_lora ", spec, ": the scale must be a finite number");
    }
    LoraOptions lo;
    lo.mode = LoraMode::Merge;
    lo.multiplier = scale;
    lo.strict = true;
    merged.push_back(load_lora(file, targets_of(*pipe), lo));
    std::printf("merged %s at %g\n", merged.back().report().str().c_str(), scale);
  }
  train::PipelineSaveRequest req;
  req.source = o.from;
  req.variant = o.variant;
  req.output_dir = o.to;
  req.dtype = save_dtype(o).value_or(DType::F32);
  req.family = pipe->family;
  req.prediction = pipe->scheduler_config.prediction_type == "v_prediction" ? Prediction::VPrediction : Prediction::Epsilon;
  req.tokenizer_dir = o.tokenizer_from.empty() ? infer::clip_data_dir() : o.tokenizer_from;
  std::set<std::string> changed;
  for (const LoadedLora& l : merged)
    for (const auto& [component, n] : l.report().applied) changed.insert(component);
  for (const std::string& component : changed) {
    Module* m = component == "unet" ? static_cast<Module*>(pipe->unet.get())
                : component == "text_encoder" ? static_cast<Module*>(pipe->text_encoder.get())
                                              : static_cast<Module*>(pipe->text_encoder_2.get());
    for (auto& [k, t] : m->state_dict()) req.trained[component].emplace_back(k, t);
  }
  if (is_safetensors_path(o.to)) {
    fs::create_directories(fs::path(o.to).parent_path().empty() ? fs::path(".") : fs::path(o.to).parent_path());
    train::save_pipeline_single_file(req, o.to);
  } else {
    train::save_diffusers_pipeline(req);
  }
}

// A new pipeline folder with random weights (PyTorch's default initialisation ranges, drawn from the
// project's Philox stream: the same seed gives the same weights everywhere) from a folder of configs.
void init_model(const Options& o) {
  const fs::path src(o.from), out(o.to);
  SD_CHECK(fs::is_regular_file(src / "model_index.json"), "--init: '", o.from, "' has no model_index.json");
  SD_CHECK(!fs::exists(out) || fs::is_empty(out), "--init: '", o.to, "' exists and is not empty");
  const DType dtype = save_dtype(o).value_or(DType::F32);
  fs::create_directories(out);
  // Every file but weights is copied as it is (configs, tokenizers, scheduler, README, LICENSE ...).
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    if (!e.is_regular_file()) continue;
    const std::string n = e.path().filename().string();
    if (n.find(".safetensors") != std::string::npos || n.find(".bin") != std::string::npos) continue;
    const fs::path rel = e.path().lexically_relative(src);
    fs::create_directories((out / rel).parent_path());
    fs::copy_file(e.path(), out / rel, fs::copy_options::overwrite_existing);
  }
  uint64_t component = 0;
  std::function<void(Module&)> m_init_hook;
  auto narrow_raw = [](const Tensor& t, int64_t begin, int64_t n) { return as_strided(t, {n}, {1}, t.offset() + begin); };
  auto write = [&](Module& m, const std::string& name, const std::string& file) {
    m.init_parameters(o.seed * 1000003ull + (++component), DType::F32, Device::cpu());
    if (m_init_hook) m_init_hook(m);
    std::vector<std::pair<std::string, Tensor>> t;
    for (auto& [k, v] : m.state_dict()) t.emplace_back(k, copy_to(v, dtype, Device::cpu()));
    save_safetensors((out / name / file).string(), t, {{"format", "pt"}});
    std::printf("  %s: %lld parameters\n", name.c_str(), static_cast<long long>(m.num_parameters()));
  };
  if (fs::exists(src / "unet" / "config.json")) {
    UNet2DConditionModel unet(UNetConfig::from_file((src / "unet" / "config.json").string()));
    write(unet, "unet", "diffusion_pytorch_model.safetensors");
  }
  if (fs::exists(src / "vae" / "config.json")) {
    AutoencoderKL vae(VaeConfig::from_file((src / "vae" / "config.json").string()));
    // The posterior starts narrow (log-variance bias -6: std 0.05), so the decoder first sees latents
    // rather than noise and reconstruction learns; the KL term widens it where it can.
    m_init_hook = [narrow_raw](Module& m) {
      auto* v = dynamic_cast<AutoencoderKL*>(&m);
      if (!v || !v->quant_conv || !v->quant_conv->bias.defined()) return;
      const int64_t L = v->config().latent_channels;
      fill_(narrow_raw(v->quant_conv->bias, L, L), -6.0);
    };
    write(vae, "vae", "diffusion_pytorch_model.safetensors");
    m_init_hook = nullptr;
  }
  for (const char* te : {"text_encoder", "text_encoder_2"}) {
    if (!fs::exists(src / te / "config.json")) continue;
    ClipTextModel m(ClipTextConfig::from_file((src / te / "config.json").string()));
    write(m, te, "model.safetensors");
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  train::FlagParser p("sd_convert", kSummary);
  auto str = [](std::string& f) { return [&f](const std::string& v) { f = v; }; };
  auto sw = [](bool& f) { return [&f](const std::string&) { f = true; }; };
  const std::string I = "input and output", L = "LoRA", W = "weights";
  p.add({"from", "PATH", "", "diffusers folder, .safetensors or .ckpt", I, str(o.from), {"model_path"}});
  p.add({"to", "PATH", "", "output: a .safetensors file or a folder", I, str(o.to), {"checkpoint_path"}});
  p.add({"family", "F", "detected", "sd1|sd2|sdxl|sdxl_refiner|ssd1b, when detection from the keys fails", I,
         str(o.family)});
  p.add({"prediction", "P", "", "epsilon or v_prediction: needed for SD2 folders (768-v and 512-base weights look alike) "
         "unless the file has ComfyUI's v_pred marker; v_prediction writes that marker into files", I,
         str(o.prediction)});
  p.add({"variant", "V", "", "read <name>.<V>.safetensors files of a diffusers folder (e.g. fp16)", I, str(o.variant)});
  p.add({"tokenizer_from", "DIR", "the shipped CLIP vocabulary", "vocab.json + merges.txt for the tokenizer/ folders of "
         "a converted single file", I, str(o.tokenizer_from)});
  p.add({"use_ema", "", "", "take the UNet from the model_ema.* copy of a training checkpoint", I, sw(o.use_ema)});
  p.add({"info", "", "", "print what the input holds and exit", I, sw(o.info)});
  p.add({"init", "", "", "write a model with random weights from the --from folder's configs", I, sw(o.init)});
  p.add({"seed", "N", "0", "seed of --init's weights", I, [&o](const std::string& v) { o.seed = uint64_t(train::parse_int(v)); }});
  p.add({"lora", "FILE", "", "convert this LoRA file (kohya or diffusers/PEFT) for the --from model", L, str(o.lora)});
  p.add({"lora_format", "kohya|diffusers", "diffusers", "the layout --lora writes", L,
         [&o](const std::string& v) {
           SD_CHECK(v == "kohya" || v == "diffusers", "must be kohya or diffusers");
           o.lora_format = v;
         }});
  p.add({"merge_lora", "FILE[:SCALE]", "", "merge a LoRA into the --from model (repeatable)", L,
         [&o](const std::string& v) { o.merge.push_back(v); }, {}, true});
  p.add({"half", "", "", "store floating tensors as float16", W, sw(o.half)});
  p.add({"save_precision", "fp32|fp16|bf16", "as stored", "dtype of the written floating tensors", W,
         [&o](const std::string& v) {
           SD_CHECK(v == "fp32" || v == "fp16" || v == "bf16", "must be fp32, fp16 or bf16");
           o.precision = v;
         }});
  p.add_ignored("use_safetensors", false, "sd_convert always writes safetensors");
  try {
    if (!p.parse(argc, argv)) return 0;
    SD_CHECK(!o.from.empty(), "give the input with --from (or --model_path)");
    SD_CHECK(fs::exists(o.from), "--from '", o.from, "' does not exist");
    SD_CHECK(o.info || !o.to.empty(), "give the output with --to (or --checkpoint_path)");
    SD_CHECK(o.lora.empty() || o.merge.empty(), "--lora converts a LoRA file and --merge_lora writes a model: one at a time");
    SD_CHECK(o.lora.empty() || fs::is_regular_file(o.lora), "--lora '", o.lora, "' is not a file");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sd_convert: %s\n", e.what());
    return 2;
  }
  try {
    const ModelFamily family = o.family.empty() ? ModelFamily::Unknown : parse_family(o.family);
    if (o.info) return info(o, family);
    if (o.init) {
      init_model(o);
      std::printf("wrote %s\n", o.to.c_str());
      return 0;
    }
    if (!o.lora.empty()) {
      convert_lora(o, family);
      return 0;
    }
    if (!o.merge.empty()) {
      merge_loras(o, family);
      std::printf("wrote %s\n", o.to.c_str());
      return 0;
    }
    const std::optional<DType> dtype = save_dtype(o);
    const Prediction prediction = o.prediction.empty() ? Prediction::Unknown : parse_prediction(o.prediction);
    const bool to_file = is_safetensors_path(o.to);
    if (fs::is_directory(o.from)) {
      SD_CHECK(to_file, "a diffusers folder converts to a .safetensors file, not '", o.to, "'");
      FolderToFileOptions fo;
      fo.family = family;
      fo.variant = o.variant;
      fo.save.dtype = dtype;
      fo.save.prediction = prediction;
      diffusers_folder_to_single_file(o.from, o.to, fo);
    } else if (to_file) {
      SingleFileLoadOptions lo;
      lo.family = family;
      lo.use_ema = o.use_ema;
      SingleFileCheckpoint ck = load_single_file(o.from, lo);
      SD_CHECK(!ck.components.empty(), "'", o.from, "' holds no UNet, VAE or text encoder (", ck.detected.describe(), ")");
      SingleFileSaveOptions so;
      so.dtype = dtype;
      so.prediction = prediction != Prediction::Unknown ? prediction : ck.detected.prediction;
      save_single_file(o.to, ck.stored_tensors(), ck.family, so);
      if (!ck.unknown.empty())
        std::fprintf(stderr, "sd_convert: %zu keys no rule maps were left out, e.g. %s\n", ck.unknown.size(),
                     ck.unknown.front().c_str());
    } else {
      SingleFileLoadOptions lo;
      lo.family = family;
      const SingleFileCheckpoint ck = load_single_file(o.from, lo);  // reads the index only
      if (!ck.unknown.empty())
        std::fprintf(stderr, "sd_convert: %zu keys no rule maps are left out, e.g. %s\n", ck.unknown.size(),
                     ck.unknown.front().c_str());
      FileToFolderOptions fo;
      fo.load.family = family;
      fo.load.use_ema = o.use_ema;
      fo.prediction = prediction;
      fo.dtype = dtype;
      // The CLIP vocabulary ships with the project: converted folders get tokenizers by default.
      fo.tokenizer_from = o.tokenizer_from.empty() ? infer::clip_data_dir() : o.tokenizer_from;
      single_file_to_diffusers_folder(o.from, o.to, fo);
    }
    std::printf("wrote %s\n", o.to.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sd_convert: error: %s\n", e.what());
    return 1;
  }
}
