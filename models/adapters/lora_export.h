// Writing a loaded LoRA back out in either layout (sd_convert --lora ... --lora_format kohya|diffusers):
//   diffusers/PEFT  <component>.<module path>.lora_A.weight / .lora_B.weight, and the header entry
//                   "lora_adapter_metadata" (r, lora_alpha, alpha_pattern for modules whose alpha differs,
//                   use_rslora per component) whenever some scale is not 1
//   kohya           lora_unet_<path with '_'> (SDXL: the original sgm path, as kohya's SDXL trainer names
//                   it), lora_te_ / lora_te1_ / lora_te2_, .lora_down.weight / .lora_up.weight / .alpha
//                   (rsLoRA folded into alpha = scale * r: kohya has no rsLoRA switch)
// The tensors keep the dtype the source file stored them in (unless one is asked for), so a conversion
// and its inverse give back the same bits. Names are resolved against the model the LoRA was loaded onto,
// which is what makes kohya's ambiguous underscores convertible at all.
#pragma once
#include <map>
#include <optional>
#include <string>

#include "models/adapters/lora.h"

namespace sd::nn {

struct LoraExportOptions {
  LoraFormat format = LoraFormat::Diffusers;
  bool sdxl = false;                 // kohya names for SDXL (sgm UNet paths, lora_te1/lora_te2)
  UNet2DConditionModel* unet = nullptr;  // needed for SDXL kohya names
  std::optional<DType> dtype;        // convert the tensors (default: as the source stored them)
  std::map<std::string, std::string> metadata;  // extra header entries
};

void save_lora(const std::string& path, const LoadedLora& lora, const LoraExportOptions& options);

}  // namespace sd::nn
