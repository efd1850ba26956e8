#include "train/lora_training.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "autograd/node.h"
#include "models/formats/checkpoint_keys.h"
#include "models/nn/blocks.h"
#include "models/unet/unet.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "runtime/safetensors.h"

namespace sd::train {
namespace {

using nn::CheckpointLayout;
using nn::kTextEncoder;
using nn::kTextEncoder2;
using nn::kUnet;
using nn::ModelFamily;
using nn::UnetKeyLayout;

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}
std::string underscored(std::string s) {
  std::replace(s.begin(), s.end(), '.', '_');
  return s;
}
std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

const char* const kComponents[] = {kUnet, kTextEncoder, kTextEncoder2};

int component_number(const std::string& c) {
  for (int i = 0; i < 3; ++i)
    if (c == kComponents[i]) return i;
  SD_FAIL("TrainableLora: unknown component '", c, "' (expected unet, text_encoder or text_encoder_2)");
}

// PEFT's target_modules rule for a list: the module path equals the target or ends with "." + target.
bool matches(const std::string& path, const std::string& target) {
  return path == target || ends_with(path, "." + target);
}

// The original (ldm/sgm) module path of each UNet layer, for this UNet's block layout: the names
// kohya's SDXL trainer gives its modules (models/adapters/lora.h kohya_unet_names does the same per
// layer; this builds the layout once).
class OriginalUnetNames {
 public:
  explicit OriginalUnetNames(nn::Module& unet) {
    std::vector<std::string> names;
    for (auto& [n, p] : unet.named_parameters()) names.push_back(n);
    if (auto u = UnetKeyLayout::from_diffusers_keys(names)) {
      layout_ = CheckpointLayout::preset(ModelFamily::Unknown);
      layout_.unet = *u;
      ok_ = true;
    }
  }
  std::string operator()(const std::string& layer) const {
    if (!ok_) return layer;
    auto o = to_original_key(layout_, kUnet, layer + ".weight");
    if (!o || !starts_with(o->key, layout_.unet_prefix) || !ends_with(o->key, ".weight")) return layer;
    return o->key.substr(layout_.unet_prefix.size(), o->key.size() - layout_.unet_prefix.size() - 7);
  }

