// Each decoder runs its library's error handling (libpng and libjpeg report errors by longjmp)
// inside a function that holds only plain C objects across the jump; the sd::Error is thrown
// after the library state is released.
#include "infer/image_decode.h"

#include <gif_lib.h>
#include <png.h>
#include <webp/decode.h>

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
// jpeglib.h needs size_t and FILE declared first.
#include <jerror.h>
#include <jpeglib.h>

#include "runtime/error.h"

// stb_image's implementation lives in infer/image_io.cpp; only its BMP reader is used here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include <stb_image.h>
#pragma GCC diagnostic pop

namespace sd::infer {

namespace {

bool starts_with(const unsigned char* p, size_t n, const char* sig, size_t len) {
  return n >= len && std::memcmp(p, sig, len) == 0;
}

// The same check without C++ objects, for code between setjmp and longjmp (whose destructors a
// jump would skip): false with `why` filled.
bool pixels_ok(int64_t w, int64_t h, char* why, size_t len) {
  if (w <= 0 || h <= 0) std::snprintf(why, len, "the image has no pixels (%lldx%lld)", (long long)w, (long long)h);
  else if (w > kMaxImagePixels / h)
    std::snprintf(why, len, "%lldx%lld pixels, over PIL's decompression-bomb limit of %lld", (long long)w,
                  (long long)h, (long long)kMaxImagePixels);
  else return true;
  return false;
}

// "" when the size is fine, else what is wrong (the same words as pixels_ok).
std::string pixel_problem(int64_t w, int64_t h) {
  char why[160];
  return pixels_ok(w, h, why, sizeof(why)) ? std::string() : std::string(why);
}

// Decoded pixels before the RGB / native conversion: 8 bits per channel, or 16-bit grey.
struct Pixels {
  int64_t w = 0, h = 0;
  int channels = 0;      // 1..4
  bool gray16 = false;   // one uint16 per pixel (PIL "I;16")
  bool cmyk = false;     // 4 channels of Adobe-inverted CMYK (a JPEG)
  uint8_t* data = nullptr;  // malloc'd (the libraries' callbacks cannot hold C++ owners)
  ~Pixels() { std::free(data); }
};

// ---------------------------------------------------------------- PNG (libpng)

struct PngSource {
  const unsigned char* p;
  size_t n, pos;
  char error[256];
  png_bytep* rows;
};

void png_read_from(png_structp png, png_bytep out, size_t len) {
  auto* s = static_cast<PngSource*>(png_get_io_ptr(png));
  if (len > s->n - s->pos) png_error(png, "truncated PNG data");
  std::memcpy(out, s->p + s->pos, len);
  s->pos += len;
}
[[noreturn]] void png_on_error(png_structp png, png_const_charp msg) {
  auto* s = static_cast<PngSource*>(png_get_error_ptr(png));
  std::snprintf(s->error, sizeof(s->error), "%s", msg);
  png_longjmp(png, 1);
}
void png_on_warning(png_structp, png_const_charp) {}

// false with src->error set when the data is not a decodable PNG. `native` keeps palette
// transparency as alpha; otherwise 16-bit grey stays 16-bit (for PIL's clipping).
bool png_decode(PngSource* src, bool native, Pixels* out) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, src, png_on_error, png_on_warning);
  if (!png) {
    std::snprintf(src->error, sizeof(src->error), "out of memory");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  src->rows = nullptr;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    std::free(src->rows);
    return false;
  }
  if (!info) png_error(png, "out of memory");
  png_set_read_fn(png, src, png_read_from);
  png_read_info(png, info);
  png_uint_32 w = 0, h = 0;
  int depth = 0, type = 0;
  png_get_IHDR(png, info, &w, &h, &depth, &type, nullptr, nullptr, nullptr);
  char why[160];
  if (!pixels_ok(w, h, why, sizeof(why))) png_error(png, why);
  out->gray16 = !native && type == PNG_COLOR_TYPE_GRAY && depth == 16;
  if (type == PNG_COLOR_TYPE_PALETTE) {
    png_set_palette_to_rgb(png);
    if (native && png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  }
  if ((type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_GRAY_ALPHA) && depth < 8)
    png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16) {
    if (out->gray16) png_set_swap(png);  // host (little-endian) order
    else png_set_strip_16(png);          // the high byte, as PIL's "RGB;16B"/"LA;16B" raw modes
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  out->w = w;
  out->h = h;
  out->channels = png_get_channels(png, info);
  const size_t row_bytes = png_get_rowbytes(png, info);
  out->data = static_cast<uint8_t*>(std::malloc(row_bytes * h));
  src->rows = static_cast<png_bytep*>(std::malloc(sizeof(png_bytep) * h));
  if (!out->data || !src->rows) png_error(png, "out of memory");
  for (png_uint_32 y = 0; y < h; ++y) src->rows[y] = out->data + size_t(y) * row_bytes;
  png_read_image(png, src->rows);
  // The chunks after the image data (and IEND) are not needed, as PIL does not read them either.
  png_destroy_read_struct(&png, &info, nullptr);
  std::free(src->rows);
  src->rows = nullptr;
  return true;
}

// ---------------------------------------------------------------- JPEG (libjpeg-turbo)

struct JpegErrors {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;
};

[[noreturn]] void jpeg_on_error(j_common_ptr c) {
  auto* e = reinterpret_cast<JpegErrors*>(c->err);
  (*c->err->format_message)(c, e->message);
  std::longjmp(e->jump, 1);
}
void jpeg_on_message(j_common_ptr c, int level) {
  // PIL raises "image file is truncated" where libjpeg warns and pads with grey.
  if (level == -1 && c->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegErrors*>(c->err)->truncated = true;
}

// With `header_only`, stops after the header (width, height, components in *out, no pixels).
bool jpeg_decode(const unsigned char* p, size_t n, bool header_only, Pixels* out, JpegErrors* err) {
  jpeg_decompress_struct cinfo;
  cinfo.err = jpeg_std_error(&err->mgr);
  err->mgr.error_exit = jpeg_on_error;
  err->mgr.emit_message = jpeg_on_message;
  err->truncated = false;
  err->message[0] = 0;
  if (setjmp(err->jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, p, static_cast<unsigned long>(n));
  jpeg_read_header(&cinfo, TRUE);
  out->w = cinfo.image_width;
  out->h = cinfo.image_height;
  out->channels = cinfo.num_components;
  const bool sized = pixels_ok(out->w, out->h, err->message, sizeof(err->message));
  if (header_only || !sized) {
    jpeg_destroy_decompress(&cinfo);
    return sized;
  }
  // PIL's settings: the accurate integer IDCT and fancy upsampling (libjpeg's defaults).
  if (cinfo.num_components == 4) cinfo.out_color_space = JCS_CMYK;  // CMYK or YCCK
  else if (cinfo.jpeg_color_space == JCS_GRAYSCALE) cinfo.out_color_space = JCS_GRAYSCALE;
  else cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);
  out->channels = cinfo.output_components;
  out->cmyk = cinfo.out_color_space == JCS_CMYK;
  const size_t row_bytes = size_t(cinfo.output_width) * size_t(cinfo.output_components);
  out->data = static_cast<uint8_t*>(std::malloc(row_bytes * cinfo.output_height));
  if (!out->data) {
    std::snprintf(err->message, sizeof(err->message), "out of memory");
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  while (cinfo.output_scanline < cinfo.output_height && !err->truncated) {
    JSAMPROW row = out->data + size_t(cinfo.output_scanline) * row_bytes;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_destroy_decompress(&cinfo);  // not finish: trailing data after the image is not read
  if (err->truncated) std::snprintf(err->message, sizeof(err->message), "truncated JPEG data");
  return !err->truncated;
}

// A JPEG whose last scan is not followed by an end-of-image marker was cut short: PIL raises
// "image file is truncated" there. Inside scan data 0xFF is always followed by 0x00 or a restart
// marker, so 0xFFD9 is the real marker.
bool jpeg_is_complete(const unsigned char* p, size_t n) {
  size_t last_sos = 0;
  for (size_t i = 2; i + 1 < n; ++i)
    if (p[i] == 0xFF && p[i + 1] == 0xDA) last_sos = i;
  if (last_sos == 0) return false;
  for (size_t i = last_sos + 2; i + 1 < n; ++i)
    if (p[i] == 0xFF && p[i + 1] == 0xD9) return true;
  return false;
}

// ---------------------------------------------------------------- GIF (giflib, first frame)

struct GifSource {
  const unsigned char* p;
  size_t n, pos;
};

// giflib's message for an error code; GifErrorString returns null for codes it does not know
// (0 among them, which a failed call can leave behind: found by fuzz_image).
std::string gif_error_text(int code) {
  const char* s = GifErrorString(code);
  return s ? s : "error " + std::to_string(code);
}

int gif_read_from(GifFileType* g, GifByteType* buf, int len) {
  auto* s = static_cast<GifSource*>(g->UserData);
  const size_t k = std::min(size_t(len < 0 ? 0 : len), s->n - s->pos);
  std::memcpy(buf, s->p + s->pos, k);
  s->pos += k;
  return int(k);
}

// The first frame on its logical screen, as RGB through its colour table (PIL's convert("RGB")
// of mode "P" ignores transparency). Returns "" or what is wrong.
std::string gif_decode(const unsigned char* p, size_t n, Pixels* out) {
  GifSource src{p, n, 0};
  int err = 0;
  GifFileType* g = DGifOpen(&src, gif_read_from, &err);
  if (!g) return "not a readable GIF (" + gif_error_text(err) + ")";
  struct Closer {
    GifFileType* g;
    ~Closer() {
      int e = 0;
      DGifCloseFile(g, &e);
    }
  } closer{g};
  const std::string problem = pixel_problem(g->SWidth, g->SHeight);
  if (!problem.empty()) return problem;
  const auto fail = [&](const char* what) { return std::string(what) + " (" + gif_error_text(g->Error) + ")"; };
  while (true) {
    GifRecordType type = UNDEFINED_RECORD_TYPE;
    if (DGifGetRecordType(g, &type) == GIF_ERROR) return fail("damaged GIF record");
    if (type == TERMINATE_RECORD_TYPE) return "the GIF holds no image";
    if (type == EXTENSION_RECORD_TYPE) {
      int code = 0;
      GifByteType* ext = nullptr;
      if (DGifGetExtension(g, &code, &ext) == GIF_ERROR) return fail("damaged GIF extension");
      while (ext)
        if (DGifGetExtensionNext(g, &ext) == GIF_ERROR) return fail("damaged GIF extension");
      continue;
    }
    if (type != IMAGE_DESC_RECORD_TYPE) continue;
    if (DGifGetImageDesc(g) == GIF_ERROR) return fail("damaged GIF image descriptor");
    const GifImageDesc& d = g->Image;
    const ColorMapObject* map = d.ColorMap ? d.ColorMap : g->SColorMap;
    if (!map || map->ColorCount <= 0) return "the GIF has no colour table";
    if (d.Width <= 0 || d.Height <= 0 || d.Left < 0 || d.Top < 0) return "the GIF frame has no pixels";
    const int64_t W = g->SWidth, H = g->SHeight;
    out->w = W;
    out->h = H;
    out->channels = 3;
    out->data = static_cast<uint8_t*>(std::malloc(size_t(W * H * 3)));
    std::vector<GifPixelType> line(size_t(d.Width));
    if (!out->data) return "out of memory";
    // Outside the frame: the background colour.
    const int bg = g->SColorMap && g->SBackGroundColor < g->SColorMap->ColorCount ? g->SBackGroundColor : 0;
    const GifColorType back = g->SColorMap ? g->SColorMap->Colors[bg] : map->Colors[0];
    for (int64_t i = 0; i < W * H; ++i) {
      out->data[3 * i] = back.Red;
      out->data[3 * i + 1] = back.Green;
      out->data[3 * i + 2] = back.Blue;
    }
    auto put_row = [&](int64_t y) {
      const int64_t yy = d.Top + y;
      if (yy >= H) return;
      for (int64_t x = 0; x < d.Width && d.Left + x < W; ++x) {
        const GifPixelType idx = line[size_t(x)];
        const GifColorType c = idx < map->ColorCount ? map->Colors[idx] : map->Colors[0];
        uint8_t* o = out->data + 3 * (yy * W + d.Left + x);
        o[0] = c.Red, o[1] = c.Green, o[2] = c.Blue;
      }
    };
    if (d.Interlace) {
      const int start[] = {0, 4, 2, 1}, step[] = {8, 8, 4, 2};
      for (int pass = 0; pass < 4; ++pass)
        for (int64_t y = start[pass]; y < d.Height; y += step[pass]) {
          if (DGifGetLine(g, line.data(), d.Width) == GIF_ERROR) return fail("damaged or truncated GIF data");
          put_row(y);
        }
    } else {
      for (int64_t y = 0; y < d.Height; ++y) {
        if (DGifGetLine(g, line.data(), d.Width) == GIF_ERROR) return fail("damaged or truncated GIF data");
        put_row(y);
      }
    }
    return "";
  }
}

// ---------------------------------------------------------------- BMP (stb_image)

// stb_image pads a BMP whose pixel data is cut short with zeros; PIL raises. An uncompressed
// BMP's size follows from its header: check it before decoding ("" when complete).
std::string bmp_truncation(const unsigned char* p, size_t n) {
  auto le = [&](size_t o, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[o + size_t(i)];
    return v;
  };
  if (n < 26) return "truncated header";
  const uint64_t offset = le(10, 4), info_size = le(14, 4);
  int64_t w = 0, h = 0;
  uint64_t bpp = 0, compression = 0;
  if (info_size == 12) {  // BITMAPCOREHEADER
    w = int64_t(le(18, 2)), h = int64_t(le(20, 2)), bpp = le(24, 2);
  } else {
    if (n < 34) return "truncated header";
    w = int32_t(le(18, 4)), h = int32_t(le(22, 4)), bpp = le(28, 2), compression = le(30, 4);
  }
  if (compression != 0 && compression != 3 && compression != 6) return "";  // RLE: sizes vary, stb checks as it goes
  if (w <= 0 || bpp == 0 || bpp > 32) return "";  // stb refuses these itself
  const uint64_t rows = uint64_t(h < 0 ? -h : h);
  const uint64_t row_bytes = (uint64_t(w) * bpp + 31) / 32 * 4;
  if (rows != 0 && row_bytes > (uint64_t(1) << 40) / rows) return "";  // far over the pixel limit, refused later
  const uint64_t need = offset + row_bytes * rows;
  if (need > n) return "truncated: the pixel data needs " + std::to_string(need) + " bytes, the file has " + std::to_string(n);
  return "";
}

// ---------------------------------------------------------------- decoding to Pixels

void decode_pixels(const unsigned char* p, size_t n, const std::string& name, bool native, Pixels* px) {
  SD_CHECK(p != nullptr && n > 0, "cannot decode image '", name, "': the data is empty");
  const ImageFormat f = sniff_image_format(p, n);
  switch (f) {
    case ImageFormat::Png: {
      PngSource src{p, n, 0, {0}, nullptr};
      SD_CHECK(png_decode(&src, native, px), "cannot decode PNG image '", name, "': ", src.error);
      return;
    }
    case ImageFormat::Jpeg: {
      JpegErrors err;
      SD_CHECK(jpeg_is_complete(p, n), "cannot decode image '", name, "': truncated JPEG (no end-of-image marker)");
      SD_CHECK(jpeg_decode(p, n, false, px, &err), "cannot decode JPEG image '", name, "': ", err.message);
      return;
    }
    case ImageFormat::WebP: {
      WebPBitstreamFeatures feat;
      const VP8StatusCode st = WebPGetFeatures(p, n, &feat);
      SD_CHECK(st == VP8_STATUS_OK, "cannot decode WebP image '", name, "': ",
               st == VP8_STATUS_NOT_ENOUGH_DATA ? "truncated data" : "invalid bitstream", " (status ", int(st), ")");
      SD_CHECK(!feat.has_animation, "WebP image '", name, "' is animated: only still WebP images are supported");
      const std::string problem = pixel_problem(feat.width, feat.height);
      SD_CHECK(problem.empty(), "image '", name, "': ", problem);
      int w = 0, h = 0;
      const bool alpha = native && feat.has_alpha;
      // Alpha, if any, is dropped (not composited) for RGB, as PIL does.
      uint8_t* d = alpha ? WebPDecodeRGBA(p, n, &w, &h) : WebPDecodeRGB(p, n, &w, &h);
      SD_CHECK(d != nullptr, "cannot decode WebP image '", name, "': corrupt or truncated data");
      px->w = w, px->h = h, px->channels = alpha ? 4 : 3;
      const size_t bytes = size_t(w) * size_t(h) * size_t(px->channels);
      px->data = static_cast<uint8_t*>(std::malloc(bytes));
      if (px->data) std::memcpy(px->data, d, bytes);
      WebPFree(d);
      SD_CHECK(px->data != nullptr, "cannot decode WebP image '", name, "': out of memory");
      return;
    }
    case ImageFormat::Gif: {
      const std::string why = gif_decode(p, n, px);
      SD_CHECK(why.empty(), "cannot decode GIF image '", name, "': ", why);
      return;
    }
    case ImageFormat::Bmp: {
      SD_CHECK(n <= size_t(INT32_MAX), "image '", name, "' is larger than 2 GiB");
      const std::string short_by = bmp_truncation(p, n);
      SD_CHECK(short_by.empty(), "cannot decode BMP image '", name, "': ", short_by);
      int w = 0, h = 0, comp = 0;
      SD_CHECK(stbi_info_from_memory(p, int(n), &w, &h, &comp) != 0, "cannot decode BMP image '", name, "': ",
               stbi_failure_reason() ? stbi_failure_reason() : "damaged header");
      const std::string problem = pixel_problem(w, h);
      SD_CHECK(problem.empty(), "image '", name, "': ", problem);
      const int want = native ? 0 : 3;
      unsigned char* d = stbi_load_from_memory(p, int(n), &w, &h, &comp, want);
      SD_CHECK(d != nullptr, "cannot decode BMP image '", name, "': ",
               stbi_failure_reason() ? stbi_failure_reason() : "damaged data");
      px->w = w, px->h = h, px->channels = want ? want : comp;
      const size_t bytes = size_t(w) * size_t(h) * size_t(px->channels);
      px->data = static_cast<uint8_t*>(std::malloc(bytes));
      if (px->data) std::memcpy(px->data, d, bytes);
      stbi_image_free(d);
      SD_CHECK(px->data != nullptr, "cannot decode BMP image '", name, "': out of memory");
      return;
    }
    case ImageFormat::Unknown: break;
  }
  SD_FAIL("cannot decode image '", name, "': not a PNG, JPEG, WebP, GIF or BMP file");
}

// PIL's MULDIV255: a * b / 255, rounded.
inline uint8_t muldiv255(int a, int b) {
  const int t = a * b + 128;
  return uint8_t(((t >> 8) + t) >> 8);
}

// PIL's cmyk2rgb after its "CMYK;I" raw mode (every CMYK JPEG is read as Adobe-inverted).
void cmyk_to_rgb(const uint8_t* in, uint8_t* out) {
  const int nk = in[3];  // 255 - K with K = 255 - raw
  for (int c = 0; c < 3; ++c) {
    const int v = nk - muldiv255(255 - in[c], nk);
    out[c] = uint8_t(v < 0 ? 0 : v);
  }
}

Tensor to_rgb(const Pixels& px) {
  Tensor t = empty({px.h, px.w, 3}, DType::U8);
  uint8_t* o = t.data<uint8_t>();
  const int64_t n = px.w * px.h;
  if (px.gray16) {
    const auto* g = reinterpret_cast<const uint16_t*>(px.data);
    for (int64_t i = 0; i < n; ++i) o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = uint8_t(std::min<int>(g[i], 255));
    return t;
  }
  const int c = px.channels;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* s = px.data + i * c;
    if (px.cmyk) cmyk_to_rgb(s, o + 3 * i);
    else if (c <= 2) o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = s[0];
    else o[3 * i] = s[0], o[3 * i + 1] = s[1], o[3 * i + 2] = s[2];
  }
  return t;
}

}  // namespace

const char* image_format_name(ImageFormat f) {
  switch (f) {
    case ImageFormat::Png: return "png";
    case ImageFormat::Jpeg: return "jpeg";
    case ImageFormat::WebP: return "webp";
    case ImageFormat::Gif: return "gif";
    case ImageFormat::Bmp: return "bmp";
    case ImageFormat::Unknown: break;
  }
  return "unknown";
}

ImageFormat sniff_image_format(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  if (!p) return ImageFormat::Unknown;
  if (starts_with(p, n, "\x89PNG\r\n\x1a\n", 8)) return ImageFormat::Png;
  if (starts_with(p, n, "\xFF\xD8\xFF", 3)) return ImageFormat::Jpeg;
  if (n >= 12 && std::memcmp(p, "RIFF", 4) == 0 && std::memcmp(p + 8, "WEBP", 4) == 0) return ImageFormat::WebP;
  if (starts_with(p, n, "GIF87a", 6) || starts_with(p, n, "GIF89a", 6)) return ImageFormat::Gif;
  if (starts_with(p, n, "BM", 2)) return ImageFormat::Bmp;
  return ImageFormat::Unknown;
}

// GCC 12 reports a false -Wrestrict in std::string's assignment from literals here (GCC PR105329).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wrestrict"
#endif
std::string probe_image(const void* data, size_t n, ImageHeader* out) {
  ImageHeader h;
  const auto* p = static_cast<const unsigned char*>(data);
  if (!p || n == 0) return "empty file";
  h.format = sniff_image_format(p, n);
  switch (h.format) {
    case ImageFormat::Png: {
      if (n < 33 || std::memcmp(p + 12, "IHDR", 4) != 0) return "damaged PNG header";
      auto be32 = [&](size_t o) { return (uint32_t(p[o]) << 24) | (uint32_t(p[o + 1]) << 16) | (uint32_t(p[o + 2]) << 8) | p[o + 3]; };
      h.width = be32(16), h.height = be32(20);
      const int depth = p[24], type = p[25];
      h.mode = type == 0 ? (depth == 1 ? "1" : depth == 16 ? "I;16" : "L") : type == 2 ? "RGB" : type == 3 ? "P"
               : type == 4 ? "LA" : type == 6 ? "RGBA" : "";
      if (h.mode.empty()) return "damaged PNG header (colour type " + std::to_string(type) + ")";
      break;
    }
    case ImageFormat::Jpeg: {
      Pixels px;
      JpegErrors err;
      if (!jpeg_decode(p, n, true, &px, &err)) return std::string("damaged JPEG header (") + err.message + ")";
      h.width = px.w, h.height = px.h;
      h.mode = px.channels == 1 ? "L" : px.channels == 3 ? "RGB" : px.channels == 4 ? "CMYK"
                                                                                  : std::to_string(px.channels) + " components";
      break;
    }
    case ImageFormat::WebP: {
      WebPBitstreamFeatures f;
      if (WebPGetFeatures(p, n, &f) != VP8_STATUS_OK) return "not a readable WebP image";
      h.width = f.width, h.height = f.height;
      h.mode = f.has_alpha ? "RGBA" : "RGB";
      break;
    }
    case ImageFormat::Gif:
      if (n < 13) return "damaged GIF header";
      h.width = p[6] | (p[7] << 8), h.height = p[8] | (p[9] << 8);
      h.mode = "P";
      break;
    case ImageFormat::Bmp: {
      int w = 0, hh = 0, c = 0;
      if (!stbi_info_from_memory(p, int(std::min<size_t>(n, size_t(INT32_MAX))), &w, &hh, &c))
        return "damaged BMP header";
      h.width = w, h.height = hh;
      h.mode = "RGB";
      if (c == 1) h.mode = "L";
      if (c == 4) h.mode = "RGBA";
      break;
    }
    case ImageFormat::Unknown: return "not a PNG, JPEG, WebP, GIF or BMP file";
  }
  if (out) *out = h;
  return pixel_problem(h.width, h.height);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

Tensor decode_image_rgb(const void* data, size_t size, const std::string& name) {
  Pixels px;
  decode_pixels(static_cast<const unsigned char*>(data), size, name, false, &px);
  return to_rgb(px);
}

Tensor decode_image_native(const void* data, size_t size, const std::string& name) {
  Pixels px;
  decode_pixels(static_cast<const unsigned char*>(data), size, name, true, &px);
  if (px.cmyk) return to_rgb(px);
  Tensor t = empty({px.h, px.w, int64_t(px.channels)}, DType::U8);
  std::memcpy(t.data_ptr(), px.data, size_t(px.w * px.h * px.channels));
  return t;
}

}  // namespace sd::infer
