// Memory layouts of 4-d image tensors [N, C, H, W] on the GPU: NCHW (contiguous) or
// channels-last (NHWC: the logical [N, C, H, W] is a permute of a contiguous [N, H, W, C]).
// The GPU image kernels keep a channels-last input channels-last, so a network run in that
// layout never pays a transpose between layers. Plain C++: the op wrappers use it too.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cuda {

// Strides of a dense channels-last [N, C, H, W].
inline Shape channels_last_strides(const Shape& s) {
  return {s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]};
}

// Whether t (4-d) addresses memory exactly like a dense channels-last tensor. Size-1 dims
// may carry any stride, as in Tensor::is_contiguous.
inline bool is_channels_last_dense(const Tensor& t) {
  if (t.dim() != 4) return false;
  const Shape want = channels_last_strides(t.shape());
  for (int64_t d = 0; d < 4; ++d)
    if (t.size(d) != 1 && t.stride(d) != want[size_t(d)]) return false;
  return true;
}

// The layout a GPU image op produces for input t: channels-last when t is a channels-last
// view (and not also plain contiguous, as happens with C == 1 or H = W = 1), NCHW otherwise.
inline bool prefers_channels_last(const Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && is_channels_last_dense(t);
}

// A new [N, C, H, W] tensor in the given layout.
inline Tensor empty_image(const Shape& shape, DType dtype, Device device, bool channels_last) {
  if (!channels_last) return empty(shape, dtype, device);
  Tensor base = empty({shape[0], shape[2], shape[3], shape[1]}, dtype, device);
  return as_strided(base, shape, channels_last_strides(shape), 0);
}

}  // namespace sd::cuda
