// What a run reports while it trains:
//   output_dir/logs/train.jsonl   one JSON line per optimizer step (step, epoch, loss, lr, grad norm,
//                                 loss scale, skipped): deterministic, so a resumed run's log equals a
//                                 straight run's line for line (the file is cut back to its length at the
//                                 checkpoint on resume)
//   TensorBoard events            the same scalars under --logging_dir (--report_to tensorboard)
//   a progress bar on stderr      step/total, smoothed loss, lr, it/s, ETA, peak memory
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/device.h"
#include "train/tensorboard.h"

namespace sd::train {

struct StepRecord {
  int64_t step = 0;   // 1-based optimizer step
  int64_t epoch = 0;
  double loss = 0;    // mean over the step's micro-batches (and processes)
  double lr = 0;
  double grad_norm = 0;
  double loss_scale = 1;
  bool skipped = false;
  int64_t examples = 0;  // examples that trained in this step (all processes)
};

class JsonlLog {
 public:
  // Opens path for appending after cutting it to `keep_bytes` (resume) or to 0 (a fresh run).
  JsonlLog(const std::string& path, int64_t keep_bytes);
  void write(const nlohmann::json& line);
  int64_t bytes() const { return bytes_; }
  const std::string& path() const { return path_; }
  ~JsonlLog();

 private:
  std::string path_;
  FILE* f_ = nullptr;
  int64_t bytes_ = 0;
};

nlohmann::json step_json(const StepRecord& r);

class ProgressBar {
 public:
  ProgressBar(int64_t total, int64_t start, bool enabled);
  void update(const StepRecord& r, int64_t peak_bytes);
  void message(const std::string& text);  // a line above the bar (clears it first)
  void finish();

 private:
  int64_t total_, start_;
  bool enabled_, tty_;
  double smoothed_ = 0;
  bool have_smoothed_ = false;
  std::chrono::steady_clock::time_point t0_;
  bool drawn_ = false;
};

// The peak memory of the run so far: the device allocator's peak on a GPU, else the process's peak
// resident set (bytes).
int64_t peak_memory_bytes(Device device);

}  // namespace sd::train
