// Moving tensors between single files and diffusers folders. Every transform of FORMATS.md §3 is a
// view of the stored tensor (reshape of a 1x1 conv, transpose, row block of a fused q/k/v) except
// joining q/k/v for the original layout, so converting a file touches each byte once, when the
// writer streams it out of the mapping.
#include "models/formats/single_file.h"

#include <array>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "models/formats/diffusers_configs.h"
#include "models/formats/torch_checkpoint.h"
#include "models/formats/zip_archive.h"
#include "runtime/error.h"
#include "runtime/safetensors.h"

namespace fs = std::filesystem;

namespace sd::nn {

// ---------------------------------------------------------------- the file behind the names

class OriginalTensorFile {
 public:
  virtual ~OriginalTensorFile() = default;
  const KeyShapes& shapes() const { return shapes_; }
  const std::string& path() const { return path_; }
  virtual DType dtype(const std::string& key) const = 0;
  // In the stored dtype; a view of the mapping when it can be.
  virtual Tensor get(const std::string& key) const = 0;

 protected:
  KeyShapes shapes_;
  std::string path_;
};

namespace {

class SafetensorsOriginal final : public OriginalTensorFile {
 public:
  explicit SafetensorsOriginal(const std::string& path) : file_(SafetensorsFile::open(path)) {
    path_ = path;
    for (const std::string& k : file_.keys()) shapes_[k] = file_.info(k).shape;
  }
  DType dtype(const std::string& key) const override {
    const TensorInfo& info = file_.info(key);
    if (!info.dtype) (void)file_.get(key);  // raises UnsupportedDtype naming the key and file
    return *info.dtype;
  }
  Tensor get(const std::string& key) const override { return file_.get(key); }
  const std::map<std::string, std::string>& metadata() const { return file_.metadata(); }

 private:
  SafetensorsFile file_;
};

class TorchOriginal final : public OriginalTensorFile {
 public:
  explicit TorchOriginal(TorchCheckpoint ck) {
    path_ = ck.path;
    global_step_ = ck.global_step;
    for (auto& [k, t] : ck.tensors) {
      shapes_[k] = t.shape();
      tensors_[k] = t;
    }
  }
  DType dtype(const std::string& key) const override { return at(key).dtype(); }
  // A fresh handle on the same data, so callers can rename or mark it without touching ours.
  Tensor get(const std::string& key) const override { return detach(at(key)); }
  std::optional<int64_t> global_step() const { return global_step_; }

