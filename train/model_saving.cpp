#include "train/model_saving.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <optional>

#include "models/formats/single_file.h"
#include "runtime/error.h"
#include "runtime/safetensors.h"

namespace sd::train {

namespace fs = std::filesystem;

namespace {

// The weight file name diffusers / transformers give each component.
std::string weights_name(const std::string& component) {
  return component.rfind("text_encoder", 0) == 0 ? "model.safetensors" : "diffusion_pytorch_model.safetensors";
}

bool is_weight_file(const fs::path& p) {
  const std::string n = p.filename().string();
  for (const char* ext : {".safetensors", ".bin", ".ckpt", ".pt", ".index.json", ".msgpack", ".onnx"})
    if (n.size() >= std::strlen(ext) && n.compare(n.size() - std::strlen(ext), std::strlen(ext), ext) == 0) return true;
  return n.find(".safetensors.index") != std::string::npos || n.find(".bin.index") != std::string::npos;
}

// Copies a file (following symlinks: hub caches and our test fixtures link files) via a temporary.
void copy_file_atomic(const fs::path& from, const fs::path& to) {
  const fs::path tmp = to.string() + ".tmp-" + std::to_string(getpid());
  std::error_code ec;
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing, ec);
  if (!ec) fs::rename(tmp, to, ec);
  if (ec) {
    fs::remove(tmp);
    SD_FAIL("cannot copy '", from.string(), "' to '", to.string(), "': ", ec.message());
  }
}

std::vector<std::pair<std::string, Tensor>> converted(const std::vector<std::pair<std::string, Tensor>>& ts, DType dt) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [k, t] : ts) out.emplace_back(k, is_floating(t.dtype()) ? copy_to(t, dt, Device::cpu()) : copy_to(t, t.dtype(), Device::cpu()));
  return out;
}

// The untouched parts of the output: the source folder's files, or the converted single file.
void write_base_folder(const PipelineSaveRequest& req) {
  const fs::path out(req.output_dir);
  fs::create_directories(out);
  if (fs::is_directory(req.source)) {
    // Symlinked files and folders (hub cache snapshots link every file into ../../blobs; the test
    // pipelines link shared files) are copied as what they point to, under their own names: the path
    // inside the output is taken lexically (fs::relative would resolve the link and name the target).
    const auto follow = fs::directory_options::follow_directory_symlink;
    for (const auto& e : fs::recursive_directory_iterator(req.source, follow)) {
      if (e.is_directory()) continue;
      const fs::path rel = e.path().lexically_relative(req.source);
      const std::string top = rel.begin()->string();
      // Checkpoints, logs or outputs of an earlier run inside the source are not part of the model.
      if (top.rfind("checkpoint-", 0) == 0 || top == "logs" || top == "validation" || top.rfind(".", 0) == 0) continue;
      if (req.trained.count(top) && is_weight_file(rel)) continue;  // replaced below
      fs::create_directories((out / rel).parent_path());
      copy_file_atomic(e.path(), out / rel);
    }
    return;
  }
  nn::FileToFolderOptions o;
  o.prediction = req.prediction;
  o.dtype = req.dtype;
  o.tokenizer_from = req.tokenizer_dir;
  o.load.family = req.family;
  nn::single_file_to_diffusers_folder(req.source, req.output_dir, o);
  // The architecture the run used (--model_config), not the family preset's: its configs and tokenizer
  // files replace the written ones (never its weights).
  if (req.model_config.empty()) return;
  for (const char* component : {"unet", "vae", "text_encoder", "text_encoder_2", "scheduler", "tokenizer", "tokenizer_2"}) {
    const fs::path from = fs::path(req.model_config) / component;
    if (!fs::is_directory(from) || !fs::is_directory(out / component)) continue;
    for (const auto& e : fs::directory_iterator(from))
      if (e.is_regular_file() && !is_weight_file(e.path())) copy_file_atomic(e.path(), out / component / e.path().filename());
  }
}

}  // namespace

void save_diffusers_pipeline(const PipelineSaveRequest& req) {
  SD_CHECK(fs::path(req.output_dir) != fs::path(req.source), "the output folder is the starting model's folder: "
           "choose another --output_dir");
  write_base_folder(req);
  for (const auto& [component, tensors] : req.trained) {
    const fs::path dir = fs::path(req.output_dir) / component;
    fs::create_directories(dir);
    // The source's variant/sharded weight files of a trained component must not shadow the new ones.
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file() && is_weight_file(e.path())) fs::remove(e.path());
    save_safetensors((dir / weights_name(component)).string(), converted(tensors, req.dtype), {{"format", "pt"}});
  }
}

void save_pipeline_single_file(const PipelineSaveRequest& req, const std::string& path,
                               const std::map<std::string, std::string>& metadata) {
  nn::ComponentTensors comps;
  nn::ModelFamily family = req.family;
  // The frozen components as the source stores them (exact values; never our 16-bit copies).
  std::optional<nn::SingleFileCheckpoint> ck;
  if (fs::is_directory(req.source)) {
    nn::DiffusersFolder f = nn::read_diffusers_folder(req.source, req.variant);
    comps = std::move(f.components);
    if (family == nn::ModelFamily::Unknown) family = f.family;
  } else {
    nn::SingleFileLoadOptions lo;
    lo.family = req.family;
    ck = nn::load_single_file(req.source, lo);
    comps = ck->stored_tensors();
    if (family == nn::ModelFamily::Unknown) family = ck->family;
  }
  for (const auto& [component, tensors] : req.trained) {
    nn::TensorMap m;
    for (const auto& [k, t] : tensors) m[k] = t;
    comps[component] = std::move(m);
  }
  nn::SingleFileSaveOptions so;
  so.dtype = req.dtype;
  so.metadata = metadata;
  so.prediction = req.prediction;
  nn::save_single_file(path, comps, family, so);
}

}  // namespace sd::train
