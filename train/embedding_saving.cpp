#include "train/embedding_saving.h"

#include <filesystem>

#include "ops/view.h"
#include "runtime/error.h"
#include "runtime/safetensors.h"

namespace sd::train {

namespace fs = std::filesystem;

std::vector<Tensor> learned_embeddings(const TrainingModel& model) {
  std::vector<Tensor> out;
  for (const TrainingModel::NewTokens& n : model.new_tokens())
    out.push_back(copy_to(narrow(n.master, 0, n.first, n.end - n.first), DType::F32, Device::cpu()));
  SD_CHECK(!out.empty(), "textual inversion: the model has no new tokens");
  return out;
}

std::vector<std::string> save_learned_embeds(const TrainingModel& model, const std::string& dir, const std::string& stem,
                                             DType dtype) {
  const std::vector<Tensor> rows = learned_embeddings(model);
  const std::string token = model.options().ti.placeholder;
  std::vector<std::string> paths;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::string file = stem;
    if (i > 0) {  // learned_embeds_2: the second encoder's rows
      file += '_';
      file += std::to_string(i + 1);
    }
    const std::string path = (fs::path(dir) / (file + ".safetensors")).string();
    save_safetensors(path, {{token, copy_to(rows[i], dtype, Device::cpu())}}, {{"format", "pt"}});
    paths.push_back(path);
  }
  return paths;
}

std::string save_a1111_embedding(const TrainingModel& model, const std::string& dir, const std::string& name, DType dtype) {
  const std::vector<Tensor> rows = learned_embeddings(model);
  std::vector<std::pair<std::string, Tensor>> t;
  if (rows.size() == 1) {
    t.emplace_back("emb_params", copy_to(rows[0], dtype, Device::cpu()));
  } else {
    t.emplace_back("clip_l", copy_to(rows[0], dtype, Device::cpu()));
    t.emplace_back("clip_g", copy_to(rows[1], dtype, Device::cpu()));
  }
  const std::string path = (fs::path(dir) / (name + ".safetensors")).string();
  save_safetensors(path, t, {{"format", "pt"}});
  return path;
}

std::string embedding_file_name(const std::string& placeholder) {
  std::string out;
  for (char c : placeholder)
    if (c != '<' && c != '>' && c != '/' && c != '\\' && c != ':' && c != '*' && c != '?' && c != '"' && c != '|')
      out += c;
  return out.empty() ? "embedding" : out;
}

}  // namespace sd::train
