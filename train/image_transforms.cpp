// Decoding and PIL/torchvision-exact training transforms. Compiled with -ffp-contract=off
// (CMakeLists.txt): the resampling coefficients are double-precision expressions that PIL's
// build evaluates without fused multiply-adds, and one FMA can move a fixed-point coefficient
// by one unit and a pixel by one level.
#include "train/image_transforms.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "runtime/error.h"
#include "runtime/parallel.h"
#include "runtime/rng_core.h"

#include "infer/image_decode.h"

namespace sd::train {

namespace {

void check_hwc_u8(const Tensor& t, const char* what) {
  SD_CHECK(t.defined() && t.dim() == 3 && t.dtype() == DType::U8 && t.device().is_cpu(), what,
           ": expected a CPU [H, W, C] u8 image, got ", t.defined() ? t.str() : std::string("an undefined tensor"));
}

// ---- PIL's resampling (libImaging/Resample.c), reimplemented ----------------------------

struct Filter {
  double (*fn)(double);
  double support;
};

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

double bicubic_filter(double x) {  // Keys' cubic convolution with a = -0.5
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return std::sin(x) / x;
}

double lanczos_filter(double x) {  // sinc windowed by sinc, 3 lobes
  if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
  return 0.0;
}

constexpr int kPrecisionBits = 32 - 8 - 2;  // 8 bits of result, 2 of headroom for negative lobes

// One output position of one pass: the first input index and the fixed-point weights.
struct Coeffs {
  int ksize = 0;
  std::vector<int> first, count;  // per output index
  std::vector<int32_t> k;         // [out, ksize]
};

// PIL's precompute_coeffs + normalize_coeffs_8bpc over the whole input range (box = 0..in_size):
// the filter is stretched by the scale factor when shrinking, each output's weights are
// normalised to sum 1 in double, then rounded half away from zero to 22-bit integers.
Coeffs precompute_coeffs(int in_size, int out_size, const Filter& filter) {
  const float in0 = 0.f, in1 = float(in_size);
  const double scale = double(in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = filter.support * filterscale;
  Coeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.k.assign(size_t(out_size) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);  // truncation toward zero, as PIL's (int) cast
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double v = filter.fn((x + xmin - center + 0.5) * ss);
      w[x] = v;
      ww += v;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) w[x] /= ww;
      const double scaled = w[x] * (1 << kPrecisionBits);
      c.k[size_t(xx) * c.ksize + x] = w[x] < 0 ? int32_t(-0.5 + scaled) : int32_t(0.5 + scaled);
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

// The 22-bit accumulator (started at one half) back to u8: floor, then clip to [0, 255].
inline uint8_t clip8(int64_t acc) {
  const int64_t v = acc >> kPrecisionBits;  // arithmetic shift: floor, as PIL's table index
  return uint8_t(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Horizontal pass over input rows [row0, row0 + rows): src [*, in_w, C] -> dst [rows, out_w, C].
void resample_horizontal(const uint8_t* src, int64_t in_w, int64_t C, int64_t row0, int64_t rows, uint8_t* dst,
                         int64_t out_w, const Coeffs& co) {
  parallel_for(rows, out_w * C * co.ksize, [&](int64_t b, int64_t e) {
    for (int64_t y = b; y < e; ++y) {
      const uint8_t* in = src + (row0 + y) * in_w * C;
      uint8_t* out = dst + y * out_w * C;
      for (int64_t xx = 0; xx < out_w; ++xx) {
        const int32_t* k = &co.k[size_t(xx) * co.ksize];
        const uint8_t* px = in + int64_t(co.first[xx]) * C;
        const int n = co.count[xx];
        if (C == 3) {  // the common case, three sums at once
          int64_t a0 = int64_t(1) << (kPrecisionBits - 1), a1 = a0, a2 = a0;
          for (int x = 0; x < n; ++x) {
            a0 += int64_t(px[3 * x]) * k[x];
            a1 += int64_t(px[3 * x + 1]) * k[x];
            a2 += int64_t(px[3 * x + 2]) * k[x];
          }
          out[3 * xx] = clip8(a0);
          out[3 * xx + 1] = clip8(a1);
          out[3 * xx + 2] = clip8(a2);
          continue;
        }
        for (int64_t c = 0; c < C; ++c) {
          int64_t acc = int64_t(1) << (kPrecisionBits - 1);
          for (int x = 0; x < n; ++x) acc += int64_t(px[x * C + c]) * k[x];
          out[xx * C + c] = clip8(acc);
        }
      }
    }
  });
}

// Vertical pass: src [*, w, C] (row `first - shift` of src is input row `first`) -> dst [out_h, w, C].
void resample_vertical(const uint8_t* src, int64_t w, int64_t C, int64_t shift, uint8_t* dst, int64_t out_h,
                       const Coeffs& co) {
  const int64_t row = w * C;
  parallel_for(out_h, row * co.ksize, [&](int64_t b, int64_t e) {
    std::vector<int64_t> acc(static_cast<size_t>(row));
    for (int64_t yy = b; yy < e; ++yy) {
      const int32_t* k = &co.k[size_t(yy) * co.ksize];
      const uint8_t* in = src + (co.first[yy] - shift) * row;
      std::fill(acc.begin(), acc.end(), int64_t(1) << (kPrecisionBits - 1));
      for (int y = 0; y < co.count[yy]; ++y) {
        const uint8_t* r = in + int64_t(y) * row;
        const int64_t ky = k[y];
        for (int64_t i = 0; i < row; ++i) acc[size_t(i)] += int64_t(r[i]) * ky;
      }
      uint8_t* out = dst + yy * row;
      for (int64_t i = 0; i < row; ++i) out[i] = clip8(acc[size_t(i)]);
    }
  });
}

// PIL's resize with NEAREST: an affine nearest-neighbour scale (Geometry.c ImagingScaleAffine).
// The source position starts at half a step and accumulates the step in double, as PIL does.
Tensor resize_nearest(const Tensor& src, int64_t out_h, int64_t out_w) {
  const int64_t in_h = src.size(0), in_w = src.size(1), C = src.size(2);
  const double ax = double(float(in_w) - 0.f) / out_w, ay = double(float(in_h) - 0.f) / out_h;
  auto coord = [](double v) { return v < 0.0 ? -1 : int64_t(v); };
  std::vector<int64_t> xin(size_t(out_w), -1), yin(size_t(out_h), -1);
  double xo = 0.0 + ax * 0.5;
  for (int64_t x = 0; x < out_w; ++x, xo += ax) {
    const int64_t v = coord(xo);
    if (v >= 0 && v < in_w) xin[size_t(x)] = v;
  }
  double yo = 0.0 + ay * 0.5;
  for (int64_t y = 0; y < out_h; ++y, yo += ay) {
    const int64_t v = coord(yo);
    if (v >= 0 && v < in_h) yin[size_t(y)] = v;
  }
  Tensor out = zeros({out_h, out_w, C}, DType::U8);  // PIL fills positions outside the source with 0
  const uint8_t* s = src.data<uint8_t>();
  uint8_t* d = out.data<uint8_t>();
  for (int64_t y = 0; y < out_h; ++y) {
    if (yin[size_t(y)] < 0) continue;
    const uint8_t* in = s + yin[size_t(y)] * in_w * C;
    for (int64_t x = 0; x < out_w; ++x)
      if (xin[size_t(x)] >= 0) std::memcpy(d + (y * out_w + x) * C, in + xin[size_t(x)] * C, size_t(C));
  }
  return out;
}

}  // namespace

// ---- decoding ------------------------------------------------------------------------------

Tensor decode_image(const void* data, size_t size, const std::string& name) {
  return infer::decode_image_rgb(data, size, name);
}

Tensor decode_image_file(const std::string& path) {
  std::error_code ec;
  SD_CHECK(std::filesystem::is_regular_file(path, ec), "image '", path, "' does not exist or is not a file");
  std::ifstream f(path, std::ios::binary);
  SD_CHECK(f.good(), "cannot open image '", path, "': ", std::strerror(errno));
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  SD_CHECK(!f.bad(), "cannot read image '", path, "': ", std::strerror(errno));
  return decode_image(bytes.data(), bytes.size(), path);
}

// ---- resizing ------------------------------------------------------------------------------

Interpolation parse_interpolation(const std::string& name) {
  if (name == "nearest") return Interpolation::Nearest;
  if (name == "bilinear") return Interpolation::Bilinear;
  if (name == "bicubic") return Interpolation::Bicubic;
  if (name == "lanczos") return Interpolation::Lanczos;
  SD_FAIL("unknown image interpolation '", name, "': valid names are lanczos, bilinear, bicubic, nearest");
}

const char* interpolation_name(Interpolation interp) {
  switch (interp) {
    case Interpolation::Nearest: return "nearest";
    case Interpolation::Bilinear: return "bilinear";
    case Interpolation::Bicubic: return "bicubic";
    case Interpolation::Lanczos: return "lanczos";
  }
  return "?";
}

Tensor resize_u8(const Tensor& hwc_u8, int64_t out_h, int64_t out_w, Interpolation interp) {
  check_hwc_u8(hwc_u8, "resize_u8");
  SD_CHECK(out_h > 0 && out_w > 0 && out_h < (int64_t(1) << 24) && out_w < (int64_t(1) << 24),
           "resize_u8: bad output size ", out_h, "x", out_w);
  const Tensor src = contiguous_raw(hwc_u8);
  const int64_t in_h = src.size(0), in_w = src.size(1), C = src.size(2);
  SD_CHECK(in_h > 0 && in_w > 0 && in_h < (int64_t(1) << 24) && in_w < (int64_t(1) << 24),
           "resize_u8: bad input size ", src.str());
  if (in_h == out_h && in_w == out_w) return copy_to(src, DType::U8, Device::cpu());  // PIL: a copy
  if (interp == Interpolation::Nearest) return resize_nearest(src, out_h, out_w);

  Filter filter{};
  switch (interp) {
    case Interpolation::Bilinear: filter = {bilinear_filter, 1.0}; break;
    case Interpolation::Bicubic: filter = {bicubic_filter, 2.0}; break;
    case Interpolation::Lanczos: filter = {lanczos_filter, 3.0}; break;
    case Interpolation::Nearest: break;
  }
  const bool need_h = out_w != in_w, need_v = out_h != in_h;
  const Coeffs cv = precompute_coeffs(int(in_h), int(out_h), filter);
  const uint8_t* s = src.data<uint8_t>();
  // Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks
  // by more than twice as many pixels as the width; the u8 rounding between the passes makes
  // the order visible. (The condition as Pillow 13.0.0 behaves: boundary scans and 1,182 random
  // sizes of all three filters. Pillow <= 12 always ran the horizontal pass first.)
  if (need_h && need_v && in_h > out_h && (in_h - out_h) > 2 * (in_w - out_w)) {
    const Coeffs ch = precompute_coeffs(int(in_w), int(out_w), filter);
    Tensor mid = empty({out_h, in_w, C}, DType::U8);
    resample_vertical(s, in_w, C, 0, mid.data<uint8_t>(), out_h, cv);
    Tensor out = empty({out_h, out_w, C}, DType::U8);
    resample_horizontal(mid.data<uint8_t>(), in_w, C, 0, out_h, out.data<uint8_t>(), out_w, ch);
    return out;
  }
  // Rows of the source the vertical pass reads: the horizontal pass computes only these.
  const int64_t y_first = cv.first.front();
  const int64_t y_last = int64_t(cv.first.back()) + cv.count.back();
  Tensor mid;
  const uint8_t* vsrc = s;
  int64_t shift = 0;
  if (need_h) {
    const Coeffs ch = precompute_coeffs(int(in_w), int(out_w), filter);
    const int64_t rows = need_v ? y_last - y_first : in_h;
    const int64_t row0 = need_v ? y_first : 0;
    mid = empty({rows, out_w, C}, DType::U8);
    resample_horizontal(s, in_w, C, row0, rows, mid.data<uint8_t>(), out_w, ch);
    if (!need_v) return mid;
    vsrc = mid.data<uint8_t>();
    shift = row0;
  }
  const int64_t w = need_h ? out_w : in_w;
  Tensor out = empty({out_h, w, C}, DType::U8);
  resample_vertical(vsrc, w, C, shift, out.data<uint8_t>(), out_h, cv);
  return out;
}

std::array<int64_t, 2> shorter_side_size(int64_t h, int64_t w, int64_t resolution) {
  SD_CHECK(h > 0 && w > 0 && resolution > 0, "shorter_side_size: bad sizes h=", h, " w=", w,
           " resolution=", resolution);
  const int64_t short_side = std::min(h, w), long_side = std::max(h, w);
  // Python: int(size * long / short): exact integer product, true division, truncation.
  const int64_t new_long = int64_t(double(resolution * long_side) / double(short_side));
  return w <= h ? std::array<int64_t, 2>{new_long, resolution} : std::array<int64_t, 2>{resolution, new_long};
}

Tensor resize_shorter_side(const Tensor& hwc_u8, int64_t resolution, Interpolation interp) {
  check_hwc_u8(hwc_u8, "resize_shorter_side");
  const auto [oh, ow] = shorter_side_size(hwc_u8.size(0), hwc_u8.size(1), resolution);
  if (oh == hwc_u8.size(0) && ow == hwc_u8.size(1)) return hwc_u8;  // torchvision returns the image
  return resize_u8(hwc_u8, oh, ow, interp);
}

// ---- cropping, flipping, normalising -------------------------------------------------------

std::array<int64_t, 2> center_crop_offsets(int64_t h, int64_t w, int64_t th, int64_t tw) {
  SD_CHECK(th > 0 && tw > 0 && th <= h && tw <= w, "center_crop_offsets: crop ", th, "x", tw,
           " does not fit in an image of ", h, "x", w);
  // round(d / 2.0) with ties to even: d even -> d/2; d = 2k+1 -> k or k+1, whichever is even.
  auto half = [](int64_t d) { return d % 2 == 0 ? d / 2 : ((d / 2) % 2 == 0 ? d / 2 : d / 2 + 1); };
  return {half(h - th), half(w - tw)};
}

Tensor crop(const Tensor& hwc, int64_t top, int64_t left, int64_t th, int64_t tw) {
  SD_CHECK(hwc.defined() && hwc.dim() == 3 && hwc.device().is_cpu(), "crop: expected a CPU [H, W, C] image");
  SD_CHECK(th > 0 && tw > 0 && top >= 0 && left >= 0 && top + th <= hwc.size(0) && left + tw <= hwc.size(1),
           "crop: rows [", top, ", ", top + th, ") x columns [", left, ", ", left + tw, ") outside the image ",
           hwc.str());
  const Tensor src = contiguous_raw(hwc);
  const int64_t W = src.size(1), C = src.size(2), es = int64_t(dtype_size(src.dtype()));
  Tensor out = empty({th, tw, C}, src.dtype());
  const auto* s = static_cast<const uint8_t*>(src.data_ptr());
  auto* d = static_cast<uint8_t*>(out.data_ptr());
  for (int64_t y = 0; y < th; ++y)
    std::memcpy(d + y * tw * C * es, s + ((top + y) * W + left) * C * es, size_t(tw * C * es));
  return out;
}

Tensor hflip(const Tensor& hwc) {
  SD_CHECK(hwc.defined() && hwc.dim() == 3 && hwc.device().is_cpu(), "hflip: expected a CPU [H, W, C] image");
  const Tensor src = contiguous_raw(hwc);
  const int64_t H = src.size(0), W = src.size(1), C = src.size(2), px = C * int64_t(dtype_size(src.dtype()));
  Tensor out = empty(src.shape(), src.dtype());
  const auto* s = static_cast<const uint8_t*>(src.data_ptr());
  auto* d = static_cast<uint8_t*>(out.data_ptr());
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) std::memcpy(d + (y * W + x) * px, s + (y * W + (W - 1 - x)) * px, size_t(px));
  return out;
}

Tensor to_training_tensor(const Tensor& hwc_u8) {
  check_hwc_u8(hwc_u8, "to_training_tensor");
  SD_CHECK(hwc_u8.size(2) == 3, "to_training_tensor: expected 3 channels, got ", hwc_u8.str());
  const Tensor src = contiguous_raw(hwc_u8);
  const int64_t H = src.size(0), W = src.size(1), n = H * W;
  // The 256 possible values, each computed as torchvision does: x / 255, then (x - 0.5) / 0.5.
  float lut[256];
  for (int v = 0; v < 256; ++v) {
    const float x = float(v) / 255.0f;
    lut[v] = (x - 0.5f) / 0.5f;
  }
  Tensor out = empty({3, H, W}, DType::F32);
  const uint8_t* s = src.data<uint8_t>();
  float* d = out.data<float>();
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t i = 0; i < n; ++i) d[c * n + i] = lut[s[i * 3 + c]];
  return out;
}

// ---- the whole chain -----------------------------------------------------------------------

TrainImage transform_for_training(const Tensor& hwc_u8, const TransformParams& params, uint64_t seed,
                                  uint64_t index) {
  check_hwc_u8(hwc_u8, "transform_for_training");
  const int64_t R = params.resolution;
  SD_CHECK(R > 0, "transform_for_training: resolution must be positive, got ", R);
  TrainImage out;
  out.original_size = {hwc_u8.size(0), hwc_u8.size(1)};
  const Tensor resized = resize_shorter_side(hwc_u8, R, params.interp);
  const int64_t h = resized.size(0), w = resized.size(1);

  // One Philox block per (seed, index); counter word 2 tags this stream ('imgt'), so it never
  // meets the blocks other users draw from the same seed (they keep words 2 and 3 at zero).
  const uint32_t ctr[4] = {uint32_t(index), uint32_t(index >> 32), 0x696D6774u, 0u};
  const uint32_t key[2] = {uint32_t(seed), uint32_t(seed >> 32)};
  uint32_t words[4];
  rng::philox4x32_10(ctr, key, words);
  // Uniform integer in [0, n) from one 32-bit word (bias below n / 2^32).
  auto below = [](uint32_t word, int64_t n) { return int64_t((uint64_t(word) * uint64_t(n)) >> 32); };

  if (params.center_crop) {
    out.crop_offset = center_crop_offsets(h, w, R, R);
  } else {
    out.crop_offset = {below(words[0], h - R + 1), below(words[1], w - R + 1)};
  }
  Tensor img = crop(resized, out.crop_offset[0], out.crop_offset[1], R, R);
  out.crop_top_left = out.crop_offset;
  if (params.random_flip && (words[2] >> 31) != 0) {
    out.flipped = true;
    img = hflip(img);
    out.crop_top_left[1] = R - out.crop_offset[1];  // train_text_to_image_sdxl.py: x1 = image.width - x1
  }
  out.pixels = to_training_tensor(img);
  return out;
}

// ---- textual inversion and buckets --------------------------------------------------------------

namespace {
// The Philox words of (seed, index) for a stream tag: crop offsets, flips.
std::array<uint32_t, 4> transform_words(uint64_t seed, uint64_t index, uint32_t tag) {
  const uint32_t ctr[4] = {uint32_t(index), uint32_t(index >> 32), tag, 0u};
  const uint32_t key[2] = {uint32_t(seed), uint32_t(seed >> 32)};
  std::array<uint32_t, 4> w{};
  rng::philox4x32_10(ctr, key, w.data());
  return w;
}
int64_t below(uint32_t word, int64_t n) { return int64_t((uint64_t(word) * uint64_t(n)) >> 32); }
}  // namespace

TrainImage transform_for_textual_inversion(const Tensor& hwc_u8, int64_t resolution, bool center_crop,
                                           Interpolation interp, uint64_t seed, uint64_t index) {
  check_hwc_u8(hwc_u8, "transform_for_textual_inversion");
  SD_CHECK(resolution > 0, "transform_for_textual_inversion: resolution must be positive, got ", resolution);
  TrainImage out;
  const int64_t h = hwc_u8.size(0), w = hwc_u8.size(1);
  out.original_size = {h, w};
  Tensor img = hwc_u8;
  out.crop_offset = {0, 0};  // no crop: the whole image becomes the square (SDXL's crop coords then are 0, 0)
  if (center_crop) {
    // img[(h - c) // 2 : (h + c) // 2, (w - c) // 2 : (w + c) // 2] with c = min(h, w) (numpy slicing)
    const int64_t c = std::min(h, w);
    out.crop_offset = {(h - c) / 2, (w - c) / 2};
    img = crop(img, out.crop_offset[0], out.crop_offset[1], (h + c) / 2 - (h - c) / 2, (w + c) / 2 - (w - c) / 2);
  }
  img = resize_u8(img, resolution, resolution, interp);  // a square whatever the aspect (the script's resize)
  out.crop_top_left = out.crop_offset;
  // transforms.RandomHorizontalFlip(p=0.5), always on in the script.
  if ((transform_words(seed, index, 0x74696E76u /* 'tinv' */)[0] >> 31) != 0) {
    out.flipped = true;
    img = hflip(img);
  }
  // (image / 127.5 - 1.0) in float64, then float32, as the script's numpy computes it.
  const Tensor src = contiguous_raw(img);
  const int64_t H = src.size(0), W = src.size(1), n = H * W;
  Tensor px = empty({3, H, W}, DType::F32);
  const uint8_t* sp = src.data<uint8_t>();
  float* d = px.data<float>();
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t i = 0; i < n; ++i) d[c * n + i] = float(double(sp[i * 3 + c]) / 127.5 - 1.0);
  out.pixels = px;
  return out;
}

TrainImage transform_to_bucket(const Tensor& hwc_u8, int64_t bucket_h, int64_t bucket_w, const TransformParams& params,
                               uint64_t seed, uint64_t index) {
  check_hwc_u8(hwc_u8, "transform_to_bucket");
  SD_CHECK(bucket_h > 0 && bucket_w > 0, "transform_to_bucket: bucket ", bucket_w, "x", bucket_h);
  TrainImage out;
  const int64_t h = hwc_u8.size(0), w = hwc_u8.size(1);
  out.original_size = {h, w};
  // kohya's BucketManager: scale so the image covers the bucket along its tighter side,
  // resized_size = (int(w * scale + 0.5), int(h * scale + 0.5)), then crop the rest away.
  const double ar = double(w) / double(h), bucket_ar = double(bucket_w) / double(bucket_h);
  const double scale = ar > bucket_ar ? double(bucket_h) / double(h) : double(bucket_w) / double(w);
  const int64_t rw = std::max(bucket_w, int64_t(double(w) * scale + 0.5));
  const int64_t rh = std::max(bucket_h, int64_t(double(h) * scale + 0.5));
  const Tensor resized = (rh == h && rw == w) ? hwc_u8 : resize_u8(hwc_u8, rh, rw, params.interp);
  const std::array<uint32_t, 4> words = transform_words(seed, index, 0x62636B74u /* 'bckt' */);
  if (params.center_crop) {
    out.crop_offset = {(rh - bucket_h) / 2, (rw - bucket_w) / 2};
  } else {
    out.crop_offset = {below(words[0], rh - bucket_h + 1), below(words[1], rw - bucket_w + 1)};
  }
  Tensor img = crop(resized, out.crop_offset[0], out.crop_offset[1], bucket_h, bucket_w);
  out.crop_top_left = out.crop_offset;
  if (params.random_flip && (words[2] >> 31) != 0) {
    out.flipped = true;
    img = hflip(img);
    out.crop_top_left[1] = bucket_w - out.crop_offset[1];
  }
  out.pixels = to_training_tensor(img);
  return out;
}

}  // namespace sd::train
