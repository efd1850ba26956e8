// Host memory: small blocks from malloc, large ones carved out of cached segments (best fit, split and
// coalesced), so a UNet or VAE step reuses the memory of the previous one instead of page-faulting
// and zeroing fresh pages.
//
// Why segments and not per-size free lists: a step's large tensors come in dozens of sizes, and a cache
// keyed by size class either holds a block of every size ever freed (1.8 GB more RSS at 512x512) or,
// holding less, misses ~250 times per step and maps and zeroes fresh memory on each miss (15% of a
// 512x512 UNet step, in system time). Splitting large segments lets one freed block serve the next
// step's tensors of other sizes, so after the first step a loop allocates nothing from the system.
//
// What is held stays near what the process needed at once: before a new segment is mapped, wholly free
// segments go back (largest first) until the held bytes fit in the high-water mark of live bytes plus
// one segment. Free bytes above SD_CPU_CACHE_MB (default 2048) go back as well, and everything free
// goes back when the system refuses memory. Segments ask for transparent huge pages: 512x fewer page
// faults and TLB misses on the large activations the GEMMs and convolutions stream through.
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>

#include "runtime/allocator.h"
#include "runtime/error.h"

namespace sd {

namespace {

constexpr size_t kMiB = size_t(1) << 20;
constexpr size_t kLarge = kMiB;           // blocks from this size up come from segments
constexpr size_t kHugePage = 2 * kMiB;    // segment sizes and alignment
constexpr size_t kSegment = 64 * kMiB;    // smallest segment; larger requests get one of their size
constexpr size_t kBlockAlign = 4096;      // large blocks are page-aligned multiples of a page
constexpr size_t kDefaultCacheLimit = 2048 * kMiB;

// Under AddressSanitizer every block comes from malloc, so a kernel writing past its tensor hits a
// redzone instead of the next block of a segment.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// A piece of a segment; neighbours in the same segment are linked so frees can coalesce.
struct Block {
  char* ptr;
  size_t size;
  bool free;
  Block* prev;  // lower address, same segment (null at the segment start)
  Block* next;  // higher address, same segment (null at the segment end)
  bool whole_segment() const { return !prev && !next; }
};

class CpuAllocator final : public Allocator {
 public:
  explicit CpuAllocator(size_t cache_limit) : cache_limit_(cache_limit) {}
  ~CpuAllocator() override { empty_cache(); }

  void* allocate(size_t nbytes) override {
    if (nbytes < kLarge || kSanitized) {
      void* p = std::aligned_alloc(64, round_up(std::max<size_t>(nbytes, 1), 64));
      if (!p) SD_FAIL("CPU out of memory: allocating ", nbytes, " bytes failed (", counters_.snapshot().str(), ")");
      counters_.on_alloc(int64_t(nbytes));
      return p;
    }
    std::lock_guard<std::mutex> lock(mu_);
    const size_t need = round_up(nbytes, kBlockAlign);
    Block* b = best_fit(need);
    if (!b) b = map_segment(need, nbytes);
    take(b, need);
    counters_.on_alloc(int64_t(nbytes));
    return b->ptr;
  }