 private:
  CheckpointLayout layout_;
  bool ok_ = false;
};

// Python's str(float): "8.0", "0.5", "2.8284271247461903" (kohya writes its metadata with str()).
std::string py_float(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

void check_save_dtype(DType t, const char* fn) {
  SD_CHECK(t == DType::F32 || t == DType::F16 || t == DType::BF16, fn, ": save dtype must be f32, f16 or bf16, got ",
           dtype_name(t));
}

// The LoRAs by component, checked: not empty, attached or not (the tensors are what is saved), one per component.
std::vector<const TrainableLora*> checked_loras(const std::vector<const TrainableLora*>& loras, const char* fn) {
  SD_CHECK(!loras.empty(), fn, ": no LoRA to save");
  std::set<std::string> seen;
  std::vector<const TrainableLora*> out;
  for (const TrainableLora* l : loras) {
    SD_CHECK(l != nullptr, fn, ": a null LoRA");
    SD_CHECK(l->num_layers() > 0, fn, ": the ", l->component(), " LoRA has no layers (moved from?)");
    SD_CHECK(seen.insert(l->component()).second, fn, ": two LoRAs for component '", l->component(), "'");
    out.push_back(l);
  }
  return out;
}

Tensor for_file(const Tensor& t, DType dtype) { return copy_to(t, dtype, Device::cpu()); }

}  // namespace

// ---------------------------------------------------------------- targets

std::vector<std::string> unet_lora_targets(const std::vector<std::string>& user_words) {
  std::vector<std::string> words;
  for (const std::string& w : user_words) {
    std::stringstream ss(w);
    std::string part;
    while (std::getline(ss, part, ',')) {
      part = trim(part);
      if (!part.empty()) words.push_back(part);
    }
  }
  if (words.empty()) words.push_back("attn");
  std::vector<std::string> out;
  auto add = [&](const std::string& t) {
    if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
  };
  for (const std::string& w : words) {
    if (w == "attn") {
      for (const char* t : {"to_q", "to_k", "to_v", "to_out.0"}) add(t);
    } else if (w == "ff") {
      for (const char* t : {"ff.net.0.proj", "ff.net.2"}) add(t);
    } else if (w == "proj") {
      for (const char* t : {"proj_in", "proj_out"}) add(t);
    } else if (w == "conv") {
      for (const char* t : {"conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv"}) add(t);
    } else {
      add(w);
    }
  }
  return out;
}

std::vector<std::string> text_encoder_lora_targets() { return {"q_proj", "k_proj", "v_proj", "out_proj"}; }

// ---------------------------------------------------------------- TrainableLora

TrainableLora& TrainableLora::operator=(TrainableLora&& o) noexcept {
  component_ = std::move(o.component_);
  config_ = std::move(o.config_);
  layers_ = std::move(o.layers_);
  attached_ = std::exchange(o.attached_, false);
  sd2_unet_ = o.sd2_unet_;
  return *this;
}

double TrainableLora::alpha() const { return config_.alpha == 0 ? double(config_.rank) : config_.alpha; }

double TrainableLora::scale() const {
  return alpha() / (config_.use_rslora ? std::sqrt(double(config_.rank)) : double(config_.rank));
}

int64_t TrainableLora::num_parameters() const {
  int64_t n = 0;
  for (const Layer& l : layers_) n += l.down.numel() + l.up.numel();
  return n;
}

TrainableLora TrainableLora::attach(nn::Module& model, const std::string& component, const LoraTrainConfig& cfg,
                                    uint64_t seed, DType dtype, Device device) {
  const int comp = component_number(component);
  SD_CHECK(cfg.rank >= 1, "TrainableLora::attach(", component, "): rank must be >= 1, got ", cfg.rank);
  SD_CHECK(cfg.alpha >= 0 && std::isfinite(cfg.alpha), "TrainableLora::attach(", component,
           "): alpha must be >= 0 (0 = rank), got ", cfg.alpha);
  SD_CHECK(!cfg.targets.empty(), "TrainableLora::attach(", component, "): no target modules");
  SD_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F64,
           "TrainableLora::attach(", component, "): adapters must be floating, got ", dtype_name(dtype));

  TrainableLora out;
  out.component_ = component;
  out.config_ = cfg;
  if (auto* unet = dynamic_cast<nn::UNet2DConditionModel*>(&model)) {
    const auto& cad = unet->config().cross_attention_dim;
    out.sd2_unet_ = !cad.empty() && cad[0] == 1024;
  }

  // 1. Which layers, checked before anything is attached.
  const std::vector<nn::AdapterTarget> all = nn::adapter_targets(model);
  std::vector<int64_t> hits(cfg.targets.size(), 0);
  std::vector<const nn::AdapterTarget*> chosen;
  for (const nn::AdapterTarget& t : all) {
    bool any = false;
    for (size_t i = 0; i < cfg.targets.size(); ++i) {
      if (matches(t.name, cfg.targets[i])) {
        ++hits[i];
        any = true;
      }
    }
    if (any) chosen.push_back(&t);
  }
  for (size_t i = 0; i < cfg.targets.size(); ++i) {
    if (hits[i] > 0) continue;
    // The layers' own short names ("to_q", "proj_in", "to_out.0", "fc1" ...), as a hint.
    std::vector<std::string> names;
    for (const nn::AdapterTarget& t : all) {
      size_t dot = t.name.rfind('.');
      if (dot != std::string::npos && std::isdigit(static_cast<unsigned char>(t.name[dot + 1])) && dot > 0)
        dot = t.name.rfind('.', dot - 1);
      const std::string n = dot == std::string::npos ? t.name : t.name.substr(dot + 1);
      if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
    }
    std::ostringstream known;
    for (size_t k = 0; k < names.size() && k < 16; ++k) known << (k ? ", " : "") << names[k];
    SD_FAIL("TrainableLora::attach(", component, "): target '", cfg.targets[i],
            "' matches no Linear/Conv2d layer (targets are whole trailing parts of the module path; this model's "
            "layers end in: ", known.str(), names.size() > 16 ? ", ..." : "", ")");
  }
  SD_CHECK(chosen.size() < (size_t(1) << 24), "TrainableLora::attach: too many layers");

