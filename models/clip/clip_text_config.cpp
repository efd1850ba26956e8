#include "models/clip/clip_text_config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace sd::nn {
namespace {

using nlohmann::json;

// Integer keys: absent keeps the default; present must be an integer (JSON 77, not "77" or 77.5)
// in [lo, hi], checked before anything is sized by it.
void read_int(const json& j, const char* key, int64_t& out, const std::string& where, int64_t lo, int64_t hi) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  SD_CHECK(it->is_number_integer(), where, ": \"", key, "\" must be an integer, got ", it->dump());
  const bool fits = it->is_number_unsigned() ? it->get<uint64_t>() <= uint64_t(hi) : it->get<int64_t>() <= hi;
  SD_CHECK(fits && it->get<int64_t>() >= lo, where, ": \"", key, "\" must be between ", lo, " and ", hi, ", got ",
           it->dump());
  out = it->get<int64_t>();
}

void read_double(const json& j, const char* key, double& out, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  SD_CHECK(it->is_number(), where, ": \"", key, "\" must be a number, got ", it->dump());
  out = it->get<double>();
}

}  // namespace

void ClipTextConfig::validate(const std::string& where) const {
  auto positive = [&](const char* key, int64_t v) {
    SD_CHECK(v > 0, where, ": \"", key, "\" must be positive, got ", v);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("max_position_embeddings", max_position_embeddings);
  if (with_projection) positive("projection_dim", projection_dim);
  SD_CHECK(hidden_size % num_attention_heads == 0, where, ": \"hidden_size\" ", hidden_size,
           " is not divisible by \"num_attention_heads\" ", num_attention_heads);
  SD_CHECK(layer_norm_eps > 0, where, ": \"layer_norm_eps\" must be positive, got ", layer_norm_eps);
}

ClipTextConfig ClipTextConfig::from_json(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    SD_FAIL(where, ": not valid JSON: ", e.what());
  }
  SD_CHECK(j.is_object(), where, ": a text-encoder config must be a JSON object");
  // A full CLIPConfig (text + vision) keeps the text part in "text_config".
  if (j.contains("text_config") && j["text_config"].is_object()) return from_json(j["text_config"].dump(), where);
  if (auto it = j.find("model_type"); it != j.end()) {
    SD_CHECK(it->is_string() && it->get<std::string>() == "clip_text_model", where, ": \"model_type\" ", it->dump(),
             " is not a CLIP text model (expected \"clip_text_model\")");
  }

  ClipTextConfig c;
  read_int(j, "vocab_size", c.vocab_size, where, 1, 1 << 20);
  read_int(j, "hidden_size", c.hidden_size, where, 1, 16384);
  read_int(j, "intermediate_size", c.intermediate_size, where, 1, 65536);
  read_int(j, "num_hidden_layers", c.num_hidden_layers, where, 1, 128);
  read_int(j, "num_attention_heads", c.num_attention_heads, where, 1, 1024);
  read_int(j, "max_position_embeddings", c.max_position_embeddings, where, 1, 8192);
  read_int(j, "projection_dim", c.projection_dim, where, 1, 16384);
  // Token ids: transformers' legacy CLIP configs carry 0 / 2 / 1, whatever the vocabulary says.
  read_int(j, "bos_token_id", c.bos_token_id, where, 0, 1 << 20);
  read_int(j, "eos_token_id", c.eos_token_id, where, 0, 1 << 20);
  read_int(j, "pad_token_id", c.pad_token_id, where, 0, 1 << 20);
  read_double(j, "layer_norm_eps", c.layer_norm_eps, where);
  SD_CHECK(std::isfinite(c.layer_norm_eps) && c.layer_norm_eps > 0 && c.layer_norm_eps <= 1, where,
           ": \"layer_norm_eps\" must be a finite number above 0 up to 1, got ", c.layer_norm_eps);

  if (auto it = j.find("hidden_act"); it != j.end()) {
    const std::string act = it->is_string() ? it->get<std::string>() : it->dump();
    if (act == "quick_gelu")
      c.hidden_act = ClipActivation::QuickGelu;
    else if (act == "gelu")
      c.hidden_act = ClipActivation::Gelu;
    else
      SD_FAIL(where, ": \"hidden_act\" \"", act, "\" is not supported (quick_gelu or gelu)");
  }
  // Dropout inside attention only acts in training and every SD text encoder has 0; a model
  // that relies on it would silently train differently here, so say so.
  double attention_dropout = 0.0;
  read_double(j, "attention_dropout", attention_dropout, where);
  SD_CHECK(attention_dropout == 0.0, where, ": \"attention_dropout\" ", attention_dropout,
           " is not supported (only 0)");

  if (auto it = j.find("architectures"); it != j.end() && !it->is_null()) {
    SD_CHECK(it->is_array(), where, ": \"architectures\" must be a list, got ", it->dump());
    for (const json& a : *it) {
      const std::string name = a.is_string() ? a.get<std::string>() : a.dump();
      if (name == "CLIPTextModelWithProjection")
        c.with_projection = true;
      else
        SD_CHECK(name == "CLIPTextModel", where, ": \"architectures\" entry \"", name,
                 "\" is not supported (CLIPTextModel or CLIPTextModelWithProjection)");
    }
  }
  c.validate(where);
  return c;
}

ClipTextConfig ClipTextConfig::from_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  SD_CHECK(f.good(), "ClipTextConfig: cannot open '", path, "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  return from_json(ss.str(), "'" + path + "'");
}

// The values below are the config.json files of the SD checkpoints (FORMATS.md §2.4),
// including their legacy special-token ids 0 / 2 / 1.
ClipTextConfig ClipTextConfig::clip_vit_l14() {
  ClipTextConfig c;
  c.hidden_size = 768;
  c.intermediate_size = 3072;
  c.num_hidden_layers = 12;
  c.num_attention_heads = 12;
  c.hidden_act = ClipActivation::QuickGelu;
  c.projection_dim = 768;
  c.bos_token_id = 0;
  c.eos_token_id = 2;
  c.pad_token_id = 1;
  return c;
}

ClipTextConfig ClipTextConfig::openclip_vit_h14() {
  ClipTextConfig c = clip_vit_l14();
  c.hidden_size = 1024;
  c.intermediate_size = 4096;
  c.num_hidden_layers = 23;  // diffusers drops OpenCLIP's last block: SD2 conditions on the penultimate
  c.num_attention_heads = 16;
  c.hidden_act = ClipActivation::Gelu;
  c.projection_dim = 512;  // in the config but unused: CLIPTextModel has no projection weight
  return c;
}

ClipTextConfig ClipTextConfig::openclip_vit_bigg14() {
  ClipTextConfig c = clip_vit_l14();
  c.hidden_size = 1280;
  c.intermediate_size = 5120;
  c.num_hidden_layers = 32;
  c.num_attention_heads = 20;
  c.hidden_act = ClipActivation::Gelu;
  c.projection_dim = 1280;
  c.with_projection = true;
  return c;
}

}  // namespace sd::nn
