// CUDA kernel of the sinusoidal timestep embedding (ops/timestep.h has the definition).
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace sd::cuda {

// t: contiguous f32 [N] on a GPU; freq: the dim/2 frequencies, computed on the host by the
// wrapper (the same f32 table as the CPU path). Returns [N, dim] f32 on t's GPU:
// row n = [sin(scale * (t_n * freq_j)) | cos(...)] (cos first when flip_sin_to_cos), and a
// zero last column when dim is odd.
Tensor timestep_embedding(const Tensor& t, const std::vector<float>& freq, int64_t dim, bool flip_sin_to_cos,
                          float scale);

}  // namespace sd::cuda
