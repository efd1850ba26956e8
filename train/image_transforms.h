// Training images: decoding and the transforms of diffusers' training scripts, computed the way
// PIL and torchvision compute them so that the same file gives the same training tensor.
//
// diffusers (train_text_to_image.py, train_text_to_image_sdxl.py) does
//   Image.open(path).convert("RGB")                         -> decode_image_file / decode_image
//   transforms.Resize(resolution, interpolation)            -> resize_shorter_side (PIL resize)
//   CenterCrop(resolution) | RandomCrop(resolution)         -> center_crop_offsets / crop
//   RandomHorizontalFlip() if --random_flip                 -> hflip
//   ToTensor(), Normalize([0.5], [0.5])                     -> to_training_tensor
// transform_for_training runs the whole chain, with the random crop and flip drawn from
// (seed, index) so that the result never depends on threads or call order.
//
// Images are [H, W, 3] u8 RGB tensors on the CPU (row-major, channels last, as PIL stores them).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/tensor.h"

namespace sd::train {

// ---- decoding ----------------------------------------------------------------------------
// PNG (libpng), JPEG (libjpeg-turbo, as PIL), WebP (libwebp), GIF (giflib, first frame), BMP
// (stb_image): infer/image_decode.h; -> [H, W, 3] u8.
// As PIL's convert("RGB"): alpha is dropped (no compositing: the colour under alpha 0 stays),
// grayscale is replicated, palettes are expanded, 16-bit RGB(A) keeps the high byte and 16-bit
// grayscale PNGs are clipped to 255 (PIL's "I;16" -> "RGB"). Corrupt, truncated or empty data,
// animated WebP and images over PIL's decompression-bomb limit (178,956,970 pixels) raise
// sd::Error naming the file (or `name` for data in memory).
Tensor decode_image_file(const std::string& path);
Tensor decode_image(const void* data, size_t size, const std::string& name);

// ---- resizing ----------------------------------------------------------------------------
// PIL's resampling filters (Image.Resampling): the four that --image_interpolation_mode offers.
enum class Interpolation { Nearest, Bilinear, Bicubic, Lanczos };

// "nearest" | "bilinear" | "bicubic" | "lanczos" (as diffusers spells --image_interpolation_mode);
// anything else raises sd::Error listing the valid names.
Interpolation parse_interpolation(const std::string& name);
const char* interpolation_name(Interpolation interp);

// PIL's Image.resize(size=(out_w, out_h), resample) of a u8 image ([H, W, C], any C), bit for
// bit with Pillow 13: separable convolution, the filter support widened by the scale factor when
// downscaling (antialiasing), coefficients in 22-bit fixed point, each pass rounded and clipped to
// u8; horizontal pass first, except that when the height shrinks by more than twice as many
// pixels as the width the vertical pass goes first (new in Pillow 13; Pillow <= 12 gives other
// last bits for those sizes). Nearest is PIL's affine nearest-neighbour sampling.
Tensor resize_u8(const Tensor& hwc_u8, int64_t out_h, int64_t out_w, Interpolation interp);

// torchvision's Resize(int) rule: the shorter side becomes `resolution`, the longer one
// int(resolution * long / short). Returns {out_h, out_w}.
std::array<int64_t, 2> shorter_side_size(int64_t h, int64_t w, int64_t resolution);
// resize_u8 to shorter_side_size (the input itself when the size does not change).
Tensor resize_shorter_side(const Tensor& hwc_u8, int64_t resolution, Interpolation interp);

// ---- cropping, flipping, normalising -----------------------------------------------------
// torchvision's CenterCrop offsets: {int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))}
// with Python's round (half to even). Requires th <= h and tw <= w.
std::array<int64_t, 2> center_crop_offsets(int64_t h, int64_t w, int64_t th, int64_t tw);
// Rows [top, top + th), columns [left, left + tw) of an [H, W, C] image (must lie inside it).
Tensor crop(const Tensor& hwc, int64_t top, int64_t left, int64_t th, int64_t tw);
// Mirrors the columns of an [H, W, C] image.
Tensor hflip(const Tensor& hwc);
// [H, W, 3] u8 -> [3, H, W] f32: (float(x) / 255 - 0.5) / 0.5, each step rounded in float32
// as ToTensor + Normalize([0.5], [0.5]) compute it.
Tensor to_training_tensor(const Tensor& hwc_u8);

// ---- the whole chain ---------------------------------------------------------------------
struct TransformParams {
  int64_t resolution = 512;
  Interpolation interp = Interpolation::Lanczos;
  bool center_crop = false;  // false: a random crop (RandomCrop)
  bool random_flip = false;  // flip with probability 1/2
};

struct TrainImage {
  Tensor pixels;                          // [3, resolution, resolution] f32 in [-1, 1]
  std::array<int64_t, 2> original_size;   // {h, w} of the decoded image (SDXL add_time_ids)
  // SDXL's crops_coords_top_left {y1, x1} exactly as train_text_to_image_sdxl.py records it: the
  // crop's offsets in the resized image, and for a flipped image x1 = resolution - x1 (the script
  // computes `x1 = image.width - x1` on the already cropped image).
  std::array<int64_t, 2> crop_top_left;
  std::array<int64_t, 2> crop_offset;     // {top, left} of the crop in the resized image
  bool flipped = false;
};

// Resize (shorter side), crop (center, or random), maybe flip, normalise. The random crop's
// offsets (uniform over every position, as RandomCrop.get_params) and the flip are drawn from
// one Philox block keyed by `seed` at counter `index` with a stream tag of its own, so a sample
// gets the same draw on any thread, in any order, on any run; vary `index` per sample and epoch.
TrainImage transform_for_training(const Tensor& hwc_u8, const TransformParams& params, uint64_t seed,
                                  uint64_t index);

// textual_inversion.py's TextualInversionDataset: with center_crop the largest centred square of the
// original (numpy slicing (h - c) // 2 : (h + c) // 2), then a resize to resolution x resolution whatever
// the aspect (the script's Image.resize, bicubic by default), a horizontal flip with probability 1/2
// (always on in the script), and x / 127.5 - 1 computed in float64.
TrainImage transform_for_textual_inversion(const Tensor& hwc_u8, int64_t resolution, bool center_crop,
                                           Interpolation interp, uint64_t seed, uint64_t index);

// Aspect-ratio buckets (kohya's BucketManager): scaled so it covers the bucket (the side that is
// relatively shorter fits exactly, int(size * scale + 0.5)), then cropped to bucket_h x bucket_w (center
// or random) and flipped as params say; crop_top_left as the SDXL scripts record it.
TrainImage transform_to_bucket(const Tensor& hwc_u8, int64_t bucket_h, int64_t bucket_w, const TransformParams& params,
                               uint64_t seed, uint64_t index);

}  // namespace sd::train
