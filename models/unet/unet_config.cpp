#include "models/unet/unet_config.h"

#include "models/nn/config_reader.h"

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace sd::nn {
namespace {

using json = nlohmann::json;

// The UNet's reader: the shared one plus the per-block / per-layer forms and the checks for
// values it does not implement.
class Reader : public ConfigReader {
 public:
  Reader(const json& j, std::string source) : ConfigReader(j, "UNet config", std::move(source)) {}

  // An int for every block, or a list with one entry per block.
  std::vector<int64_t> per_block(const std::string& k, int64_t def, size_t n) {
    if (!present(k)) return std::vector<int64_t>(n, def);
    if (is_null(k)) fail(k, "must not be null");
    const json& v = at(k);
    if (!v.is_array()) return std::vector<int64_t>(n, as_int(k, v));
    if (v.size() != n) fail(k, "must have one entry per down block (", n, ")");
    std::vector<int64_t> out;
    for (const json& e : v) out.push_back(as_int(k, e));
    return out;
  }
  // transformer_layers_per_block-style value: int, or per block an int or a per-layer list.
  // Ints are expanded to `layers[i]` copies. Sets *nested when a per-layer list appears.
  std::vector<std::vector<int64_t>> per_layer(const std::string& k, const json& v, const std::vector<int64_t>& layers,
                                              bool* nested) {
    const size_t n = layers.size();
    std::vector<std::vector<int64_t>> out;
    if (!v.is_array()) {
      for (size_t i = 0; i < n; ++i) out.emplace_back(size_t(layers[i]), as_int(k, v));
      return out;
    }
    if (v.size() != n) fail(k, "must have one entry per block (", n, ")");
    for (size_t i = 0; i < n; ++i) {
      const json& e = v[i];
      if (e.is_array()) {
        if (nested) *nested = true;
        std::vector<int64_t> l;
        for (const json& x : e) l.push_back(as_int(k, x));
        out.push_back(l);
      } else {
        out.emplace_back(size_t(layers[i]), as_int(k, e));
      }
    }
    return out;
  }
  // Keys that must hold exactly one accepted value (absent keys take diffusers' default, which
  // is accepted).
  void require_null(const std::string& k, const char* why) {
    if (has_value(k)) fail(k, "is not supported: ", why);
  }
  void require_falsy(const std::string& k, const char* why) {
    if (!has_value(k)) return;
    const json& v = at(k);
    bool truthy = v.is_boolean() ? v.get<bool>() : v.is_number() ? v.get<double>() != 0.0 : true;
    if (v.is_array()) {
      truthy = false;
      for (const json& e : v) truthy |= !(e.is_boolean() && !e.get<bool>());
    }
    if (truthy) fail(k, "is not supported: ", why);
  }
  void require_string(const std::string& k, std::initializer_list<const char*> allowed) {
    if (!present(k)) return;
    const json& v = at(k);
    if (v.is_string())
      for (const char* a : allowed)
        if (v.get<std::string>() == a) return;
    std::string list;
    for (const char* a : allowed) list += std::string(list.empty() ? "" : ", ") + "\"" + a + "\"";
    fail(k, "is not supported: only ", list);
  }

};

// diffusers strips a "UNetRes" prefix from block type names.
std::string strip_unetres(const std::string& t) { return t.rfind("UNetRes", 0) == 0 ? t.substr(7) : t; }

}  // namespace

UNetConfig UNetConfig::from_json_string(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    SD_FAIL("UNet config ", source, " is not valid JSON: ", e.what());
  }
  SD_CHECK(j.is_object(), "UNet config ", source, " is not a JSON object");
  Reader r(j, source);
  UNetConfig c;

  if (r.has_value("_class_name")) {
    const std::string cls = r.at("_class_name").is_string() ? r.at("_class_name").get<std::string>() : "";
    if (cls != "UNet2DConditionModel") r.fail("_class_name", "is not \"UNet2DConditionModel\"");
  }

  // Structure.
  c.block_out_channels = r.ints("block_out_channels", {320, 640, 1280, 1280});
  c.down_block_types = r.strings("down_block_types", {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                      "CrossAttnDownBlock2D", "DownBlock2D"});
  c.up_block_types = r.strings("up_block_types", {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                                  "CrossAttnUpBlock2D"});
  for (auto& t : c.down_block_types) {
    t = strip_unetres(t);
    if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D")
      r.fail("down_block_types", "has unsupported block \"", t, "\" (only CrossAttnDownBlock2D, DownBlock2D)");
  }
  for (auto& t : c.up_block_types) {
    t = strip_unetres(t);
    if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D")
      r.fail("up_block_types", "has unsupported block \"", t, "\" (only CrossAttnUpBlock2D, UpBlock2D)");
  }
  const size_t n = c.down_block_types.size();
  if (n < 1 || n > 8) r.fail("down_block_types", "must have 1 to 8 blocks");
  r.in_range("block_out_channels", c.block_out_channels, 1, 16384);
  if (c.up_block_types.size() != n) r.fail("up_block_types", "must have as many entries as down_block_types");
  if (c.block_out_channels.size() != n) r.fail("block_out_channels", "must have one entry per down block");
  c.mid_block_type = r.string_or_empty("mid_block_type", "UNetMidBlock2DCrossAttn");
  if (!c.mid_block_type.empty() && c.mid_block_type != "UNetMidBlock2DCrossAttn" && c.mid_block_type != "UNetMidBlock2D")
    r.fail("mid_block_type", "is not supported: only \"UNetMidBlock2DCrossAttn\", \"UNetMidBlock2D\" or null");

  c.in_channels = r.in_range("in_channels", r.integer("in_channels", 4), 1, 256);
  c.out_channels = r.in_range("out_channels", r.integer("out_channels", 4), 1, 256);
  if (r.has_value("sample_size")) {
    const json& v = r.at("sample_size");
    if (v.is_array()) {
      if (v.size() != 2) r.fail("sample_size", "must be an integer or [height, width]");
      c.sample_size = {r.in_range("sample_size", r.as_int("sample_size", v[0]), 1, 4096),
                       r.in_range("sample_size", r.as_int("sample_size", v[1]), 1, 4096)};
    } else {
      const int64_t s = r.in_range("sample_size", r.as_int("sample_size", v), 1, 4096);
      c.sample_size = {s, s};
    }
  }
  c.center_input_sample = r.flag("center_input_sample", false);
  c.flip_sin_to_cos = r.flag("flip_sin_to_cos", true);
  c.freq_shift = r.in_range("freq_shift", r.number("freq_shift", 0.0), -1000.0, 1000.0);
  c.layers_per_block = r.in_range("layers_per_block", r.per_block("layers_per_block", 2, n), 1, 64);
  c.downsample_padding = r.integer("downsample_padding", 1);
  if (c.downsample_padding != 0 && c.downsample_padding != 1)
    r.fail("downsample_padding", "is not supported: only 0 or 1");
  c.mid_block_scale_factor = r.in_range("mid_block_scale_factor", r.number("mid_block_scale_factor", 1.0), 0.0, 1000.0, true);
  if (r.is_null("norm_num_groups"))
    r.fail("norm_num_groups", "is not supported as null (no output GroupNorm, per-block group counts)");
  c.norm_num_groups = r.in_range("norm_num_groups", r.integer("norm_num_groups", 32), 1, 16384);
  c.norm_eps = r.in_range("norm_eps", r.number("norm_eps", 1e-5), 0.0, 1.0, true);
  c.cross_attention_dim = r.in_range("cross_attention_dim", r.per_block("cross_attention_dim", 1280, n), 1, 16384);
  c.use_linear_projection = r.flag("use_linear_projection", false);
  c.upcast_attention = r.flag("upcast_attention", false);
  c.conv_in_kernel = r.integer("conv_in_kernel", 3);
  c.conv_out_kernel = r.integer("conv_out_kernel", 3);
  for (const char* k : {"conv_in_kernel", "conv_out_kernel"}) {
    const int64_t v = std::string(k) == "conv_in_kernel" ? c.conv_in_kernel : c.conv_out_kernel;
    if (v < 1 || v > 15 || v % 2 == 0) r.fail(k, "must be an odd kernel size from 1 to 15");
  }

  // Attention heads: diffusers' num_attention_heads = num_attention_heads or attention_head_dim,
  // and it raises when num_attention_heads is set.
  if (r.has_value("num_attention_heads"))
    r.fail("num_attention_heads", "is rejected by diffusers' UNet2DConditionModel (attention_head_dim holds the "
           "head counts)");
  c.attention_heads = r.in_range("attention_head_dim", r.per_block("attention_head_dim", 8, n), 1, 1024);

  // Transformer depth per layer.
  {
    bool nested = false;
    const json tl = r.present("transformer_layers_per_block") && !r.is_null("transformer_layers_per_block")
                        ? r.at("transformer_layers_per_block")
                        : json(1);
    c.transformer_layers_per_block = r.per_layer("transformer_layers_per_block", tl, c.layers_per_block, &nested);
    for (const std::vector<int64_t>& l : c.transformer_layers_per_block) r.in_range("transformer_layers_per_block", l, 1, 64);
    std::vector<int64_t> up_layers;
    for (size_t i = 0; i < n; ++i) up_layers.push_back(c.num_up_layers(i));
    if (r.has_value("reverse_transformer_layers_per_block")) {
      c.reverse_transformer_layers_per_block =
          r.per_layer("reverse_transformer_layers_per_block", r.at("reverse_transformer_layers_per_block"),
                      up_layers, nullptr);
      for (const std::vector<int64_t>& l : c.reverse_transformer_layers_per_block)
        r.in_range("reverse_transformer_layers_per_block", l, 1, 64);
    } else {
      if (nested)
        r.fail("transformer_layers_per_block",
               "has per-layer lists, which need reverse_transformer_layers_per_block (as diffusers requires)");
      json mirrored = tl;
      if (tl.is_array()) mirrored = json(std::vector<json>(tl.rbegin(), tl.rend()));
      c.reverse_transformer_layers_per_block =
          r.per_layer("transformer_layers_per_block", mirrored, up_layers, nullptr);
    }
  }

  // Time embedding.
  r.require_string("time_embedding_type", {"positional"});
  c.time_embedding_dim = r.in_range("time_embedding_dim", r.optional_integer("time_embedding_dim"), 0, 65536);
  r.require_null("time_embedding_act_fn", "only null (no activation after the time embedding)");
  r.require_null("timestep_post_act", "only null");
  c.time_cond_proj_dim = r.in_range("time_cond_proj_dim", r.optional_integer("time_cond_proj_dim"), 0, 65536);
  r.require_string("act_fn", {"silu", "swish"});
  r.require_string("resnet_time_scale_shift", {"default"});

  // Extra conditioning.
  c.addition_embed_type = r.string_or_empty("addition_embed_type", "");
  if (!c.addition_embed_type.empty() && c.addition_embed_type != "text_time")
    r.fail("addition_embed_type", "is not supported: only null or \"text_time\"");
  if (c.addition_embed_type == "text_time") {
    c.addition_time_embed_dim = r.in_range("addition_time_embed_dim", r.optional_integer("addition_time_embed_dim"), 0, 65536);
    c.projection_class_embeddings_input_dim = r.in_range(
        "projection_class_embeddings_input_dim", r.optional_integer("projection_class_embeddings_input_dim"), 0, 1 << 20);
    if (c.addition_time_embed_dim <= 0) r.fail("addition_time_embed_dim", "must be set for text_time");
    if (c.projection_class_embeddings_input_dim <= 0)
      r.fail("projection_class_embeddings_input_dim", "must be set for text_time");
  } else {
    // Without text_time (and without class_embed_type "projection") diffusers never reads them.
    r.present("addition_time_embed_dim");
    r.present("projection_class_embeddings_input_dim");
  }
  r.require_null("class_embed_type", "only null (no class embedding)");
  r.require_null("num_class_embeds", "only null (no class embedding)");
  r.require_falsy("class_embeddings_concat", "only false");
  r.require_null("encoder_hid_dim", "only null (no encoder_hid_proj)");
  r.require_null("encoder_hid_dim_type", "only null (no encoder_hid_proj)");
  r.require_falsy("only_cross_attention", "only false");
  r.require_falsy("dual_cross_attention", "only false");
  r.require_falsy("dropout", "only 0 (no dropout layers are built)");
  r.require_string("attention_type", {"default"});

  // Read by diffusers but without effect on the supported block types.
  for (const char* k : {"resnet_skip_time_act", "resnet_out_scale_factor", "cross_attention_norm",
                        "mid_block_only_cross_attention", "addition_embed_type_num_heads"})
    if (r.present(k)) c.ignored_keys.push_back(k);
  for (const std::string& k : r.unused_keys()) c.ignored_keys.push_back(k);

  c.validate();
  return c;
}

