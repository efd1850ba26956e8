#include "models/adapters/lora.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <regex>
#include <set>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>

#include "autograd/node.h"
#include "models/formats/checkpoint_keys.h"
#include "models/formats/torch_checkpoint.h"
#include "ops/linear.h"
#include "ops/optim.h"
#include "ops/view.h"
#include "runtime/error.h"

namespace sd::nn {
namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}
std::string underscored(std::string s) {
  std::replace(s.begin(), s.end(), '.', '_');
  return s;
}

// ---------------------------------------------------------------- key parsing

enum class Role { Down, Up, Alpha };

struct ParsedKey {
  std::string component;  // kUnet, kTextEncoder, kTextEncoder2
  std::string module;     // kohya: the name after the prefix ("down_blocks_0_..."); else dotted
  bool kohya = false;
  Role role = Role::Down;
};

// Tensors of adapter types other than plain LoRA/LoCon. Applying the rest of such a network without
// them would give wrong results, so they stop the load. Matched on whole dotted segments, so that
// module names like "diffusion_model" do not trip the "diff" marker.
void reject_unsupported(const std::string& key, const std::string& where) {
  struct Kind {
    const char* segment;
    bool prefix;  // the segment starts with it (else: equals it)
    const char* name;
  };
  static const Kind kinds[] = {
      {"dora_scale", false, "DoRA"},        {"lora_magnitude_vector", false, "DoRA"},
      {"hada_", true, "LoHa"},              {"lokr_", true, "LoKr"},
      {"lora_mid", false, "LoCon Tucker (lora_mid)"}, {"lora_embedding_", true, "embedding LoRA"},
      {"diff", false, "full weight difference"}, {"diff_b", false, "full bias difference"},
      {"oft_", true, "OFT"},                {"w_norm", false, "GLoRA/norm"}, {"b_norm", false, "GLoRA/norm"},
  };
  std::stringstream ss(key);
  std::string seg, prev;
  while (std::getline(ss, seg, '.')) {
    for (const Kind& k : kinds) {
      const bool hit = k.prefix ? starts_with(seg, k.segment) : seg == k.segment;
      SD_CHECK(!hit, "load_lora: ", where, ": key '", key, "' belongs to a ", k.name,
               " adapter, which is not supported (only LoRA / LoCon down, up and alpha tensors are)");
    }
    SD_CHECK(!(seg == "bias" && (prev == "lora_A" || prev == "lora_B")), "load_lora: ", where, ": key '", key,
             "' is a LoRA bias (PEFT lora_bias), which is not supported");
    prev = seg;
  }
}

const std::pair<const char*, const char*> kKohyaPrefixes[] = {
    {"lora_unet_", kUnet}, {"lora_te1_", kTextEncoder}, {"lora_te2_", kTextEncoder2}, {"lora_te_", kTextEncoder}};

bool is_kohya_key(const std::string& key) {
  for (const auto& [p, c] : kKohyaPrefixes)
    if (starts_with(key, p)) return true;
  return false;
}

// "lora_unet_<name>.lora_down.weight" / ".lora_up.weight" / ".alpha"
ParsedKey parse_kohya(const std::string& key, const std::string& where) {
  ParsedKey k;
  k.kohya = true;
  std::string rest;
  for (const auto& [p, c] : kKohyaPrefixes) {
    if (starts_with(key, p)) {
      k.component = c;
      rest = key.substr(std::string(p).size());
      break;
    }
  }
  const size_t dot = rest.find('.');
  const std::string suffix = dot == std::string::npos ? "" : rest.substr(dot + 1);
  k.module = rest.substr(0, dot);
  if (suffix == "lora_down.weight") k.role = Role::Down;
  else if (suffix == "lora_up.weight") k.role = Role::Up;
  else if (suffix == "alpha") k.role = Role::Alpha;
  else {
    reject_unsupported(key, where);
    SD_FAIL("load_lora: ", where, ": kohya key '", key, "' is not a LoRA tensor (<name>.lora_down.weight, ",
            "<name>.lora_up.weight or <name>.alpha)");
  }
  SD_CHECK(!k.module.empty(), "load_lora: ", where, ": kohya key '", key, "' names no module");
  return k;
}

