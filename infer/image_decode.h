// Decoding of untrusted images (init images, training datasets) by the libraries that are fuzzed
// continuously and packaged by Debian: libpng (PNG), libjpeg-turbo (JPEG), libwebp (WebP), giflib
// (GIF, first frame); BMP through stb_image, whose small BMP reader is kept. Anything else
// (PNM, PSD, TGA, HDR, ... that stb would also take) is refused by its signature.
//
// The RGB conversion is PIL's Image.convert("RGB") (what diffusers' and kohya's loaders call):
// alpha dropped without compositing, grey replicated, palettes looked up, 16-bit channels cut to
// their high byte except 16-bit grey ("I;16"), which is clipped to 255; CMYK JPEGs (Adobe's
// inverted ones too) converted as PIL does. Images over PIL's decompression-bomb limit are refused
// from their header, before any pixel memory is allocated.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/tensor.h"

namespace sd::infer {

enum class ImageFormat { Unknown, Png, Jpeg, WebP, Gif, Bmp };
const char* image_format_name(ImageFormat f);  // "png", "jpeg", "webp", "gif", "bmp", "unknown"
// From the first bytes; Unknown for anything sd does not decode.
ImageFormat sniff_image_format(const void* data, size_t size);

// PIL refuses images over twice Image.MAX_IMAGE_PIXELS (DecompressionBombError).
inline constexpr int64_t kMaxImagePixels = 2 * int64_t(1024 * 1024 * 1024 / 4 / 3);

struct ImageHeader {
  ImageFormat format = ImageFormat::Unknown;
  int64_t width = 0, height = 0;
  std::string mode;  // PIL's mode name: "RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "1", ...
};
// Reads the header only (cheap: for listing a dataset). Returns "" when the image looks
// decodable, else what is wrong (unknown format, no size, over the pixel limit, damaged header).
std::string probe_image(const void* data, size_t size, ImageHeader* out);

// [H, W, 3] u8 with PIL's convert("RGB"). sd::Error naming `name` on damaged or truncated data.
Tensor decode_image_rgb(const void* data, size_t size, const std::string& name);
// [H, W, C] u8 keeping the image's own channels: 1 (grey), 2 (grey + alpha), 3 (RGB), 4 (RGBA).
// Palettes become RGB (RGBA with transparency), 16 bits become 8, CMYK becomes RGB.
Tensor decode_image_native(const void* data, size_t size, const std::string& name);

}  // namespace sd::infer
