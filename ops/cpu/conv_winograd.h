// 3x3 stride-1 convolutions on the CPU by Winograd's minimal filtering (Lavin & Gray, "Fast
// Algorithms for Convolutional Neural Networks", 2015). F(2x2, 3x3): each 2x2 block of outputs
// costs 16 multiplies per (input, output) channel pair instead of 36, as 16 GEMMs
// [O, C] x [C, tiles]; F(4x4, 3x3): 36 GEMMs for 4x4 blocks, 4x fewer multiplies than direct.
// These are the convolutions that dominate a UNet step and a VAE decode.
#pragma once
#include <cstdint>

#include "ops/cpu/conv.h"
#include "runtime/half.h"

namespace sd::cpu {

// Whether conv2d_winograd handles a convolution of x [N, C, H, W] by w [O, C, kh, kw]: a 3x3
// kernel at stride 1 with padding <= 1, and enough channels and output positions that the
// per-call weight transform (16/9 of the weight's size, redone each call since weights may
// change between calls: there is no version counter to key a cache on) is paid back by the
// smaller GEMMs.
bool winograd_applies(const Shape& x, const Shape& w, const Conv2dGeom& g);

// Output tile size: F(2x2, 3x3) or F(4x4, 3x3) (fewer products, larger transformed kernels).
enum class WinogradTile { F2, F4 };
// The tile conv2d uses for an input of shape x.
WinogradTile winograd_tile_for(const Shape& x, const Conv2dGeom& g);

// out [N, O, Ho, Wo] = conv2d(x, w) + bias for dense f32 x [N, C, H, W] and w [O, C, 3, 3];
// bias [O] or null. Tiles are processed a block of tile rows at a time; tile_rows_per_block = 0
// sizes the blocks to a memory budget (tests set it to exercise several blocks on small images).
void conv2d_winograd(const float* x, const float* w, const float* bias, const Shape& x_shape, int64_t O,
                     const Conv2dGeom& g, float* out, WinogradTile tile, int64_t tile_rows_per_block = 0);
// The same for bf16 x and w: transforms in f32, transformed tiles and kernels stored as bf16 for
// the bf16 GEMM (bf16_gemm_available() must hold); the output stays f32.
void conv2d_winograd_bf16(const BFloat16* x, const BFloat16* w, const float* bias, const Shape& x_shape, int64_t O,
                          const Conv2dGeom& g, float* out, WinogradTile tile, int64_t tile_rows_per_block = 0);

}  // namespace sd::cpu
