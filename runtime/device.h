// Where a tensor lives. CUDA:n is a GPU; without a GPU (or in a CPU-only build) asking for
// one raises sd::Error, and tests that need one skip themselves.
#pragma once
#include <cstdint>
#include <string>

namespace sd {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  std::string str() const;
  bool operator==(const Device& o) const { return type == o.type && (is_cpu() || index == o.index); }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

Device parse_device(const std::string& s);  // "cpu", "cuda", "cuda:1"

// True when this build has the CUDA backend and a driver with at least one GPU answers.
bool cuda_available();
int cuda_device_count();

}  // namespace sd