  // 2. The adapters.
  const bool is_unet = component == kUnet;
  std::optional<OriginalUnetNames> original;
  if (is_unet) original.emplace(model);
  autograd::NoGrad no_grad;
  const uint64_t base = uint64_t(comp) << 56;
  for (size_t i = 0; i < chosen.size(); ++i) {
    const nn::AdapterTarget& t = *chosen[i];
    Layer l;
    l.path = t.name;
    l.kohya_path = is_unet ? (*original)(t.name) : t.name;
    l.linear = t.linear;
    l.conv = t.conv;
    const int64_t r = cfg.rank;
    Shape a_shape, b_shape;
    int64_t fan_in;
    if (t.linear) {
      a_shape = {r, t.linear->in_features};
      b_shape = {t.linear->out_features, r};
      fan_in = t.linear->in_features;
    } else {
      const int64_t k = t.conv->kernel;
      a_shape = {r, t.conv->in_channels, k, k};
      b_shape = {t.conv->out_channels, r, 1, 1};
      fan_in = t.conv->in_channels * k * k;
    }
    // kaiming_uniform_(a = sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in).
    const double bound = 1.0 / std::sqrt(double(fan_in));
    const uint64_t offset = base + (uint64_t(i) << 32);
    SD_CHECK(uniform_blocks(shape_numel(a_shape)) < (uint64_t(1) << 32), "TrainableLora::attach: layer '", t.name,
             "' is too large for its share of the random stream");
    l.down = empty(a_shape, dtype, device);
    fill_uniform_(l.down, seed, offset, -bound, bound);
    l.up = zeros(b_shape, dtype, device);
    const std::string stem = component + "." + t.name;
    l.down.set_requires_grad(true).set_name(stem + ".lora_A.weight");
    l.up.set_requires_grad(true).set_name(stem + ".lora_B.weight");
    out.layers_.push_back(std::move(l));
  }
  const double s = out.scale();
  for (const Layer& l : out.layers_) (l.linear ? l.linear->loras : l.conv->loras).push_back({l.down, l.up, s});
  out.attached_ = true;
  return out;
}

std::vector<TrainableParam> TrainableLora::params() const {
  std::vector<TrainableParam> out;
  out.reserve(2 * layers_.size());
  for (const Layer& l : layers_) {
    const std::string stem = component_ + "." + l.path;
    out.push_back({stem + ".lora_A.weight", l.down});
    out.push_back({stem + ".lora_B.weight", l.up});
  }
  return out;
}

void TrainableLora::remove() {
  if (!attached_) return;
  for (const Layer& l : layers_) {
    auto& list = l.linear ? l.linear->loras : l.conv->loras;
    list.erase(std::remove_if(list.begin(), list.end(), [&](const nn::LoraAdapter& a) { return a.down.same(l.down); }),
               list.end());
  }
  attached_ = false;
}

// ---------------------------------------------------------------- files

namespace {
// The value a file gets for an adapter tensor: the caller's (the f32 master) when given, else the
// adapter itself (the model's compute copy, which mixed precision rounds to 16 bits).
const Tensor& value_of(const LoraValues* values, const std::string& name, const Tensor& fallback) {
  if (!values) return fallback;
  auto it = values->find(name);
  SD_CHECK(it != values->end(), "saving a LoRA: no value for '", name, "'");
  SD_CHECK(it->second.shape() == fallback.shape(), "saving a LoRA: '", name, "' is ", it->second.str(),
           ", the adapter ", fallback.str());
  return it->second;
}
}  // namespace