void UNetConfig::validate() const {
  const size_t n = down_block_types.size();
  SD_CHECK(n >= 1, "UNet config: no down blocks");
  SD_CHECK(up_block_types.size() == n && block_out_channels.size() == n && layers_per_block.size() == n &&
               cross_attention_dim.size() == n && attention_heads.size() == n &&
               transformer_layers_per_block.size() == n && reverse_transformer_layers_per_block.size() == n,
           "UNet config: per-block lists must all have ", n, " entries");
  SD_CHECK(in_channels > 0 && out_channels > 0, "UNet config: in_channels/out_channels must be > 0");
  SD_CHECK(norm_num_groups > 0, "UNet config: norm_num_groups must be > 0");
  for (size_t i = 0; i < n; ++i) {
    SD_CHECK(block_out_channels[i] > 0 && block_out_channels[i] % norm_num_groups == 0, "UNet config: block_out_channels[",
             i, "] = ", block_out_channels[i], " is not a positive multiple of norm_num_groups ", norm_num_groups);
    SD_CHECK(layers_per_block[i] >= 1, "UNet config: layers_per_block[", i, "] must be >= 1");
    SD_CHECK(attention_heads[i] >= 1, "UNet config: attention_head_dim[", i, "] (a head count) must be >= 1");
    if (down_block_types[i] == "CrossAttnDownBlock2D")
      SD_CHECK(int64_t(transformer_layers_per_block[i].size()) >= layers_per_block[i], "UNet config: ",
               "transformer_layers_per_block[", i, "] has fewer entries than the block's ", layers_per_block[i],
               " layers");
    if (up_block_types[i] == "CrossAttnUpBlock2D")
      SD_CHECK(int64_t(reverse_transformer_layers_per_block[i].size()) >= num_up_layers(i), "UNet config: ",
               "reverse_transformer_layers_per_block[", i, "] has fewer entries than the up block's ",
               num_up_layers(i), " layers");
  }
  if (mid_block_type == "UNetMidBlock2DCrossAttn")
    SD_CHECK(!transformer_layers_per_block.back().empty(), "UNet config: the mid block has no transformer depth");
  SD_CHECK(time_embed_dim() > 0 && time_cond_proj_dim >= 0, "UNet config: bad time embedding sizes");
  if (addition_embed_type == "text_time")
    SD_CHECK(addition_time_embed_dim > 0 && projection_class_embeddings_input_dim > 0,
             "UNet config: text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim");
}

