// CUDA scaled-dot-product attention: a flash-attention kernel (f16/bf16, head dims up to
// 160, tensor-core mma.sync, online softmax, no score matrix in memory, only the row
// log-sum-exp saved) and a plain fallback for other dtypes and head dims.
#pragma once
#include <array>

#include "runtime/tensor.h"

namespace sd::cuda {

// q [B,H,Lq,D], k [B,H,Lk,D], v [B,H,Lk,Dv] (last dim contiguous is fastest; anything works).
// mask: undefined, or a floating (additive) / Bool (true = attend) tensor already expanded
// to [B,H,Lq,Lk] (stride 0 on broadcast dims). Returns {out [B,H,Lq,Dv], lse [B,H,Lq] f32
// (f64 for f64)}, lse = +inf on rows where every key is masked (their output is 0).
std::array<Tensor, 2> attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                                        double scale, bool causal);
// {dq, dk, dv}.
std::array<Tensor, 3> attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                         const Tensor& out, const Tensor& lse, const Tensor& mask, double scale,
                                         bool causal);
// True when the tensor-core kernel handles these inputs (else the plain kernel runs).
bool flash_attention_supported(const Tensor& q, const Tensor& k, const Tensor& v);

// Deterministic flash backward: the same bits on every run (no float atomics). dQ is computed
// by query blocks that walk every key tile (recomputing the scores) instead of being added in
// by each key block, and where a key tile's query range is split (few keys: cross-attention)
// each split keeps its dK/dV partial apart and the partials are summed in order. Off by default (the
// measured kernels); SD_ATTN_DETERMINISTIC=1 turns it on at start.
void set_attention_deterministic(bool on);
bool attention_deterministic();

// Flash forward version 3 (two 16-row tiles per warp for head dims <= 64, one barrier per key
// tile): the same bits as today's forward, faster or not as measured on a GPU. Off by default;
// SD_FLASH_V3=1 turns it on at start.
void set_flash_forward_v3(bool on);
bool flash_forward_v3();

}  // namespace sd::cuda