 private:
  const Tensor& at(const std::string& key) const {
    auto it = tensors_.find(key);
    SD_CHECK(it != tensors_.end(), "'", path_, "' has no tensor '", key, "'");
    return it->second;
  }
  std::map<std::string, Tensor> tensors_;
  std::optional<int64_t> global_step_;
};

bool ends_with(const std::string& s, const std::string& x) {
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}

// ---- original -> diffusers (views)

Shape mapped_shape(const Shape& s, KeyTransform t, const std::string& where) {
  switch (t) {
    case KeyTransform::None: return s;
    case KeyTransform::ConvToLinear: {
      // [C, C, 1, 1] (or an already linear [C, C], or a legacy [C, C, 1]) -> [C, C]
      SD_CHECK(s.size() >= 2, where, ": expected a conv or linear weight, got shape ", shape_str(s));
      for (size_t i = 2; i < s.size(); ++i)
        SD_CHECK(s[i] == 1, where, ": expected a 1x1 conv weight, got shape ", shape_str(s));
      return {s[0], s[1]};
    }
    case KeyTransform::Transpose:
      SD_CHECK(s.size() == 2, where, ": expected a 2-D projection, got shape ", shape_str(s));
      return {s[1], s[0]};
    case KeyTransform::FusedQkv: {
      SD_CHECK(!s.empty() && s[0] % 3 == 0, where, ": a fused q/k/v tensor needs 3*D rows, got shape ", shape_str(s));
      Shape out = s;
      out[0] /= 3;
      return out;
    }
  }
  return s;
}

Tensor mapped_view(const Tensor& t, KeyTransform transform, int part, const std::string& where) {
  const Shape shape = mapped_shape(t.shape(), transform, where);
  switch (transform) {
    case KeyTransform::None: return t;
    case KeyTransform::ConvToLinear: return as_strided(t, shape, {t.stride(0), t.stride(1)}, t.offset());
    case KeyTransform::Transpose: return as_strided(t, shape, {t.stride(1), t.stride(0)}, t.offset());
    case KeyTransform::FusedQkv:
      return as_strided(t, shape, t.strides(), t.offset() + int64_t(part) * shape[0] * t.stride(0));
  }
  return t;
}

// ---- diffusers -> original

// Linear [C, C] -> 1x1 conv [C, C, 1, 1] (a view: the new unit dims take any stride).
Tensor to_conv_view(const Tensor& t, const std::string& where) {
  SD_CHECK(t.dim() >= 2 && t.dim() <= 4, where, ": expected a linear weight, got ", t.str());
  Shape shape = t.shape(), strides = t.strides();
  for (size_t i = 2; i < shape.size(); ++i)
    SD_CHECK(shape[i] == 1, where, ": expected a linear weight, got ", t.str());
  while (shape.size() < 4) {
    shape.push_back(1);
    strides.push_back(1);
  }
  return as_strided(t, shape, strides, t.offset());
}

Tensor convert_floating(const Tensor& t, const std::optional<DType>& dtype) {
  if (!dtype || !is_floating(t.dtype()) || t.dtype() == *dtype) return t;
  return copy_to(t, *dtype, Device::cpu());
}

std::shared_ptr<OriginalTensorFile> open_original(const std::string& path) {
  SD_CHECK(fs::is_regular_file(path), "single file: '", path, "' does not exist or is not a file");
  if (ZipArchive::looks_like_zip(path)) return std::make_shared<TorchOriginal>(load_torch_checkpoint(path));
  std::ifstream in(path, std::ios::binary);
  unsigned char head[2] = {};
  in.read(reinterpret_cast<char*>(head), 2);
  // A pickle (legacy torch format) starts with PROTO; load_torch_checkpoint explains why it is refused.
  if (in.gcount() == 2 && head[0] == 0x80 && head[1] <= 5) return std::make_shared<TorchOriginal>(load_torch_checkpoint(path));
  return std::make_shared<SafetensorsOriginal>(path);
}

void write_text(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    SD_CHECK(out.good(), "cannot write '", tmp.string(), "'");
    out << text;
    out.flush();
    SD_CHECK(out.good(), "error writing '", tmp.string(), "'");
  }
  fs::rename(tmp, path);
}

KeyShapes shapes_of(const TensorMap& m) {
  KeyShapes out;
  for (auto& [k, t] : m) out[k] = t.shape();
  return out;
}

ComponentKeyShapes shapes_of(const ComponentTensors& c) {
  ComponentKeyShapes out;
  for (auto& [name, m] : c) out[name] = shapes_of(m);
  return out;
}

}  // namespace

// ---------------------------------------------------------------- component sources

SingleFileComponentSource::SingleFileComponentSource(std::shared_ptr<const OriginalTensorFile> file,
                                                     std::string component, std::map<std::string, Entry> entries)
    : file_(std::move(file)), component_(std::move(component)), entries_(std::move(entries)) {}

const SingleFileComponentSource::Entry& SingleFileComponentSource::entry(const std::string& key) const {
  auto it = entries_.find(key);
  SD_CHECK(it != entries_.end(), describe(), " has no tensor '", key, "'");
  return it->second;
}

Shape SingleFileComponentSource::shape(const std::string& key) const {
  const Entry& e = entry(key);
  return mapped_shape(file_->shapes().at(e.original), e.transform, file_->path() + ": " + e.original);
}

Tensor SingleFileComponentSource::get_stored(const std::string& key) const {
  const Entry& e = entry(key);
  return mapped_view(file_->get(e.original), e.transform, e.part, file_->path() + ": " + e.original);
}

DType SingleFileComponentSource::stored_dtype(const std::string& key) const { return file_->dtype(entry(key).original); }

Tensor SingleFileComponentSource::get(const std::string& key, DType dtype, Device device) const {
  return copy_to(get_stored(key), dtype, device);
}

std::vector<std::string> SingleFileComponentSource::keys() const {
  std::vector<std::string> out;
  for (auto& [k, _] : entries_) out.push_back(k);
  return out;
}

std::string SingleFileComponentSource::describe() const { return file_->path() + " (" + component_ + ")"; }

