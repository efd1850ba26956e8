#include "infer/device_choice.h"

#include "runtime/error.h"

namespace sd::infer {

DeviceChoice choose_device(const std::string& requested_device, const std::string& requested_dtype, int gpu_count,
                           const std::string& no_gpu_reason) {
  DeviceChoice c;
  std::string device_why;
  if (!requested_device.empty()) {
    c.device = parse_device(requested_device);
    device_why = "--device " + requested_device;
  } else if (gpu_count > 0) {
    c.device = parse_device("cuda:0");
    device_why = "auto: the first CUDA device (--device cpu for the CPU)";
  } else {
    c.device = Device::cpu();
    device_why = "auto: no CUDA device" + (no_gpu_reason.empty() ? std::string() : " (" + no_gpu_reason + ")");
  }
  std::string dtype_why;
  if (!requested_dtype.empty()) {
    c.dtype = parse_dtype(requested_dtype);
    dtype_why = "--dtype " + requested_dtype;
  } else {
    // Half precision is what GPUs run Stable Diffusion in; CPUs without fast half arithmetic keep f32.
    c.dtype = c.device.is_cpu() ? DType::F32 : DType::F16;
    dtype_why = c.device.is_cpu() ? "auto on the CPU" : "auto on a GPU (--dtype fp32 or bf16 to change)";
  }
  c.why = c.device.str() + " " + dtype_name(c.dtype) + " (" + device_why + "; " + dtype_why + ")";
  return c;
}

}  // namespace sd::infer
