#include "infer/image_io.h"

#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "infer/image_decode.h"
#include "runtime/error.h"

// stb (Debian's libstb-dev) is header-only: its implementation lives in this one file.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
// Only stb's BMP reader is compiled: PNG, JPEG, GIF go through libpng, libjpeg-turbo and giflib
// (infer/image_decode.cpp), and the other formats stb knows (PNM, PSD, TGA, HDR, PIC) are refused.
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_BMP
#define STBI_FAILURE_USERMSG
#include <stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#pragma GCC diagnostic pop

namespace sd::infer {

namespace {

void put_u32_be(std::string& out, uint32_t v) {
  out.push_back(char(v >> 24));
  out.push_back(char(v >> 16));
  out.push_back(char(v >> 8));
  out.push_back(char(v));
}

uint32_t get_u32_be(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// One PNG chunk: length, type, data, CRC over type + data.
std::string chunk(const char type[4], const std::string& data) {
  std::string out;
  put_u32_be(out, uint32_t(data.size()));
  std::string body(type, 4);
  body += data;
  out += body;
  put_u32_be(out, uint32_t(crc32(0L, reinterpret_cast<const Bytef*>(body.data()), uInt(body.size()))));
  return out;
}

bool is_latin1_ascii(const std::string& s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;  // bytes >= 0x80 would be read as Latin-1, so keep them UTF-8 in iTXt
  return true;
}

std::string text_chunk(const std::string& key, const std::string& value) {
  SD_CHECK(!key.empty() && key.size() < 80, "PNG text key '", key, "' must be 1-79 characters");
  if (is_latin1_ascii(value)) return chunk("tEXt", key + '\0' + value);
  // iTXt: key \0 compression-flag(0) method(0) language-tag \0 translated-key \0 text (UTF-8)
  std::string data = key;
  data.push_back('\0');
  data.push_back('\0');
  data.push_back('\0');
  data.push_back('\0');
  data.push_back('\0');
  data += value;
  return chunk("iTXt", data);
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    SD_CHECK(f.good(), "cannot write '", tmp, "': ", std::strerror(errno));
    f.write(bytes.data(), std::streamsize(bytes.size()));
    f.flush();
    if (!f.good()) {
      std::remove(tmp.c_str());
      SD_FAIL("writing '", tmp, "' failed: ", std::strerror(errno));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    SD_FAIL("cannot move '", tmp, "' to '", path, "': ", err);
  }
}

void append_to_string(void* ctx, void* data, int size) {
  static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), size_t(size));
}

}  // namespace

