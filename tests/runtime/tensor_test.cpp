#include <cstring>
#include <memory>
#include <random>

#include <gtest/gtest.h>

#include "ops/view.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/tensor.h"
#include "tests/test_util.h"

namespace sd {

TEST(Tensor, FactoriesShapesAndStrides) {
  Tensor t = zeros({2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.size(-1), 4);
  for (double v : t.to_vector()) EXPECT_EQ(v, 0.0);
  Tensor f = full({3}, 2.5, DType::BF16);
  EXPECT_EQ(f.to_vector(), (std::vector<double>{2.5, 2.5, 2.5}));
  Tensor a = arange(5, DType::I64);
  EXPECT_EQ(a.to_vector(), (std::vector<double>{0, 1, 2, 3, 4}));
  EXPECT_THROW(empty({-1, 2}), Error);
}

TEST(Tensor, EveryDtypeConvertsThroughCopy) {
  std::vector<double> v = {-3, -1, 0, 1, 2, 7};
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I32, DType::I64}) {
    Tensor t = from_vector(v, {2, 3}, dt);
    EXPECT_EQ(t.dtype(), dt);
    EXPECT_EQ(t.to_vector(), v) << dtype_name(dt);
  }
  Tensor u = from_vector({0, 1, 200, 255}, {4}, DType::U8);
  EXPECT_EQ(u.to_vector(), (std::vector<double>{0, 1, 200, 255}));
  Tensor b = from_vector({0, 2, -1, 0}, {4}, DType::Bool);
  EXPECT_EQ(b.to_vector(), (std::vector<double>{0, 1, 1, 0}));
}

