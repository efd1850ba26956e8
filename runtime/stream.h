// CUDA streams and events as plain C++ handles. Every op launches on the calling thread's
// current stream of the device (the legacy default stream unless a StreamGuard says
// otherwise), so independent work (data upload, all-reduce) can overlap with compute.
#pragma once
#include <cstddef>

namespace sd {

class Stream {
 public:
  Stream() = default;  // the default stream
  static Stream create(int device);  // a new non-blocking stream (raises without CUDA)
  void* handle() const { return handle_; }  // cudaStream_t
  int device() const { return device_; }
  void synchronize() const;
  bool is_default() const { return handle_ == nullptr; }

 private:
  void* handle_ = nullptr;
  int device_ = 0;
};

// The calling thread's current stream (the default stream unless a guard is active).
Stream current_stream();
void* current_stream_handle();

// Makes `s` current for this thread while alive.
class StreamGuard {
 public:
  explicit StreamGuard(const Stream& s);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  Stream prev_;
};

class Event {
 public:
  Event();  // creates a CUDA event (raises without CUDA)
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(const Stream& s = current_stream());
  void wait(const Stream& s = current_stream()) const;  // s waits until this event completes
  void synchronize() const;
  float elapsed_ms(const Event& later) const;

 private:
  void* handle_ = nullptr;
};

// Page-locked host memory for asynchronous host<->device copies (data loading).
void* pinned_alloc(size_t nbytes);
void pinned_free(void* p);

}  // namespace sd
