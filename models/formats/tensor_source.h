// Where weights come from when a module loads: one safetensors file, a sharded set of files
// (diffusers' *.safetensors.index.json), or tensors in memory. Loading asks by key, so only
// the tensors a module needs are read (memory-mapped), converted to the wanted dtype/device
// on the way.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/safetensors.h"
#include "runtime/tensor.h"

namespace sd::nn {

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual bool contains(const std::string& key) const = 0;
  virtual Shape shape(const std::string& key) const = 0;
  virtual Tensor get(const std::string& key, DType dtype, Device device) const = 0;
  // What a module keeps as its parameter (Module::load): get(), except that a memory-mapped file asked
  // for its own dtype on the CPU hands out a view of the mapping instead of a copy. The weights are
  // then the page cache's pages (nothing copied or zeroed; RSS only for what runs), and writes (training)
  // land in private copy-on-write pages, never in the file. Two loads of one key from the same source
  // share those pages.
  virtual Tensor get_in_place(const std::string& key, DType dtype, Device device) const { return get(key, dtype, device); }
  virtual std::vector<std::string> keys() const = 0;
  virtual std::string describe() const = 0;  // for error messages: the file(s)
  // The dtype the source stores a tensor in, where it knows (converters keep it).
  virtual std::optional<DType> file_dtype(const std::string& key) const { return std::nullopt; }
};

class SafetensorsSource final : public TensorSource {
 public:
  // A .safetensors file, or a diffusers/transformers shard index (*.safetensors.index.json).
  static std::shared_ptr<SafetensorsSource> open(const std::string& path);
  bool contains(const std::string& key) const override;
  Shape shape(const std::string& key) const override;
  Tensor get(const std::string& key, DType dtype, Device device) const override;
  Tensor get_in_place(const std::string& key, DType dtype, Device device) const override;
  std::vector<std::string> keys() const override;
  std::string describe() const override { return path_; }
  std::optional<DType> file_dtype(const std::string& key) const override;
  const std::map<std::string, std::string>& metadata() const;

 private:
  const SafetensorsFile& file_for(const std::string& key) const;
  std::string path_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // key -> index into files_
};

class MapSource final : public TensorSource {
 public:
  explicit MapSource(std::map<std::string, Tensor> tensors, std::string name = "in-memory tensors")
      : tensors_(std::move(tensors)), name_(std::move(name)) {}
  bool contains(const std::string& key) const override { return tensors_.count(key) > 0; }
  Shape shape(const std::string& key) const override;
  Tensor get(const std::string& key, DType dtype, Device device) const override;
  std::vector<std::string> keys() const override;
  std::string describe() const override { return name_; }
  std::optional<DType> file_dtype(const std::string& key) const override {
    auto it = tensors_.find(key);
    return it == tensors_.end() ? std::nullopt : std::optional<DType>(it->second.dtype());
  }

 private:
  std::map<std::string, Tensor> tensors_;
  std::string name_;
};

// The same keys with a prefix added ("unet." + key) or removed, e.g. to load a text encoder
// out of a single-file checkpoint.
class PrefixedSource final : public TensorSource {
 public:
  PrefixedSource(std::shared_ptr<const TensorSource> inner, std::string prefix)
      : inner_(std::move(inner)), prefix_(std::move(prefix)) {}
  bool contains(const std::string& key) const override { return inner_->contains(prefix_ + key); }
  Shape shape(const std::string& key) const override { return inner_->shape(prefix_ + key); }
  Tensor get(const std::string& key, DType dtype, Device device) const override {
    return inner_->get(prefix_ + key, dtype, device);
  }
  Tensor get_in_place(const std::string& key, DType dtype, Device device) const override {
    return inner_->get_in_place(prefix_ + key, dtype, device);
  }
  std::vector<std::string> keys() const override;
  std::string describe() const override { return inner_->describe() + " (keys under '" + prefix_ + "')"; }
  std::optional<DType> file_dtype(const std::string& key) const override { return inner_->file_dtype(prefix_ + key); }

 private:
  std::shared_ptr<const TensorSource> inner_;
  std::string prefix_;
};

}  // namespace sd::nn
