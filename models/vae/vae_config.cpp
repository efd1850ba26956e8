#include "models/vae/vae_config.h"

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

// VAE flags are plain booleans: null is an error there (null_is_false = false).
class Reader : public ConfigReader {
 public:
  Reader(const json& j, std::string source) : ConfigReader(j, "VAE config", std::move(source)) {}
  bool flag(const std::string& k, bool def) { return ConfigReader::flag(k, def, /*null_is_false=*/false); }
};

}  // namespace

VaeConfig VaeConfig::from_json_string(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    SD_FAIL("VAE config ", source, ": invalid JSON: ", e.what());
  }
  SD_CHECK(j.is_object(), "VAE config ", source, ": not a JSON object");
  Reader r(j, source);
  VaeConfig c;

  if (r.has_value("_class_name")) {
    const std::string cls = r.at("_class_name").is_string() ? r.at("_class_name").get<std::string>() : "";
    if (cls != "AutoencoderKL") r.fail("_class_name", "is not \"AutoencoderKL\"");
  }

  c.in_channels = r.in_range("in_channels", r.integer("in_channels", 3), 1, 256);
  c.out_channels = r.in_range("out_channels", r.integer("out_channels", 3), 1, 256);
  c.block_out_channels = r.in_range("block_out_channels", r.ints("block_out_channels", {64}), 1, 16384);
  if (c.block_out_channels.empty() || c.block_out_channels.size() > 8)
    r.fail("block_out_channels", "must have 1 to 8 entries");
  c.down_block_types = r.strings("down_block_types", {"DownEncoderBlock2D"});
  c.up_block_types = r.strings("up_block_types", {"UpDecoderBlock2D"});
  for (const auto& t : c.down_block_types)
    if (t != "DownEncoderBlock2D")
      r.fail("down_block_types", "has unsupported block \"", t, "\" (only DownEncoderBlock2D)");
  for (const auto& t : c.up_block_types)
    if (t != "UpDecoderBlock2D") r.fail("up_block_types", "has unsupported block \"", t, "\" (only UpDecoderBlock2D)");
  // diffusers' Encoder/Decoder index block_out_channels by block and mark the block at
  // len(block_out_channels) - 1 as the last one: the lists must line up.
  if (c.down_block_types.size() != c.block_out_channels.size())
    r.fail("down_block_types", "must have one entry per block_out_channels entry (", c.block_out_channels.size(), ")");
  if (c.up_block_types.size() != c.block_out_channels.size())
    r.fail("up_block_types", "must have one entry per block_out_channels entry (", c.block_out_channels.size(), ")");
  if (r.present("layers_per_block") && r.at("layers_per_block").is_array())
    r.fail("layers_per_block", "must be one integer (AutoencoderKL has no per-block form)");
  c.layers_per_block = r.in_range("layers_per_block", r.integer("layers_per_block", 1), 1, 64);
  if (r.present("act_fn")) {
    const json& a = r.at("act_fn");
    if (!a.is_string() || (a.get<std::string>() != "silu" && a.get<std::string>() != "swish"))
      r.fail("act_fn", "is not supported: only \"silu\" (or its alias \"swish\")");
  }
  c.latent_channels = r.in_range("latent_channels", r.integer("latent_channels", 4), 1, 256);
  c.norm_num_groups = r.in_range("norm_num_groups", r.integer("norm_num_groups", 32), 1, 16384);
  if (r.has_value("sample_size")) {
    const json& v = r.at("sample_size");
    if (v.is_array()) {
      if (v.empty()) r.fail("sample_size", "must be an integer or [height, width]");
      c.sample_size = r.as_int("sample_size", v[0]);
    } else {
      c.sample_size = r.as_int("sample_size", v);
    }
    r.in_range("sample_size", c.sample_size, 1, 65536);
  }
  if (r.present("scaling_factor") && r.at("scaling_factor").is_null())
    r.fail("scaling_factor", "must be a number");
  // A negative or zero scale would flip or erase the latents: refused, as is a shift off the scale.
  c.scaling_factor = r.in_range("scaling_factor", r.number("scaling_factor", 0.18215), 0.0, 1000.0, true);
  c.shift_factor = r.optional_number("shift_factor");
  if (c.shift_factor) r.in_range("shift_factor", *c.shift_factor, -1000.0, 1000.0);
  c.latents_mean = r.numbers_or_null("latents_mean");
  c.latents_std = r.numbers_or_null("latents_std");
  for (double m : c.latents_mean) r.in_range("latents_mean", m, -1000.0, 1000.0);
  for (double sd : c.latents_std) r.in_range("latents_std", sd, 0.0, 1000.0, true);
  if (c.latents_mean.size() != c.latents_std.size())
    r.fail("latents_std", "must be given together with latents_mean, with as many entries");
  c.force_upcast = r.flag("force_upcast", true);
  c.use_quant_conv = r.flag("use_quant_conv", true);
  c.use_post_quant_conv = r.flag("use_post_quant_conv", true);
  c.mid_block_add_attention = r.flag("mid_block_add_attention", true);

  for (const std::string& k : r.unused_keys()) c.ignored_keys.push_back(k);
  c.validate();
  return c;
}

void VaeConfig::validate() const {
  const size_t n = block_out_channels.size();
  SD_CHECK(n >= 1 && n <= 16, "VAE config: block_out_channels must have 1 to 16 entries, got ", n);
  SD_CHECK(down_block_types.size() == n && up_block_types.size() == n,
           "VAE config: down_block_types and up_block_types must have ", n, " entries");
  SD_CHECK(in_channels > 0 && out_channels > 0 && latent_channels > 0,
           "VAE config: in_channels, out_channels and latent_channels must be > 0");
  SD_CHECK(layers_per_block >= 1, "VAE config: layers_per_block must be >= 1, got ", layers_per_block);
  SD_CHECK(norm_num_groups > 0, "VAE config: norm_num_groups must be > 0");
  for (size_t i = 0; i < n; ++i)
    SD_CHECK(block_out_channels[i] > 0 && block_out_channels[i] % norm_num_groups == 0, "VAE config: block_out_channels[",
             i, "] = ", block_out_channels[i], " is not a positive multiple of norm_num_groups ", norm_num_groups);
  SD_CHECK(sample_size > 0, "VAE config: sample_size must be > 0");
  SD_CHECK(scaling_factor != 0.0, "VAE config: scaling_factor must not be 0");
  SD_CHECK(latents_mean.size() == latents_std.size(), "VAE config: latents_mean and latents_std differ in length");
}

VaeConfig VaeConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  SD_CHECK(in.good(), "cannot open VAE config '", path, "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json_string(ss.str(), "'" + path + "'");
}

// ---- presets: the hub's vae/config.json values (FORMATS.md §2.3) -------------------------

VaeConfig VaeConfig::sd() {
  return from_json_string(R"({
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 256, "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]})",
                          "sd preset");
}

VaeConfig VaeConfig::sd15() {
  VaeConfig c = sd();
  c.sample_size = 512;
  return c;
}

VaeConfig VaeConfig::sdxl() {
  return from_json_string(R"({
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "force_upcast": true, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]})",
                          "sdxl preset");
}

}  // namespace sd::nn