ComponentTensors SingleFileCheckpoint::stored_tensors() const {
  ComponentTensors out;
  for (auto& [name, src] : components)
    for (auto& [k, _] : src->entries()) out[name][k] = src->get_stored(k);
  return out;
}

ComponentKeyShapes SingleFileCheckpoint::key_shapes() const {
  ComponentKeyShapes out;
  for (auto& [name, src] : components)
    for (auto& [k, _] : src->entries()) out[name][k] = src->shape(k);
  return out;
}

// ---------------------------------------------------------------- load

SingleFileCheckpoint load_single_file(const std::string& path, const SingleFileLoadOptions& options) {
  std::shared_ptr<OriginalTensorFile> file = open_original(path);
  const KeyShapes& shapes = file->shapes();
  SingleFileCheckpoint ck;
  ck.path = path;
  ck.detected = detect_checkpoint(shapes);
  ck.family = options.family != ModelFamily::Unknown ? options.family : ck.detected.family;
  ck.layout = layout_for_original_keys(ck.family, shapes, ck.detected.vae_prefix);
  if (auto* st = dynamic_cast<SafetensorsOriginal*>(file.get())) ck.metadata = st->metadata();
  if (auto* tc = dynamic_cast<TorchOriginal*>(file.get())) ck.global_step = tc->global_step();

  std::map<std::string, std::map<std::string, SingleFileComponentSource::Entry>> comps;
  std::set<std::string> used;
  for (const auto& [key, shape] : shapes) {
    const OriginalKeyInfo info = from_original_key(ck.layout, key);
    if (info.kind == KeyKind::Ignored) continue;
    if (info.kind == KeyKind::Unknown) {
      ck.unknown.push_back(key);
      continue;
    }
    const DiffusersKey& t = info.target;
    for (size_t i = 0; i < t.keys.size(); ++i) {
      auto& slot = comps[t.component];
      auto [it, inserted] = slot.emplace(t.keys[i], SingleFileComponentSource::Entry{
                                                         key, t.transform,
                                                         t.transform == KeyTransform::FusedQkv ? int(i) : -1});
      SD_CHECK(inserted, "single file '", path, "': '", it->second.original, "' and '", key, "' both map to ",
               t.component, " '", t.keys[i], "'");
      // Checks the transform fits the stored shape now, not when a model asks for the tensor.
      (void)mapped_shape(shape, t.transform, path + ": " + key);
    }
    used.insert(key);
  }
  SD_CHECK(!options.strict || ck.unknown.empty(), "single file '", path, "' (", family_name(ck.family), "): ",
           ck.unknown.size(), " keys no rule maps, e.g. '", ck.unknown.empty() ? "" : ck.unknown.front(), "'");

  if (options.use_ema) {
    // ldm keeps the EMA UNet under model_ema.<name without dots>; take those instead.
    SD_CHECK(ck.detected.has_ema, "single file '", path, "' has no EMA weights (model_ema.*) to use");
    for (auto& [dkey, e] : comps[kUnet]) {
      const std::string ek = ema_key(e.original);
      auto it = shapes.find(ek);
      SD_CHECK(it != shapes.end(), "single file '", path, "': no EMA copy '", ek, "' of '", e.original, "'");
      SD_CHECK(it->second == shapes.at(e.original), "single file '", path, "': EMA copy '", ek, "' has shape ",
               shape_str(it->second), ", '", e.original, "' has ", shape_str(shapes.at(e.original)));
      used.erase(e.original);
      used.insert(ek);
      e.original = ek;
    }
    ck.used_ema = true;
  }
  for (const auto& [key, _] : shapes)
    if (!used.count(key) && std::find(ck.unknown.begin(), ck.unknown.end(), key) == ck.unknown.end())
      ck.ignored.push_back(key);
  for (auto& [name, entries] : comps)
    ck.components[name] = std::make_shared<SingleFileComponentSource>(file, name, std::move(entries));
  return ck;
}

// ---------------------------------------------------------------- save

