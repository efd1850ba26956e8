// sd_train: Stable Diffusion training (full fine-tune and LoRA for SD1.x, SD2.x, SDXL) with the flags
// of diffusers' training scripts. See --help; the library part is train/ (train/trainer.h).
//
// Several processes: `mpirun -np N sd_train ...` (one process per GPU; train/distributed.h). Every
// process parses the same command line; rank 0 alone writes files and prints progress. An error in any
// process prints "sd_train: rank R: error: ..." and ends the whole job (MPI_Abort), never a hang.
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "runtime/error.h"
#include "train/distributed.h"
#include "train/train_args.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
  std::unique_ptr<sd::train::MpiSession> mpi;
  try {
    mpi = std::make_unique<sd::train::MpiSession>(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sd_train: %s\n", e.what());
    return 2;
  }
  const sd::train::ProcessInfo proc = mpi->info();
  const bool several = proc.world_size > 1;
  // Only rank 0 talks on stdout (--help, and anything printed there); errors go to stderr from any rank.
  if (proc.rank != 0 && std::freopen("/dev/null", "w", stdout) == nullptr) return 2;

  std::optional<sd::train::TrainArgs> args;
  try {
    args = sd::train::parse_train_args(argc, argv);
    if (!args) return 0;  // --help
  } catch (const std::exception& e) {
    // Every process parses the same command line and fails alike: rank 0 says it once.
    if (proc.rank == 0) std::fprintf(stderr, "sd_train: %s\n", e.what());
    return 2;
  }
  sd::train::install_stop_handlers();
  try {
    sd::train::DataParallelOptions dp;
    dp.bucket_mb = args->bucket_mb;
    dp.zero_stage = int(args->zero_stage);
    dp.overlap = !args->sync_grad_reduce;
    return sd::train::run_training(*args, sd::train::make_gradient_sync(proc, dp));
  } catch (const std::exception& e) {
    if (several) {
      // The other processes may be waiting for this one in a collective: end them all, naming the rank.
      std::fprintf(stderr, "sd_train: rank %d: error: %s\n", proc.rank, e.what());
      std::fflush(stderr);
      sd::train::abort_all_processes(1);
    }
    std::fprintf(stderr, "%ssd_train: error: %s\n", isatty(fileno(stderr)) ? "\n" : "", e.what());
    return 1;
  }
}
