// CUDA 2-d convolution (groups = 1, dilation = 1), the GPU side of ops/conv.h.
//
// Two backends compute the same thing. cuDNN (where the build found it): NCHW or
// channels-last tensors are handed over as they are, f16/bf16 run on tensor cores with f32
// accumulation, f32 without TF32 unless cuda::set_allow_tf32(true); the algorithm is picked
// once per problem (shape, dtype, layout, direction) and cached. im2col + cuBLAS: the
// fallback without cuDNN, and for f64, for problems cuDNN has no algorithm for, and for
// tensors past cuDNN's 32-bit index range; it processes the batch in chunks so that the
// column buffer stays within a budget.
//
// Layout: the output (and grad_input) is channels-last when the input x is a channels-last
// view (see runtime/image_layout.h), NCHW otherwise; inputs in any other strides are copied to
// NCHW first. The weight may be a contiguous [O, C, kh, kw] or, for channels-last problems, a
// channels-last one ([O, kh, kw, C] in memory, what cuDNN's NHWC kernels read: a model run
// channels-last stores its 3x3 weights so, and no call transposes them); grad_weight is
// contiguous, or channels-last when asked (the layout of a channels-last weight).
#pragma once
#include <cstdint>

#include "ops/cpu/conv.h"
#include "runtime/tensor.h"

namespace sd::cuda {

// x [N, C, H, W], weight [O, C, kh, kw], bias [O] or undefined -> [N, O, Ho, Wo].
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const cpu::Conv2dGeom& g);
// dL/dx [N, C, H, W] (channels-last when `channels_last`, the layout x had) from grad_out.
Tensor conv2d_grad_input(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape,
                         const cpu::Conv2dGeom& g, bool channels_last);
// dL/dW [O, C, kh, kw], contiguous, or channels-last when `weight_channels_last` and x is.
Tensor conv2d_grad_weight(const Tensor& grad_out, const Tensor& x, const Shape& w_shape, const cpu::Conv2dGeom& g,
                          bool weight_channels_last = false);

// ---- backend controls (tests and benchmarks) ----
enum class ConvBackend {
  Auto,        // cuDNN's legacy API where available (and it has an algorithm for the problem), else im2col
  Im2col,      // always im2col + cuBLAS
  CudnnGraph,  // cuDNN's graph API (bias fused into the forward where an engine takes it), else as Auto;
               // not the default until measured on a GPU
};
// The initial backend is Im2col when the environment sets SD_CONV_IM2COL=1, CudnnGraph with
// SD_CONV_GRAPH=1, else Auto.
void set_conv_backend(ConvBackend b);
ConvBackend conv_backend();
// Convolutions (any direction) the graph-API backend ran since the process started (tests).
int64_t cudnn_graph_runs();
// Whether this build links cuDNN and a cuDNN handle could be created.
bool cudnn_available();
// true: pick cuDNN algorithms by timing them (cudnnFind*Ex) instead of the heuristics
// (cudnnGet*_v7). On by default (each shape is timed once, then cached); SD_CUDNN_BENCHMARK=0
// starts with the heuristics instead. Clears the algorithm cache.
void set_conv_benchmark(bool on);
void clear_conv_algo_cache();
// Bytes the im2col column buffer may take (the batch is chunked to fit, at least one image
// per chunk); 0 restores the default (256 MiB).
void set_conv_im2col_budget(int64_t bytes);

}  // namespace sd::cuda
