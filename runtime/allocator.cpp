#include "runtime/allocator.h"

#include <algorithm>
#include <memory>
#include <mutex>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "runtime/cuda_api.h"
#include "runtime/error.h"

namespace sd {

std::string AllocatorStats::str() const {
  std::ostringstream os;
  os << "current " << current_bytes << " B, peak " << peak_bytes << " B, reserved " << reserved_bytes
     << " B, " << alloc_calls << " allocations, " << system_allocs << " system allocations";
  return os.str();
}

void AllocCounters::on_alloc(int64_t n) {
  calls_++;
  int64_t now = current_ += n;
  int64_t peak = peak_.load();
  while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
  }
}
void AllocCounters::on_free(int64_t n) { current_ -= n; }
AllocatorStats AllocCounters::snapshot() const {
  AllocatorStats s;
  s.current_bytes = current_;
  s.peak_bytes = peak_;
  s.reserved_bytes = reserved_;
  s.alloc_calls = calls_;
  s.system_allocs = system_allocs_;
  return s;
}

namespace {

std::atomic<bool> g_poison{false};

// Device memory in power-of-two-ish size classes with free lists, so steady-state training
// and sampling loops reuse blocks instead of calling cudaMalloc. (Stream-aware reuse comes
// with the stream support of the CUDA backend; today all work is on the default stream.)
class CudaCachingAllocator final : public Allocator {
 public:
  explicit CudaCachingAllocator(int device) : device_(device) {}
  ~CudaCachingAllocator() override { release_all(); }

  void* allocate(size_t nbytes) override {
    size_t cls = size_class(nbytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& list = free_[cls];
      if (!list.empty()) {
        void* p = list.back();
        list.pop_back();
        counters_.on_alloc(int64_t(cls));
        if (g_poison) cudart::memset_device(p, 0xFF, cls);
        return p;
      }
    }
    void* p = nullptr;
    try {
      p = cudart::device_malloc(cls, device_);
    } catch (const Error&) {
      empty_cache();  // give cached blocks back and try once more before failing
      try {
        p = cudart::device_malloc(cls, device_);
      } catch (const Error& e) {
        SD_FAIL("CUDA out of memory on cuda:", device_, " allocating ", nbytes, " bytes (class ", cls,
                "); allocator: ", counters_.snapshot().str(), "; ", e.what());
      }
    }
    counters_.on_reserve(int64_t(cls));
    counters_.on_alloc(int64_t(cls));
    if (g_poison) cudart::memset_device(p, 0xFF, cls);
    return p;
  }
  void deallocate(void* p, size_t nbytes) override {
    if (!p) return;
    size_t cls = size_class(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    free_[cls].push_back(p);
    counters_.on_free(int64_t(cls));
  }
  AllocatorStats stats() const override { return counters_.snapshot(); }
  void reset_peak() override { counters_.reset_peak(); }
  void empty_cache() override { release_all(); }

 private:
  // Small blocks round to 512 B; larger ones to 1/8 of their power of two, which bounds
  // waste at 12.5% while keeping the number of classes small.
  static size_t size_class(size_t n) {
    if (n <= 512) return 512;
    size_t p2 = 1;
    while (p2 < n) p2 <<= 1;
    size_t step = std::max<size_t>(p2 / 8, 512);
    return (n + step - 1) / step * step;
  }
  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [cls, list] : free_) {
      for (void* p : list) {
        cudart::device_free(p, device_);
        counters_.on_release(int64_t(cls));
      }
      list.clear();
    }
  }

  int device_;
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  AllocCounters counters_;
};

}  // namespace

Allocator& cuda_allocator(int index) {
  static std::mutex mu;
  static std::vector<std::unique_ptr<CudaCachingAllocator>> allocators;
  int n = cudart::device_count();
  SD_CHECK(index >= 0 && index < n, "cuda:", index, " is not available (", n, " CUDA devices; ",
           cudart::unavailable_reason(), ")");
  std::lock_guard<std::mutex> lock(mu);
  if (allocators.empty()) allocators.resize(n);
  if (!allocators[index]) allocators[index] = std::make_unique<CudaCachingAllocator>(index);
  return *allocators[index];
}

void set_cuda_alloc_poison(bool on) { g_poison = on; }

Allocator& allocator_for(Device d) { return d.is_cpu() ? cpu_allocator() : cuda_allocator(d.index); }

}  // namespace sd