std::vector<std::pair<std::string, Tensor>> to_original_tensors(const ComponentTensors& components,
                                                                const CheckpointLayout& layout) {
  std::map<std::string, Tensor> out;
  std::map<std::string, std::string> source;  // original name -> "component/key" that produced it
  struct Fused {
    std::array<Tensor, 3> parts;
    std::array<std::string, 3> names;
  };
  std::map<std::string, Fused> fused;
  std::vector<std::string> unknown;
  auto claim = [&](const std::string& original, const std::string& from) {
    auto [it, inserted] = source.emplace(original, from);
    SD_CHECK(inserted, "to_original_tensors: '", it->second, "' and '", from, "' both map to '", original,
             "' (a legacy and a current spelling of the same parameter?)");
  };
  for (const auto& [comp, tensors] : components) {
    for (const auto& [key, t] : tensors) {
      const std::string from = comp + "/" + key;
      std::optional<OriginalKey> o = to_original_key(layout, comp, key);
      if (!o) {
        if (!ends_with(key, "position_ids")) unknown.push_back(from);  // a buffer with no original: dropped
        continue;
      }
      if (o->transform == KeyTransform::FusedQkv) {
        Fused& f = fused[o->key];
        SD_CHECK(!f.parts[size_t(o->part)].defined(), "to_original_tensors: '", f.names[size_t(o->part)], "' and '",
                 from, "' both map to part ", o->part, " of '", o->key, "'");
        f.parts[size_t(o->part)] = t;
        f.names[size_t(o->part)] = from;
        continue;
      }
      claim(o->key, from);
      switch (o->transform) {
        case KeyTransform::ConvToLinear: out[o->key] = to_conv_view(t, from); break;
        case KeyTransform::Transpose:
          SD_CHECK(t.dim() == 2, "to_original_tensors: '", from, "' must be 2-D, got ", t.str());
          out[o->key] = as_strided(t, {t.size(1), t.size(0)}, {t.stride(1), t.stride(0)}, t.offset());
          break;
        default: out[o->key] = t; break;
      }
    }
  }
  SD_CHECK(unknown.empty(), "to_original_tensors: ", unknown.size(), " tensors have no original name in the ",
           family_name(layout.family), " layout, e.g. '", unknown.empty() ? "" : unknown.front(), "'",
           unknown.size() > 1 ? ", '" + unknown[1] + "'" : std::string());
  for (auto& [name, f] : fused) {
    static const char* const qkv[] = {"q_proj", "k_proj", "v_proj"};
    for (int i = 0; i < 3; ++i)
      SD_CHECK(f.parts[size_t(i)].defined(), "to_original_tensors: '", name, "' needs q, k and v; ", qkv[i],
               " is missing (have '", f.names[0], "', '", f.names[1], "', '", f.names[2], "')");
    const Tensor& q = f.parts[0];
    for (int i = 1; i < 3; ++i)
      SD_CHECK(f.parts[size_t(i)].shape() == q.shape() && f.parts[size_t(i)].dtype() == q.dtype(),
               "to_original_tensors: q/k/v of '", name, "' differ: ", q.str(), " vs ", f.parts[size_t(i)].str());
    SD_CHECK(q.dim() >= 1, "to_original_tensors: '", f.names[0], "' is a scalar");
    claim(name, f.names[0]);
    // [3D, ...] = q rows, then k rows, then v rows.
    Shape shape = q.shape();
    const int64_t d = shape[0];
    shape[0] = 3 * d;
    Tensor joined = empty(shape, q.dtype());
    const Shape st = joined.strides();
    for (int i = 0; i < 3; ++i) copy_(as_strided(joined, q.shape(), st, int64_t(i) * d * (st.empty() ? 0 : st[0])), f.parts[size_t(i)]);
    out[name] = joined;
  }
  return {out.begin(), out.end()};
}

void save_single_file(const std::string& path, const ComponentTensors& components, ModelFamily family,
                      const SingleFileSaveOptions& options) {
  const ComponentKeyShapes shapes = shapes_of(components);
  if (family == ModelFamily::Unknown) family = detect_diffusers_family(shapes);
  const bool has_text = components.count(kTextEncoder) || components.count(kTextEncoder2);
  SD_CHECK(family != ModelFamily::Unknown || !has_text,
           "save_single_file: cannot tell the model family of these components; pass it explicitly");
  const CheckpointLayout layout = layout_for_diffusers_keys(family, shapes);
  std::vector<std::pair<std::string, Tensor>> tensors = to_original_tensors(components, layout);
  for (auto& [_, t] : tensors) t = convert_floating(t, options.dtype);
  if (options.prediction == Prediction::VPrediction) tensors.emplace_back("v_pred", empty({0}));
  std::map<std::string, std::string> metadata = options.metadata;
  metadata["format"] = "pt";
  save_safetensors(path, tensors, metadata);
}

