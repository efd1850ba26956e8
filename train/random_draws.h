// Every random number the trainer uses comes from the project's counter-based Philox generator,
// keyed so that a draw depends only on (seed, what it is for, which optimizer-step slot, which
// example) and never on thread order, on how many draws came before, or on the process count.
// That is what makes a resumed run equal a straight one bit for bit with no RNG state to save,
// and a global batch draw the same numbers whether one process or N processes run it.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::train {

// What a stream is for: each gets its own Philox key, so streams never overlap.
enum class DrawPurpose : uint32_t {
  Shuffle = 1,        // the data order of an epoch
  Noise = 2,          // epsilon of the forward process
  Timestep = 3,       // the training timestep
  OffsetNoise = 4,    // --noise_offset
  Perturbation = 5,   // --input_perturbation
  Posterior = 6,      // the VAE posterior sample
  CaptionDropout = 7, // --caption_dropout
  Transform = 8,      // random crop and flip (train/image_transforms.h takes it as its index base)
  LoraInit = 9,       // LoRA A initialisation
  TemplateChoice = 10,  // textual inversion: which prompt template captions an example
  ClassImages = 11,     // DreamBooth: the noise of generated class images
};

// The Philox key of (seed, purpose, a, b): a 64-bit mix, so nearby inputs give unrelated keys.
uint64_t draw_key(uint64_t seed, DrawPurpose purpose, uint64_t a = 0, uint64_t b = 0);

// N(0, 1) values of `shape` in float32 on the CPU from stream draw_key(...) at offset 0.
Tensor draw_normal(const Shape& shape, uint64_t key);
// One uniform number in [0, 1) with 53 random bits from stream `key`.
double draw_uniform(uint64_t key);

}  // namespace sd::train
