// The golden UNets and VAE run channels-last on the GPU beyond the forward values (those, and the
// forward's layout conversions, are checked in CudaUNet.GoldenModelsMatchTheCpu and
// CudaVae.GoldenModelMatchesTheCpu): through cuDNN's graph API, a training step's gradients and
// their layouts, and the VAE decode's conversions (runtime/image_layout.h counts every copy between
// the two layouts: a forward pays exactly the entry and the exit).
#include <gtest/gtest.h>

#include <cstdio>

#include "autograd/engine.h"
#include "autograd/node.h"
#include "ops/cuda/conv.h"
#include "runtime/image_layout.h"
#include "tests/models/unet/unet_golden.h"
#include "tests/models/vae/vae_golden.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

// The golden UNets channels-last with every convolution through cuDNN's graph API (ConvBackend::CudnnGraph, bias fused):
// forward and training step, in f16 and bf16.
TEST(CudaChannelsLast, UNetThroughTheCudnnGraphApi) {
  SD_REQUIRE_CUDA();
#ifdef SD_WITH_CUDA
  if (!cuda::cudnn_available()) GTEST_SKIP() << "no cuDNN in this build";
  const cuda::ConvBackend prev = cuda::conv_backend();
  cuda::set_conv_backend(cuda::ConvBackend::CudnnGraph);
  for (const auto& c : test::unet_golden_cases()) {
    const auto io = test::unet_golden_io(c.name);
    const std::string dir = test::unet_golden_dir(c.name);
    auto cpu = UNet2DConditionModel::from_pretrained(dir, DType::F32, Device::cpu(), c.variant);
    const Tensor ref = test::run_unet_golden(*cpu, io);
    for (DType dt : {DType::F16, DType::BF16}) {
      auto gpu = UNet2DConditionModel::from_pretrained(dir, dt, Device::cuda(), c.variant);
      gpu->set_channels_last(true);
      gpu->set_requires_grad(true);
      const int64_t runs0 = cuda::cudnn_graph_runs();
      Tensor out = test::run_unet_golden(*gpu, io, Device::cuda());
      const double err = test::relative_error(copy_to(out, DType::F32, Device::cpu()), ref);
      EXPECT_LE(err, 2e-2) << c.name << " " << dtype_name(dt);
      autograd::backward(out, copy_to(io.at("grad_weight"), dt, Device::cuda()));
      int with_grad = 0;
      for (auto& [name, p] : gpu->named_parameters()) with_grad += p->slot->grad().defined();
      EXPECT_GT(with_grad, 0);
      const int64_t runs = cuda::cudnn_graph_runs() - runs0;
      EXPECT_GT(runs, 0) << c.name;
      std::printf("[ CudaChannelsLast ] unet %s %s through the graph API: vs CPU %.2e, %lld graph runs\n",
                  c.name.c_str(), dtype_name(dt), err, static_cast<long long>(runs));
    }
  }
  cuda::set_conv_backend(prev);
#endif
}

// Training through a channels-last UNet on the GPU: gradients against diffusers' f64 ones, and
// the backward's conversions (the exit's gradient back in, the sample's gradient out).
TEST(CudaChannelsLast, UNetGradientsMatchDiffusers) {
  SD_REQUIRE_CUDA();
  for (const auto& c : test::unet_golden_cases()) {
    auto m = UNet2DConditionModel::from_pretrained(test::unet_golden_dir(c.name), DType::F32, Device::cuda(), c.variant);
    m->set_channels_last(true);
    m->set_requires_grad(true);
    auto io = test::unet_golden_io(c.name);
    const test::UNetGoldenGradRun run = test::run_unet_golden_for_grad(*m, io, Device::cuda());
    const Tensor upstream = copy_to(io.at("grad_weight"), DType::F32, Device::cuda());
    const int64_t before = layout_conversions();
    autograd::backward(run.out, upstream);
    const int64_t conversions = layout_conversions() - before;
    EXPECT_LT(test::relative_error(run.sample.grad(), io.at("grad_sample")), 1e-4) << c.name;
    EXPECT_LT(test::relative_error(run.context.grad(), io.at("grad_encoder_hidden_states")), 1e-4) << c.name;
    int checked = 0, channels_last_grads = 0;
    for (auto& [name, p] : m->named_parameters()) {
      const Tensor& g = p->slot->grad();
      ASSERT_TRUE(g.defined()) << c.name << " " << name;
      channels_last_grads += prefers_channels_last(g);
      EXPECT_EQ(prefers_channels_last(g), prefers_channels_last(*p->slot)) << c.name << " " << name;
      auto it = io.find("grad_param/" + name);
      if (it == io.end()) continue;
      EXPECT_LT(test::relative_error(g, it->second), 1e-4) << c.name << " " << name;
      ++checked;
    }
    EXPECT_EQ(checked, 4) << c.name;
    EXPECT_GT(channels_last_grads, 0) << c.name;
    EXPECT_LE(conversions, 2) << c.name;
    std::printf("[ CudaChannelsLast ] unet %s backward: layout conversions %lld, channels-last weight gradients %d\n",
                c.name.c_str(), static_cast<long long>(conversions), channels_last_grads);
  }
}

// One channels-last decode (its values: CudaVae.GoldenModelMatchesTheCpu): the latent in, the image out.
TEST(CudaChannelsLast, VaeDecodeConvertsOnlyAtEntryAndExit) {
  SD_REQUIRE_CUDA();
  const auto io = test::vae_golden_io();
  for (DType dt : {DType::F32, DType::BF16}) {
    auto gpu = AutoencoderKL::from_pretrained(test::vae_golden_dir(), dt, Device::cuda());
    gpu->set_channels_last(true);
    const Tensor z = copy_to(io.at("latents"), dt, Device::cuda());
    gpu->decode(z);  // warm-up
    const int64_t before = layout_conversions();
    {
      autograd::NoGrad ng;
      gpu->decode(z);
    }
    EXPECT_EQ(layout_conversions() - before, 2) << dtype_name(dt);
  }
}

}  // namespace
}  // namespace sd::nn
