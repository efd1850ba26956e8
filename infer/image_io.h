// Images in and out: decoding (infer/image_decode.h: libpng, libjpeg-turbo, libwebp, giflib) with errors that name
// the file, and PNG encoding that carries text chunks (the generation parameters, as A1111
// writes them under the key "parameters"), written atomically.
#pragma once
#include <map>
#include <string>

#include "runtime/tensor.h"

namespace sd::infer {

// [H, W, C] u8, C = `channels` (3 = RGB; 0 keeps the file's own channel count).
Tensor load_image_u8(const std::string& path, int channels = 3);
// [3, H, W] f32 in [-1, 1] (the VAE's input range).
Tensor load_image(const std::string& path);

// image: [3, H, W] floating in [-1, 1] (clamped), or [H, W, 3|4] u8. `text`: chunk keyword -> value
// (Latin-1 values become tEXt chunks, anything else UTF-8 iTXt chunks). Written to a temporary
// file and renamed, so a failure never leaves a partial image.
void save_png(const std::string& path, const Tensor& image, const std::map<std::string, std::string>& text = {});

// The text chunks of a PNG file (tEXt and uncompressed iTXt), for reading parameters back.
std::map<std::string, std::string> read_png_text(const std::string& path);

// `dir/prefix-NNNNN.png` with the first index whose file does not exist yet (never overwrites).
std::string next_free_png_path(const std::string& dir, const std::string& prefix);

}  // namespace sd::infer
