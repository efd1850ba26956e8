#include "models/adapters/lora_export.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "runtime/error.h"
#include "runtime/safetensors.h"

namespace sd::nn {

namespace {

std::string underscored(std::string s) {
  std::replace(s.begin(), s.end(), '.', '_');
  return s;
}

// PEFT and diffusers address text-encoder modules without transformers' "text_model." (the flattened
// CLIPTextModel of transformers >= 5.6 has none, and a suffix match covers the nested one).
std::string peft_module(const std::string& component, const std::string& layer) {
  const std::string tm = "text_model.";
  return component != "unet" && layer.rfind(tm, 0) == 0 ? layer.substr(tm.size()) : layer;
}

std::string py_float(double v) {
  // Python's repr of a float for the metadata JSON ("8.0", "0.5").
  char b[32];
  std::snprintf(b, sizeof b, "%.17g", v);
  std::string s = b;
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

}  // namespace

void save_lora(const std::string& path, const LoadedLora& lora, const LoraExportOptions& o) {
  const std::vector<LoadedLora::LayerView> layers = lora.layers();
  SD_CHECK(!layers.empty(), "save_lora: the LoRA adapts no layer");
  auto in_file_dtype = [&](const Tensor& t, DType file) { return copy_to(t, o.dtype.value_or(file), Device::cpu()); };
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::string> metadata = {{"format", "pt"}};

  if (o.format == LoraFormat::Kohya) {
    SD_CHECK(!o.sdxl || o.unet, "save_lora: SDXL kohya names need the UNet (its original layer paths)");
    for (const LoadedLora::LayerView& l : layers) {
      std::string name;
      if (l.component == "unet") {
        name = "lora_unet_" + underscored(l.layer);
        if (o.sdxl) {
          const std::vector<std::string> names = kohya_unet_names(*o.unet, l.layer);
          SD_CHECK(names.size() > 1, "save_lora: UNet layer '", l.layer, "' has no original (sgm) name");
          name = names[1];
        }
      } else if (l.component == "text_encoder") {
        name = (o.sdxl ? "lora_te1_" : "lora_te_") + underscored(l.layer);
      } else {
        name = "lora_te2_" + underscored(l.layer);
      }
      const int64_t r = l.down.size(0);
      // kohya has no rsLoRA switch: its alpha carries the scale (alpha / sqrt(r) * r).
      const double alpha = l.rslora ? l.alpha / std::sqrt(double(r)) * double(r) : l.alpha;
      tensors.emplace_back(name + ".lora_down.weight", in_file_dtype(l.down, l.file_dtype));
      tensors.emplace_back(name + ".lora_up.weight", in_file_dtype(l.up, l.file_dtype));
      // kohya stores alpha in the weights' dtype.
      tensors.emplace_back(name + ".alpha", scalar_tensor(alpha, o.dtype.value_or(l.file_dtype)));
    }
    metadata["ss_network_module"] = "networks.lora";
    metadata["ss_network_dim"] = std::to_string(layers.front().down.size(0));
    metadata["ss_network_alpha"] = py_float(layers.front().alpha);
  } else {
    // Per component: the first layer's rank and alpha as the defaults, patterns for the others.
    std::map<std::string, nlohmann::json> configs;
    bool needed = false;
    for (const LoadedLora::LayerView& l : layers) {
      const std::string stem = l.component + "." + l.layer;
      tensors.emplace_back(stem + ".lora_A.weight", in_file_dtype(l.down, l.file_dtype));
      tensors.emplace_back(stem + ".lora_B.weight", in_file_dtype(l.up, l.file_dtype));
      const int64_t r = l.down.size(0);
      if (l.alpha != double(r) || l.rslora) needed = true;
      nlohmann::json& c = configs[l.component];
      const std::string module = peft_module(l.component, l.layer);
      if (c.is_null()) {
        c = {{"r", r}, {"lora_alpha", l.alpha}, {"use_rslora", l.rslora}, {"target_modules", nlohmann::json::array()},
             {"alpha_pattern", nlohmann::json::object()}, {"rank_pattern", nlohmann::json::object()}};
      }
      SD_CHECK(c["use_rslora"].get<bool>() == l.rslora, "save_lora: ", l.component, " mixes rsLoRA and plain layers");
      c["target_modules"].push_back(module);
      if (r != c["r"].get<int64_t>()) c["rank_pattern"][module] = r;
      if (l.alpha != c["lora_alpha"].get<double>()) c["alpha_pattern"][module] = l.alpha;
    }
    if (needed) {
      // The layout diffusers writes: "<component>.<key>" entries of each LoraConfig, sorted.
      nlohmann::json flat = nlohmann::json::object();
      for (const auto& [component, c] : configs)
        for (const auto& [k, v] : c.items()) flat[component + "." + k] = v;
      metadata["lora_adapter_metadata"] = flat.dump(2);
    }
  }
  for (const auto& [k, v] : o.metadata) metadata[k] = v;
  save_safetensors(path, tensors, metadata);
}

}  // namespace sd::nn