void save_lora_diffusers(const std::string& path, const std::vector<const TrainableLora*>& loras, DType save_dtype,
                         const std::map<std::string, std::string>& extra_metadata, const LoraValues* values) {
  check_save_dtype(save_dtype, "save_lora_diffusers");
  const auto list = checked_loras(loras, "save_lora_diffusers");
  std::vector<std::pair<std::string, Tensor>> tensors;
  bool need_config = false;
  for (const TrainableLora* l : list) {
    for (const TrainableParam& p : l->params())
      tensors.emplace_back(p.name, for_file(value_of(values, p.name, p.tensor), save_dtype));
    if (l->scale() != 1.0 || l->config().use_rslora) need_config = true;
  }
  SD_CHECK(!extra_metadata.count("lora_adapter_metadata"),
           "save_lora_diffusers: 'lora_adapter_metadata' is written from the LoRAs' configs, not given");
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  for (const auto& [k, v] : extra_metadata) metadata[k] = v;
  if (need_config) {
    // diffusers hands each component's entries to LoraConfig(**entries) and then uses them instead of
    // what it would infer from the tensors, so every component gets a complete config (a component
    // without entries would get LoraConfig() with no target modules).
    nlohmann::json j = nlohmann::json::object();
    for (const TrainableLora* l : list) {
      const std::string c = l->component() + ".";
      nlohmann::json targets = nlohmann::json::array();
      for (const TrainableLora::Layer& layer : l->layers()) {
        // PEFT matches a list entry on whole trailing components, so the path without transformers'
        // "text_model." matches both the flattened (transformers >= 5.6) and the nested CLIPTextModel.
        const std::string tm = "text_model.";
        targets.push_back(l->component() != kUnet && starts_with(layer.path, tm) ? layer.path.substr(tm.size())
                                                                                 : layer.path);
      }
      j[c + "r"] = l->config().rank;
      j[c + "lora_alpha"] = l->alpha();
      j[c + "use_rslora"] = l->config().use_rslora;
      j[c + "target_modules"] = targets;
    }
    metadata["lora_adapter_metadata"] = j.dump(2);
  }
  save_safetensors(path, tensors, metadata);
}

void save_lora_kohya(const std::string& path, const std::vector<const TrainableLora*>& loras, bool sdxl,
                     DType save_dtype, const std::map<std::string, std::string>& extra_metadata,
                     const LoraValues* values) {
  check_save_dtype(save_dtype, "save_lora_kohya");
  const auto list = checked_loras(loras, "save_lora_kohya");
  std::vector<std::pair<std::string, Tensor>> tensors;
  const TrainableLora* first = list.front();
  for (const TrainableLora* l : list)
    if (l->component() == kUnet) first = l;
  bool sd2 = false, any_conv = false;
  for (const TrainableLora* l : list) {
    std::string prefix;
    if (l->component() == kUnet) prefix = "lora_unet_";
    else if (l->component() == kTextEncoder) prefix = sdxl ? "lora_te1_" : "lora_te_";
    else {
      SD_CHECK(sdxl, "save_lora_kohya: a text_encoder_2 LoRA needs the SDXL layout (sdxl = true)");
      prefix = "lora_te2_";
    }
    sd2 = sd2 || l->sd2_unet();
    const double alpha = l->scale() * double(l->config().rank);  // kohya: scale = alpha / r
    for (const TrainableLora::Layer& layer : l->layers()) {
      const std::string name = prefix + underscored(sdxl ? layer.kohya_path : layer.path);
      const std::string stem = l->component() + "." + layer.path;
      tensors.emplace_back(name + ".lora_down.weight", for_file(value_of(values, stem + ".lora_A.weight", layer.down), save_dtype));
      tensors.emplace_back(name + ".lora_up.weight", for_file(value_of(values, stem + ".lora_B.weight", layer.up), save_dtype));
      tensors.emplace_back(name + ".alpha", scalar_tensor(alpha, DType::F32));
      any_conv = any_conv || layer.conv != nullptr;
    }
  }
  const double first_alpha = first->scale() * double(first->config().rank);
  std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"ss_network_module", "networks.lora"},
      {"ss_network_dim", std::to_string(first->config().rank)},
      {"ss_network_alpha", py_float(first_alpha)},
      {"ss_base_model_version", sdxl ? "sdxl_base_v1-0" : sd2 ? "sd_v2" : "sd_v1"},
      {"ss_v2", sd2 && !sdxl ? "True" : "False"},
  };
  if (any_conv) {
    // kohya's networks.lora takes the LoCon rank/alpha as network_args and saves them as JSON strings.
    nlohmann::json args = {{"conv_dim", std::to_string(first->config().rank)}, {"conv_alpha", py_float(first_alpha)}};
    metadata["ss_network_args"] = args.dump();
  }
  for (const auto& [k, v] : extra_metadata) metadata[k] = v;
  save_safetensors(path, tensors, metadata);
}

}  // namespace sd::train
