// Memory layouts of 4-d image tensors [N, C, H, W]: NCHW (contiguous) or channels-last (NHWC:
// the logical [N, C, H, W] is a permute of a contiguous [N, H, W, C]). A model run in
// channels-last (UNet / AutoencoderKL set_channels_last) converts its input once and every
// image op keeps the layout it is given, so no transpose runs between layers. The counter
// below makes that checkable: copy_ counts each copy that turns one layout into the other.
#pragma once
#include <cstdint>
#include <initializer_list>

#include "runtime/tensor.h"

namespace sd {

// Strides of a dense channels-last [N, C, H, W].
inline Shape channels_last_strides(const Shape& s) { return {s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]}; }

// Whether t (4-d) addresses memory exactly like a dense channels-last tensor. Size-1 dims may
// carry any stride, as in Tensor::is_contiguous.
inline bool is_channels_last_dense(const Tensor& t) {
  if (t.dim() != 4) return false;
  const Shape want = channels_last_strides(t.shape());
  for (int64_t d = 0; d < 4; ++d)
    if (t.size(d) != 1 && t.stride(d) != want[size_t(d)]) return false;
  return true;
}

// Channels-last and not also plain contiguous (as happens with C == 1 or H = W = 1): the
// tensors whose layout an image op has to carry over to its output.
inline bool prefers_channels_last(const Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && is_channels_last_dense(t);
}

// A new [N, C, H, W] tensor in the given layout.
inline Tensor empty_image(const Shape& shape, DType dtype, Device device, bool channels_last) {
  if (!channels_last || shape.size() != 4) return empty(shape, dtype, device);
  Tensor base = empty({shape[0], shape[2], shape[3], shape[1]}, dtype, device);
  return as_strided(base, shape, channels_last_strides(shape), 0);
}

// t's values in a new channels-last tensor (t itself when it is one already); no autograd.
inline Tensor channels_last_raw(const Tensor& t) {
  if (t.dim() != 4 || is_channels_last_dense(t)) return t;
  Tensor out = empty_image(t.shape(), t.dtype(), t.device(), true);
  copy_(out, t);
  return out;
}

// The layout of an elementwise result of shape `out_shape`: channels-last when every operand of
// that full shape (broadcast operands, such as a [N, C, 1, 1] bias, do not count) is dense
// channels-last and one of them is not also contiguous. Any NCHW operand keeps the result NCHW,
// so models run in NCHW never change layout through these rules.
inline bool channels_last_result(const Shape& out_shape, std::initializer_list<const Tensor*> operands) {
  if (out_shape.size() != 4) return false;
  bool any = false;
  for (const Tensor* t : operands) {
    if (!t || !t->defined() || t->shape() != out_shape) continue;
    if (!is_channels_last_dense(*t)) return false;
    any = any || !t->is_contiguous();
  }
  return any;
}

// t [N, C, H, W] seen in memory order [N, H, W, C] (a view): a channels-last tensor becomes a
// contiguous one, so elementwise loops over several channels-last operands run flat.
inline Tensor nhwc_order_view(const Tensor& t) {
  return as_strided(t, {t.size(0), t.size(2), t.size(3), t.size(1)}, {t.stride(0), t.stride(2), t.stride(3), t.stride(1)},
                    t.offset());
}

// t as an elementwise loop walks it: in memory order [N, H, W, C] when the result is channels-last
// (see channels_last_result), as it is otherwise.
inline Tensor memory_order(const Tensor& t, bool channels_last) { return channels_last ? nhwc_order_view(t) : t; }

// Copies that turned an NCHW image into a channels-last one or back (same-shape 4-d copy_
// between the two dense layouts), since the process started. Tests and benchmarks read it
// around a forward pass; it is never reset.
int64_t layout_conversions();

}  // namespace sd
