// The tiny golden UNets on the GPU in f32 and bf16 against the same models on the CPU.
#include <gtest/gtest.h>

#include <cstdio>

#include "tests/models/unet_golden.h"
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

}  // namespace
}  // namespace sd::nn