UNetConfig UNetConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  SD_CHECK(in.good(), "cannot open UNet config '", path, "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json_string(ss.str(), "'" + path + "'");
}

// ---- presets: the hub's unet/config.json values (FORMATS.md §2.2) ------------------------

UNetConfig UNetConfig::sd15() {
  return from_json_string(R"({
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
    "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": null, "use_linear_projection": false})",
                          "sd15 preset");
}

UNetConfig UNetConfig::sd21() {
  return from_json_string(R"({
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
    "norm_num_groups": 32, "num_class_embeds": null, "only_cross_attention": false, "out_channels": 4,
    "sample_size": 96,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": true, "use_linear_projection": true})",
                          "sd21 preset");
}

UNetConfig UNetConfig::sd21_base() {
  UNetConfig c = sd21();
  c.sample_size = {64, 64};
  c.upcast_attention = false;
  return c;
}

UNetConfig UNetConfig::sdxl_base() {
  return from_json_string(R"({
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "attention_type": "default", "block_out_channels": [320, 640, 1280], "center_input_sample": false,
    "class_embed_type": null, "class_embeddings_concat": false, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "cross_attention_dim": 2048, "cross_attention_norm": null,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dropout": 0.0, "dual_cross_attention": false, "encoder_hid_dim": null,
    "encoder_hid_dim_type": null, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_attention_heads": null, "num_class_embeds": null, "only_cross_attention": false, "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": false,
    "resnet_time_scale_shift": "default", "sample_size": 128, "time_cond_proj_dim": null,
    "time_embedding_act_fn": null, "time_embedding_dim": null, "time_embedding_type": "positional",
    "timestep_post_act": null, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": null, "use_linear_projection": true})",
                          "sdxl_base preset");
}

