// Which device and dtype a run uses when the user does not say: the first CUDA device in fp16 where
// the build has CUDA and a GPU is present (what A1111, ComfyUI and stable-diffusion.cpp users
// expect), the CPU in fp32 otherwise. Explicit --device / --dtype always win.
#pragma once
#include <string>

#include "runtime/device.h"
#include "runtime/dtype.h"

namespace sd::infer {

struct DeviceChoice {
  Device device = Device::cpu();
  DType dtype = DType::F32;
  std::string why;  // one line for the first line of output and --json: what was picked and why
};

// requested_device / requested_dtype: the flags' values, "" when not given. gpu_count: CUDA devices
// present (cudart::device_count(); a parameter so both cases are testable on any machine).
// no_gpu_reason: why there is none (shown when the CPU is picked for that reason).
DeviceChoice choose_device(const std::string& requested_device, const std::string& requested_dtype, int gpu_count,
                           const std::string& no_gpu_reason = "");

}  // namespace sd::infer
