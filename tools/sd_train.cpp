// sd_train: Stable Diffusion training (full fine-tune and LoRA for SD1.x, SD2.x, SDXL) with the flags
// of diffusers' training scripts. See --help; the library part is train/ (train/trainer.h).
#include <unistd.h>

#include <cstdio>

#include "runtime/error.h"
#include "train/train_args.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
  std::optional<sd::train::TrainArgs> args;
  try {
    args = sd::train::parse_train_args(argc, argv);
    if (!args) return 0;  // --help
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sd_train: %s\n", e.what());
    return 2;
  }
  sd::train::install_stop_handlers();
  try {
    return sd::train::run_training(*args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%ssd_train: error: %s\n", isatty(fileno(stderr)) ? "\n" : "", e.what());
    return 1;
  }
}
