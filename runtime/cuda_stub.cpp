// The CUDA runtime surface in the CPU-only backend (sd_nocuda, linked instead of sd_cuda): no devices,
// every device call is an error.
#include "runtime/cuda_api.h"
#include "runtime/error.h"
#include "runtime/stream.h"

namespace sd::cudart {

namespace {
[[noreturn]] void no_cuda(const char* what) {
  SD_FAIL(what, ": this build of sd has no CUDA backend (configure with -DSD_CUDA=ON where nvcc exists)");
}
}  // namespace

bool built_with_cuda() { return false; }
int device_count() { return 0; }
std::string unavailable_reason() { return "CPU-only build (no CUDA backend compiled in)"; }
std::string device_summary(int) { no_cuda("device_summary"); }
void set_device(int) { no_cuda("set_device"); }
void* device_malloc(size_t, int) { no_cuda("device_malloc"); }
void device_free(void*, int) { no_cuda("device_free"); }
void memcpy_h2d(void*, const void*, size_t) { no_cuda("memcpy_h2d"); }
void memcpy_d2h(void*, const void*, size_t) { no_cuda("memcpy_d2h"); }
void memcpy_d2d(void*, const void*, size_t) { no_cuda("memcpy_d2d"); }
void memset_device(void*, int, size_t) { no_cuda("memset_device"); }
void synchronize() {}
size_t device_free_memory(int) { no_cuda("device_free_memory"); }

}  // namespace sd::cudart

namespace sd {
// Without CUDA there is only the (no-op) default stream.
Stream Stream::create(int) { SD_FAIL("Stream::create: this build of sd has no CUDA backend"); }
void Stream::synchronize() const {}
Stream current_stream() { return Stream(); }
void* current_stream_handle() { return nullptr; }
StreamGuard::StreamGuard(const Stream& s) : prev_(s) {}
StreamGuard::~StreamGuard() {}
Event::Event() { SD_FAIL("Event: this build of sd has no CUDA backend"); }
Event::~Event() {}
void Event::record(const Stream&) {}
void Event::wait(const Stream&) const {}
void Event::synchronize() const {}
float Event::elapsed_ms(const Event&) const { return 0.0f; }
void* pinned_alloc(size_t) { SD_FAIL("pinned_alloc: this build of sd has no CUDA backend"); }
void pinned_free(void*) {}
}  // namespace sd
