// sd_train's loop: data -> latents and conditioning -> loss -> backward -> (accumulate) -> gradient
// sync -> clip -> AdamW -> EMA, with fp16 loss scaling, checkpoints, validation, logs and the final
// save. Everything random is keyed by (seed, step, example slot) (train/random_draws.h), and the data
// position, optimizer, scaler and EMA state are checkpointed, so --resume_from_checkpoint continues a
// run bit for bit: the same remaining batches in the same order with the same noise.
//
// Processes (mpirun; train/distributed.h): every process runs this loop on its shard of each global
// batch (train/dataset.h EpochSampler); gradients meet through the GradientSync (reduce(), overlapped
// with the last micro-batch's backward) before the update; every decision that ends or skips a step is
// agreed by all processes; only rank 0 writes files.
#pragma once
#include <memory>
#include <string>

#include "train/optimizer.h"
#include "train/train_args.h"

namespace sd::train {

// SIGINT / SIGTERM ask the loop to stop after the current step (it saves a checkpoint and returns);
// a second signal ends the process at once.
void install_stop_handlers();
bool stop_requested();
void request_stop();  // tests

// Runs the whole training described by `args`; returns the process exit status (0 on success and after
// a requested stop). Errors are sd::Error with a sentence for the user.
int run_training(const TrainArgs& args, std::shared_ptr<GradientSync> sync = nullptr);

}  // namespace sd::train
