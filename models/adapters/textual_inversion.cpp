#include "models/adapters/textual_inversion.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "models/formats/torch_checkpoint.h"
#include "ops/optim.h"
#include "ops/view.h"
#include "runtime/error.h"

namespace sd::nn {
namespace {

std::string vector_name(const std::string& token, int64_t i) {
  return i == 0 ? token : token + "_" + std::to_string(i);
}

// [D] (old diffusers files) -> [1, D]; anything but 1-D / 2-D is an error naming the key.
Tensor as_rows(const Tensor& t, const std::string& source, const std::string& key) {
  SD_CHECK(t.dim() == 1 || t.dim() == 2, "textual inversion '", source, "': key '", key, "' is ", t.str(),
           ", expected [D] or [n, D] vectors");
  Tensor v = t.dim() == 1 ? reshape(t, {1, t.size(0)}) : t;
  SD_CHECK(v.size(0) >= 1, "textual inversion '", source, "': key '", key, "' holds no vectors");
  return v;
}

// Embedding vectors are floating numbers; an integer or boolean tensor would be cast into plausible
// vectors without a word.
void check_floating(DType dt, const std::string& source, const std::string& key) {
  SD_CHECK(is_floating(dt), "textual inversion '", source, "': key '", key, "' is stored as ", dtype_name(dt),
           "; embedding vectors must be floating (f32, f16, bf16 or f64)");
}

// A NaN or Inf in a vector makes the text encoder's output NaN for every prompt using the trigger, and
// with it every image black: refused with the row and column of the first bad value.
void check_finite(const Tensor& v, const std::string& source, const std::string& key) {
  if (!has_non_finite({v})) return;
  const std::vector<double> x = v.to_vector();
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(x[i]) && bad++ == 0) first = i;
  const int64_t width = v.size(1);
  SD_FAIL("textual inversion '", source, "': key '", key, "' ", shape_str(v.shape()), " holds NaN or Inf (", bad, " of ",
          x.size(), " values; the first, ", x[first], ", in vector ", int64_t(first) / width, " at column ",
          int64_t(first) % width, "): the file is damaged (or was saved from a diverged training run)");
}

std::string list_keys(const std::vector<std::string>& keys) {
  std::string s;
  for (size_t i = 0; i < keys.size() && i < 8; ++i) s += (i ? ", " : "") + std::string("'") + keys[i] + "'";
  if (keys.size() > 8) s += ", ...";
  return s.empty() ? "none" : s;
}

}  // namespace

const TextualInversionEmbedding& TextualInversions::load(const std::string& path,
                                                         const TextualInversionTargets& targets,
                                                         const std::string& token) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path)) {
    for (const char* name : {"learned_embeds.safetensors", "learned_embeds.bin"})
      if (fs::is_regular_file(fs::path(path) / name)) return load((fs::path(path) / name).string(), targets, token);
    SD_FAIL("textual inversion: folder '", path, "' has no learned_embeds.safetensors or learned_embeds.bin");
  }
  SD_CHECK(fs::is_regular_file(path), "textual inversion: '", path, "' is not a file or folder");
  const std::string stem = fs::path(path).stem().string();
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (ext == ".safetensors") return load(*SafetensorsSource::open(path), stem, targets, token);

  // A torch pickle: A1111's {"string_to_param": {"*": tensor}, ...} or a plain dict of tensors.
  const TorchCheckpoint ckpt = load_torch_checkpoint(path);
  if (auto stp = ckpt.root ? ckpt.root->get("string_to_param") : nullptr) {
    SD_CHECK(stp->is(pickle::Kind::Dict) && !stp->dict.empty(), "textual inversion '", path,
             "': string_to_param is ", stp->describe(), ", expected a dict holding the vectors");
    // A1111 uses the dict's single entry (normally "*").
    pickle::ValuePtr v = stp->get("*");
    if (!v) v = stp->dict.front().second;
    SD_CHECK(v && v->is(pickle::Kind::Tensor), "textual inversion '", path, "': string_to_param holds ",
             v ? v->describe() : std::string("nothing"), ", not a tensor");
    return load_vectors(v->tensor, token.empty() ? stem : token, path, targets);
  }
  std::map<std::string, Tensor> tensors(ckpt.tensors.begin(), ckpt.tensors.end());
  SD_CHECK(!tensors.empty(), "textual inversion '", path, "' holds no tensors and no string_to_param");
  return load(MapSource(std::move(tensors), path), stem, targets, token);
}

const TextualInversionEmbedding& TextualInversions::load(const TensorSource& src, const std::string& stem,
                                                         const TextualInversionTargets& targets,
                                                         const std::string& token) {
  const std::string source = src.describe();
  const std::vector<std::string> keys = src.keys();
  auto get = [&](const std::string& k) {
    if (auto dt = src.file_dtype(k)) check_floating(*dt, source, k);
    return as_rows(src.get(k, DType::F32, Device::cpu()), source, k);
  };
  if (src.contains("clip_l") && src.contains("clip_g")) {
    SD_CHECK(targets.second.present(), "textual inversion '", source,
             "' is an SDXL embedding (clip_l + clip_g) but no second text encoder / tokenizer was given");
    return add(token.empty() ? stem : token, source, {{"clip_l", get("clip_l")}, {"clip_g", get("clip_g")}}, targets);
  }
  if (src.contains("emb_params")) return add(token.empty() ? stem : token, source, {{"emb_params", get("emb_params")}}, targets);
  SD_CHECK(keys.size() == 1, "textual inversion '", source, "': unknown layout, keys ", list_keys(keys),
           " (expected one '<token>' entry, 'emb_params', or 'clip_l' + 'clip_g')");
  return add(token.empty() ? keys[0] : token, source, {{keys[0], get(keys[0])}}, targets);
}

