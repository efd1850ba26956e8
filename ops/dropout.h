// Inverted dropout driven by the counter-based Philox stream, so the mask is a pure
// function of (seed, block offset, element index): backward regenerates it instead of
// keeping a mask tensor alive, and the CPU and GPU draw the same mask.
#pragma once
#include "runtime/rng.h"
#include "runtime/tensor.h"

namespace sd {

// Identity (returns x) when !training or p == 0. Otherwise element i of x (row-major
// order) is kept when the Philox uniform of word i%4 of block offset + i/4 (the mapping of
// fill_uniform_) is >= p, and kept values are scaled by 1/(1-p). Reserves
// uniform_blocks(numel) blocks of `gen`. p must lie in [0, 1).
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen = default_generator());

}  // namespace sd
