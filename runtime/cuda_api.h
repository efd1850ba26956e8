// The CUDA runtime surface the rest of the project uses, as a plain C++ header (no CUDA
// includes), so CPU-only translation units can call it. In a build without CUDA these
// functions exist too: device_count() answers 0 and the others raise sd::Error.
#pragma once
#include <cstddef>
#include <string>

namespace sd::cudart {

bool built_with_cuda();
// Number of GPUs the driver reports; 0 when there is no driver or no GPU (never throws).
int device_count();
// One line per device: name, compute capability, memory, SMs, L2.
std::string device_summary(int device);
// Reason device_count() returned 0, for skip messages ("no CUDA driver", "CPU-only build").
std::string unavailable_reason();

void set_device(int device);
void* device_malloc(size_t nbytes, int device);  // raw cudaMalloc; the caching allocator wraps it
void device_free(void* p, int device);
void memcpy_h2d(void* dst, const void* src, size_t nbytes);
void memcpy_d2h(void* dst, const void* src, size_t nbytes);
void memcpy_d2d(void* dst, const void* src, size_t nbytes);
void memset_device(void* dst, int value, size_t nbytes);
void synchronize();
size_t device_free_memory(int device);

}  // namespace sd::cudart
