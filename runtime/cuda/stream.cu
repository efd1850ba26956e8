#include "runtime/cuda/cuda_check.h"
#include "runtime/stream.h"

namespace sd {

namespace {
thread_local Stream t_current;
}

Stream Stream::create(int device) {
  SD_CUDA_CHECK(cudaSetDevice(device));
  cudaStream_t s = nullptr;
  SD_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  Stream out;
  out.handle_ = s;
  out.device_ = device;
  return out;  // streams live for the process (few are made: compute, copy, comm)
}

void Stream::synchronize() const { SD_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(handle_))); }

Stream current_stream() { return t_current; }
void* current_stream_handle() { return t_current.handle(); }

StreamGuard::StreamGuard(const Stream& s) : prev_(t_current) { t_current = s; }
StreamGuard::~StreamGuard() { t_current = prev_; }

Event::Event() {
  cudaEvent_t e = nullptr;
  SD_CUDA_CHECK(cudaEventCreate(&e));
  handle_ = e;
}
Event::~Event() {
  if (handle_) cudaEventDestroy(static_cast<cudaEvent_t>(handle_));
}
void Event::record(const Stream& s) {
  SD_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(handle_), static_cast<cudaStream_t>(s.handle())));
}
void Event::wait(const Stream& s) const {
  SD_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(s.handle()), static_cast<cudaEvent_t>(handle_), 0));
}
void Event::synchronize() const { SD_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(handle_))); }
float Event::elapsed_ms(const Event& later) const {
  float ms = 0;
  SD_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(handle_), static_cast<cudaEvent_t>(later.handle_)));
  return ms;
}

void* pinned_alloc(size_t nbytes) {
  void* p = nullptr;
  SD_CUDA_CHECK(cudaHostAlloc(&p, nbytes, cudaHostAllocDefault));
  return p;
}
void pinned_free(void* p) {
  if (p) cudaFreeHost(p);
}

}  // namespace sd
