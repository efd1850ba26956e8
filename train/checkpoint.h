// Resumable training checkpoints: output_dir/checkpoint-<step>/ with
//   state.json             where the run is (steps, epoch and batch position, loss scaler, EMA step,
//                          the log's length) and a fingerprint of what must match to resume (method,
//                          model, trainable tensors, batch size, accumulation, seed, data, precision)
//   optimizer.safetensors  the f32 master of every trainable tensor and its AdamW moments
//   ema.safetensors        the EMA averages (--use_ema)
//   pytorch_lora_weights.safetensors   LoRA runs: the adapters so far, loadable as they are
// A checkpoint is written into checkpoint-<step>.tmp-<pid> and renamed into place when complete, so
// a crash or a full disk mid-save never leaves a directory that loads as a good checkpoint, and the
// previous checkpoints are untouched until the new one is complete (only then does
// --checkpoints_total_limit remove the oldest).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/tensor.h"

namespace sd::train {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

struct CheckpointContents {
  nlohmann::json state;        // free-form run state (the trainer's), plus "fingerprint"
  NamedTensors optimizer;      // optimizer.safetensors
  NamedTensors ema;            // ema.safetensors (empty: none)
  // Extra files written by a callback into the temporary directory (e.g. the LoRA file).
  std::function<void(const std::string& dir)> write_extra;
};

// Writes checkpoint-<step> below output_dir atomically (see above) and returns its path. sd::Error
// naming the file that could not be written; then nothing named checkpoint-<step> exists and older
// checkpoints are intact.
std::string save_checkpoint(const std::string& output_dir, int64_t step, const CheckpointContents& contents);

// After a successful save: removes the oldest checkpoint-* so that at most `limit` remain.
void prune_checkpoints(const std::string& output_dir, int64_t limit);

// "latest" -> the highest output_dir/checkpoint-N (nullopt when there is none); a path -> that path
// (sd::Error when it is not a checkpoint directory).
std::optional<std::string> find_checkpoint(const std::string& output_dir, const std::string& which);

struct LoadedCheckpoint {
  std::string dir;
  nlohmann::json state;
  NamedTensors optimizer, ema;
};
// Reads a checkpoint; sd::Error naming the file for anything missing or damaged.
LoadedCheckpoint load_checkpoint(const std::string& dir);

// Compares the saved fingerprint with this run's; sd::Error listing every difference with a sentence
// ("a checkpoint of another method or model" and friends).
void check_fingerprint(const nlohmann::json& saved, const nlohmann::json& current, const std::string& dir);

}  // namespace sd::train
