#include "models/formats/tensor_source.h"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

namespace sd::nn {

std::shared_ptr<SafetensorsSource> SafetensorsSource::open(const std::string& path) {
  auto src = std::shared_ptr<SafetensorsSource>(new SafetensorsSource());
  src->path_ = path;
  const bool is_index = path.size() > 5 && path.substr(path.size() - 5) == ".json";
  if (!is_index) {
    src->files_.push_back(SafetensorsFile::open(path));
    for (const std::string& k : src->files_[0].keys()) src->where_[k] = 0;
    return src;
  }
  std::ifstream in(path);
  SD_CHECK(in.good(), "cannot open shard index '", path, "'");
  nlohmann::json index;
  try {
    in >> index;
  } catch (const std::exception& e) {
    SD_FAIL("shard index '", path, "' is not valid JSON: ", e.what());
  }
  SD_CHECK(index.contains("weight_map") && index["weight_map"].is_object(), "shard index '", path,
           "' has no \"weight_map\" object");
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  std::map<std::string, size_t> shard_index;
  for (auto& [key, shard] : index["weight_map"].items()) {
    SD_CHECK(shard.is_string(), "shard index '", path, "': entry for '", key, "' is not a file name");
    const std::string name = shard.get<std::string>();
    auto it = shard_index.find(name);
    if (it == shard_index.end()) {
      src->files_.push_back(SafetensorsFile::open((dir / name).string()));
      it = shard_index.emplace(name, src->files_.size() - 1).first;
    }
    SD_CHECK(src->files_[it->second].contains(key), "shard index '", path, "' puts '", key, "' in '", name,
             "', which does not contain it");
    src->where_[key] = it->second;
  }
  return src;
}

const SafetensorsFile& SafetensorsSource::file_for(const std::string& key) const {
  auto it = where_.find(key);
  SD_CHECK(it != where_.end(), "'", path_, "' has no tensor '", key, "'");
  return files_[it->second];
}

bool SafetensorsSource::contains(const std::string& key) const { return where_.count(key) > 0; }
Shape SafetensorsSource::shape(const std::string& key) const { return file_for(key).info(key).shape; }
Tensor SafetensorsSource::get(const std::string& key, DType dtype, Device device) const {
  return file_for(key).get(key, dtype, device);
}

Tensor SafetensorsSource::get_in_place(const std::string& key, DType dtype, Device device) const {
  const SafetensorsFile& f = file_for(key);
  if (device.is_cpu() && f.info(key).dtype == dtype) return f.get(key);  // a view where it can be one
  return f.get(key, dtype, device);
}
std::vector<std::string> SafetensorsSource::keys() const {
  std::vector<std::string> k;
  for (const auto& [name, _] : where_) k.push_back(name);
  return k;
}
const std::map<std::string, std::string>& SafetensorsSource::metadata() const { return files_.at(0).metadata(); }

Shape MapSource::shape(const std::string& key) const {
  auto it = tensors_.find(key);
  SD_CHECK(it != tensors_.end(), name_, " has no tensor '", key, "'");
  return it->second.shape();
}
Tensor MapSource::get(const std::string& key, DType dtype, Device device) const {
  auto it = tensors_.find(key);
  SD_CHECK(it != tensors_.end(), name_, " has no tensor '", key, "'");
  return copy_to(it->second, dtype, device);
}
std::vector<std::string> MapSource::keys() const {
  std::vector<std::string> k;
  for (const auto& [name, _] : tensors_) k.push_back(name);
  return k;
}

std::vector<std::string> PrefixedSource::keys() const {
  std::vector<std::string> out;
  for (const std::string& k : inner_->keys())
    if (k.rfind(prefix_, 0) == 0) out.push_back(k.substr(prefix_.size()));
  return out;
}

std::optional<DType> SafetensorsSource::file_dtype(const std::string& key) const {
  if (!contains(key)) return std::nullopt;
  return file_for(key).info(key).dtype;
}

}  // namespace sd::nn
