// The tiny golden UNets on the GPU in f32 and bf16 against the same models on the CPU.
#include <gtest/gtest.h>

#include <cstdio>

#include "autograd/engine.h"
#include "autograd/node.h"
#include "runtime/image_layout.h"
#include "runtime/stream.h"
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
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      auto gpu = UNet2DConditionModel::from_pretrained(dir, dt, Device::cuda(), c.variant);
      Tensor out = test::run_unet_golden(*gpu, io, Device::cuda());
      ASSERT_TRUE(out.is_cuda()) << c.name;
      EXPECT_EQ(out.dtype(), dt);
      const double tol = dt == DType::F32 ? 1e-4 : 2e-2;
      const double err = test::relative_error(copy_to(out, DType::F32, Device::cpu()), ref);
      EXPECT_LE(err, tol) << c.name << " " << dtype_name(dt);
      // Channels-last (set_channels_last): the same numbers, and no layout conversion between layers
      // (runtime/image_layout.h counts them): the sample in and the prediction out, nothing else.
      gpu->set_channels_last(true);
      test::run_unet_golden(*gpu, io, Device::cuda());  // warm-up: algorithm searches may copy
      const int64_t before = layout_conversions();
      Tensor cl;
      {
        autograd::NoGrad ng;
        cl = test::run_unet_golden(*gpu, io, Device::cuda());
      }
      const int64_t conversions = layout_conversions() - before;
      EXPECT_TRUE(cl.is_contiguous()) << c.name;
      const double err_cl = test::relative_error(copy_to(cl, DType::F32, Device::cpu()), ref);
      EXPECT_LE(err_cl, tol) << c.name << " " << dtype_name(dt) << " channels-last";
      EXPECT_EQ(conversions, 2) << c.name << " " << dtype_name(dt);
      std::printf("[ CudaUNet ] %s %s: relative error vs CPU f32 %.2e, channels-last %.2e (%lld layout conversions)\n",
                  c.name.c_str(), dtype_name(dt), err, err_cl, static_cast<long long>(conversions));
    }
  }
}

// Every kernel of a UNet forward and backward launches on the current stream (runtime/stream.h):
// under a StreamGuard (a non-blocking stream: nothing orders it with the legacy default stream)
// the golden model gives the default stream's results, and the default stream reads them after
// waiting on the side stream's event. A kernel left on the default stream would race. (Equal up to
// the float-atomic order of some backward kernels, not bit for bit.)
TEST(CudaUNet, ForwardAndBackwardRunOnTheCurrentStream) {
  SD_REQUIRE_CUDA();
  const auto& c = test::unet_golden_cases()[0];
  const auto io = test::unet_golden_io(c.name);
  auto m = UNet2DConditionModel::from_pretrained(test::unet_golden_dir(c.name), DType::F16, Device::cuda(), c.variant);
  m->set_requires_grad(true);
  auto step = [&] {
    for (auto& [name, p] : m->named_parameters()) p->slot->zero_grad();
    const test::UNetGoldenGradRun run = test::run_unet_golden_for_grad(*m, io, Device::cuda());
    autograd::backward(run.out, copy_to(io.at("grad_weight"), DType::F16, Device::cuda()));
    return std::vector<Tensor>{run.out, run.sample.grad(), m->conv_in->weight.grad()};
  };
  const auto ref = step();
  Stream side = Stream::create(0);
  Event done;
  std::vector<Tensor> got;
  {
    StreamGuard guard(side);
    got = step();
    done.record();
  }
  done.wait();
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_LT(test::relative_error(copy_to(got[i], DType::F32, Device::cpu()), copy_to(ref[i], DType::F32, Device::cpu())),
              5e-3)
        << "tensor " << i;
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
      const test::UNetGoldenGradRun run = test::run_unet_golden_for_grad(*m, io, Device::cuda());
      autograd::backward(run.out, copy_to(io.at("grad_weight"), DType::F32, Device::cuda()));
      const std::string what = c.name + (checkpointing ? " (checkpointed)" : "");
      EXPECT_LT(test::relative_error(run.sample.grad(), io.at("grad_sample")), 1e-4) << what;
      EXPECT_LT(test::relative_error(run.context.grad(), io.at("grad_encoder_hidden_states")), 1e-4) << what;
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