// ---------------------------------------------------------------- folders

namespace {

// The weight files of one component folder: one file, or the shards of an index.
std::vector<fs::path> weight_files(const fs::path& dir, const std::string& variant) {
  std::vector<std::string> names;
  for (const char* stem : {"diffusion_pytorch_model", "model"}) {
    if (!variant.empty()) {
      names.push_back(std::string(stem) + "." + variant + ".safetensors");
      names.push_back(std::string(stem) + ".safetensors.index." + variant + ".json");
    }
    names.push_back(std::string(stem) + ".safetensors");
    names.push_back(std::string(stem) + ".safetensors.index.json");
  }
  for (const char* stem : {"diffusion_pytorch_model", "pytorch_model"}) {
    if (!variant.empty()) names.push_back(std::string(stem) + "." + variant + ".bin");
    names.push_back(std::string(stem) + ".bin");
  }
  for (const std::string& n : names) {
    const fs::path p = dir / n;
    if (!fs::is_regular_file(p)) continue;
    if (!ends_with(n, ".json")) return {p};
    std::ifstream in(p);
    nlohmann::json index;
    try {
      in >> index;
    } catch (const std::exception& e) {
      SD_FAIL("shard index '", p.string(), "' is not valid JSON: ", e.what());
    }
    SD_CHECK(index.contains("weight_map") && index["weight_map"].is_object(), "shard index '", p.string(),
             "' has no \"weight_map\" object");
    std::set<std::string> shards;
    for (auto& [_, shard] : index["weight_map"].items()) {
      SD_CHECK(shard.is_string(), "shard index '", p.string(), "': a shard name is not a string");
      shards.insert(shard.get<std::string>());
    }
    std::vector<fs::path> out;
    for (const std::string& s : shards) out.push_back(dir / s);
    return out;
  }
  return {};
}

TensorMap read_component(const fs::path& dir, const std::string& variant) {
  const std::vector<fs::path> files = weight_files(dir, variant);
  SD_CHECK(!files.empty(), "diffusers folder: '", dir.string(), "' holds no weights (diffusion_pytorch_model / model ",
           ".safetensors or .bin", variant.empty() ? "" : ", variant " + variant, ")");
  TensorMap out;
  for (const fs::path& f : files) {
    if (f.extension() == ".bin") {
      for (auto& [k, t] : load_torch_checkpoint(f.string()).tensors) out[k] = t;
      continue;
    }
    SafetensorsFile st = SafetensorsFile::open(f.string());
    for (const std::string& k : st.keys()) {
      SD_CHECK(!out.count(k), "diffusers folder: '", k, "' appears in two shards of '", dir.string(), "'");
      out[k] = st.get(k);
    }
  }
  return out;
}

// transformers' CLIPTokenizer files for SD's tokenizers (FORMATS.md §2.6): CLIP-L pads with
// <|endoftext|>, OpenCLIP (SD2, SDXL's tokenizer_2) with "!" (id 0).
void write_tokenizer(const fs::path& from, const fs::path& to, bool pad_with_eos) {
  // vocab.json + merges.txt, or (a folder saved by transformers 5) tokenizer.json alone.
  std::vector<const char*> files = {"vocab.json", "merges.txt"};
  if (!fs::exists(from / "vocab.json") && fs::is_regular_file(from / "tokenizer.json")) files = {"tokenizer.json"};
  for (const char* f : files)
    SD_CHECK(fs::is_regular_file(from / f), "tokenizer: '", (from / f).string(), "' does not exist");
  fs::create_directories(to);
  for (const char* f : files) fs::copy_file(from / f, to / f, fs::copy_options::overwrite_existing);
  const char* pad = pad_with_eos ? "<|endoftext|>" : "!";
  nlohmann::json special = {{"bos_token", "<|startoftext|>"}, {"eos_token", "<|endoftext|>"},
                            {"pad_token", pad}, {"unk_token", "<|endoftext|>"}};
  nlohmann::json config = special;
  config["add_prefix_space"] = false;
  config["do_lower_case"] = true;
  config["errors"] = "replace";
  config["model_max_length"] = 77;
  config["tokenizer_class"] = "CLIPTokenizer";
  write_text(to / "special_tokens_map.json", special.dump(2) + "\n");
  write_text(to / "tokenizer_config.json", config.dump(2) + "\n");
}

}  // namespace

