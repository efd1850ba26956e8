// JSON configs: the first byte picks the reader (UNet, VAE, CLIP text, scheduler with the file's
// class or with one asked for), the rest is the file's text.
#include "infer/scheduler_config.h"
#include "models/clip/clip_text_config.h"
#include "models/unet/unet_config.h"
#include "models/vae/vae_config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  sd::fuzz::expect_ok_or_sd_error([&] {
    switch (data[0] % 5) {
      case 0: (void)sd::nn::UNetConfig::from_json_string(text, "fuzz"); break;
      case 1: (void)sd::nn::VaeConfig::from_json_string(text, "fuzz"); break;
      case 2: (void)sd::nn::ClipTextConfig::from_json(text, "fuzz"); break;
      case 3: (void)sd::infer::SchedulerConfig::from_json_string(text, "fuzz"); break;
      case 4: (void)sd::infer::SchedulerConfig::from_json_string(text, "fuzz", "EulerDiscreteScheduler"); break;
    }
  });
  return 0;
}
