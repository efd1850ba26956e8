// Internal interface between the conv2d entry points (conv.cu) and its backends (conv_cudnn.cu,
// conv_cudnn_graph.cu, conv_im2col.cu). Plain C++. Every tensor handed to a backend is dense in
// the problem's layout (NCHW or channels-last, see runtime/image_layout.h); the weight is a
// contiguous [O, C, kh, kw], or for the cuDNN backends of a channels-last problem possibly a
// channels-last one; all on one GPU with one floating dtype.
#pragma once
#include <cstdint>

#include "ops/cpu/conv.h"
#include "runtime/tensor.h"

namespace sd::cuda::conv_detail {

struct Problem {
  int64_t N, C, H, W;  // input [N, C, H, W]
  int64_t O, kh, kw;   // weight [O, C, kh, kw]
  int64_t Ho, Wo;      // output [N, O, Ho, Wo]
  cpu::Conv2dGeom g;
  bool channels_last;  // layout of input, output and their gradients
  DType dtype;
  int device;
  int64_t K() const { return C * kh * kw; }
  int64_t L() const { return Ho * Wo; }
};

Problem make_problem(const Shape& x, const Shape& w, const cpu::Conv2dGeom& g, bool channels_last, DType dtype,
                     int device);

// cuDNN backend: false when it cannot run this problem (not built in, no handle, f64, past
// 32-bit sizes, no acceptable algorithm); the caller then uses im2col. Outputs are
// preallocated in the problem's layout; grad_weight's `dw` is a contiguous [O, C, kh, kw].
bool cudnn_usable();
bool cudnn_forward(const Problem& p, const Tensor& x, const Tensor& w, const Tensor& y);
bool cudnn_grad_input(const Problem& p, const Tensor& dy, const Tensor& w, const Tensor& dx);
bool cudnn_grad_weight(const Problem& p, const Tensor& dy, const Tensor& x, const Tensor& dw);
void cudnn_set_benchmark(bool on);
bool cudnn_benchmark();  // choices measured (default) rather than taken from the heuristics
void cudnn_clear_cache();

// cuDNN graph-API backend (conv_cudnn_graph.cu, ConvBackend::CudnnGraph): false when it has no
// engine for the problem (the caller then takes the legacy API). The forward adds the bias in
// the same graph where an engine takes that (bias_fused), else leaves it to the caller. The
// filter (w, or dw for the filter gradient) may be contiguous or channels-last.
bool graph_forward(const Problem& p, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                   bool& bias_fused);
bool graph_grad_input(const Problem& p, const Tensor& dy, const Tensor& w, const Tensor& dx);
bool graph_grad_weight(const Problem& p, const Tensor& dy, const Tensor& x, const Tensor& dw);
void graph_clear_cache();
int64_t graph_runs();  // graph-API executions since the process started (tests)

// im2col + cuBLAS backend: always runs. Same contracts.
void im2col_forward(const Problem& p, const Tensor& x, const Tensor& w, const Tensor& y);
void im2col_grad_input(const Problem& p, const Tensor& dy, const Tensor& w, const Tensor& dx);
void im2col_grad_weight(const Problem& p, const Tensor& dy, const Tensor& x, const Tensor& dw);
void im2col_set_budget(int64_t bytes);

// y [N, O, Ho, Wo] (dense in the problem's layout) += bias [O] broadcast.
void add_bias(const Problem& p, const Tensor& y, const Tensor& bias);

}  // namespace sd::cuda::conv_detail