const TextualInversionEmbedding& TextualInversions::load_vectors(const Tensor& vectors, const std::string& token,
                                                                 const std::string& source,
                                                                 const TextualInversionTargets& targets) {
  check_floating(vectors.dtype(), source, "string_to_param");
  const Tensor v = as_rows(copy_to(vectors, DType::F32, Device::cpu()), source, "string_to_param");
  return add(token, source, {{"string_to_param", v}}, targets);
}

const TextualInversionEmbedding& TextualInversions::add(const std::string& token, const std::string& source,
                                                        const std::vector<std::pair<std::string, Tensor>>& vectors,
                                                        const TextualInversionTargets& targets) {
  SD_CHECK(!token.empty(), "textual inversion '", source, "': empty trigger token");
  const TextEncoderSlot* slots[] = {&targets.first, &targets.second};
  // Every check before anything changes.
  for (size_t i = 0; i < vectors.size(); ++i) {
    const auto& [key, v] = vectors[i];
    const TextEncoderSlot& s = *slots[i];
    SD_CHECK(s.present(), "textual inversion '", source, "': no ", i == 0 ? "first" : "second",
             " tokenizer + text encoder to put '", key, "' into");
    check_finite(v, source, key);
    const Tensor& table = checked(s.text_encoder->text_model->embeddings->token_embedding->weight,
                                  "textual inversion: token_embedding");
    SD_CHECK(v.size(1) == table.size(1), "textual inversion '", source, "': key '", key, "' is ", shape_str(v.shape()),
             " but text encoder ", i + 1, " takes ", table.size(1), "-wide vectors (token_embedding ",
             shape_str(table.shape()), "): an embedding for another model?");
    SD_CHECK(!has_non_finite({to(v, table.dtype())}), "textual inversion '", source, "': key '", key,
             "' has values too large for the text encoder's ", dtype_name(table.dtype()),
             " embedding table (they overflow to Inf): load the text encoder in f32");
    SD_CHECK(s.tokenizer->size() == table.size(0), "textual inversion '", source, "': tokenizer ", i + 1, " has ",
             s.tokenizer->size(), " tokens but its text encoder has ", table.size(0),
             " embedding rows; new token ids would not match the new rows");
    for (int64_t j = 0; j < v.size(0); ++j) {
      const std::string name = vector_name(token, j);
      SD_CHECK(!s.tokenizer->token_to_id(name), "textual inversion '", source, "': token '", name,
               "' is already in tokenizer ", i + 1, " (id ", s.tokenizer->token_to_id(name).value_or(-1),
               "); give another trigger");
    }
  }
  TextualInversionEmbedding e;
  e.token = token;
  e.source = source;
  e.num_vectors = vectors.front().second.size(0);
  for (size_t i = 0; i < vectors.size(); ++i) {
    const Tensor& v = vectors[i].second;
    const TextEncoderSlot& s = *slots[i];
    TextualInversionEmbedding::Added a;
    a.tokenizer = s.tokenizer;
    for (int64_t j = 0; j < v.size(0); ++j) a.ids.push_back(s.tokenizer->add_token(vector_name(token, j)));
    const auto [first, end] = s.text_encoder->add_tokens(v);
    for (int64_t j = 0; j < v.size(0); ++j)
      SD_CHECK(a.ids[size_t(j)] == first + j, "textual inversion: token id ", a.ids[size_t(j)], " != row ", first + j);
    (void)end;
    e.added.push_back(std::move(a));
  }
  embeddings_.push_back(std::move(e));
  return embeddings_.back();
}

std::vector<int> TextualInversions::expand(const ClipTokenizer& tokenizer, const std::vector<int>& ids) const {
  // Trigger id -> all its ids, looked up by name so that copies of the tokenizer work too.
  std::map<int, std::vector<int>> expansion;
  for (const TextualInversionEmbedding& e : embeddings_) {
    auto first = tokenizer.token_to_id(e.token);
    if (!first) continue;
    std::vector<int> all{*first};
    for (int64_t j = 1;; ++j) {
      auto id = tokenizer.token_to_id(vector_name(e.token, j));
      if (!id) break;
      all.push_back(*id);
    }
    if (all.size() > 1) expansion[*first] = std::move(all);
  }
  std::vector<int> out;
  out.reserve(ids.size());
  for (int id : ids) {
    auto it = expansion.find(id);
    if (it == expansion.end()) out.push_back(id);
    else out.insert(out.end(), it->second.begin(), it->second.end());
  }
  return out;
}

std::vector<int> TextualInversions::encode_padded(const ClipTokenizer& tokenizer, std::string_view prompt) const {
  return tokenizer.frame(expand(tokenizer, tokenizer.encode(prompt)));
}

}  // namespace sd::nn