// Module names a UNet LoRA without the "unet." prefix starts with (early diffusers dreambooth files).
bool looks_like_unet_path(const std::string& s) {
  for (const char* p : {"down_blocks.", "mid_block.", "up_blocks.", "conv_in.", "conv_out.", "time_embedding.",
                        "add_embedding."})
    if (starts_with(s, p)) return true;
  return false;
}

// diffusers / PEFT spellings (FORMATS.md §4.3):
//   <c>.<module>.lora_A.weight / .lora_B.weight                 PEFT
//   <c>.<module>.lora.down.weight / .lora.up.weight              diffusers (PEFT converted back)
//   <c>.<module>.lora_linear_layer.down.weight / .up.weight      diffusers text encoders
//   <c>.<attn>[.processor].to_q_lora.down.weight ...             attention processors (old diffusers)
//   <c>.<module>.alpha                                            converted kohya alphas
std::optional<ParsedKey> parse_diffusers(const std::string& key, const std::string& where) {
  ParsedKey k;
  std::string rest;
  for (const char* c : {kTextEncoder2, kTextEncoder, kUnet}) {
    const std::string p = std::string(c) + ".";
    if (starts_with(key, p)) {
      k.component = c;
      rest = key.substr(p.size());
      break;
    }
  }
  if (k.component.empty()) {
    if (!looks_like_unet_path(key)) return std::nullopt;
    k.component = kUnet;
    rest = key;
  }
  reject_unsupported(key, where);

  struct Suffix {
    const char* text;
    Role role;
  };
  static const Suffix suffixes[] = {
      {".lora_A.weight", Role::Down},           {".lora_B.weight", Role::Up},
      {".lora.down.weight", Role::Down},        {".lora.up.weight", Role::Up},
      {".lora_linear_layer.down.weight", Role::Down}, {".lora_linear_layer.up.weight", Role::Up},
      {".alpha", Role::Alpha},
  };
  for (const Suffix& s : suffixes) {
    if (ends_with(rest, s.text) && rest.size() > std::string(s.text).size()) {
      k.module = rest.substr(0, rest.size() - std::string(s.text).size());
      k.role = s.role;
      return k;
    }
  }
  // Attention-processor LoRAs: the projection is named inside the last segment.
  static const std::regex proc(R"((.+?)(\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight)");
  std::smatch m;
  if (std::regex_match(rest, m, proc)) {
    const std::string base = m[1].str(), proj = m[3].str();
    std::string layer;
    if (k.component == kUnet) layer = proj == "to_out" ? "to_out.0" : proj;
    else layer = proj == "to_q" ? "q_proj" : proj == "to_k" ? "k_proj" : proj == "to_v" ? "v_proj" : "out_proj";
    k.module = base + "." + layer;
    k.role = m[4].str() == "down" ? Role::Down : Role::Up;
    return k;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- the models' layers by name

struct Layer {
  std::string name;  // full dotted module path inside its model
  Linear* linear = nullptr;
  Conv2d* conv = nullptr;
};

struct ComponentLayers {
  std::vector<Layer> layers;
  std::map<std::string, size_t> dotted, kohya;  // spelling -> index into layers

  void add(std::map<std::string, size_t>& table, const std::string& spelling, size_t i) {
    auto [it, inserted] = table.emplace(spelling, i);
    SD_CHECK(inserted || it->second == i, "load_lora: layers '", layers[it->second].name, "' and '",
             layers[i].name, "' have the same spelling '", spelling, "'");
  }
};

// Original (ldm/sgm) module path of a UNet layer, for this UNet's block layout.
class UnetOriginalNames {
 public:
  explicit UnetOriginalNames(UNet2DConditionModel& unet) {
    std::vector<std::string> names;
    for (auto& [n, p] : unet.named_parameters()) names.push_back(n);
    auto u = UnetKeyLayout::from_diffusers_keys(names);
    layout_ = CheckpointLayout::preset(ModelFamily::Unknown);
    if (u) layout_.unet = *u;
    ok_ = u.has_value();
  }
  std::optional<std::string> operator()(const std::string& layer) const {
    if (!ok_) return std::nullopt;
    auto o = to_original_key(layout_, kUnet, layer + ".weight");
    if (!o || !starts_with(o->key, layout_.unet_prefix) || !ends_with(o->key, ".weight")) return std::nullopt;
    return o->key.substr(layout_.unet_prefix.size(), o->key.size() - layout_.unet_prefix.size() - 7);
  }

 private:
  CheckpointLayout layout_;
  bool ok_ = false;
};

ComponentLayers unet_layers(UNet2DConditionModel& unet) {
  ComponentLayers c;
  const UnetOriginalNames original(unet);
  for (const AdapterTarget& t : unet.adapter_targets()) c.layers.push_back({t.name, t.linear, t.conv});
  for (size_t i = 0; i < c.layers.size(); ++i) {
    const std::string& n = c.layers[i].name;
    c.add(c.dotted, n, i);
    c.add(c.kohya, underscored(n), i);
    if (auto o = original(n)) c.add(c.kohya, underscored(*o), i);
  }
  return c;
}

ComponentLayers clip_layers(ClipTextModel& te) {
  ComponentLayers c;
  for (const AdapterTarget& t : nn::adapter_targets(te)) c.layers.push_back({t.name, t.linear, t.conv});
  const std::string tm = "text_model.";
  for (size_t i = 0; i < c.layers.size(); ++i) {
    const std::string& n = c.layers[i].name;
    c.add(c.dotted, n, i);
    c.add(c.kohya, underscored(n), i);
    // transformers >= 5.6 saves CLIPTextModel without "text_model." (and PEFT names follow the modules).
    if (starts_with(n, tm)) {
      c.add(c.dotted, n.substr(tm.size()), i);
      c.add(c.kohya, underscored(n.substr(tm.size())), i);
    }
  }
  return c;
}

// ---------------------------------------------------------------- PEFT configuration from metadata

struct PeftConfig {
  std::optional<double> lora_alpha;
  std::vector<std::pair<std::string, double>> alpha_pattern;  // in the JSON's (sorted) key order
  bool use_rslora = false;
};

std::map<std::string, PeftConfig> parse_peft_metadata(const std::map<std::string, std::string>* metadata,
                                                      const std::string& where) {
  std::map<std::string, PeftConfig> out;
  if (!metadata) return out;
  auto it = metadata->find("lora_adapter_metadata");
  if (it == metadata->end()) return out;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    SD_FAIL("load_lora: ", where, ": metadata 'lora_adapter_metadata' is not valid JSON: ", e.what());
  }
  SD_CHECK(j.is_object(), "load_lora: ", where, ": metadata 'lora_adapter_metadata' is not a JSON object");
  for (const char* c : {kUnet, kTextEncoder, kTextEncoder2}) {
    const std::string p = std::string(c) + ".";
    PeftConfig cfg;
    bool any = false;
    auto number = [&](const nlohmann::json& v, const std::string& name) {
      SD_CHECK(v.is_number() && std::isfinite(v.get<double>()), "load_lora: ", where, ": lora_adapter_metadata '", name,
               "' is not a finite number");
      return v.get<double>();
    };
    if (j.contains(p + "lora_alpha") && !j[p + "lora_alpha"].is_null()) {
      cfg.lora_alpha = number(j[p + "lora_alpha"], p + "lora_alpha");
      any = true;
    }
    if (j.contains(p + "alpha_pattern") && j[p + "alpha_pattern"].is_object()) {
      for (auto& [pat, v] : j[p + "alpha_pattern"].items())
        cfg.alpha_pattern.emplace_back(pat, number(v, p + "alpha_pattern." + pat));
      any = true;
    }
    if (j.contains(p + "use_rslora") && j[p + "use_rslora"].is_boolean()) cfg.use_rslora = j[p + "use_rslora"].get<bool>();
    if (any) out[c] = cfg;
  }
  return out;
}

// PEFT's get_pattern_key: the first pattern P with re.match(r"(.*\.)?(P)$", module).
std::optional<double> match_pattern(const std::vector<std::pair<std::string, double>>& patterns,
                                    const std::string& module, const std::string& where) {
  for (const auto& [pat, v] : patterns) {
    try {
      if (std::regex_match(module, std::regex("(.*\\.)?(" + pat + ")"))) return v;
    } catch (const std::regex_error& e) {
      SD_FAIL("load_lora: ", where, ": alpha_pattern '", pat, "' is not a valid regular expression: ", e.what());
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- groups of keys, one per module

struct Group {
  std::string component, module;
  bool kohya = false;
  std::string down, up, alpha;  // keys
  std::vector<std::string> keys() const {
    std::vector<std::string> k;
    for (const std::string* s : {&down, &up, &alpha})
      if (!s->empty()) k.push_back(*s);
    return k;
  }
};

uint64_t fnv1a(const Tensor& t) {
  const Tensor c = copy_to(t, t.dtype(), Device::cpu());
  const auto* p = static_cast<const unsigned char*>(c.data_ptr());
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < c.nbytes(); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// ---------------------------------------------------------------- hostile values

// Down/up tensors must be floating. No trainer writes integer or boolean LoRA weights; loading them
// would cast a mask or a corrupted header into plausible-looking numbers without a word.
void check_floating_weight(const TensorSource& src, const std::string& key, const std::string& where) {
  const std::optional<DType> dt = src.file_dtype(key);
  SD_CHECK(!dt || is_floating(*dt), "load_lora: ", where, ": key '", key, "' ", shape_str(src.shape(key)), " is stored as ",
           dtype_name(*dt), "; LoRA weights must be floating (f32, f16, bf16 or f64)");
}

// Alpha is a count-like scalar: converters write it as float or as an int64 tensor (torch.tensor(8)),
// and kohya reads it with .item(), so integers are fine; a boolean is not a number of anything.
void check_alpha_dtype(const TensorSource& src, const std::string& key, const std::string& where) {
  const std::optional<DType> dt = src.file_dtype(key);
  SD_CHECK(!dt || *dt != DType::Bool, "load_lora: ", where, ": alpha '", key,
           "' is stored as bool; alpha must be a number (float or integer)");
}

// "3 of 128 values are NaN/Inf, the first at index 17" (CPU f64 copy: only on the error path).
std::string describe_non_finite(const Tensor& t) {
  const std::vector<double> v = copy_to(t, DType::F64, Device::cpu()).to_vector();
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]) && bad++ == 0) first = i;
  std::ostringstream s;
  s << bad << " of " << v.size() << " values are NaN/Inf, the first at index " << first << " (" << v[first] << ")";
  return s.str();
}

// src.get(key) in the dtype the layer computes in, refused when it holds NaN or Inf: one such value
// turns every image black (NaN latents) and the tool would still exit 0. A finite file value that
// overflows the layer's dtype (|x| > 65504 into f16) is named as such, since the file itself is fine.
Tensor get_finite(const TensorSource& src, const std::string& key, DType dt, Device device, const std::string& where) {
  Tensor t = src.get(key, dt, device);
  if (!has_non_finite({t})) return t;
  const Tensor file = src.get(key, DType::F64, Device::cpu());
  if (has_non_finite({file}))
    SD_FAIL("load_lora: ", where, ": key '", key, "' ", shape_str(file.shape()), " holds NaN or Inf: ",
            describe_non_finite(file), "; the file is damaged (or was saved from a diverged training run)");
  SD_FAIL("load_lora: ", where, ": key '", key, "' ", shape_str(file.shape()), " has values too large for ",
          dtype_name(dt), " (", describe_non_finite(t), " after conversion): load the model in f32");
}

std::string layer_kind(const Layer& l) {
  const Tensor& w = l.linear ? l.linear->weight : l.conv->weight;
  return std::string(l.linear ? "Linear" : "Conv2d") + ", weight " + (w.defined() ? shape_str(w.shape()) : "not loaded");
}

// A layer to show as an example of a component's naming: an attention projection when there is one
// (what nearly every LoRA adapts), else the first layer.
const Layer* example_layer(const ComponentLayers& c) {
  for (const Layer& l : c.layers)
    if (ends_with(l.name, "attn1.to_q") || ends_with(l.name, "self_attn.q_proj")) return &l;
  return c.layers.empty() ? nullptr : &c.layers.front();
}

std::string kohya_prefix(const std::string& component, bool two_text_encoders) {
  if (component == kUnet) return "lora_unet_";
  if (component == kTextEncoder2) return "lora_te2_";
  return two_text_encoders ? "lora_te1_" : "lora_te_";
}

// The error for a file none of whose keys addresses a layer: applying nothing and exiting 0 is what
// users cannot notice (diffusers/PEFT raise for the same file). Shows a few of the file's keys next
// to the names this model's layers go by, in both layouts, so the mismatch is visible at a glance.
[[noreturn]] void fail_nothing_matched(const std::string& where, const std::vector<std::string>& unmatched,
                                       const std::map<std::string, ComponentLayers>& layers) {
  std::ostringstream s;
  s << "load_lora: " << where << ": none of its " << unmatched.size() << " keys addresses a layer of the model (";
  for (size_t i = 0; i < unmatched.size() && i < 4; ++i) s << (i ? ", " : "") << "'" << unmatched[i] << "'";
  if (unmatched.size() > 4) s << ", ...";
  s << "); ";
  if (layers.empty()) {
    s << "no model was given to apply it to";
  } else {
    s << "this model expects keys like";
    const bool two = layers.count(kTextEncoder2) > 0;
    bool first = true;
    for (const auto& [component, c] : layers) {
      const Layer* l = example_layer(c);
      if (!l) continue;
      s << (first ? " " : ", ") << "'" << kohya_prefix(component, two) << underscored(l->name)
        << ".lora_down.weight' (kohya) or '" << component << "." << l->name << ".lora_A.weight' (diffusers/PEFT)";
      first = false;
    }
  }
  s << ": a LoRA for another model, or not a LoRA file?";
  SD_FAIL(s.str());
}

}  // namespace

// ---------------------------------------------------------------- report

const char* lora_format_name(LoraFormat f) { return f == LoraFormat::Kohya ? "kohya" : "diffusers"; }

int64_t LoraReport::total_applied() const {
  int64_t n = 0;
  for (auto& [c, k] : applied) n += k;
  return n;
}

std::string LoraReport::str() const {
  std::ostringstream s;
  s << lora_format_name(format) << " LoRA '" << source << "': ";
  bool first = true;
  for (auto& [c, n] : applied) {
    s << (first ? "" : ", ") << c << " " << n;
    first = false;
  }
  if (first) s << "no";
  s << " layers; " << unmatched.size() << " keys unmatched";
  for (size_t i = 0; i < unmatched.size() && i < 5; ++i) s << (i ? ", " : ": ") << unmatched[i];
  if (unmatched.size() > 5) s << ", ...";
  return s.str();
}

// ---------------------------------------------------------------- LoadedLora

Tensor& LoadedLora::weight(const Entry& e) const { return e.linear ? e.linear->weight : e.conv->weight; }

std::vector<LoadedLora::LayerView> LoadedLora::layers() const {
  std::vector<LayerView> out;
  for (const Entry& e : entries_)
    out.push_back({e.component, e.layer, e.down, e.up, e.alpha, e.rslora, e.file_dtype, e.conv != nullptr});
  return out;
}

Tensor LoadedLora::delta(const Entry& e) const {
  autograd::NoGrad no_grad;
  const Tensor& w = weight(e);
  const int64_t r = e.down.size(0);
  Tensor up = to(e.up, DType::F32), down = to(e.down, DType::F32);
  // [out, r] @ [r, in * kh * kw]: for convolutions the 1x1 up composed with the kh x kw down.
  Tensor d = matmul(reshape(up, {up.size(0), r}), reshape(down, {r, -1}));
  return reshape(d, w.shape());
}

void LoadedLora::set_multiplier(double unet, std::optional<double> text_encoder) {
  SD_CHECK(active_, "LoadedLora::set_multiplier: the LoRA '", report_.source, "' was removed");
  for (Entry& e : entries_) {
    const double scale = e.file_scale * (e.component == kUnet ? unet : text_encoder.value_or(unet));
    if (mode_ == LoraMode::OnTheFly) {
      auto& list = e.linear ? e.linear->loras : e.conv->loras;
      for (LoraAdapter& a : list)
        if (a.down.same(e.down)) a.scale = scale;
    } else if (scale != e.scale) {
      axpy_(weight(e), delta(e), scale - e.scale);
      if (e.original.defined()) e.merged_hash = fnv1a(weight(e));
    }
    e.scale = scale;
  }
}

void LoadedLora::remove() {
  if (!active_) return;
  for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
    Entry& e = *it;
    if (mode_ == LoraMode::OnTheFly) {
      auto& list = e.linear ? e.linear->loras : e.conv->loras;
      list.erase(std::remove_if(list.begin(), list.end(), [&](const LoraAdapter& a) { return a.down.same(e.down); }),
                 list.end());
    } else if (e.original.defined() && fnv1a(weight(e)) == e.merged_hash) {
      copy_(weight(e), e.original);  // nothing changed the weight since: the exact original bits
    } else {
      axpy_(weight(e), delta(e), -e.scale);
    }
    e.original = Tensor();
  }
  active_ = false;
}

