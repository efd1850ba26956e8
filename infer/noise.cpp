#include "infer/noise.h"

#include "ops/view.h"
#include "runtime/error.h"

namespace sd::infer {

Tensor PhiloxNoise::randn(const Shape& shape, DType dtype, Device device) {
  // Drawn in float32 on the CPU so a seed gives the same latents whatever the dtype and device.
  Tensor t = sd::randn(shape, DType::F32, Device::cpu(), gen_);
  return dtype == DType::F32 && device.is_cpu() ? t : copy_to(t, dtype, device);
}

std::string PhiloxNoise::describe() const { return "philox seed " + std::to_string(gen_.seed); }

Tensor TorchCudaNoise::randn(const Shape& shape, DType dtype, Device device) {
  // torch draws half-precision randn in float and rounds: the same as converting afterwards.
  Tensor t = gen_.randn(shape, DType::F32, Device::cpu());
  return dtype == DType::F32 && device.is_cpu() ? t : copy_to(t, dtype, device);
}

std::string TorchCudaNoise::describe() const { return "torch-cuda seed " + std::to_string(seed_); }

Tensor TableNoise::randn(const Shape& shape, DType dtype, Device device) {
  if (pos_ >= tensors_.size()) {
    SD_CHECK(fallback_ != nullptr, "noise: ", tensors_.size(), " given tensor(s) are used up; another draw of shape ",
             shape_str(shape), " was asked for");
    return fallback_->randn(shape, dtype, device);
  }
  const Tensor& t = tensors_[pos_];
  SD_CHECK(t.shape() == shape, "noise: given tensor ", pos_, " has shape ", shape_str(t.shape()),
           " but the pipeline draws ", shape_str(shape), " here");
  ++pos_;
  return copy_to(t, dtype, device);
}

std::string TableNoise::describe() const {
  return std::to_string(tensors_.size()) + " given tensor(s)" + (fallback_ ? ", then " + fallback_->describe() : "");
}

std::unique_ptr<NoiseStream> make_noise_stream(const std::string& rng, uint64_t seed) {
  if (rng == "philox") return std::make_unique<PhiloxNoise>(seed);
  if (rng == "torch-cuda" || rng == "torch_cuda" || rng == "cuda") return std::make_unique<TorchCudaNoise>(seed);
  SD_FAIL("unknown random generator \"", rng, "\" (known: philox, torch-cuda)");
}

}  // namespace sd::infer
