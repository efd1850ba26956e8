// A block of memory on one device, shared by every tensor viewing it. The release function
// returns it to its allocator, or drops a memory map for tensors read from safetensors files.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>

#include "runtime/device.h"

namespace sd {

class Storage {
 public:
  Storage(void* data, size_t nbytes, Device device, std::function<void()> release)
      : data_(data), nbytes_(nbytes), device_(device), release_(std::move(release)) {}
  ~Storage() {
    if (release_) release_();
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  // Fresh, uninitialised memory from the device's allocator.
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device);

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_;
  size_t nbytes_;
  Device device_;
  std::function<void()> release_;
};

}  // namespace sd
