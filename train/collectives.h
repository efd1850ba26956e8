// What the gradient sync (train/distributed.cpp) needs from MPI or NCCL. Buffers are contiguous f32
// tensors of one device. "slot" names an operation in flight (one per bucket). On a GPU everything is
// ordered with the calling thread's current (compute) stream: start_* waits for the work queued on it
// so far, wait() makes it wait for the result, the blocking ones run in its order.
//
// MPI's implementation lives with the gradient sync; NCCL's (train/cuda/nccl_collectives.cpp) belongs
// to the CUDA backend library, so the CPU parts of sd link without NCCL.
#pragma once
#include <memory>
#include <string>

#include "runtime/tensor.h"

namespace sd::train {

class Collectives {
 public:
  virtual ~Collectives() = default;
  // buf = sum over processes of buf.
  virtual void start_allreduce(int slot, const Tensor& buf) = 0;
  // out = piece `rank` of (sum over processes of buf); buf.numel() = world * out.numel().
  virtual void start_reduce_scatter(int slot, const Tensor& buf, const Tensor& out) = 0;
  virtual void wait(int slot) = 0;
  // Lets started operations advance (MPI on the CPU moves data only inside MPI calls).
  virtual void poll() {}
  // In place: piece r of buf (world equal pieces) comes from process r.
  virtual void allgather(const Tensor& buf) = 0;
  // In place: rank 0's buf everywhere.
  virtual void broadcast(const Tensor& buf) = 0;
  virtual std::string name() const = 0;
};

// NCCL among the MPI processes on GPU `device` (the unique id travels over MPI from rank 0), with
// `slots` operations in flight; null when this build's CUDA backend has no NCCL (or no CUDA).
std::unique_ptr<Collectives> make_nccl_collectives(int rank, int world, int device, int slots);

}  // namespace sd::train
