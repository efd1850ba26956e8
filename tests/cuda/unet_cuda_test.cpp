// The tiny golden UNets on the GPU in f32 and bf16 against the same models on the CPU.
#include <gtest/gtest.h>

#include <cstdio>

#include "autograd/engine.h"
#include "tests/models/unet/unet_golden.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

TEST(CudaUNet, GoldenModelsMatchTheCpu) {
  SD_REQUIRE_CUDA();
  for (const auto& c : test::unet_golden_cases()) {
    const auto io = test::unet_golden_io(c.name);
    const std::string dir = test::unet_golden_dir(c.name);
    auto cpu = UNet2DConditionModel::from_pretrained(dir, DType::F32, Device::cpu(), c.variant);
    const Tensor ref = test::run_unet_golden(*cpu, io);
    for (DType dt : {DType::F32, DType::BF16}) {
      auto gpu = UNet2DConditionModel::from_pretrained(dir, dt, Device::cuda(), c.variant);
      Tensor out = test::run_unet_golden(*gpu, io, Device::cuda());
      ASSERT_TRUE(out.is_cuda()) << c.name;
      EXPECT_EQ(out.dtype(), dt);
      const double err = test::relative_error(copy_to(out, DType::F32, Device::cpu()), ref);
      EXPECT_LE(err, dt == DType::F32 ? 1e-4 : 2e-2) << c.name << " " << dtype_name(dt);
      std::printf("[ CudaUNet ] %s %s: relative error vs CPU f32 %.2e\n", c.name.c_str(), dtype_name(dt), err);
    }
  }
}

// Backward through the whole UNet on the GPU (f32, with and without per-block checkpointing)
// against diffusers' float64 gradients stored with the goldens: input, context, four parameters.
TEST(CudaUNet, GradientsMatchDiffusers) {
  SD_REQUIRE_CUDA();
  for (const auto& c : test::unet_golden_cases()) {
    for (bool checkpointing : {false, true}) {
      auto m = UNet2DConditionModel::from_pretrained(test::unet_golden_dir(c.name), DType::F32, Device::cuda(),
                                                     c.variant);
      m->gradient_checkpointing = checkpointing;
      m->set_requires_grad(true);
      auto io = test::unet_golden_io(c.name);
      auto dev = [](const Tensor& t) { return t.defined() ? copy_to(t, t.dtype(), Device::cuda()) : t; };
      Tensor sample = dev(io.at("sample")), ehs = dev(io.at("encoder_hidden_states"));
      sample.set_requires_grad(true);
      ehs.set_requires_grad(true);
      UNetAddedCond added;
      if (io.count("text_embeds")) added = {dev(io.at("text_embeds")), dev(io.at("time_ids"))};
      const Tensor cond = io.count("timestep_cond") ? dev(io.at("timestep_cond")) : Tensor();
      const Tensor& t = io.at("timestep");
      Tensor out = t.numel() == 1 ? m->forward(sample, t.item(), ehs, added, cond)
                                  : m->forward(sample, dev(t), ehs, added, cond);
      autograd::backward(out, dev(io.at("grad_weight")));
      const std::string what = c.name + (checkpointing ? " (checkpointed)" : "");
      EXPECT_LT(test::relative_error(sample.grad(), io.at("grad_sample")), 1e-4) << what;
      EXPECT_LT(test::relative_error(ehs.grad(), io.at("grad_encoder_hidden_states")), 1e-4) << what;
      for (auto& [name, p] : m->named_parameters()) {
        auto it = io.find("grad_param/" + name);
        if (it == io.end()) continue;
        ASSERT_TRUE(p->slot->grad().defined()) << what << " " << name;
        EXPECT_LT(test::relative_error(p->slot->grad(), it->second), 1e-4) << what << " " << name;
      }
    }
  }
}

}  // namespace
}  // namespace sd::nn
