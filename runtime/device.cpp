#include "runtime/device.h"

#include "runtime/cuda_api.h"
#include "runtime/error.h"

namespace sd {

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda" || s == "gpu") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    try {
      return Device::cuda(std::stoi(s.substr(5)));
    } catch (const std::exception&) {
    }
  }
  SD_FAIL("unknown device '", s, "' (expected cpu, cuda or cuda:N)");
}

bool cuda_available() { return cuda_device_count() > 0; }
int cuda_device_count() { return cudart::device_count(); }

}  // namespace sd
