// CPU convolution kernels: im2col + GEMM. Inputs may have any strides and any floating
// dtype; f16/bf16 compute in f32 and round the result, f64 computes in double.
#pragma once
#include <cstdint>

#include "runtime/tensor.h"

namespace sd::cpu {

// Stride and zero padding of a 2-d convolution (groups = 1, dilation = 1).
struct Conv2dGeom {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
};

// x [N, C, H, W], weight [O, C, kh, kw], bias [O] or undefined -> [N, O, Ho, Wo] in x's dtype.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dGeom& g);
// dL/dx [N, C, H, W] from grad_out [N, O, Ho, Wo]: col2im of W^T @ dY, per image.
Tensor conv2d_grad_input(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape, const Conv2dGeom& g);
// dL/dW [O, C, kh, kw]: sum over images of dY @ col(x)^T.
Tensor conv2d_grad_weight(const Tensor& grad_out, const Tensor& x, const Shape& w_shape, const Conv2dGeom& g);

}  // namespace sd::cpu
