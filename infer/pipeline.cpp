#include "infer/pipeline.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "infer/hash_cache.h"
#include "infer/sha256.h"
#include "models/formats/diffusers_configs.h"
#include "models/formats/single_file.h"
#include "ops/cpu/gemm.h"
#include "runtime/error.h"

#ifndef SD_CLIP_VOCAB_DIR
#define SD_CLIP_VOCAB_DIR "models/clip/vocab"
#endif
#ifndef SD_DEFAULT_MODEL_DIR
#define SD_DEFAULT_MODEL_DIR "infer/default_model"
#endif

namespace sd::infer {
namespace fs = std::filesystem;
using json = nlohmann::json;
using nn::ModelFamily;
using nn::Prediction;

namespace {

json read_json(const fs::path& path) {
  std::ifstream in(path);
  SD_CHECK(in.good(), "pipeline: cannot read '", path.string(), "'");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    SD_FAIL("pipeline: '", path.string(), "' is not valid JSON: ", e.what());
  }
}

// The shard files an index names (in first-appearance order), or the file itself.
std::vector<std::string> weight_files_of(const std::string& path) {
  const std::string suffix = ".json";
  if (path.size() < suffix.size() || path.compare(path.size() - suffix.size(), suffix.size(), suffix) != 0)
    return {path};
  const json index = read_json(path);
  std::vector<std::string> files;
  if (index.contains("weight_map") && index["weight_map"].is_object())
    for (const auto& [key, file] : index["weight_map"].items()) {
      SD_CHECK(file.is_string(), "pipeline: '", path, "': weight_map entry \"", key, "\" is ", file.dump(),
               ", not a file name");
      const std::string f = (fs::path(path).parent_path() / file.get<std::string>()).string();
      if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
    }
  return files;
}

// diffusers' variant rule: the variant's files when present, else the plain ones (and a folder
// holding only fp16 files is read without being asked).
std::string pick_variant(const fs::path& dir, const std::string& variant) {
  auto has = [&](const std::string& v) {
    try {
      nn::find_diffusers_weights(dir.string(), v);
      return true;
    } catch (const Error&) {
      return false;
    }
  };
  if (!variant.empty() && has(variant)) return variant;
  if (variant.empty() && !has("") && has("fp16")) return "fp16";
  return "";  // find_diffusers_weights' error lists what was looked for
}

std::string transformers_weights(const fs::path& dir, const std::string& variant) {
  std::vector<std::string> names;
  if (!variant.empty())
    names = {"model." + variant + ".safetensors", "model.safetensors.index." + variant + ".json"};
  for (const char* n : {"model.safetensors", "model.safetensors.index.json", "model.fp16.safetensors",
                        "model.safetensors.index.fp16.json"})
    names.emplace_back(n);
  for (const std::string& n : names)
    if (fs::is_regular_file(dir / n)) return (dir / n).string();
  SD_FAIL("pipeline: '", dir.string(), "' has no model.safetensors (or shard index, or ",
          variant.empty() ? std::string("fp16") : variant, " variant)");
}

std::shared_ptr<nn::ClipTextModel> load_text_encoder(const fs::path& dir, const PipelineOptions& o,
                                                     std::vector<std::string>& files) {
  SD_CHECK(fs::is_regular_file(dir / "config.json"), "pipeline: '", dir.string(), "' has no config.json");
  auto model = std::make_shared<nn::ClipTextModel>(nn::ClipTextConfig::from_file((dir / "config.json").string()));
  const std::string weights = transformers_weights(dir, o.variant);
  nn::LoadOptions lo;
  lo.dtype = o.dtype;
  lo.device = o.device;
  model->load_transformers(*nn::SafetensorsSource::open(weights), lo);
  for (const std::string& f : weight_files_of(weights)) files.push_back(f);
  return model;
}

std::string token_string(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

bool vae_upcast_for(ModelFamily family, const nn::VaeConfig& cfg, const PipelineOptions& o) {
  if (o.vae_upcast) return *o.vae_upcast;
  const bool sdxl = family == ModelFamily::SDXL || family == ModelFamily::SDXLRefiner || family == ModelFamily::SSD1B;
  return sdxl && cfg.force_upcast;
}

// Family of a folder from its configs: SDXL conditioning (text_time) with or without the first
// encoder, SSD-1B's attention-free mid block, SD2's OpenCLIP (gelu) text encoder.
ModelFamily folder_family(const Pipeline& p) {
  const nn::UNetConfig& u = p.unet->config();
  if (u.addition_embed_type == "text_time") {
    if (!p.text_encoder) return ModelFamily::SDXLRefiner;
    return u.mid_block_type == "UNetMidBlock2D" ? ModelFamily::SSD1B : ModelFamily::SDXL;
  }
  if (p.text_encoder && p.text_encoder->config().hidden_act == nn::ClipActivation::Gelu) return ModelFamily::SD2;
  return ModelFamily::SD1;
}

std::string prediction_override(const PipelineOptions& o) {
  if (o.prediction == Prediction::Unknown) return "";
  return json{{"prediction_type", nn::prediction_name(o.prediction)}}.dump();
}

// model_index.json: the types of the keys read, and the class of each component sd builds (an
// unknown class would otherwise be loaded as whatever sd assumes the component is).
void check_model_index(const json& index, const fs::path& path) {
  const std::string where = "'" + path.string() + "'";
  SD_CHECK(index.is_object(), where, " is not a JSON object");
  if (index.contains("_class_name"))
    SD_CHECK(index["_class_name"].is_string(), where, ": \"_class_name\" is ", index["_class_name"].dump(),
             ", not a pipeline class name");
  for (const char* k : {"force_zeros_for_empty_prompt", "requires_aesthetics_score"})
    if (index.contains(k))
      SD_CHECK(index[k].is_boolean(), where, ": \"", k, "\" is ", index[k].dump(), ", not true or false");
  struct Component {
    const char* name;
    std::vector<std::string> classes;  // empty: any name ending in `suffix`
    const char* suffix;
  };
  const Component components[] = {
      {"unet", {"UNet2DConditionModel"}, ""},
      {"vae", {"AutoencoderKL"}, ""},
      {"text_encoder", {"CLIPTextModel", "CLIPTextModelWithProjection"}, ""},
      {"text_encoder_2", {"CLIPTextModel", "CLIPTextModelWithProjection"}, ""},
      {"tokenizer", {"CLIPTokenizer", "CLIPTokenizerFast"}, ""},
      {"tokenizer_2", {"CLIPTokenizer", "CLIPTokenizerFast"}, ""},
      {"scheduler", {}, "Scheduler"},  // the class itself is checked with scheduler_config.json
  };
  for (const Component& c : components) {
    if (!index.contains(c.name) || !index[c.name].is_array() || index[c.name].size() != 2 || index[c.name][0].is_null())
      continue;  // absent or [null, null]: no such component
    const json& cls = index[c.name][1];
    SD_CHECK(cls.is_string(), where, ": component \"", c.name, "\" has class ", cls.dump(), ", not a class name");
    const std::string name = cls.get<std::string>();
    bool ok = std::find(c.classes.begin(), c.classes.end(), name) != c.classes.end();
    if (c.classes.empty()) {
      const std::string suffix = c.suffix;
      ok = name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    }
    std::string expected;
    for (const std::string& e : c.classes) expected += (expected.empty() ? "" : " or ") + e;
    SD_CHECK(ok, where, ": component \"", c.name, "\" is a ", name, ", which sd cannot load (expected ",
             expected.empty() ? std::string("a diffusers scheduler") : expected, ")");
  }
}

void load_folder(Pipeline& p, const fs::path& dir, const PipelineOptions& o) {
  const fs::path index_path = dir / "model_index.json";
  SD_CHECK(fs::is_regular_file(index_path), "'", dir.string(),
           "' is not a diffusers pipeline folder: it has no model_index.json (expected model_index.json, unet/, "
           "vae/, text_encoder/, tokenizer/, scheduler/), nor is it a single-file checkpoint");
  const json index = read_json(index_path);
  check_model_index(index, index_path);
  p.pipeline_class = index.value("_class_name", std::string());
  auto present = [&](const char* name) {
    return index.contains(name) && index[name].is_array() && index[name].size() == 2 && !index[name][0].is_null() &&
           fs::is_directory(dir / name);
  };
  for (const char* required : {"unet", "vae", "scheduler"})
    SD_CHECK(present(required), "'", dir.string(), "' (", p.pipeline_class, ") has no ", required,
             "/ component: a Stable Diffusion pipeline needs a UNet, a VAE and CLIP text encoders");
  SD_CHECK(present("text_encoder") || present("text_encoder_2"), "'", dir.string(), "' has no text encoder");

  std::vector<std::string> files;
  const std::string unet_variant = pick_variant(dir / "unet", o.variant);
  p.unet = nn::UNet2DConditionModel::from_pretrained((dir / "unet").string(), o.dtype, o.device, unet_variant);
  for (const std::string& f : weight_files_of(nn::find_diffusers_weights((dir / "unet").string(), unet_variant)))
    files.push_back(f);
  if (present("text_encoder")) {
    p.text_encoder = load_text_encoder(dir / "text_encoder", o, files);
    SD_CHECK(present("tokenizer"), "'", dir.string(), "' has a text_encoder but no tokenizer/");
    p.tokenizer = load_tokenizer_folder((dir / "tokenizer").string());
  }
  if (present("text_encoder_2")) {
    p.text_encoder_2 = load_text_encoder(dir / "text_encoder_2", o, files);
    SD_CHECK(present("tokenizer_2"), "'", dir.string(), "' has a text_encoder_2 but no tokenizer_2/");
    p.tokenizer_2 = load_tokenizer_folder((dir / "tokenizer_2").string());
  }
  p.family = folder_family(p);

  const nn::VaeConfig vcfg = nn::VaeConfig::from_file((dir / "vae" / "config.json").string());
  const std::string vae_variant = pick_variant(dir / "vae", o.variant);
  p.vae = nn::AutoencoderKL::from_pretrained((dir / "vae").string(), o.dtype, o.device, vae_variant,
                                             vae_upcast_for(p.family, vcfg, o));
  for (const std::string& f : weight_files_of(nn::find_diffusers_weights((dir / "vae").string(), vae_variant)))
    files.push_back(f);
  p.weight_files = files;

  p.scheduler_config =
      SchedulerConfig::from_file((dir / "scheduler" / "scheduler_config.json").string(), "", prediction_override(o));
  const bool sdxl_class = p.pipeline_class.rfind("StableDiffusionXL", 0) == 0 || p.is_sdxl();
  p.force_zeros_for_empty_prompt = sdxl_class && index.value("force_zeros_for_empty_prompt", true);
  p.requires_aesthetics_score = index.value("requires_aesthetics_score", false);
  SD_CHECK(!p.requires_aesthetics_score || p.is_sdxl(), "'", dir.string(),
           "': requires_aesthetics_score needs an SDXL-type pipeline");
}

// Where a single file's architecture comes from: the family preset (what the tensors' shapes decide,
// read from them; the rest from the family's hub config), or the config files of a diffusers folder of
// the same model (PipelineOptions::model_config).
class ArchitectureSource {
 public:
  ArchitectureSource(std::string file, ModelFamily family, const std::string& model_config)
      : file_(std::move(file)), family_(family), dir_(model_config) {
    if (dir_.empty()) return;
    SD_CHECK(fs::is_directory(dir_), "model config '", dir_, "' is not a folder (expected a diffusers folder of the "
             "same model: unet/config.json, vae/config.json, text_encoder/config.json, ...)");
    bool any = false;
    for (const char* c : {"unet", "vae", "text_encoder", "text_encoder_2"})
      any = any || fs::is_regular_file(fs::path(dir_) / c / "config.json");
    SD_CHECK(any, "model config '", dir_, "' holds none of unet/config.json, vae/config.json, "
             "text_encoder/config.json, text_encoder_2/config.json (expected a diffusers folder of the same model)");
  }
  // A component's config: the model config's file when it has one, else the family preset.
  struct ComponentConfig {
    std::string text;
    std::string source;  // the file, or "<single file> (<component>: <family> preset)", for messages
    bool preset = false;
  };
  template <class Preset>
  ComponentConfig config(const std::string& component, const char* name, Preset&& preset) const {
    if (!dir_.empty()) {
      const fs::path f = fs::path(dir_) / component / name;
      if (fs::is_regular_file(f)) return {read_json(f).dump(), f.string(), false};
    }
    return {preset(), file_ + " (" + component + ": " + preset_name() + ")", true};
  }
  // A folder of the model config ("" when there is none).
  std::string folder(const char* name) const {
    if (dir_.empty()) return "";
    const fs::path f = fs::path(dir_) / name;
    return fs::is_directory(f) ? f.string() : "";
  }
  // Records the preset's values of `keys` (settings no tensor records) when the preset was used.
  void note_preset(Pipeline& p, const std::string& component, const ComponentConfig& c,
                   const std::vector<std::string>& keys) const {
    if (!c.preset) return;
    const json j = json::parse(c.text);
    std::string line = component + " (" + preset_name() + "):";
    bool first = true;
    for (const std::string& k : keys) {
      if (!j.contains(k) || j[k].is_null()) continue;
      line += std::string(first ? " " : ", ") + k + " " + (j[k].is_string() ? j[k].get<std::string>() : j[k].dump());
      first = false;
    }
    p.assumed_settings.push_back(line);
  }
  // Builds and loads a component; a failure says which architecture was tried and what to do.
  template <class F>
  void fit(const std::string& component, const ComponentConfig& c, F&& build) const {
    try {
      build();
    } catch (const Error& e) {
      SD_FAIL("'", file_, "' (", component, "): the weights do not fit the architecture ",
              c.preset ? "of the " + preset_name() + " (shapes read from the file, the other settings from the "
                         "family's hub config)"
                       : "of " + c.source,
              ": ", e.what(),
              c.preset ? " -- give the model's own configs (sd_infer --model_config DIR: a diffusers folder of this "
                         "model, as diffusers' from_single_file(config=DIR))"
                       : "");
    }
  }

 private:
  std::string preset_name() const { return nn::family_name(family_) + std::string(" preset"); }
  std::string file_;
  ModelFamily family_;
  std::string dir_;
};

void load_file(Pipeline& p, const std::string& path, const PipelineOptions& o) {
  nn::SingleFileLoadOptions lo;
  lo.family = o.family;
  lo.use_ema = o.use_ema;
  const nn::SingleFileCheckpoint ck = nn::load_single_file(path, lo);
  SD_CHECK(ck.family != ModelFamily::Unknown, "'", path, "': cannot tell which Stable Diffusion model this is (",
           ck.detected.describe(), "); pass --family sd1|sd2|sdxl|sdxl_refiner|ssd1b");
  for (const char* c : {nn::kUnet, nn::kVae})
    SD_CHECK(ck.components.count(c), "'", path, "' holds no ", c, " (", ck.detected.describe(),
             "): sd_infer needs a whole checkpoint (UNet, VAE and text encoders)");
  p.family = ck.family;
  const bool refiner = ck.family == ModelFamily::SDXLRefiner;
  const bool sdxl = refiner || ck.family == ModelFamily::SDXL || ck.family == ModelFamily::SSD1B;
  SD_CHECK(refiner || ck.components.count(nn::kTextEncoder), "'", path, "' holds no text encoder");
  SD_CHECK(!sdxl || ck.components.count(nn::kTextEncoder2), "'", path, "' holds no second (OpenCLIP bigG) text encoder");

  // What the weights cannot tell: SD2's prediction type. A ComfyUI v_pred marker decides; else
  // diffusers' rule for SD2 files (v-prediction unless trained for 875000 steps, the 512-base).
  Prediction pred = o.prediction != Prediction::Unknown ? o.prediction : ck.detected.prediction;
  if (pred == Prediction::Unknown && ck.family == ModelFamily::SD2)
    pred = ck.global_step && *ck.global_step == 875000 ? Prediction::Epsilon : Prediction::VPrediction;
  if (pred == Prediction::Unknown) pred = Prediction::Epsilon;

  const nn::ComponentKeyShapes shapes = ck.key_shapes();
  nn::LoadOptions opt;
  opt.dtype = o.dtype;
  opt.device = o.device;
  const ArchitectureSource arch(path, ck.family, o.model_config);

  const auto unet_cfg =
      arch.config("unet", "config.json", [&] { return nn::unet_config_json(ck.family, pred, shapes.at(nn::kUnet)); });
  arch.note_preset(p, "unet", unet_cfg, {"norm_num_groups", "attention_head_dim", "num_attention_heads", "sample_size",
                                         "upcast_attention"});
  arch.fit("unet", unet_cfg, [&] {
    p.unet =
        std::make_shared<nn::UNet2DConditionModel>(nn::UNetConfig::from_json_string(unet_cfg.text, unet_cfg.source));
    p.unet->load(*ck.components.at(nn::kUnet), opt);
  });

  const auto vae_cfg =
      arch.config("vae", "config.json", [&] { return nn::vae_config_json(ck.family, shapes.at(nn::kVae)); });
  arch.note_preset(p, "vae", vae_cfg, {"norm_num_groups", "scaling_factor", "force_upcast"});
  arch.fit("vae", vae_cfg, [&] {
    const nn::VaeConfig vcfg = nn::VaeConfig::from_json_string(vae_cfg.text, vae_cfg.source);
    p.vae = std::make_shared<nn::AutoencoderKL>(vcfg);
    const bool up = vae_upcast_for(ck.family, vcfg, o);
    p.vae->set_upcast(up);
    nn::LoadOptions vopt = opt;
    if (o.dtype == DType::F16 && up) vopt.dtype = DType::F32;
    p.vae->load(*ck.components.at(nn::kVae), vopt);
    p.vae->place(o.dtype, o.device);
  });

  auto encoder = [&](const char* component) {
    std::shared_ptr<nn::ClipTextModel> m;
    const auto c = arch.config(component, "config.json", [&] {
      return nn::text_encoder_config_json(ck.family, component, shapes.at(component));
    });
    arch.note_preset(p, component, c, {"num_attention_heads", "hidden_act", "layer_norm_eps"});
    arch.fit(component, c, [&] {
      m = std::make_shared<nn::ClipTextModel>(nn::ClipTextConfig::from_json(c.text, c.source));
      m->load_transformers(*ck.components.at(component), opt);
    });
    return m;
  };
  // Tokenizers: --tokenizer, else model_config's tokenizer(_2)/ folders, else the shipped CLIP vocabulary.
  // CLIP-L pads with <|endoftext|>; OpenCLIP (SD2, SDXL's second encoder) with "!" = id 0.
  const std::string vocab = o.tokenizer_dir.empty() ? clip_data_dir() : o.tokenizer_dir;
  TokenizerConfig first;
  first.pad_token = 0;
  const ClipTokenizer base = ClipTokenizer::from_folder(vocab, first);
  TokenizerConfig eos_pad, zero_pad;
  eos_pad.pad_token = base.eos_id();
  zero_pad.pad_token = 0;
  auto tokenizer = [&](const char* folder, const TokenizerConfig& preset) {
    const std::string dir = o.tokenizer_dir.empty() ? arch.folder(folder) : "";
    return dir.empty() ? base.with_config(preset) : load_tokenizer_folder(dir);
  };
  if (ck.components.count(nn::kTextEncoder)) {
    p.text_encoder = encoder(nn::kTextEncoder);
    p.tokenizer = tokenizer("tokenizer", ck.family == ModelFamily::SD2 ? zero_pad : eos_pad);
  }
  if (sdxl) {
    p.text_encoder_2 = encoder(nn::kTextEncoder2);
    p.tokenizer_2 = tokenizer("tokenizer_2", zero_pad);
  }
  const auto sched =
      arch.config("scheduler", "scheduler_config.json", [&] { return nn::scheduler_config_json(ck.family, pred); });
  arch.note_preset(p, "scheduler", sched, {"_class_name", "prediction_type", "timestep_spacing"});
  p.scheduler_config = SchedulerConfig::from_json_string(sched.text, sched.source, "", prediction_override(o));
  p.pipeline_class = refiner ? "StableDiffusionXLImg2ImgPipeline"
                     : sdxl  ? "StableDiffusionXLPipeline"
                             : "StableDiffusionPipeline";
  p.force_zeros_for_empty_prompt = sdxl && !refiner;
  p.requires_aesthetics_score = refiner;
  p.weight_files = {path};
}

}  // namespace

std::string clip_data_dir() {
  const char* env = std::getenv("SD_DATA_DIR");
  if (env && *env) return (fs::path(env) / "clip").string();
  return SD_CLIP_VOCAB_DIR;
}

std::string default_model_dir() {
  const char* env = std::getenv("SD_DATA_DIR");
  if (env && *env) return (fs::path(env) / "default_model").string();
  return SD_DEFAULT_MODEL_DIR;
}

ClipTokenizer load_tokenizer_folder(const std::string& dir) {
  const fs::path d(dir);
  // The pad token: special_tokens_map.json overrides tokenizer_config.json (transformers' rule).
  std::string pad;
  int max_length = 77;
  if (fs::is_regular_file(d / "tokenizer_config.json")) {
    const json c = read_json(d / "tokenizer_config.json");
    if (c.contains("pad_token")) pad = token_string(c["pad_token"]);
    if (c.contains("model_max_length")) {
      // transformers writes int(1e30) for "unset"; anything else must be a length CLIP can take
      // (BOS, at least one token, EOS; at most its 77 positions).
      const json& m = c["model_max_length"];
      const bool unset = m.is_number() && m.get<double>() >= 1e29;
      if (!unset) {
        SD_CHECK(m.is_number_integer() && m.get<int64_t>() >= 3 && m.get<int64_t>() <= 77, "tokenizer config '",
                 (d / "tokenizer_config.json").string(), "': \"model_max_length\" is ", m.dump(),
                 ", expected 3 to 77 (CLIP's positions) or transformers' unset value 1e30");
        max_length = int(m.get<int64_t>());
      }
    }
  }
  if (fs::is_regular_file(d / "special_tokens_map.json")) {
    const json s = read_json(d / "special_tokens_map.json");
    if (s.contains("pad_token") && !token_string(s["pad_token"]).empty()) pad = token_string(s["pad_token"]);
  }
  TokenizerConfig first;
  first.pad_token = 0;  // any id the vocabulary has until the real pad token is known
  ClipTokenizer tok = ClipTokenizer::from_folder(dir, first);
  TokenizerConfig cfg;
  cfg.max_length = max_length;
  cfg.pad_token = tok.eos_id();
  if (!pad.empty()) {
    const std::optional<int> id = tok.token_to_id(pad);
    SD_CHECK(id.has_value(), "tokenizer '", dir, "': pad token \"", pad, "\" is not in vocab.json");
    cfg.pad_token = *id;
  }
  return tok.with_config(cfg);
}

std::shared_ptr<Pipeline> Pipeline::load(const std::string& model, const PipelineOptions& options) {
  SD_CHECK(!model.empty(), "no model given (a diffusers pipeline folder or a .safetensors/.ckpt file)");
  SD_CHECK(fs::exists(model), "model '", model, "' does not exist");
  if (options.device.is_cpu()) cpu::warm_up_gemm();  // the CPU GEMMs' one-time set-up, counted as loading
  auto p = std::make_shared<Pipeline>();
  p->model_path = model;
  p->dtype = options.dtype;
  p->device = options.device;
  if (fs::is_directory(model)) {
    SD_CHECK(options.model_config.empty(), "model config '", options.model_config, "': '", model, "' is a diffusers "
             "folder, which has its own configs (a model config is for single-file checkpoints)");
    load_folder(*p, model, options);
  } else {
    p->single_file = true;
    load_file(*p, model, options);
  }
  if (p->text_encoder_2) p->text_encoder_2->name_for_tracing("text_encoder_2");
  if (options.channels_last) {
    p->unet->set_channels_last(true);
    if (p->vae) p->vae->set_channels_last(true);
  }
  const int64_t size = p->unet->config().sample_size[0] * p->vae_scale_factor();
  p->turbo = p->is_sdxl() && p->scheduler_config.timestep_spacing == "trailing" && size <= 512;
  return p;
}

PipelineDefaults Pipeline::defaults() const {
  PipelineDefaults d;
  d.height = unet->config().sample_size[0] * vae_scale_factor();
  d.width = unet->config().sample_size[1] * vae_scale_factor();
  if (is_sdxl()) d.guidance_scale = 5.0;
  if (turbo) {
    d.steps = 1;  // SDXL-Turbo's model card: 1 step, no guidance
    d.guidance_scale = 0.0;
  }
  if (is_lcm()) {
    d.steps = 4;
    // LCM-distilled UNets embed the guidance (LatentConsistencyModelPipeline's default 8.5);
    // LCM-LoRA on a base model runs without CFG.
    d.guidance_scale = has_guidance_embedding() ? 8.5 : 1.0;
  }
  return d;
}

std::string Pipeline::describe_family() const {
  std::string s = nn::family_name(family);
  if (turbo) s += "+turbo";
  if (is_lcm()) s += "+lcm";
  return s;
}

std::string Pipeline::model_hash() const {
  if (hash_.empty()) hash_ = cached_sha256_files_hex(weight_files).substr(0, 10);
  return hash_;
}

std::string Pipeline::model_name() const {
  fs::path p(model_path);
  if (!p.has_filename()) p = p.parent_path();  // "folder/"
  return single_file ? p.stem().string() : p.filename().string();
}

}  // namespace sd::infer
