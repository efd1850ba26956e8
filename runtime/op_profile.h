// A per-op wall-clock profile on any device, switched on by the environment: SD_PROFILE=1 makes
// every named range (the same ranges NVTX shows in Nsight: ops such as "conv2d", model blocks by
// their path) record its time, and prints a table to stderr at exit, sorted by exclusive time
// (the range's time minus the ranges opened inside it). Block paths are merged over their
// indices ("unet.down_blocks.#.resnets.#"), so a block's exclusive time is the glue between its
// ops. On a GPU the times are host-side: set CUDA_LAUNCH_BLOCKING=1 to make them device times.
#pragma once
#include <string>

namespace sd {

// Whether SD_PROFILE is set (read once).
bool op_profile_enabled();

// The table row a range is counted under: path segments that are indices become '#'
// ("unet.down_blocks.1.resnets.0" -> "unet.down_blocks.#.resnets.#"); digits inside a name
// ("conv2d") stay.
std::string profile_row_name(const char* name);

// Opens a profiled range for its lifetime when profiling is on; costs one branch otherwise.
class ProfileRange {
 public:
  explicit ProfileRange(const char* name) {
    if (op_profile_enabled()) push(name);
  }
  ~ProfileRange() {
    if (active_) pop();
  }
  ProfileRange(const ProfileRange&) = delete;
  ProfileRange& operator=(const ProfileRange&) = delete;

 private:
  void push(const char* name);
  void pop();
  bool active_ = false;
};

}  // namespace sd