  void deallocate(void* p, size_t nbytes) override {
    if (!p) return;
    counters_.on_free(int64_t(nbytes));
    if (nbytes < kLarge || kSanitized) {
      std::free(p);
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    auto it = used_.find(static_cast<char*>(p));
    SD_CHECK(it != used_.end(), "CPU allocator: freeing ", p, " (", nbytes, " bytes), which it did not hand out");
    Block* b = it->second;
    used_.erase(it);
    live_ -= b->size;
    b->free = true;
    b = coalesce(b);
    free_.insert({b->size, b});
    if (reserved_ - live_ > cache_limit_) release_free_segments(reserved_ - live_ - cache_limit_);
  }

  void empty_cache() override {
    std::lock_guard<std::mutex> lock(mu_);
    release_free_segments(reserved_);
  }
  AllocatorStats stats() const override { return counters_.snapshot(); }
  void reset_peak() override { counters_.reset_peak(); }

 private:
  // The smallest free block of at least `need` bytes, taken out of the free set.
  Block* best_fit(size_t need) {
    auto it = free_.lower_bound({need, nullptr});
    if (it == free_.end()) return nullptr;
    Block* b = it->second;
    free_.erase(it);
    return b;
  }

  // Marks `b` used, splitting off its tail when that leaves a block worth keeping.
  void take(Block* b, size_t need) {
    if (b->size - need >= kLarge) {
      Block* rest = new Block{b->ptr + need, b->size - need, true, b, b->next};
      if (b->next) b->next->prev = rest;
      b->next = rest;
      b->size = need;
      free_.insert({rest->size, rest});
    }
    b->free = false;
    used_[b->ptr] = b;
    live_ += b->size;
    high_live_ = std::max(high_live_, live_);
  }

  // Merges a freed block with free neighbours; returns the merged block (others deleted).
  Block* coalesce(Block* b) {
    if (b->next && b->next->free) {
      free_.erase({b->next->size, b->next});
      absorb_next(b);
    }
    if (b->prev && b->prev->free) {
      b = b->prev;
      free_.erase({b->size, b});
      absorb_next(b);
    }
    return b;
  }

  // Extends `b` over the block after it, which is deleted.
  static void absorb_next(Block* b) {
    Block* n = b->next;
    b->size += n->size;
    b->next = n->next;
    if (n->next) n->next->prev = b;
    delete n;
  }

  // A new segment for a request of `need` bytes, after giving back free segments so that what is
  // held stays within the live high-water mark plus one segment.
  Block* map_segment(size_t need, size_t nbytes) {
    const size_t size = std::max(kSegment, round_up(need, kHugePage));
    const size_t budget = std::max(high_live_, live_ + need) + kSegment;
    if (reserved_ + size > budget) release_free_segments(reserved_ + size - budget);
    char* base = map_aligned(size);
    if (!base) {  // the cache may be what is missing
      release_free_segments(reserved_);
      base = map_aligned(size);
    }
    if (!base) SD_FAIL("CPU out of memory: allocating ", nbytes, " bytes failed (", counters_.snapshot().str(), ")");
    reserved_ += size;
    counters_.on_reserve(int64_t(size));
    return new Block{base, size, true, nullptr, nullptr};
  }

  // Gives wholly free segments back to the system, largest first, until `bytes` went back or none is left.
  void release_free_segments(size_t bytes) {
    size_t released = 0;
    for (auto it = free_.rbegin(); it != free_.rend() && released < bytes;) {
      Block* b = it->second;
      if (!b->whole_segment()) {
        ++it;
        continue;
      }
      it = std::make_reverse_iterator(free_.erase(std::next(it).base()));
      munmap(b->ptr, b->size);
      reserved_ -= b->size;
      released += b->size;
      counters_.on_release(int64_t(b->size));
      delete b;
    }
  }

  // `size` bytes (a multiple of 2 MiB) at a 2 MiB boundary, so transparent huge pages can back them.
  static char* map_aligned(size_t size) {
    void* raw = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    char* r = static_cast<char*>(raw);
    char* base = reinterpret_cast<char*>(round_up(reinterpret_cast<uintptr_t>(r), kHugePage));
    if (base > r) munmap(r, size_t(base - r));
    if (char* end = base + size; end < r + size + kHugePage) munmap(end, size_t(r + size + kHugePage - end));
    madvise(base, size, MADV_HUGEPAGE);  // advice only: without THP the pages are ordinary ones
    return base;
  }

  std::mutex mu_;
  std::set<std::pair<size_t, Block*>> free_;  // free blocks by size (then address of the record)
  std::unordered_map<char*, Block*> used_;    // handed-out large blocks by address
  size_t reserved_ = 0;                       // bytes in segments
  size_t live_ = 0;                           // bytes in used blocks
  size_t high_live_ = 0;                      // the most ever used at once
  size_t cache_limit_;                        // free bytes kept at most
  AllocCounters counters_;
};

size_t cache_limit_from_env() {
  if (const char* v = std::getenv("SD_CPU_CACHE_MB")) {
    char* end = nullptr;
    const long long mb = std::strtoll(v, &end, 10);
    if (end && *end == 0 && mb >= 0) return size_t(mb) * kMiB;
  }
  return kDefaultCacheLimit;
}

}  // namespace

Allocator& cpu_allocator() {
  static CpuAllocator a(cache_limit_from_env());
  return a;
}

std::unique_ptr<Allocator> make_cpu_allocator(size_t cache_limit_bytes) {
  return std::make_unique<CpuAllocator>(cache_limit_bytes);
}

}  // namespace sd
