// Allocators with the same statistics on every device, so memory tests and benchmarks read
// one struct whether the tensor lives on the CPU or a GPU.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "runtime/device.h"

namespace sd {

struct AllocatorStats {
  int64_t current_bytes = 0;   // bytes handed out and not yet returned
  int64_t peak_bytes = 0;      // high-water mark of current_bytes since the last reset
  int64_t reserved_bytes = 0;  // bytes held from the system (>= current for caching allocators)
  int64_t alloc_calls = 0;     // allocate() calls
  int64_t system_allocs = 0;   // calls that reached the system (malloc / cudaMalloc)
  std::string str() const;
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* p, size_t nbytes) = 0;
  virtual AllocatorStats stats() const = 0;
  virtual void reset_peak() = 0;
  virtual void empty_cache() {}
};

// 64-byte aligned host memory (a cache line; also what AVX-512 loads like); blocks of 1 MiB and more
// are page-aligned pieces of cached segments (runtime/cpu_allocator.cpp).
Allocator& cpu_allocator();
// A separate host allocator keeping at most `cache_limit_bytes` free (tests use one so they see the
// caching policy from a known start; the process-wide one reads SD_CPU_CACHE_MB).
std::unique_ptr<Allocator> make_cpu_allocator(size_t cache_limit_bytes);
// The device allocator of GPU `index` (raises sd::Error without CUDA).
Allocator& cuda_allocator(int index);
Allocator& allocator_for(Device d);
// Test aid: every device allocation is filled with 0xFF bytes (NaN in every float type), so a
// kernel that leaves an output element unwritten fails its comparison.
void set_cuda_alloc_poison(bool on);

// Counters shared by allocator implementations: lock-free, peak kept with a CAS loop.
class AllocCounters {
 public:
  void on_alloc(int64_t n);
  void on_free(int64_t n);
  void on_reserve(int64_t n) { reserved_ += n; system_allocs_++; }
  void on_release(int64_t n) { reserved_ -= n; }
  AllocatorStats snapshot() const;
  void reset_peak() { peak_ = current_.load(); }

 private:
  std::atomic<int64_t> current_{0}, peak_{0}, reserved_{0}, calls_{0}, system_allocs_{0};
};

}  // namespace sd