DiffusersFolder read_diffusers_folder(const std::string& dir, const std::string& variant) {
  SD_CHECK(fs::is_directory(dir), "diffusers folder: '", dir, "' is not a directory");
  DiffusersFolder folder;
  for (const char* comp : {kUnet, kVae, kTextEncoder, kTextEncoder2}) {
    const fs::path p = fs::path(dir) / comp;
    if (fs::is_directory(p)) folder.components[comp] = read_component(p, variant);
  }
  SD_CHECK(!folder.components.empty(), "diffusers folder: '", dir,
           "' has none of unet/, vae/, text_encoder/, text_encoder_2/");
  folder.family = detect_diffusers_family(shapes_of(folder.components));
  const fs::path sched = fs::path(dir) / "scheduler" / "scheduler_config.json";
  if (fs::is_regular_file(sched)) {
    std::ifstream in(sched);
    const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("prediction_type") && j["prediction_type"].is_string()) {
      const std::string p = j["prediction_type"];
      if (p == "epsilon" || p == "v_prediction") folder.prediction = parse_prediction(p);
    }
  }
  return folder;
}

void diffusers_folder_to_single_file(const std::string& dir, const std::string& out_file,
                                     const FolderToFileOptions& options) {
  DiffusersFolder folder = read_diffusers_folder(dir, options.variant);
  const ModelFamily family = options.family != ModelFamily::Unknown ? options.family : folder.family;
  SingleFileSaveOptions save = options.save;
  if (save.prediction == Prediction::Unknown) save.prediction = folder.prediction;
  save_single_file(out_file, folder.components, family, save);
}

void single_file_to_diffusers_folder(const std::string& file, const std::string& out_dir,
                                     const FileToFolderOptions& options) {
  const SingleFileCheckpoint ck = load_single_file(file, options.load);
  const Prediction prediction =
      options.prediction != Prediction::Unknown ? options.prediction : ck.detected.prediction;
  SD_CHECK(!ck.components.empty(), "single file '", file, "': no UNet, VAE or text encoder found (",
           ck.detected.describe(), ")");
  const fs::path out(out_dir);
  fs::create_directories(out);
  const ComponentKeyShapes shapes = ck.key_shapes();
  std::vector<std::string> written;
  for (const auto& [name, src] : ck.components) {
    const KeyShapes& ks = shapes.at(name);
    // Configs first: they check what the weights cannot tell (e.g. SD2's prediction type).
    std::string config;
    if (name == kUnet) config = unet_config_json(ck.family, prediction, ks);
    else if (name == kVae) config = vae_config_json(ck.family, ks);
    else config = text_encoder_config_json(ck.family, name, ks);
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const auto& [k, _] : src->entries()) tensors.emplace_back(k, convert_floating(src->get_stored(k), options.dtype));
    fs::create_directories(out / name);
    const bool transformers = name == kTextEncoder || name == kTextEncoder2;
    save_safetensors((out / name / (transformers ? "model.safetensors" : "diffusion_pytorch_model.safetensors")).string(),
                     tensors, {{"format", "pt"}});
    write_text(out / name / "config.json", config);
    written.push_back(name);
  }
  if (ck.components.count(kUnet)) {
    fs::create_directories(out / "scheduler");
    write_text(out / "scheduler" / "scheduler_config.json", scheduler_config_json(ck.family, prediction));
    written.push_back("scheduler");
  }
  if (!options.tokenizer_from.empty()) {
    const fs::path from(options.tokenizer_from);
    // CLIP-L's tokenizer pads with EOS; OpenCLIP's (SD2's only one, SDXL's second) with "!".
    if (ck.components.count(kTextEncoder)) {
      write_tokenizer(from, out / "tokenizer", ck.family != ModelFamily::SD2);
      written.push_back("tokenizer");
    }
    if (ck.components.count(kTextEncoder2)) {
      write_tokenizer(from, out / "tokenizer_2", false);
      written.push_back("tokenizer_2");
    }
  }
  const Prediction pred = ck.components.count(kUnet) || prediction != Prediction::Unknown ? prediction
                                                                                          : Prediction::Epsilon;
  write_text(out / "model_index.json", model_index_json(ck.family, pred, ck.detected.inpainting, written));
}

}  // namespace sd::nn
