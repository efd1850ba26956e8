// The tiny models and LoRA files of tests/data/lora (tests/golden/make_lora_goldens.py), shared by the
// LoRA unit and golden tests.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "models/clip/clip_text.h"
#include "models/adapters/lora.h"
#include "models/unet/unet.h"
#include "runtime/safetensors.h"
#include "tests/models/unet/unet_golden.h"

namespace sd::test {

inline std::string lora_dir() { return std::string(SD_TEST_DATA_DIR) + "/lora"; }
inline std::string lora_file(const std::string& name) { return lora_dir() + "/" + name; }

// "sd1": unet_tiny_sd1 + clip_tiny_l; "sdxl": unet_tiny_sdxl + clip_tiny_l + clip_tiny_bigg. f32 on the CPU.
struct LoraModels {
  std::string name;
  std::shared_ptr<nn::UNet2DConditionModel> unet;
  std::shared_ptr<nn::ClipTextModel> te, te2;
  nn::LoraTargets targets() const { return {unet.get(), te.get(), te2.get()}; }
};

inline LoraModels load_lora_models(const std::string& name) {
  LoraModels m;
  m.name = name;
  m.unet = nn::UNet2DConditionModel::from_pretrained(unet_golden_dir(name), DType::F32, Device::cpu(),
                                                     name == "sd1" ? "fp16" : "");
  m.te = nn::ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l");
  if (name == "sdxl") m.te2 = nn::ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_bigg");
  return m;
}

inline Tensor clip_golden_ids(const std::string& clip) {
  return SafetensorsFile::open(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_" + clip + "/io.safetensors").get("input_ids");
}

// The outputs the goldens record: UNet prediction, text encoder last_hidden_state(s), bigG text_embeds.
struct LoraOutputs {
  Tensor unet, te, te2, te2_embeds;
};

inline LoraOutputs run_lora_models(const LoraModels& m) {
  LoraOutputs o;
  o.unet = run_unet_golden(*m.unet, unet_golden_io(m.name));
  o.te = m.te->forward(clip_golden_ids("l"));
  if (m.te2) {
    nn::ClipTextRequest req;
    req.text_embeds = true;
    nn::ClipTextOutput out = m.te2->forward(clip_golden_ids("bigg"), req);
    o.te2 = out.last_hidden_state;
    o.te2_embeds = out.text_embeds;
  }
  return o;
}

inline std::map<std::string, Tensor> lora_golden_io(const std::string& name) {
  SafetensorsFile f = SafetensorsFile::open(lora_file(name + "_io.safetensors"));
  std::map<std::string, Tensor> io;
  for (const std::string& k : f.keys()) io[k] = f.get(k);
  return io;
}

}  // namespace sd::test
