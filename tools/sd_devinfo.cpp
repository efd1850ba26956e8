// sd_devinfo: what this build can use. Lists CUDA devices and checks a host -> device ->
// host round trip of a random tensor on each, so a fresh GPU machine is known to work.
#include <cstdio>
#include <cstring>
#include <string>

#include "runtime/allocator.h"
#include "runtime/cuda_api.h"
#include "runtime/tensor.h"
#include "train/flags.h"

int main(int argc, char** argv) {
  // No flags of its own; the common parser still gives it the --help layout of every tool.
  sd::train::FlagParser p("sd_devinfo",
                          "Prints the CUDA devices this build of sd can use and runs a host->device->host round trip "
                          "of 64 MiB on each. Exit status 0 when every check passed (or there is no GPU and the build "
                          "is CPU-only), 1 when a check failed.");
  try {
    if (!p.parse(argc, argv)) return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sd_devinfo: %s\n", e.what());
    return 2;
  }
  std::printf("sd built %s CUDA\n", sd::cudart::built_with_cuda() ? "with" : "without");
  const int n = sd::cudart::device_count();
  if (n == 0) {
    std::printf("no GPU: %s\n", sd::cudart::unavailable_reason().c_str());
    return 0;
  }
  int failures = 0;
  for (int d = 0; d < n; ++d) {
    std::printf("%s\n", sd::cudart::device_summary(d).c_str());
    const int64_t count = 16 << 20;  // 64 MiB of f32
    std::vector<double> values(count);
    for (int64_t i = 0; i < count; ++i) values[i] = double((i * 2654435761u) % 1000003) - 500001.0;
    sd::Tensor host = sd::from_vector(values, {count}, sd::DType::F32);
    sd::Tensor dev = sd::copy_to(host, sd::DType::F32, sd::Device::cuda(d));
    sd::Tensor dev16 = sd::copy_to(dev, sd::DType::BF16, dev.device());  // exercise the device kernel
    sd::Tensor back = sd::copy_to(dev, sd::DType::F32, sd::Device::cpu());
    sd::Tensor back16 = sd::copy_to(dev16, sd::DType::BF16, sd::Device::cpu());
    sd::Tensor host16 = sd::copy_to(host, sd::DType::BF16, sd::Device::cpu());
    bool ok = std::memcmp(back.data_ptr(), host.data_ptr(), host.nbytes()) == 0;
    bool ok16 = std::memcmp(back16.data_ptr(), host16.data_ptr(), host16.nbytes()) == 0;
    std::printf("  round trip f32 %s, device f32->bf16 matches host conversion %s; allocator: %s\n",
                ok ? "OK" : "MISMATCH", ok16 ? "OK" : "MISMATCH",
                sd::cuda_allocator(d).stats().str().c_str());
    failures += !ok + !ok16;
  }
  return failures ? 1 : 0;
}
