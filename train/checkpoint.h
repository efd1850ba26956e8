// Resumable training checkpoints: output_dir/checkpoint-<step>/ with
//   state.json             where the run is (steps, epoch and batch position, loss scaler, EMA step,
//                          the log's length), a fingerprint of what must match to resume (method,
//                          model, trainable tensors, batch size, accumulation, seed, data, precision),
//                          and the list of tensor files below with the name prefix of each
//   optimizer.safetensors  the AdamW moments of every trainable tensor
//   the f32 masters as people load them, as diffusers' checkpoints hold them:
//     unet/ (+ text_encoder/ ...)    full fine-tunes: diffusers component folders (config.json copied)
//     unet_ema/                      the EMA weights (--use_ema), the same way
//     pytorch_lora_weights.safetensors   LoRA runs: the adapters, in the diffusers/PEFT layout
// A checkpoint is written into checkpoint-<step>.tmp-<pid> and renamed into place when complete, so
// a crash or a full disk mid-save never leaves a directory that loads as a good checkpoint, and the
// previous checkpoints are untouched until the new one is complete (only then does
// --checkpoints_total_limit remove the oldest).
// Multi-process runs: rank 0 writes; the tensors are always complete (ZeRO-1 shards are gathered
// first), so a checkpoint resumes on any process count with the same global batch (train_batch_size x
// processes), each process reading it whole and keeping its part.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/tensor.h"

namespace sd::train {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// One safetensors file of a checkpoint. Reading it back gives `prefix` + each key (so "unet/..." files
// hold diffusers' own names, "unet.down_blocks..." in the trainer's namespace).
struct CheckpointFile {
  std::string path;     // relative to the checkpoint folder, e.g. "unet/diffusion_pytorch_model.safetensors"
  std::string prefix;   // e.g. "unet."; "ema.unet." for unet_ema/
  NamedTensors tensors;                       // keys without the prefix
  std::map<std::string, std::string> metadata;
  // Written by a callback instead (e.g. the LoRA file with its own metadata); `tensors` is then unused.
  std::function<void(const std::string& path)> write;
  std::string copy_config_from;  // a config.json to copy next to the file ("" = none)
};

struct CheckpointContents {
  nlohmann::json state;              // free-form run state (the trainer's), plus "fingerprint"
  std::vector<CheckpointFile> files;
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
  NamedTensors tensors;  // every file's tensors, keys with their file's prefix
};
// Reads a checkpoint; sd::Error naming the file for anything missing or damaged.
LoadedCheckpoint load_checkpoint(const std::string& dir);

// Compares the saved fingerprint with this run's; sd::Error listing every difference with a sentence
// ("a checkpoint of another method or model" and friends).
void check_fingerprint(const nlohmann::json& saved, const nlohmann::json& current, const std::string& dir);

}  // namespace sd::train
