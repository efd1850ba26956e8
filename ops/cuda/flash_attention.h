// Internal interface between attention.cu (host logic) and flash_attention.cu (kernels).
#pragma once
#include "ops/cuda/attention_params.cuh"

namespace sd::cuda {

bool flash_head_dim_compiled(int d);
void flash_forward(const AttnParams& p, DType dtype);
// Needs p.delta (f32 [B,H,Lq], filled here) and p.dq (f32 [B,H,Lq,D], zeroed) allocated.
void flash_backward(const AttnParams& p, DType dtype);
// out = the sum of `splits` f32 partials of n elements each ([splits][n]), in split order, in the
// element type (one split: the conversion of an accumulator).
void sum_splits(const float* parts, int splits, void* out, int64_t n, DType dtype);

}  // namespace sd::cuda
