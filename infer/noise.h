// Where a generation's random numbers come from. Every draw the pipelines make -- the starting
// latents, the VAE posterior sample and the noise of img2img, the noise of stochastic samplers
// (Euler ancestral, DPM++ SDE, DDPM, LCM) -- is one randn call on one stream, in diffusers' order,
// so a stream that reproduces torch's generator reproduces diffusers' images for a seed.
//
//   philox      the project's Philox generator (runtime/rng.h): the same numbers on CPU and GPU,
//               the default
//   torch-cuda  torch.randn(..., generator=torch.Generator("cuda").manual_seed(seed)) (infer/torch_rng.h):
//               a seed from diffusers (generator on "cuda") or A1111 gives the same latents
//   table       given tensors served in order (--latents files, tests replaying diffusers' draws)
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "infer/torch_rng.h"
#include "runtime/rng.h"
#include "runtime/tensor.h"

namespace sd::infer {

class NoiseStream {
 public:
  virtual ~NoiseStream() = default;
  // Standard normal values of `shape`, drawn in float32 and converted to dtype on device.
  virtual Tensor randn(const Shape& shape, DType dtype, Device device) = 0;
  virtual std::string describe() const = 0;
};

class PhiloxNoise final : public NoiseStream {
 public:
  explicit PhiloxNoise(uint64_t seed) : gen_(seed) {}
  Tensor randn(const Shape& shape, DType dtype, Device device) override;
  std::string describe() const override;

 private:
  Generator gen_;
};

class TorchCudaNoise final : public NoiseStream {
 public:
  explicit TorchCudaNoise(uint64_t seed) : seed_(seed), gen_(seed) {}
  Tensor randn(const Shape& shape, DType dtype, Device device) override;
  std::string describe() const override;

 private:
  uint64_t seed_;
  TorchCudaGenerator gen_;
};

// Serves `tensors` in order; a draw of another shape, or one past the end, is an sd::Error
// (unless a fallback stream is given: then draws past the end come from it).
class TableNoise final : public NoiseStream {
 public:
  explicit TableNoise(std::vector<Tensor> tensors, std::unique_ptr<NoiseStream> fallback = nullptr)
      : tensors_(std::move(tensors)), fallback_(std::move(fallback)) {}
  Tensor randn(const Shape& shape, DType dtype, Device device) override;
  std::string describe() const override;
  size_t used() const { return pos_; }
  size_t size() const { return tensors_.size(); }

 private:
  std::vector<Tensor> tensors_;
  size_t pos_ = 0;
  std::unique_ptr<NoiseStream> fallback_;
};

// "philox" or "torch-cuda" (also "torch_cuda", "cuda"); sd::Error otherwise.
std::unique_ptr<NoiseStream> make_noise_stream(const std::string& rng, uint64_t seed);

}  // namespace sd::infer
