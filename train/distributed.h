// Multi-process training: `mpirun -np N sd_train ...` (one process per GPU; `mpirun -H a:8,b:8` across
// machines). MPI starts the processes and carries the control traffic (scalars, flags, the NCCL id);
// the gradients travel through NCCL between GPUs and through MPI between CPU processes, so all of it
// runs and is tested on a machine without GPUs. Data parallelism on these engines, nothing home-made
// underneath.
//
// Gradients (MpiGradientSync, behind the trainer's GradientSync):
//  - Buckets: the trainable tensors in reverse order (the order backward finishes them), cut into
//    flat f32 buffers of at most --bucket_mb (one tensor larger than that gets a bucket of its own),
//    each padded to a multiple of the world size.
//  - Overlap: during the backward of the step's last micro-batch, each tensor's grad-ready hook
//    copies its gradient into its bucket; a full bucket starts its reduction at once (MPI_Iallreduce
//    on the CPU; ncclAllReduce on a communication stream that waits on an event of the compute
//    stream on a GPU) while backward goes on. Buckets start in one order on every process (first
//    step: bucket index; later: the order the buckets filled in rank 0's first step, broadcast), as
//    collectives require. Earlier micro-batches accumulate locally (DDP's no_sync).
//  - reduce(): starts what is left, waits for all, then gradient = (sum over processes) x (1 / world
//    size), in f32: the sum in the order MPI or NCCL takes for that buffer size and process count (two
//    processes: a + b, the same bits in either order), the scaling exact for a power-of-two world. A
//    tensor whose gradient changes after its bucket started (one used in two recomputed checkpoint
//    regions) has its bucket reduced again after the wait, on every process alike.
//  - --zero_stage 1: reduce-scatter instead of all-reduce: process r receives piece r of every
//    bucket, which is the part of the optimizer state it owns (AdamWOptimizer::shard); it updates
//    that part and all-gathers the updated f32 values (the 16-bit copies are rounded from them).
//    Checkpoints hold complete tensors (gathered to rank 0), so a resume reads them on any world size
//    and each process slices its own part: re-sharding is the slice.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "train/optimizer.h"

namespace sd::train {

struct ProcessInfo {
  int rank = 0, world_size = 1;
  int local_rank = 0;  // among the processes of this machine: picks the GPU
};

// True when this build has MPI (and so can take part in an mpirun job).
bool built_with_mpi();
// True when this build moves CUDA gradients with NCCL.
bool built_with_nccl();
// The size of the job a launcher (Open MPI's mpirun, MPICH/Intel MPI's hydra, MVAPICH) started this
// process in, from its environment; 0 without a launcher.
int launcher_world_size();

// MPI for the life of main(): MPI_Init_thread when a launcher started this process (and the build
// has MPI), MPI_Finalize at the end. Without a launcher nothing is initialised and the process is
// rank 0 of 1. `mpirun -np 1` takes the MPI (or NCCL) path with sums over one process: the same
// numbers, and a one-GPU test of that path. sd::Error when a launcher started several processes and
// the build has no MPI (each would train alone and overwrite the others' files).
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  const ProcessInfo& info() const { return info_; }
  bool active() const { return active_; }

 private:
  ProcessInfo info_;
  bool active_ = false;
};

// Ends every process of the job with `code` (MPI_Abort: mpirun kills the others) when MPI is running
// with more than one process; returns (doing nothing) otherwise.
void abort_all_processes(int code);

// ---- bucket planning (pure; unit-tested) ---------------------------------------------------------

struct BucketPlan {
  struct Place {
    int bucket = 0;
    int64_t offset = 0;  // in the bucket, in elements
    int64_t numel = 0;
  };
  struct Bucket {
    std::vector<size_t> params;  // parameter indices in bucket order
    int64_t numel = 0;           // elements used
    int64_t padded = 0;          // numel rounded up to a multiple of the world size
    int64_t piece = 0;           // padded / world: what each process owns of it under ZeRO-1
    int64_t shard_offset = 0;    // where this bucket's piece starts in a process's shard
  };
  std::vector<Place> params;  // by parameter index
  std::vector<Bucket> buckets;
  int64_t shard_numel = 0;    // one process's shard: the sum of the pieces
};

// Parameters (by element count) in reverse order, in buckets of at most cap_elements elements (a
// larger parameter alone in its own); every bucket padded to a multiple of `world`.
BucketPlan plan_buckets(const std::vector<int64_t>& numels, int64_t cap_elements, int world);
// ZeRO-1: the elements [begin, end) of parameter i that process `rank` owns: the intersection of the
// parameter with piece `rank` of its bucket (empty: begin == end).
AdamWOptimizer::Range owned_range(const BucketPlan& plan, size_t i, int rank);
// Where that owned range sits in the process's shard buffer (its first element).
int64_t shard_position(const BucketPlan& plan, size_t i, int rank);

// ---- the gradient sync -------------------------------------------------------------------------

struct DataParallelOptions {
  double bucket_mb = 25;  // --bucket_mb
  int zero_stage = 0;     // --zero_stage
  bool overlap = true;    // false: every bucket starts after backward (--sync_grad_reduce)
};

// The GradientSync of this process (info: MpiSession::info()): the single-process one without MPI
// running; otherwise MPI/NCCL data parallelism as above.
std::shared_ptr<GradientSync> make_gradient_sync(const ProcessInfo& info, const DataParallelOptions& o);

}  // namespace sd::train
