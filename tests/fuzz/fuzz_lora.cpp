// LoRA files (kohya and diffusers/PEFT layouts, safetensors) applied to the tiny SD1 UNet and CLIP
// text encoder of tests/data, then taken off again so every input sees the same models.
#include "models/adapters/lora.h"
#include "models/clip/clip_text.h"
#include "models/unet/unet.h"
#include "tests/fuzz/fuzz_util.h"

namespace {
struct Models {
  std::shared_ptr<sd::nn::UNet2DConditionModel> unet = sd::nn::UNet2DConditionModel::from_pretrained(
      std::string(SD_TEST_DATA_DIR) + "/unet_tiny_sd1", sd::DType::F32, sd::Device::cpu(), "fp16");
  std::shared_ptr<sd::nn::ClipTextModel> te =
      sd::nn::ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l");
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Models m;
  const std::string path = sd::fuzz::scratch_file(data, size, ".safetensors");
  sd::fuzz::expect_ok_or_sd_error([&] {
    sd::nn::LoadedLora lora = sd::nn::load_lora(path, {m.unet.get(), m.te.get(), nullptr});
    lora.remove();
  });
  return 0;
}
