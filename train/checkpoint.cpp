#include "train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "runtime/error.h"
#include "runtime/safetensors.h"

namespace sd::train {

namespace fs = std::filesystem;

namespace {

constexpr int kFormatVersion = 1;

// The step of "checkpoint-<N>", or -1 for anything else (temporaries included).
int64_t checkpoint_step(const fs::path& p) {
  const std::string n = p.filename().string();
  if (n.rfind("checkpoint-", 0) != 0) return -1;
  const std::string num = n.substr(11);
  if (num.empty() || num.size() > 18 || !std::all_of(num.begin(), num.end(), ::isdigit)) return -1;
  return std::stoll(num);
}

std::vector<std::pair<int64_t, fs::path>> list_checkpoints(const std::string& output_dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(output_dir, ec)) {
    const int64_t s = checkpoint_step(e.path());
    if (s >= 0 && e.is_directory() && fs::exists(e.path() / "state.json")) out.emplace_back(s, e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void write_text_file(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  SD_CHECK(f, "cannot create '", path.string(), "': ", std::strerror(errno));
  f << text;
  f.flush();
  SD_CHECK(f.good(), "cannot write '", path.string(), "' (disk full?): ", std::strerror(errno));
  f.close();
  SD_CHECK(!f.fail(), "cannot write '", path.string(), "' (disk full?)");
}

}  // namespace

std::string save_checkpoint(const std::string& output_dir, int64_t step, const CheckpointContents& c) {
  const fs::path final_dir = fs::path(output_dir) / ("checkpoint-" + std::to_string(step));
  const fs::path tmp = fs::path(output_dir) / ("checkpoint-" + std::to_string(step) + ".tmp-" + std::to_string(getpid()));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  SD_CHECK(!ec, "cannot create the checkpoint folder '", tmp.string(), "': ", ec.message());
  try {
    nlohmann::json files = nlohmann::json::array();
    for (const CheckpointFile& f : c.files) {
      const fs::path p = tmp / f.path;
      fs::create_directories(p.parent_path());
      std::map<std::string, std::string> meta = f.metadata;
      meta.emplace("format", "pt");
      if (f.write) f.write(p.string());
      else save_safetensors(p.string(), f.tensors, meta);
      if (!f.copy_config_from.empty()) fs::copy_file(f.copy_config_from, p.parent_path() / "config.json");
      files.push_back({{"path", f.path}, {"prefix", f.prefix}});
    }
    nlohmann::json state = c.state;
    state["files"] = files;
    state["format_version"] = kFormatVersion;
    state["step"] = step;
    // state.json last: a directory without it is never taken for a checkpoint.
    write_text_file(tmp / "state.json", state.dump(2) + "\n");
    // An existing checkpoint of the same step (a re-run after resuming from an earlier one) is
    // replaced only now that the new one is complete.
    if (fs::exists(final_dir)) {
      const fs::path old = final_dir.string() + ".old-" + std::to_string(getpid());
      fs::rename(final_dir, old);
      fs::rename(tmp, final_dir);
      fs::remove_all(old, ec);
    } else {
      fs::rename(tmp, final_dir);
    }
  } catch (const std::exception& e) {
    fs::remove_all(tmp, ec);
    SD_FAIL("saving checkpoint ", final_dir.string(), " failed; earlier checkpoints are intact. ", e.what());
  }
  return final_dir.string();
}

void prune_checkpoints(const std::string& output_dir, int64_t limit) {
  auto all = list_checkpoints(output_dir);
  std::error_code ec;
  for (size_t i = 0; i + size_t(limit) < all.size(); ++i) fs::remove_all(all[i].second, ec);
}

std::optional<std::string> find_checkpoint(const std::string& output_dir, const std::string& which) {
  if (which == "latest") {
    auto all = list_checkpoints(output_dir);
    if (all.empty()) return std::nullopt;
    return all.back().second.string();
  }
  SD_CHECK(fs::is_directory(which), "--resume_from_checkpoint '", which, "' is not a folder (give a checkpoint-N "
           "folder or \"latest\")");
  SD_CHECK(fs::exists(fs::path(which) / "state.json"), "--resume_from_checkpoint '", which,
           "' is not a complete checkpoint: it has no state.json (an interrupted save leaves such folders; use an "
           "earlier checkpoint)");
  return which;
}

LoadedCheckpoint load_checkpoint(const std::string& dir) {
  LoadedCheckpoint out;
  out.dir = dir;
  const fs::path state_path = fs::path(dir) / "state.json";
  std::ifstream f(state_path);
  SD_CHECK(f, "cannot open '", state_path.string(), "'");
  try {
    out.state = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    SD_FAIL("'", state_path.string(), "' is not valid JSON: ", e.what());
  }
  SD_CHECK(out.state.is_object() && out.state.value("format_version", 0) == kFormatVersion, "'", state_path.string(),
           "' is not an sd_train checkpoint of this version");
  SD_CHECK(out.state.contains("files") && out.state["files"].is_array(), "'", state_path.string(),
           "' lists no tensor files");
  for (const nlohmann::json& f : out.state["files"]) {
    const fs::path rel = f.at("path").get<std::string>();
    SD_CHECK(rel.is_relative() && rel.lexically_normal().string().rfind("..", 0) != 0, "'", state_path.string(),
             "' names a file outside the checkpoint: ", rel.string());
    const fs::path p = fs::path(dir) / rel;
    const std::string prefix = f.at("prefix").get<std::string>();
    SafetensorsFile sf = SafetensorsFile::open(p.string());
    for (const std::string& k : sf.keys()) out.tensors.emplace_back(prefix + k, sf.get(k));
  }
  return out;
}

void check_fingerprint(const nlohmann::json& saved, const nlohmann::json& current, const std::string& dir) {
  static const std::map<std::string, std::string> why = {
      {"method", "a checkpoint of another training method"},
      {"model", "a checkpoint of another model"},
      {"family", "a checkpoint of another model family"},
      {"trainable", "the trainable tensors differ (other LoRA targets, rank or text-encoder training)"},
      {"gradient_accumulation_steps", "another accumulation changes which examples each step sees"},
      {"seed", "another seed changes the data order and the noise"},
      {"dataset", "another dataset (or a changed one: examples added or removed)"},
      {"resolution", "another resolution"},
      {"mixed_precision", "another precision"},
  };
  std::string problems;
  for (const auto& [key, reason] : why) {
    const auto a = saved.find(key);
    const auto b = current.find(key);
    const nlohmann::json av = a == saved.end() ? nlohmann::json() : *a;
    const nlohmann::json bv = b == current.end() ? nlohmann::json() : *b;
    if (av != bv) problems += "\n  " + key + ": checkpoint " + av.dump() + ", this run " + bv.dump() + " (" + reason + ")";
  }
  // The process count may change (the state is saved whole; each process takes its part on load), as
  // long as the global batch (train_batch_size x processes) stays: the same examples then make each
  // step, and the data position carries over.
  auto global_batch = [](const nlohmann::json& f, std::string& text) -> int64_t {
    const int64_t b = f.value("train_batch_size", int64_t(-1)), w = f.value("world_size", int64_t(1));
    text = std::to_string(b) + " per process x " + std::to_string(w) + " process(es)";
    return b * w;
  };
  std::string saved_text, current_text;
  if (global_batch(saved, saved_text) != global_batch(current, current_text))
    problems += "\n  global batch: checkpoint " + saved_text + ", this run " + current_text +
                " (another batch size changes which examples each step sees; keep --train_batch_size x processes "
                "the same)";
  SD_CHECK(problems.empty(), "cannot resume from '", dir, "':", problems);
}

}  // namespace sd::train
