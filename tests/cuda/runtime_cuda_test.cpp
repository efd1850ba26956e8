// Runtime on the GPU, each against the CPU: Philox fills bit for bit, strided copies and
// dtype conversion, fills, accumulation, and the caching allocator. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cstring>

#include "ops/view.h"
#include "runtime/allocator.h"
#include "runtime/rng.h"
#include "runtime/stream.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "tests/test_util.h"

namespace sd {
namespace {

Tensor to_cpu(const Tensor& t) { return copy_to(t, t.dtype(), Device::cpu()); }

bool same_bytes(const Tensor& a, const Tensor& b) {
  Tensor ca = to_cpu(contiguous_raw(a)), cb = to_cpu(contiguous_raw(b));
  return ca.nbytes() == cb.nbytes() && std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

TEST(CudaRuntime, PhiloxFillsAreBitIdenticalToTheCpu) {
  SD_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::F64}) {
    for (int64_t n : {int64_t(1), int64_t(7), int64_t(1000003)}) {
      Tensor c = empty({n}, dt), g = empty({n}, dt, Device::cuda());
      fill_normal_(c, 1234, 77, 0.5, 2.0);
      fill_normal_(g, 1234, 77, 0.5, 2.0);
      EXPECT_TRUE(same_bytes(c, g)) << "normal " << dtype_name(dt) << " n=" << n;
      fill_uniform_(c, 99, 5, -1.0, 1.0);
      fill_uniform_(g, 99, 5, -1.0, 1.0);
      EXPECT_TRUE(same_bytes(c, g)) << "uniform " << dtype_name(dt) << " n=" << n;
    }
  }
}

TEST(CudaRuntime, StridedCopiesAndConversionsMatchTheCpu) {
  SD_REQUIRE_CUDA();
  Tensor host = test::random_tensor({5, 6, 7}, DType::F32, 3, -100, 100);
  Tensor dev = copy_to(host, DType::F32, Device::cuda());
  EXPECT_TRUE(same_bytes(host, dev));
  for (DType dt : {DType::F16, DType::BF16, DType::F64, DType::I32}) {
    Tensor on_gpu = copy_to(permute(dev, {2, 0, 1}), dt, dev.device());  // strided source, device kernel
    Tensor on_cpu = copy_to(permute(host, {2, 0, 1}), dt, Device::cpu());
    EXPECT_TRUE(same_bytes(on_gpu, on_cpu)) << dtype_name(dt);
  }
  // Device -> host into a strided destination, and a broadcast source.
  Tensor dst = transpose(zeros({7, 5}), 0, 1);
  copy_(dst, slice(select(dev, 1, 2), 0, 0, 5));
  EXPECT_TRUE(test::all_close(dst, contiguous(slice(select(host, 1, 2), 0, 0, 5)), 0, 0));
  Tensor bcast = zeros({4, 3}, DType::F32, Device::cuda());
  copy_(bcast, from_vector({1, 2, 3}, {3}));
  EXPECT_EQ(bcast.to_vector(), (std::vector<double>{1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3}));
}

TEST(CudaRuntime, FillAndAxpyMatchTheCpu) {
  SD_REQUIRE_CUDA();
  Tensor g = full({1000}, 0.25, DType::BF16, Device::cuda());
  EXPECT_TRUE(same_bytes(g, full({1000}, 0.25, DType::BF16)));
  Tensor a = test::random_tensor({300}, DType::F32, 4), b = test::random_tensor({300}, DType::F32, 5);
  Tensor ga = copy_to(a, DType::F32, Device::cuda()), gb = copy_to(b, DType::F32, Device::cuda());
  axpy_(a, b, -0.5);
  axpy_(ga, gb, -0.5);
  EXPECT_LT(test::relative_error(ga, a), 1e-6);
}

TEST(CudaRuntime, CachingAllocatorReusesBlocksAndReportsOutOfMemory) {
  SD_REQUIRE_CUDA();
  Allocator& a = cuda_allocator(0);
  { Tensor t = empty({1 << 20}, DType::F32, Device::cuda()); }
  const int64_t system_before = a.stats().system_allocs;
  for (int i = 0; i < 10; ++i) Tensor t = empty({1 << 20}, DType::F32, Device::cuda());
  EXPECT_EQ(a.stats().system_allocs, system_before) << "steady-state allocations must come from the cache";
  EXPECT_GE(a.stats().reserved_bytes, int64_t(4) << 20);
  try {
    Tensor huge = empty({int64_t(1) << 50}, DType::F32, Device::cuda());
    FAIL() << "expected an out-of-memory error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of memory"), std::string::npos) << e.what();
  }
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved_bytes, a.stats().current_bytes);
}

TEST(CudaRuntime, OpsRunOnTheCurrentStreamAndEventsOrderThem) {
  SD_REQUIRE_CUDA();
  Tensor a = test::random_tensor({256, 320}, DType::F32, 6), b = test::random_tensor({320, 64}, DType::F32, 7);
  Tensor ga = copy_to(a, DType::F32, Device::cuda()), gb = copy_to(b, DType::F32, Device::cuda());
  Tensor expected = matmul(ga, gb) * 2.0 + 1.0;  // default stream
  Stream s = Stream::create(0);
  Event start, done;
  Tensor on_stream;
  {
    StreamGuard guard(s);
    EXPECT_EQ(current_stream_handle(), s.handle());
    start.record();
    on_stream = matmul(ga, gb) * 2.0 + 1.0;
    done.record();
  }
  EXPECT_TRUE(current_stream().is_default());
  done.wait();  // the default stream waits for the side stream before reading its result
  EXPECT_EQ(on_stream.to_vector(), expected.to_vector());
  done.synchronize();
  EXPECT_GE(start.elapsed_ms(done), 0.0f);
  void* pinned = pinned_alloc(1 << 20);
  ASSERT_NE(pinned, nullptr);
  pinned_free(pinned);
}

}  // namespace
}  // namespace sd
