// The CUDA runtime surface (runtime/cuda_api.h) over the CUDA runtime API.
#include <cstdio>
#include <sstream>

#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/current_stream.cuh"
#include "runtime/cuda_api.h"

namespace sd::cudart {

namespace {
// Queried once: a machine without a driver answers cudaErrorNoDevice or
// cudaErrorInsufficientDriver, which means "no GPU here", not a failure.
struct Probe {
  int count = 0;
  std::string reason;
  Probe() {
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
      reason = std::string("no usable CUDA device: ") + cudaGetErrorString(e);
      count = 0;
      cudaGetLastError();  // clear the sticky error so later probes start clean
    } else if (count == 0) {
      reason = "the CUDA driver reports no devices";
    }
  }
};
const Probe& probe() {
  static Probe p;
  return p;
}
}  // namespace

bool built_with_cuda() { return true; }
int device_count() { return probe().count; }
std::string unavailable_reason() { return probe().reason; }

std::string device_summary(int device) {
  cudaDeviceProp p{};
  SD_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  std::ostringstream os;
  os << "cuda:" << device << " " << p.name << ", sm_" << p.major << p.minor << ", "
     << (p.totalGlobalMem >> 20) << " MiB, " << p.multiProcessorCount << " SMs, L2 "
     << (p.l2CacheSize >> 20) << " MiB, smem/block optin " << (p.sharedMemPerBlockOptin >> 10)
     << " KiB, driver " << driver << ", runtime " << runtime;
  return os.str();
}

void set_device(int device) { SD_CUDA_CHECK(cudaSetDevice(device)); }

void* device_malloc(size_t nbytes, int device) {
  SD_CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, nbytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    SD_FAIL("CUDA out of memory: cudaMalloc of ", nbytes, " bytes on cuda:", device,
            " failed (", cudaGetErrorString(e), ")");
  }
  return p;
}

void device_free(void* p, int device) {
  if (!p) return;
  cudaSetDevice(device);
  cudaFree(p);  // never throws: called from destructors
}

// Copies are ordered on the current stream (kernels before them have finished writing);
// host-side ones wait for completion because the host buffer may be pageable or reused.
void memcpy_h2d(void* dst, const void* src, size_t n) {
  SD_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, cuda::stream()));
  SD_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
}
void memcpy_d2h(void* dst, const void* src, size_t n) {
  SD_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, cuda::stream()));
  SD_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
}
void memcpy_d2d(void* dst, const void* src, size_t n) {
  SD_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, cuda::stream()));
}
void memset_device(void* dst, int value, size_t n) { SD_CUDA_CHECK(cudaMemsetAsync(dst, value, n, cuda::stream())); }
void synchronize() {
  if (device_count() > 0) SD_CUDA_CHECK(cudaDeviceSynchronize());
}
size_t device_free_memory(int device) {
  SD_CUDA_CHECK(cudaSetDevice(device));
  size_t free_b = 0, total = 0;
  SD_CUDA_CHECK(cudaMemGetInfo(&free_b, &total));
  return free_b;
}

}  // namespace sd::cudart
