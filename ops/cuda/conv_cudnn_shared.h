// What conv2d's two cuDNN backends share (the legacy API in conv_cudnn.cu, the graph API in
// conv_cudnn_graph.cu): the handle, the f32 numerics rule and the workspace bound. Only for
// builds with cuDNN (SD_WITH_CUDNN).
#pragma once
#include <cudnn.h>

#include <cstddef>

#include "ops/cuda/conv_impl.h"

namespace sd::cuda::conv_detail {

// Largest workspace an algorithm or engine may ask for; faster ones that want more are skipped.
constexpr size_t kMaxWorkspace = size_t(1) << 30;

// One handle per device, created on first use; null where creation failed (reported once: conv2d
// then uses im2col). Callers set the current stream on it before each call.
cudnnHandle_t cudnn_handle(int device);

// f32 stays exact f32 (FMA kernels, no down-converted inputs) unless TF32 is allowed, as for
// matmul; f16/bf16 use tensor cores, accumulating in f32.
bool strict_fp32(const Problem& p);

}  // namespace sd::cuda::conv_detail
