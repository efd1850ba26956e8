// The NCCL transport of the gradient sync (train/collectives.h). Part of the CUDA backend library
// (sd_cuda) with nccl.h and mpi.h, so the CPU parts of sd link without NCCL. Without NCCL (or MPI) the
// factory answers null and the sync moves GPU buffers through MPI and host memory.
#include "train/collectives.h"

#include "runtime/error.h"
#include "train/distributed.h"

#if defined(SD_WITH_NCCL) && defined(SD_WITH_MPI)
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <nccl.h>

#include <vector>

#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda_api.h"
#include "runtime/stream.h"
#endif

namespace sd::train {

#if defined(SD_WITH_NCCL) && defined(SD_WITH_MPI)

bool built_with_nccl() { return true; }

namespace {

// NCCL on a communication stream of its own. The unique id comes from rank 0 over MPI.
class NcclCollectives final : public Collectives {
 public:
  NcclCollectives(int rank, int world, int device, int slots) : rank_(rank), world_(world), device_(device) {
    ncclUniqueId id;
    if (rank == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    MPI_Bcast(&id, int(sizeof id), MPI_BYTE, 0, MPI_COMM_WORLD);
    cudart::set_device(device);
    check(ncclCommInitRank(&comm_, world, id, rank), "ncclCommInitRank");
    stream_ = Stream::create(device);
    for (int s = 0; s < slots; ++s) {
      ready_.push_back(std::make_unique<Event>());
      done_.push_back(std::make_unique<Event>());
    }
  }
  ~NcclCollectives() override {
    if (comm_) ncclCommDestroy(comm_);
  }

  void start_allreduce(int slot, const Tensor& buf) override {
    enter(slot, buf);
    check(ncclAllReduce(buf.data_ptr(), buf.data_ptr(), size_t(buf.numel()), ncclFloat, ncclSum, comm_, comm_stream()),
          "ncclAllReduce");
    done_[size_t(slot)]->record(stream_);
  }
  void start_reduce_scatter(int slot, const Tensor& buf, const Tensor& out) override {
    SD_CHECK(buf.numel() == out.numel() * world_, "reduce_scatter: ", buf.numel(), " elements into pieces of ", out.numel());
    enter(slot, buf);
    check(ncclReduceScatter(buf.data_ptr(), out.data_ptr(), size_t(out.numel()), ncclFloat, ncclSum, comm_,
                            comm_stream()),
          "ncclReduceScatter");
    done_[size_t(slot)]->record(stream_);
  }
  void wait(int slot) override {
    done_.at(size_t(slot))->wait(current_stream());
    check_async();
  }
  void allgather(const Tensor& buf) override {
    check_buffer(buf);
    const size_t piece = size_t(buf.numel() / world_);
    float* base = static_cast<float*>(buf.data_ptr());
    check(ncclAllGather(base + size_t(rank_) * piece, base, piece, ncclFloat, comm_, compute_stream()), "ncclAllGather");
  }
  void broadcast(const Tensor& buf) override {
    check_buffer(buf);
    check(ncclBroadcast(buf.data_ptr(), buf.data_ptr(), size_t(buf.numel()), ncclFloat, 0, comm_, compute_stream()),
          "ncclBroadcast");
  }
  std::string name() const override {
    return "NCCL " + std::to_string(NCCL_MAJOR) + "." + std::to_string(NCCL_MINOR) + "." + std::to_string(NCCL_PATCH);
  }

 private:
  static cudaStream_t compute_stream() { return static_cast<cudaStream_t>(current_stream_handle()); }
  cudaStream_t comm_stream() const { return static_cast<cudaStream_t>(stream_.handle()); }
  void check_buffer(const Tensor& t) const {
    SD_CHECK(t.is_cuda() && t.device().index == device_ && t.dtype() == DType::F32 && t.is_contiguous(),
             "NCCL collectives take contiguous f32 buffers on cuda:", device_, ", got ", t.str());
  }
  // The communication stream starts after what the compute stream queued so far (the bucket copy).
  void enter(int slot, const Tensor& buf) {
    check_buffer(buf);
    ready_.at(size_t(slot))->record(current_stream());
    ready_[size_t(slot)]->wait(stream_);
  }
  void check(ncclResult_t r, const char* what) const {
    if (r == ncclSuccess || r == ncclInProgress) return;
    SD_FAIL("NCCL error in ", what, " on rank ", rank_, " (cuda:", device_, "): ", ncclGetErrorString(r),
            r == ncclSystemError || r == ncclRemoteError ? " (a peer process or the network failed)" : "");
  }
  void check_async() const {
    ncclResult_t r = ncclSuccess;
    check(ncclCommGetAsyncError(comm_, &r), "ncclCommGetAsyncError");
    check(r, "an asynchronous operation");
  }
  int rank_, world_, device_;
  ncclComm_t comm_ = nullptr;
  Stream stream_;
  std::vector<std::unique_ptr<Event>> ready_, done_;
};


}  // namespace

std::unique_ptr<Collectives> make_nccl_collectives(int rank, int world, int device, int slots) {
  return std::make_unique<NcclCollectives>(rank, world, device, slots);
}

#else

bool built_with_nccl() { return false; }
std::unique_ptr<Collectives> make_nccl_collectives(int, int, int, int) { return nullptr; }

#endif

}  // namespace sd::train
