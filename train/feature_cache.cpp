#include "train/feature_cache.h"

#include <filesystem>

#include "infer/sha256.h"
#include "runtime/error.h"
#include "runtime/safetensors.h"

namespace sd::train {

namespace fs = std::filesystem;

FeatureCache::FeatureCache(std::string dir) : dir_(std::move(dir)) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  SD_CHECK(!ec, "cannot create the cache folder '", dir_, "': ", ec.message());
}

std::string FeatureCache::key(const std::vector<std::string>& parts) {
  infer::Sha256 h;
  for (const std::string& p : parts) {
    const uint64_t n = p.size();
    h.update(&n, sizeof n);  // length-prefixed: ("ab", "c") and ("a", "bc") differ
    h.update(p);
  }
  return h.hex_digest();
}

std::string FeatureCache::path(const std::string& key) const {
  // Two-level fan-out keeps folders small for large datasets.
  return (fs::path(dir_) / key.substr(0, 2) / (key + ".safetensors")).string();
}

std::optional<std::vector<std::pair<std::string, Tensor>>> FeatureCache::get(const std::string& key) const {
  const std::string p = path(key);
  if (!fs::exists(p)) {
    ++misses_;
    return std::nullopt;
  }
  try {
    SafetensorsFile f = SafetensorsFile::open(p);
    std::vector<std::pair<std::string, Tensor>> out;
    for (const std::string& k : f.keys()) out.emplace_back(k, copy_to(f.get(k), f.get(k).dtype(), Device::cpu()));
    ++hits_;
    return out;
  } catch (const Error&) {
    ++misses_;  // damaged (a crash mid-write cannot cause it: writes are atomic): recompute
    return std::nullopt;
  }
}

void FeatureCache::put(const std::string& key, const std::vector<std::pair<std::string, Tensor>>& tensors) const {
  const std::string p = path(key);
  fs::create_directories(fs::path(p).parent_path());
  std::vector<std::pair<std::string, Tensor>> host;
  for (const auto& [k, t] : tensors) host.emplace_back(k, copy_to(t, t.dtype(), Device::cpu()));
  save_safetensors(p, host, {{"format", "pt"}});
}

std::string weights_fingerprint(const std::vector<std::pair<std::string, Tensor>>& state) {
  infer::Sha256 h;
  for (const auto& [name, t] : state) {
    h.update(name);
    h.update(shape_str(t.shape()));
    h.update(dtype_name(t.dtype()));
  }
  for (size_t i : {size_t(0), state.size() / 2, state.empty() ? size_t(0) : state.size() - 1}) {
    if (i >= state.size()) continue;
    const Tensor c = copy_to(state[i].second, DType::F32, Device::cpu());
    h.update(c.data_ptr(), c.nbytes());
  }
  return h.hex_digest();
}

}  // namespace sd::train
