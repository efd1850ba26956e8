// The device and dtype sd_infer picks when not told: a GPU in fp16 when one is present (the habit of
// A1111, ComfyUI and stable-diffusion.cpp users), the CPU in fp32 otherwise; flags always win.
#include <gtest/gtest.h>

#include "infer/device_choice.h"

namespace sd::infer {
namespace {

TEST(DeviceChoice, AGpuWhenPresentInFp16) {
  const DeviceChoice c = choose_device("", "", 2);
  EXPECT_TRUE(c.device.is_cuda());
  EXPECT_EQ(c.device.index, 0);
  EXPECT_EQ(c.dtype, DType::F16);
  EXPECT_NE(c.why.find("auto: the first CUDA device"), std::string::npos) << c.why;
}

TEST(DeviceChoice, TheCpuInFp32WithoutAGpuSayingWhy) {
  const DeviceChoice c = choose_device("", "", 0, "no CUDA driver");
  EXPECT_TRUE(c.device.is_cpu());
  EXPECT_EQ(c.dtype, DType::F32);
  EXPECT_NE(c.why.find("no CUDA device (no CUDA driver)"), std::string::npos) << c.why;
}

TEST(DeviceChoice, FlagsWin) {
  DeviceChoice c = choose_device("cpu", "", 1);
  EXPECT_TRUE(c.device.is_cpu());
  EXPECT_EQ(c.dtype, DType::F32);
  EXPECT_NE(c.why.find("--device cpu"), std::string::npos) << c.why;
  c = choose_device("", "fp32", 1);
  EXPECT_TRUE(c.device.is_cuda());
  EXPECT_EQ(c.dtype, DType::F32);
  c = choose_device("cuda:1", "bf16", 0);  // asked for: used as given (loading then says what fails)
  EXPECT_TRUE(c.device.is_cuda());
  EXPECT_EQ(c.device.index, 1);
  EXPECT_EQ(c.dtype, DType::BF16);
  c = choose_device("", "fp16", 0);
  EXPECT_TRUE(c.device.is_cpu());
  EXPECT_EQ(c.dtype, DType::F16);
}

}  // namespace
}  // namespace sd::infer