TEST(Tensor, ViewsShareStorageWithoutCopies) {
  Tensor t = from_vector({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor tt = transpose(t, 0, 1);
  EXPECT_EQ(tt.shape(), (Shape{3, 2}));
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.storage().get(), t.storage().get());
  EXPECT_EQ(tt.to_vector(), (std::vector<double>{0, 3, 1, 4, 2, 5}));
  Tensor s = slice(t, 1, 1, 3);
  EXPECT_EQ(s.to_vector(), (std::vector<double>{1, 2, 4, 5}));
  Tensor n = narrow(t, 0, 1, 1);
  EXPECT_EQ(n.to_vector(), (std::vector<double>{3, 4, 5}));
  Tensor e = expand(from_vector({7, 8}, {2, 1}), {2, 3});
  EXPECT_EQ(e.strides()[1], 0);
  EXPECT_EQ(e.to_vector(), (std::vector<double>{7, 7, 7, 8, 8, 8}));
  Tensor r = reshape(t, {3, -1});
  EXPECT_EQ(r.shape(), (Shape{3, 2}));
  EXPECT_EQ(r.storage().get(), t.storage().get());
  Tensor rc = reshape(tt, {6});  // needs a copy: transposed
  EXPECT_EQ(rc.to_vector(), (std::vector<double>{0, 3, 1, 4, 2, 5}));
  Tensor p = permute(zeros({2, 3, 4}), {2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(p.strides(), (Shape{1, 12, 4}));
  Tensor sl = select(t, 1, -1);
  EXPECT_EQ(sl.to_vector(), (std::vector<double>{2, 5}));
  Tensor step = slice(arange(10), 0, 1, 10, 3);
  EXPECT_EQ(step.to_vector(), (std::vector<double>{1, 4, 7}));
}

TEST(Tensor, ContiguousAndDtypeConversion) {
  Tensor t = transpose(from_vector({0, 1, 2, 3, 4, 5}, {2, 3}), 0, 1);
  Tensor c = contiguous(t);
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.to_vector(), t.to_vector());
  Tensor h = to(t, DType::F16);
  EXPECT_EQ(h.dtype(), DType::F16);
  EXPECT_EQ(h.to_vector(), t.to_vector());
  EXPECT_TRUE(h.is_contiguous());
}

TEST(Tensor, BadViewsAndShapesRaise) {
  Tensor t = zeros({2, 3});
  EXPECT_THROW(reshape(t, {4, 2}), Error);
  EXPECT_THROW(expand(t, {2, 4}), Error);
  EXPECT_THROW(squeeze(t, 0), Error);
  EXPECT_THROW(as_strided(t, {4, 4}, {4, 1}, 0), Error);  // outside storage
  EXPECT_THROW(transpose(t, 0, 2), Error);
  try {
    reshape(t, {5});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(5)"), std::string::npos) << e.what();
  }
}

TEST(Tensor, CopyBroadcastsAndConverts) {
  Tensor dst = zeros({2, 3}, DType::BF16);
  copy_(dst, from_vector({1, 2, 3}, {3}, DType::F64));
  EXPECT_EQ(dst.to_vector(), (std::vector<double>{1, 2, 3, 1, 2, 3}));
  Tensor strided = transpose(zeros({3, 2}), 0, 1);
  copy_(strided, from_vector({1, 2, 3, 4, 5, 6}, {2, 3}));
  EXPECT_EQ(strided.to_vector(), (std::vector<double>{1, 2, 3, 4, 5, 6}));
}

TEST(Tensor, AxpyAccumulatesInDestinationDtype) {
  Tensor d = from_vector({1, 2, 3}, {3}, DType::F16);
  axpy_(d, from_vector({10, 10, 10}, {3}), 0.5);
  EXPECT_EQ(d.to_vector(), (std::vector<double>{6, 7, 8}));
}

TEST(Allocator, CpuStatisticsTrackCurrentAndPeak) {
  Allocator& a = cpu_allocator();
  a.reset_peak();
  const int64_t before = a.stats().current_bytes;
  {
    Tensor t = empty({1 << 20});  // 4 MiB
    EXPECT_EQ(a.stats().current_bytes - before, int64_t(4) << 20);
  }
  EXPECT_EQ(a.stats().current_bytes, before);
  EXPECT_GE(a.stats().peak_bytes - before, int64_t(4) << 20);
  void* p = a.allocate(100);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  a.deallocate(p, 100);
}

// Blocks of 1 MiB and more are pieces of cached segments: a freed block serves the next request of
// any size it can hold (split off, merged back on free) without the system, so a step's tensors reuse
// the previous step's memory instead of faulting in fresh pages.
TEST(Allocator, CpuLargeBlocksComeFromCachedSegmentsSplitAndMerged) {
  constexpr size_t MiB = size_t(1) << 20;
  std::unique_ptr<Allocator> a = make_cpu_allocator(size_t(1) << 40);
  void* p = a->allocate(3 * MiB);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 4096, 0u);
  EXPECT_EQ(a->stats().system_allocs, 1);
  const int64_t segment = a->stats().reserved_bytes;
  EXPECT_GE(segment, int64_t(64 * MiB));
  a->deallocate(p, 3 * MiB);
  EXPECT_EQ(a->stats().reserved_bytes, segment);  // kept
  void* q = a->allocate(3 * MiB - 1000);          // the same block again
  EXPECT_EQ(q, p);
  void* r = a->allocate(8 * MiB);  // split off the same segment, after q
  EXPECT_EQ(static_cast<char*>(r), static_cast<char*>(q) + 3 * MiB);
  EXPECT_EQ(a->stats().system_allocs, 1);
  a->deallocate(q, 3 * MiB - 1000);
  a->deallocate(r, 8 * MiB);
  void* whole = a->allocate(size_t(segment));  // both pieces merged back into the whole segment
  EXPECT_EQ(whole, p);
  EXPECT_EQ(a->stats().system_allocs, 1);
  a->deallocate(whole, size_t(segment));
  a->empty_cache();
  EXPECT_EQ(a->stats().reserved_bytes, 0);
  EXPECT_EQ(a->stats().current_bytes, 0);
}

// Before mapping a new segment, wholly free ones go back until what is held fits in the most ever
// used at once plus one 64 MiB segment; free bytes above the cache limit go back on free.
TEST(Allocator, CpuHoldsNoMoreThanItsHighWaterMarkPlusASegment) {
  constexpr size_t MiB = size_t(1) << 20;
  std::unique_ptr<Allocator> a = make_cpu_allocator(size_t(1) << 40);
  a->deallocate(a->allocate(70 * MiB), 70 * MiB);  // a 70 MiB segment, cached
  EXPECT_EQ(a->stats().reserved_bytes, int64_t(70 * MiB));
  void* p = a->allocate(80 * MiB);  // 70 + 80 held would exceed 80 + 64: the free 70 goes back
  EXPECT_EQ(a->stats().reserved_bytes, int64_t(80 * MiB));
  EXPECT_EQ(a->stats().system_allocs, 2);
  a->deallocate(p, 80 * MiB);

  std::unique_ptr<Allocator> none = make_cpu_allocator(0);  // nothing kept
  none->deallocate(none->allocate(5 * MiB), 5 * MiB);
  EXPECT_EQ(none->stats().reserved_bytes, 0);
}

// Many live blocks of mixed sizes, freed in a shuffled order: each keeps its own bytes (no overlap
// after splits and merges), and everything merges back into segments that empty_cache releases.
TEST(Allocator, CpuBlocksNeverOverlapAcrossSplitsAndMerges) {
  constexpr size_t MiB = size_t(1) << 20;
  std::unique_ptr<Allocator> a = make_cpu_allocator(size_t(1) << 40);
  std::mt19937 rng(7);
  struct Live {
    unsigned char* p;
    size_t n;
    unsigned char tag;
  };
  std::vector<Live> live;
  auto check_and_free = [&](size_t i) {
    const Live& l = live[i];
    for (size_t k = 0; k < l.n; k += 4093) ASSERT_EQ(l.p[k], l.tag) << "block " << i << " byte " << k;
    ASSERT_EQ(l.p[l.n - 1], l.tag);
    a->deallocate(l.p, l.n);
    live.erase(live.begin() + int64_t(i));
  };
  for (int round = 0; round < 400; ++round) {
    if (live.size() > 12 || (!live.empty() && rng() % 3 == 0)) {
      check_and_free(rng() % live.size());
    } else {
      const size_t n = MiB + rng() % (40 * MiB);
      auto* p = static_cast<unsigned char*>(a->allocate(n));
      const auto tag = static_cast<unsigned char>(round);
      std::memset(p, tag, n);
      live.push_back({p, n, tag});
    }
  }
  while (!live.empty()) check_and_free(live.size() - 1);
  EXPECT_EQ(a->stats().current_bytes, 0);
  a->empty_cache();
  EXPECT_EQ(a->stats().reserved_bytes, 0);
  int x = 0;
  EXPECT_THROW(a->deallocate(&x, 2 * MiB), Error);  // not one of its blocks
}

TEST(Device, ParsingAndCudaAvailability) {
  EXPECT_TRUE(parse_device("cpu").is_cpu());
  EXPECT_EQ(parse_device("cuda:1").index, 1);
  EXPECT_THROW(parse_device("tpu"), Error);
  if (!test::has_cuda()) {
    EXPECT_THROW(zeros({2}, DType::F32, Device::cuda(0)), Error);
  }
}

}  // namespace sd