Tensor load_image_u8(const std::string& path, int channels) {
  SD_CHECK(std::filesystem::is_regular_file(path), "image '", path, "' does not exist or is not a file");
  SD_CHECK(channels >= 0 && channels <= 4, "load_image_u8: channels must be 0 to 4, got ", channels);
  std::ifstream in(path, std::ios::binary);
  SD_CHECK(in.good(), "cannot open image '", path, "'");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  SD_CHECK(!in.bad(), "cannot read image '", path, "'");
  if (channels == 3) return decode_image_rgb(bytes.data(), bytes.size(), path);
  Tensor native = decode_image_native(bytes.data(), bytes.size(), path);
  const int64_t c = native.size(2);
  if (channels == 0 || channels == c) return native;
  // Other channel counts: through RGB(A), as stb_image did (grey from RGB: ITU-R 601 weights, as PIL's "L").
  const int64_t h = native.size(0), w = native.size(1);
  Tensor out = empty({h, w, int64_t(channels)}, DType::U8);
  const uint8_t* s = native.data<uint8_t>();
  uint8_t* d = out.data<uint8_t>();
  for (int64_t i = 0; i < h * w; ++i) {
    const uint8_t* px = s + i * c;
    const uint8_t r = px[0], g = c >= 3 ? px[1] : px[0], b = c >= 3 ? px[2] : px[0];
    const uint8_t a = c == 2 ? px[1] : c == 4 ? px[3] : 255;
    const uint8_t l = uint8_t((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
    uint8_t* o = d + i * channels;
    if (channels == 1) o[0] = l;
    else if (channels == 2) o[0] = l, o[1] = a;
    else o[0] = r, o[1] = g, o[2] = b, o[3] = a;
  }
  return out;
}

Tensor load_image(const std::string& path) {
  Tensor u8 = load_image_u8(path, 3);
  const int64_t h = u8.size(0), w = u8.size(1);
  Tensor out = empty({3, h, w}, DType::F32);
  const uint8_t* src = u8.data<uint8_t>();
  float* dst = out.data<float>();
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t i = 0; i < h * w; ++i) dst[c * h * w + i] = float(src[i * 3 + c]) / 127.5f - 1.0f;
  return out;
}

void save_png(const std::string& path, const Tensor& image, const std::map<std::string, std::string>& text) {
  Tensor hwc;
  if (image.dtype() == DType::U8) {
    SD_CHECK(image.dim() == 3 && (image.size(2) == 3 || image.size(2) == 4), "save_png: u8 image must be [H, W, 3|4], got ",
             image.str());
    hwc = copy_to(image, DType::U8, Device::cpu());
  } else {
    SD_CHECK(image.dim() == 3 && image.size(0) == 3, "save_png: image must be [3, H, W] in [-1, 1], got ", image.str());
    std::vector<float> v = image.to_float_vector();
    const int64_t h = image.size(1), w = image.size(2);
    hwc = empty({h, w, 3}, DType::U8);
    uint8_t* dst = hwc.data<uint8_t>();
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t i = 0; i < h * w; ++i) {
        // diffusers: (x / 2 + 0.5).clamp(0, 1) * 255, rounded.
        float x = v[c * h * w + i] * 0.5f + 0.5f;
        x = x < 0.f ? 0.f : (x > 1.f ? 1.f : x);
        dst[i * 3 + c] = uint8_t(x * 255.0f + 0.5f);
      }
  }
  const int h = int(hwc.size(0)), w = int(hwc.size(1)), c = int(hwc.size(2));
  std::string png;
  SD_CHECK(stbi_write_png_to_func(append_to_string, &png, w, h, c, hwc.data_ptr(), w * c) != 0,
           "save_png: encoding failed for '", path, "'");
  // Insert the text chunks right after IHDR (8-byte signature + 25-byte IHDR chunk).
  SD_CHECK(png.size() > 33, "save_png: encoder produced a truncated PNG");
  std::string chunks;
  for (const auto& [k, v] : text) chunks += text_chunk(k, v);
  png.insert(33, chunks);
  write_file_atomically(path, png);
}

std::map<std::string, std::string> read_png_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  SD_CHECK(f.good(), "cannot open '", path, "'");
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  static const char kSig[] = "\x89PNG\r\n\x1a\n";
  SD_CHECK(bytes.size() >= 8 && bytes.compare(0, 8, kSig, 8) == 0, "'", path, "' is not a PNG file");
  std::map<std::string, std::string> out;
  size_t pos = 8;
  while (pos + 12 <= bytes.size()) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data() + pos);
    const uint32_t len = get_u32_be(p);
    SD_CHECK(pos + 12 + len <= bytes.size(), "'", path, "': truncated PNG chunk at byte ", pos);
    const std::string type = bytes.substr(pos + 4, 4);
    const std::string data = bytes.substr(pos + 8, len);
    if (type == "tEXt") {
      const size_t z = data.find('\0');
      if (z != std::string::npos) out[data.substr(0, z)] = data.substr(z + 1);
    } else if (type == "iTXt") {
      const size_t z = data.find('\0');
      if (z != std::string::npos && z + 2 < data.size() && data[z + 1] == 0) {  // uncompressed only
        size_t lang_end = data.find('\0', z + 3);
        size_t tkey_end = lang_end == std::string::npos ? lang_end : data.find('\0', lang_end + 1);
        if (tkey_end != std::string::npos) out[data.substr(0, z)] = data.substr(tkey_end + 1);
      }
    }
    if (type == "IEND") break;
    pos += 12 + len;
  }
  return out;
}

std::string next_free_png_path(const std::string& dir, const std::string& prefix) {
  std::filesystem::create_directories(dir);
  for (int i = 0; i < 1000000; ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "-%05d.png", i);
    std::string p = (std::filesystem::path(dir) / (prefix + name)).string();
    if (!std::filesystem::exists(p)) return p;
  }
  SD_FAIL("no free file name for '", prefix, "' in '", dir, "'");
}

}  // namespace sd::infer
