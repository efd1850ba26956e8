// config.json texts for a diffusers pipeline folder written from a single-file checkpoint
// (FORMATS.md §2.1-§2.5): model_index.json, unet/, vae/, text_encoder(_2)/ and scheduler/.
//
// Every value the tensors decide is read from them (channels, layers per block, transformer
// depth per block, cross-attention width, in/out channels, text-encoder widths and depths, the
// mid block's type), so non-standard and tiny models get a config that matches their weights.
// The rest -- what no tensor shape can tell: attention heads, sample size, upcast_attention,
// scaling factors, activation functions, scheduler -- comes from the family's real hub config
// (SD1.5, SD2.1 768-v / 2.1-base, SDXL base 1.0, SDXL refiner 1.0, SSD-1B).
#pragma once
#include <string>
#include <vector>

#include "models/formats/checkpoint_keys.h"

namespace sd::nn {

// Each returns pretty-printed JSON (indent 2, keys sorted, as diffusers writes them).
// `keys` holds the component's diffusers names and shapes.
std::string unet_config_json(ModelFamily family, Prediction prediction, const KeyShapes& keys);
std::string vae_config_json(ModelFamily family, const KeyShapes& keys);
std::string text_encoder_config_json(ModelFamily family, const std::string& component, const KeyShapes& keys);
std::string scheduler_config_json(ModelFamily family, Prediction prediction);
// `components`: the component folders present (unet, vae, text_encoder, text_encoder_2,
// tokenizer, tokenizer_2, scheduler); the pipeline's other slots are written as [null, null].
// `inpainting` picks the inpainting pipeline class (UNet with 9 input channels).
std::string model_index_json(ModelFamily family, Prediction prediction, bool inpainting,
                             const std::vector<std::string>& components);

}  // namespace sd::nn