// ---------------------------------------------------------------- loading

std::vector<std::string> kohya_unet_names(UNet2DConditionModel& unet, const std::string& layer) {
  std::vector<std::string> out{"lora_unet_" + underscored(layer)};
  if (auto o = UnetOriginalNames(unet)(layer)) out.push_back("lora_unet_" + underscored(*o));
  return out;
}

LoadedLora load_lora(const std::string& path, const LoraTargets& targets, const LoraOptions& opt) {
  namespace fs = std::filesystem;
  SD_CHECK(fs::is_regular_file(path), "load_lora: '", path, "' is not a file");
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (ext == ".safetensors") {
    auto src = SafetensorsSource::open(path);
    return load_lora(*src, targets, opt, &src->metadata());
  }
  // Anything else is read as a torch pickle (pytorch_lora_weights.bin, .pt, .ckpt).
  TorchCheckpoint ckpt = load_torch_checkpoint(path);
  std::map<std::string, Tensor> tensors;
  for (auto& [k, t] : ckpt.tensors) tensors[k] = t;
  SD_CHECK(!tensors.empty(), "load_lora: '", path, "' holds no tensors");
  const MapSource src(std::move(tensors), path);
  return load_lora(src, targets, opt, nullptr);
}

LoadedLora load_lora(const TensorSource& src, const LoraTargets& targets, const LoraOptions& opt,
                     const std::map<std::string, std::string>* metadata) {
  const std::string where = "'" + src.describe() + "'";
  if (!metadata)
    if (auto* st = dynamic_cast<const SafetensorsSource*>(&src)) metadata = &st->metadata();

  // An empty file would otherwise load as a LoRA that does nothing.
  SD_CHECK(!src.keys().empty(), "load_lora: ", where, " holds no tensors: not a LoRA file");

  LoadedLora out;
  out.report_.source = src.describe();
  out.mode_ = opt.mode;

  // 1. Every key parsed into (component, module, role) and grouped by module.
  std::map<std::tuple<std::string, bool, std::string>, Group> groups;
  std::vector<std::string> unmatched;
  bool any_kohya = false;
  for (const std::string& key : src.keys()) {
    std::optional<ParsedKey> pk;
    if (is_kohya_key(key)) {
      pk = parse_kohya(key, where);
      any_kohya = true;
    } else {
      pk = parse_diffusers(key, where);
    }
    if (!pk) {
      unmatched.push_back(key);
      continue;
    }
    Group& g = groups[{pk->component, pk->kohya, pk->module}];
    g.component = pk->component;
    g.module = pk->module;
    g.kohya = pk->kohya;
    std::string& slot = pk->role == Role::Down ? g.down : pk->role == Role::Up ? g.up : g.alpha;
    SD_CHECK(slot.empty(), "load_lora: ", where, ": keys '", slot, "' and '", key, "' are the same tensor of module '",
             pk->module, "'");
    slot = key;
  }
  out.report_.format = any_kohya ? LoraFormat::Kohya : LoraFormat::Diffusers;

  // 2. The layers each component offers.
  std::map<std::string, ComponentLayers> layers;
  if (targets.unet) layers[kUnet] = unet_layers(*targets.unet);
  if (targets.text_encoder) layers[kTextEncoder] = clip_layers(*targets.text_encoder);
  if (targets.text_encoder_2) layers[kTextEncoder2] = clip_layers(*targets.text_encoder_2);
  const auto peft = parse_peft_metadata(metadata, where);

  // 3. Each group checked against its layer; nothing is changed until every group passed.
  struct Planned {
    const Group* group;
    const Layer* layer;
    int64_t rank;
    double file_scale;
    double alpha;   // the file's alpha for this module (r when it has none)
    bool rslora;    // scale = alpha / sqrt(r)
    Tensor down, up;  // read and checked finite, in the dtype and on the device they are used in
  };
  std::vector<Planned> plan;
  for (const auto& group : groups) {
    // A plain reference, not a structured binding: lambdas below capture it (clang before 16 cannot).
    const auto& g = group.second;
    SD_CHECK(!g.down.empty() && !g.up.empty(), "load_lora: ", where, ": module '", g.module, "' of ", g.component,
             " has ", g.down.empty() ? "no down (lora_A / lora_down)" : "no up (lora_B / lora_up)", " tensor (",
             g.down.empty() ? (g.up.empty() ? g.alpha : g.up) : g.down, " is alone)");
    auto comp = layers.find(g.component);
    const Layer* layer = nullptr;
    if (comp != layers.end()) {
      const auto& table = g.kohya ? comp->second.kohya : comp->second.dotted;
      auto it = table.find(g.module);
      if (it != table.end()) layer = &comp->second.layers[it->second];
    }
    if (!layer) {
      for (const std::string& k : g.keys()) unmatched.push_back(k);
      continue;
    }
    const Tensor& w = layer->linear ? layer->linear->weight : layer->conv->weight;
    SD_CHECK(w.defined(), "load_lora: ", g.component, " layer '", layer->name, "' has no weights (load the model first)");
    check_floating_weight(src, g.down, where);
    check_floating_weight(src, g.up, where);
    const Shape ds = src.shape(g.down), us = src.shape(g.up);
    auto misfit = [&](const std::string& key, const Shape& s) {
      SD_FAIL("load_lora: ", where, ": key '", key, "' ", shape_str(s), " does not fit ", g.component, " layer '",
              layer->name, "' (", layer_kind(*layer), "): a LoRA for another model family?");
    };
    const int64_t out_f = w.size(0), in_f = w.size(1);
    if (layer->linear) {
      if (ds.size() != 2 || ds[1] != in_f || ds[0] < 1) misfit(g.down, ds);
      if (us.size() != 2 || us[0] != out_f || us[1] != ds[0]) misfit(g.up, us);
    } else {
      if (ds.size() != 4 || ds[1] != in_f || ds[2] != w.size(2) || ds[3] != w.size(3) || ds[0] < 1)
        misfit(g.down, ds);
      if (us.size() != 4 || us[0] != out_f || us[1] != ds[0] || us[2] != 1 || us[3] != 1) misfit(g.up, us);
    }
    const int64_t r = ds[0];
    double scale = 1.0, file_alpha = double(r);
    bool rslora = false;
    std::optional<double> alpha;
    if (!g.alpha.empty()) {
      check_alpha_dtype(src, g.alpha, where);
      const Tensor a = src.get(g.alpha, DType::F64, Device::cpu());
      SD_CHECK(a.numel() == 1, "load_lora: ", where, ": alpha '", g.alpha, "' has ", a.numel(), " values, not 1");
      alpha = a.item();
      SD_CHECK(std::isfinite(*alpha), "load_lora: ", where, ": alpha '", g.alpha, "' is ", *alpha,
               "; it scales the whole module, so every image would come out black");
    }
    if (g.kohya) {
      // kohya: a missing or zero alpha means alpha = r ("old LoRA without alpha").
      if (alpha && *alpha != 0.0) file_alpha = *alpha;
      scale = file_alpha / double(r);
    } else if (alpha) {
      file_alpha = *alpha;
      scale = *alpha / double(r);
    } else if (auto pc = peft.find(g.component); pc != peft.end()) {
      const PeftConfig& c = pc->second;
      file_alpha = match_pattern(c.alpha_pattern, g.module, where).value_or(c.lora_alpha.value_or(double(r)));
      rslora = c.use_rslora;
      scale = file_alpha / (rslora ? std::sqrt(double(r)) : double(r));
    }
    // Read now, so that a NaN in the last module stops the load before the first layer changes.
    const DType dt = opt.mode == LoraMode::OnTheFly ? w.dtype() : DType::F32;
    Tensor down = get_finite(src, g.down, dt, w.device(), where), up = get_finite(src, g.up, dt, w.device(), where);
    plan.push_back({&g, layer, r, scale, file_alpha, rslora, std::move(down), std::move(up)});
  }
  std::sort(unmatched.begin(), unmatched.end());
  if (plan.empty()) fail_nothing_matched(where, unmatched, layers);
  if (opt.strict && !unmatched.empty())
    SD_FAIL("load_lora: ", where, ": ", unmatched.size(), " keys address no layer of the given models, first '",
            unmatched.front(), "'");
  out.report_.unmatched = std::move(unmatched);

  // 4. Attach or merge.
  autograd::NoGrad no_grad;
  for (const Planned& p : plan) {
    LoadedLora::Entry e;
    e.component = p.group->component;
    e.layer = p.layer->name;
    e.linear = p.layer->linear;
    e.conv = p.layer->conv;
    e.file_scale = p.file_scale;
    e.alpha = p.alpha;
    e.rslora = p.rslora;
    e.file_dtype = src.file_dtype(p.group->down).value_or(DType::F32);
    const double m = e.component == kUnet ? opt.multiplier : opt.text_encoder_multiplier.value_or(opt.multiplier);
    e.scale = p.file_scale * m;
    Tensor& w = out.weight(e);
    e.down = p.down;
    e.up = p.up;
    if (opt.mode == LoraMode::OnTheFly) {
      (e.linear ? e.linear->loras : e.conv->loras).push_back(LoraAdapter{e.down, e.up, e.scale});
    } else {
      if (opt.keep_original) e.original = copy_to(w, w.dtype(), w.device());
      axpy_(w, out.delta(e), e.scale);
      if (opt.keep_original) e.merged_hash = fnv1a(w);
    }
    ++out.report_.applied[e.component];
    out.entries_.push_back(std::move(e));
  }
  out.active_ = true;
  return out;
}

}  // namespace sd::nn
