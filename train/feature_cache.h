// --cache_latents: what the frozen VAE (and a frozen text encoder) computes for an example, kept on
// disk under output_dir/cache/ and keyed by a SHA-256 of everything the result depends on (the image
// file's content, the transform, the model component's identity), so a changed image or another model
// is recomputed and nothing stale is ever read. One small safetensors file per entry, written
// atomically; a damaged entry is recomputed.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/tensor.h"

namespace sd::train {

class FeatureCache {
 public:
  explicit FeatureCache(std::string dir);
  // The key of a list of parts (joined unambiguously, hashed).
  static std::string key(const std::vector<std::string>& parts);
  std::optional<std::vector<std::pair<std::string, Tensor>>> get(const std::string& key) const;
  void put(const std::string& key, const std::vector<std::pair<std::string, Tensor>>& tensors) const;
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }

 private:
  std::string path(const std::string& key) const;
  std::string dir_;
  mutable int64_t hits_ = 0, misses_ = 0;
};

// A fingerprint of a module's weights: SHA-256 over its parameter names, shapes, dtypes and the bytes
// of a few of its tensors (first, middle, last), enough to tell models apart without hashing gigabytes.
std::string weights_fingerprint(const std::vector<std::pair<std::string, Tensor>>& state);

}  // namespace sd::train