// The refiner conditions on 5 time ids (original size, crop, aesthetic score): 1280 + 5 * 256.
// Values as diffusers derives them from sgm's sd_xl_refiner.yaml (model_channels 384,
// channel_mult [1, 2, 4, 4], attention_resolutions [4, 2], num_head_channels 64,
// transformer_depth 4, context_dim 1280, adm_in_channels 2560).
UNetConfig UNetConfig::sdxl_refiner() {
  return from_json_string(R"({
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [6, 12, 24, 24],
    "block_out_channels": [384, 768, 1536, 1536], "cross_attention_dim": 1280,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "in_channels": 4, "layers_per_block": 2, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
    "projection_class_embeddings_input_dim": 2560, "sample_size": 128, "transformer_layers_per_block": 4,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": null, "use_linear_projection": true})",
                          "sdxl_refiner preset");
}

// SSD-1B: SDXL with fewer transformer blocks (down 1/2/4 per attention, up [4, 4, 10] and
// [2, 1, 1]) and a mid block of one resnet. INFERRED layout (FORMATS.md §2.2: the hub file was
// not found; the values match the C++ loaders' and public code's reconstructions).
UNetConfig UNetConfig::ssd1b() {
  return from_json_string(R"({
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 4, "layers_per_block": 2, "mid_block_type": "UNetMidBlock2D", "norm_eps": 1e-05,
    "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
    "transformer_layers_per_block": [[1, 1], [2, 2], [4, 4]],
    "reverse_transformer_layers_per_block": [[4, 4, 10], [2, 1, 1], [1, 1, 1]],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": null, "use_linear_projection": true})",
                          "ssd1b preset");
}

// LCM-distilled SDXL: the SDXL base UNet plus time_embedding.cond_proj for the guidance-scale
// embedding (the LCM distillation scripts' w_embedding_dim 256).
UNetConfig UNetConfig::lcm_sdxl() {
  UNetConfig c = sdxl_base();
  c.time_cond_proj_dim = 256;
  return c;
}

}  // namespace sd::nn
