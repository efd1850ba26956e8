// The tiny diffusers UNets of tests/data/unet_tiny_<name>/ (tests/golden/make_unet_goldens.py)
// and a runner for their recorded inputs, shared by the CPU golden tests and the GPU test.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "models/unet/unet.h"
#include "runtime/safetensors.h"

namespace sd::test {

struct UNetGoldenCase {
  std::string name;
  std::string variant;  // the weight file's variant ("fp16" for sd1)
};

inline const std::vector<UNetGoldenCase>& unet_golden_cases() {
  static const std::vector<UNetGoldenCase> cases = {
      {"sd1", "fp16"}, {"sd2", ""}, {"sdxl", ""}, {"lcm", ""}, {"misc", ""}};
  return cases;
}

inline std::string unet_golden_dir(const std::string& name) {
  return std::string(SD_TEST_DATA_DIR) + "/unet_tiny_" + name;
}

// io.safetensors: inputs and the reference outputs, as stored (CPU tensors).
inline std::map<std::string, Tensor> unet_golden_io(const std::string& name) {
  SafetensorsFile f = SafetensorsFile::open(unet_golden_dir(name) + "/io.safetensors");
  std::map<std::string, Tensor> io;
  for (const std::string& k : f.keys()) io[k] = f.get(k);
  return io;
}

// Runs the recorded inputs through `model` (inputs moved to `device`; the model casts them to its
// dtype). A one-element timestep was a Python float in diffusers: it goes through the scalar overload.
inline Tensor run_unet_golden(const nn::UNet2DConditionModel& model, const std::map<std::string, Tensor>& io,
                              Device device = Device::cpu()) {
  auto in = [&](const char* k) {
    auto it = io.find(k);
    return it == io.end() ? Tensor() : copy_to(it->second, it->second.dtype(), device);
  };
  nn::UNetAddedCond added;
  added.text_embeds = in("text_embeds");
  added.time_ids = in("time_ids");
  const Tensor& t = io.at("timestep");
  if (t.numel() == 1) return model.forward(in("sample"), t.item(), in("encoder_hidden_states"), added, in("timestep_cond"));
  return model.forward(in("sample"), in("timestep"), in("encoder_hidden_states"), added, in("timestep_cond"));
}

// The recorded inputs through `model` with the sample and the text context as gradient leaves on
// `device` (for the gradient goldens: backward(out, io["grad_weight"]) gives their .grad()).
struct UNetGoldenGradRun {
  Tensor sample, context, out;
};
inline UNetGoldenGradRun run_unet_golden_for_grad(const nn::UNet2DConditionModel& model,
                                                  const std::map<std::string, Tensor>& io,
                                                  Device device = Device::cpu()) {
  auto dev = [&](const char* k) {
    auto it = io.find(k);
    return it == io.end() ? Tensor() : copy_to(it->second, it->second.dtype(), device);
  };
  UNetGoldenGradRun r{dev("sample"), dev("encoder_hidden_states"), Tensor()};
  r.sample.set_requires_grad(true);
  r.context.set_requires_grad(true);
  nn::UNetAddedCond added;
  added.text_embeds = dev("text_embeds");
  added.time_ids = dev("time_ids");
  const Tensor& t = io.at("timestep");
  r.out = t.numel() == 1 ? model.forward(r.sample, t.item(), r.context, added, dev("timestep_cond"))
                         : model.forward(r.sample, dev("timestep"), r.context, added, dev("timestep_cond"));
  return r;
}

}  // namespace sd::test
