#include "train/shapes_dataset.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "runtime/error.h"
#include "runtime/rng_core.h"
#include "train/random_draws.h"

namespace sd::train {

namespace {

constexpr const char* kKindNames[kNumShapeKinds] = {"circle", "square", "triangle", "star", "cross", "diamond"};
constexpr const char* kColorNames[kNumShapeColors] = {"red",   "green", "blue",   "yellow",
                                                      "white", "black", "purple", "orange"};
constexpr uint8_t kColorRgb[kNumShapeColors][3] = {
    {220, 20, 20},    // red
    {20, 160, 40},    // green
    {30, 60, 220},    // blue
    {250, 225, 20},   // yellow
    {255, 255, 255},  // white
    {0, 0, 0},        // black
    {140, 40, 180},   // purple
    {250, 120, 0},    // orange
};
constexpr const char* kPositionNames[kNumShapePositions] = {"top left", "top right", "bottom left", "bottom right",
                                                            "center"};
// Anchors in thousandths of the side: {x, y}.
constexpr int32_t kAnchorMilli[kNumShapePositions][2] = {{250, 250}, {750, 250}, {250, 750}, {750, 750}, {500, 500}};
constexpr const char* kSizeNames[kNumShapeSizes] = {"small", "large"};

constexpr int32_t kJitterMilli = 30;            // centre moves up to +-0.03 of the side
constexpr int32_t kSmallRadius[2] = {90, 110};  // radius range, thousandths of the side
constexpr int32_t kLargeRadius[2] = {170, 210};
constexpr double kSizeThreshold = 0.14;         // between the two ranges
constexpr int64_t kCrossHalfWidthPercent = 34;  // the cross's bars: half-width 0.34 r
constexpr int64_t kStarInnerPercent = 42;       // the star's inner radius: 0.42 r

// The star's 10 vertices as unit vectors x 10000 (angle -90 + 36 k degrees, y down); even k are the
// points (radius 1), odd k the inner corners (radius 0.42). Written out so no libm rounding enters.
constexpr int64_t kStarDir[10][2] = {{0, -10000}, {5878, -8090}, {9511, -3090}, {9511, 3090},   {5878, 8090},
                                     {0, 10000},  {-5878, 8090}, {-9511, 3090}, {-9511, -3090}, {-5878, -8090}};

// Even-odd point-in-polygon with exact integer arithmetic (T = int64_t) or doubles.
template <class T>
bool in_polygon(const T (*v)[2], int n, T px, T py) {
  bool in = false;
  for (int i = 0, j = n - 1; i < n; j = i++) {
    const T ax = v[j][0], ay = v[j][1], bx = v[i][0], by = v[i][1];
    if ((ay > py) == (by > py)) continue;
    // px < ax + (py - ay) (bx - ax) / (by - ay), multiplied out with the sign of (by - ay).
    const T lhs = (px - ax) * (by - ay), rhs = (py - ay) * (bx - ax);
    if (by > ay ? lhs < rhs : lhs > rhs) in = !in;
  }
  return in;
}

// Whether offset (dx, dy) from the centre lies in a shape of radius r: all in the same integer unit.
bool inside_int(ShapeKind k, int64_t dx, int64_t dy, int64_t r) {
  const int64_t ax = dx < 0 ? -dx : dx, ay = dy < 0 ? -dy : dy;
  switch (k) {
    case ShapeKind::Circle: return dx * dx + dy * dy <= r * r;
    case ShapeKind::Square: return ax <= r && ay <= r;
    case ShapeKind::Triangle: return dy <= r && 2 * ax <= dy + r;
    case ShapeKind::Diamond: return ax + ay <= r;
    case ShapeKind::Cross: {
      const int64_t a = r * kCrossHalfWidthPercent / 100;
      return (ax <= a && ay <= r) || (ay <= a && ax <= r);
    }
    case ShapeKind::Star: {
      if (ax > r || ay > r) return false;
      int64_t v[10][2];
      for (int i = 0; i < 10; ++i) {
        const int64_t scale = i % 2 == 0 ? 100 : kStarInnerPercent;
        v[i][0] = r * scale * kStarDir[i][0] / 1000000;
        v[i][1] = r * scale * kStarDir[i][1] / 1000000;
      }
      return in_polygon<int64_t>(v, 10, dx, dy);
    }
  }
  return false;
}

// The same shapes in units of the radius (u right, v down), for the classifier's templates.
bool inside_unit(ShapeKind k, double u, double v) {
  const double au = std::fabs(u), av = std::fabs(v);
  switch (k) {
    case ShapeKind::Circle: return u * u + v * v <= 1.0;
    case ShapeKind::Square: return au <= 1.0 && av <= 1.0;
    case ShapeKind::Triangle: return v <= 1.0 && 2.0 * au <= v + 1.0;
    case ShapeKind::Diamond: return au + av <= 1.0;
    case ShapeKind::Cross: {
      const double a = kCrossHalfWidthPercent / 100.0;
      return (au <= a && av <= 1.0) || (av <= a && au <= 1.0);
    }
    case ShapeKind::Star: {
      if (au > 1.0 || av > 1.0) return false;
      struct Star {
        double v[10][2];
      };
      static const Star star = [] {
        Star s{};
        for (int i = 0; i < 10; ++i) {
          const double scale = i % 2 == 0 ? 1.0 : kStarInnerPercent / 100.0;
          s.v[i][0] = scale * double(kStarDir[i][0]) / 10000.0;
          s.v[i][1] = scale * double(kStarDir[i][1]) / 10000.0;
        }
        return s;
      }();
      return in_polygon<double>(star.v, 10, u, v);
    }
  }
  return false;
}

std::string lower_trim(const std::string& s) {
  std::string out;
  for (char c : s) out.push_back(char(std::tolower(static_cast<unsigned char>(c))));
  const size_t b = out.find_first_not_of(" \t\r\n"), e = out.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : out.substr(b, e - b + 1);
}

template <class E, size_t N>
std::optional<E> find_name(const char* const (&names)[N], const std::string& s) {
  for (size_t i = 0; i < N; ++i)
    if (s == names[i]) return E(int(i));
  return std::nullopt;
}

// The named colour closest to rgb[0..2] (Euclidean in RGB).
int nearest_color(const double* rgb) {
  int best = -1;
  double best_d = 0;
  for (int c = 0; c < kNumShapeColors; ++c) {
    double d = 0;
    for (int ch = 0; ch < 3; ++ch) {
      const double x = rgb[ch] - kColorRgb[c][ch];
      d += x * x;
    }
    if (best < 0 || d < best_d) best = c, best_d = d;
  }
  return best;
}

void check_image(const Tensor& t, const char* what) {
  SD_CHECK(t.defined() && t.dim() == 3 && t.size(2) == 3 && t.dtype() == DType::U8 && t.is_cpu(), what,
           ": expected a CPU [H, W, 3] u8 image, got ", t.defined() ? t.str() : std::string("an undefined tensor"));
}

}  // namespace

const char* shape_kind_name(ShapeKind k) { return kKindNames[int(k)]; }
const char* shape_color_name(ShapeColor c) { return kColorNames[int(c)]; }
const char* shape_position_name(ShapePosition p) { return kPositionNames[int(p)]; }
const char* shape_size_name(ShapeSize s) { return kSizeNames[int(s)]; }
std::array<uint8_t, 3> shape_color_rgb(ShapeColor c) {
  return {kColorRgb[int(c)][0], kColorRgb[int(c)][1], kColorRgb[int(c)][2]};
}

std::optional<ShapeKind> parse_shape_kind(const std::string& name) { return find_name<ShapeKind>(kKindNames, name); }
std::optional<ShapeColor> parse_shape_color(const std::string& name) {
  return find_name<ShapeColor>(kColorNames, name);
}
std::optional<ShapePosition> parse_shape_position(const std::string& name) {
  return find_name<ShapePosition>(kPositionNames, name);
}
std::optional<ShapeSize> parse_shape_size(const std::string& name) { return find_name<ShapeSize>(kSizeNames, name); }

std::string shape_caption(const ShapeAttributes& a) {
  const std::string bg = shape_color_name(a.background);
  const bool vowel = std::string("aeiou").find(bg[0]) != std::string::npos;  // "an orange background"
  return std::string("a ") + shape_size_name(a.size) + " " + shape_color_name(a.color) + " " +
         shape_kind_name(a.shape) + (vowel ? " on an " : " on a ") + bg + " background, " +
         shape_position_name(a.position);
}

std::optional<ShapeAttributes> parse_shape_caption(const std::string& text) {
  // "a {size} {color} {shape} on a|an {background} background, {position}"
  const std::string s = lower_trim(text);
  const size_t comma = s.find(',');
  if (comma == std::string::npos || s.rfind("a ", 0) != 0) return std::nullopt;
  const std::optional<ShapePosition> position = parse_shape_position(lower_trim(s.substr(comma + 1)));
  std::vector<std::string> words;
  {
    std::string w;
    for (char c : s.substr(2, comma - 2)) {
      if (c == ' ') {
        if (!w.empty()) words.push_back(w);
        w.clear();
      } else {
        w.push_back(c);
      }
    }
    if (!w.empty()) words.push_back(w);
  }
  if (!position || words.size() != 7 || words[3] != "on" || (words[4] != "a" && words[4] != "an") ||
      words[6] != "background")
    return std::nullopt;
  const auto size = parse_shape_size(words[0]);
  const auto color = parse_shape_color(words[1]);
  const auto shape = parse_shape_kind(words[2]);
  const auto background = parse_shape_color(words[5]);
  if (!size || !color || !shape || !background || *color == *background) return std::nullopt;
  return ShapeAttributes{*shape, *color, *background, *position, *size};
}

ShapeScene shape_scene(uint64_t seed, uint64_t index) {
  uint32_t a[4], b[4];
  rng::philox_block(seed, 2 * index, a);
  rng::philox_block(seed, 2 * index + 1, b);
  ShapeScene s;
  s.attr.shape = ShapeKind(int(a[0] % kNumShapeKinds));
  s.attr.color = ShapeColor(int(a[1] % kNumShapeColors));
  s.attr.background = ShapeColor(int((a[1] % kNumShapeColors + 1 + a[2] % (kNumShapeColors - 1)) % kNumShapeColors));
  s.attr.position = ShapePosition(int(a[3] % kNumShapePositions));
  s.attr.size = ShapeSize(int(b[0] % kNumShapeSizes));
  const int32_t span = 2 * kJitterMilli + 1;
  s.center_x_milli = kAnchorMilli[int(s.attr.position)][0] + int32_t(b[1] % uint32_t(span)) - kJitterMilli;
  s.center_y_milli = kAnchorMilli[int(s.attr.position)][1] + int32_t(b[2] % uint32_t(span)) - kJitterMilli;
  const int32_t* range = s.attr.size == ShapeSize::Small ? kSmallRadius : kLargeRadius;
  s.radius_milli = range[0] + int32_t(b[3] % uint32_t(range[1] - range[0] + 1));
  return s;
}

Tensor render_shape_scene(const ShapeScene& scene, int64_t size, const std::optional<std::array<uint8_t, 3>>& shape_rgb) {
  SD_CHECK(size >= 16 && size <= 16384, "render_shape_scene: size ", size, " is outside 16..16384");
  // Unit: 1/8 pixel. Pixel x's 4x4 samples sit at 8x + 1, 8x + 3, 8x + 5, 8x + 7.
  const int64_t cx = int64_t(scene.center_x_milli) * size * 8 / 1000;
  const int64_t cy = int64_t(scene.center_y_milli) * size * 8 / 1000;
  const int64_t r = int64_t(scene.radius_milli) * size * 8 / 1000;
  const std::array<uint8_t, 3> fg = shape_rgb ? *shape_rgb : shape_color_rgb(scene.attr.color);
  const std::array<uint8_t, 3> bg = shape_color_rgb(scene.attr.background);
  Tensor img = empty({size, size, 3}, DType::U8);
  uint8_t* p = img.data<uint8_t>();
  for (int64_t i = 0; i < size * size; ++i) std::memcpy(p + 3 * i, bg.data(), 3);
  const int64_t x0 = std::max<int64_t>(0, (cx - r) / 8 - 1), x1 = std::min<int64_t>(size - 1, (cx + r) / 8 + 1);
  const int64_t y0 = std::max<int64_t>(0, (cy - r) / 8 - 1), y1 = std::min<int64_t>(size - 1, (cy + r) / 8 + 1);
  for (int64_t y = y0; y <= y1; ++y)
    for (int64_t x = x0; x <= x1; ++x) {
      int cover = 0;
      for (int sy = 0; sy < 4; ++sy)
        for (int sx = 0; sx < 4; ++sx)
          cover += inside_int(scene.attr.shape, 8 * x + 2 * sx + 1 - cx, 8 * y + 2 * sy + 1 - cy, r) ? 1 : 0;
      if (cover == 0) continue;
      uint8_t* q = p + 3 * (y * size + x);
      for (int ch = 0; ch < 3; ++ch) q[ch] = uint8_t((bg[ch] * (16 - cover) + fg[ch] * cover + 8) / 16);
    }
  return img;
}

// ---- the classifier ------------------------------------------------------------------------------

namespace {

constexpr int64_t kMaxSide = 128;                            // larger images are box-averaged down first
constexpr double kBlurSigmas[] = {0.0, 0.6, 1.0, 1.5, 2.2};  // blur levels the templates are tried at (px)

// Area (in r^2) and centroid height (in r) of each shape, measured once on a fine grid.
struct ShapeMoments {
  double area[kNumShapeKinds];
  double centroid_v[kNumShapeKinds];
};
const ShapeMoments& shape_moments() {
  static const ShapeMoments m = [] {
    ShapeMoments out{};
    constexpr int n = 1024;
    for (int k = 0; k < kNumShapeKinds; ++k) {
      double count = 0, sum_v = 0;
      for (int iy = 0; iy < n; ++iy)
        for (int ix = 0; ix < n; ++ix) {
          const double u = -1.0 + (ix + 0.5) * 2.0 / n, v = -1.0 + (iy + 0.5) * 2.0 / n;
          if (inside_unit(ShapeKind(k), u, v)) count += 1, sum_v += v;
        }
      out.area[k] = count * 4.0 / (double(n) * n);
      out.centroid_v[k] = sum_v / count;
    }
    return out;
  }();
  return m;
}

// An RGB image in doubles, channels last.
struct Image {
  int64_t h = 0, w = 0;
  std::vector<double> px;
  const double* at(int64_t y, int64_t x) const { return &px[size_t((y * w + x) * 3)]; }
};

Image to_working_image(const Tensor& img) {
  const int64_t H = img.size(0), W = img.size(1);
  const int64_t f = (std::min(H, W) + kMaxSide - 1) / kMaxSide;  // box factor (1 for <= 128 px)
  Image out;
  out.h = H / f, out.w = W / f;
  out.px.assign(size_t(out.h * out.w * 3), 0.0);
  const uint8_t* p = img.data<uint8_t>();
  for (int64_t y = 0; y < out.h * f; ++y)
    for (int64_t x = 0; x < out.w * f; ++x)
      for (int ch = 0; ch < 3; ++ch) out.px[size_t(((y / f) * out.w + x / f) * 3 + ch)] += p[(y * W + x) * 3 + ch];
  for (double& v : out.px) v /= double(f * f);
  return out;
}

// Coverage (4x4 samples) of shape k with centre (cx, cy) and radius r in the window, row-major.
std::vector<double> render_coverage(ShapeKind k, double cx, double cy, double r, int64_t wx0, int64_t wy0, int64_t ww,
                                    int64_t wh) {
  std::vector<double> cov(size_t(ww * wh), 0.0);
  const int64_t x0 = std::max<int64_t>(wx0, int64_t(std::floor(cx - r)) - 1);
  const int64_t x1 = std::min<int64_t>(wx0 + ww - 1, int64_t(std::ceil(cx + r)) + 1);
  const int64_t y0 = std::max<int64_t>(wy0, int64_t(std::floor(cy - r)) - 1);
  const int64_t y1 = std::min<int64_t>(wy0 + wh - 1, int64_t(std::ceil(cy + r)) + 1);
  for (int64_t y = y0; y <= y1; ++y)
    for (int64_t x = x0; x <= x1; ++x) {
      int c = 0;
      for (int sy = 0; sy < 4; ++sy)
        for (int sx = 0; sx < 4; ++sx)
          c += inside_unit(k, (double(x) + (sx + 0.5) / 4.0 - cx) / r, (double(y) + (sy + 0.5) / 4.0 - cy) / r);
      cov[size_t((y - wy0) * ww + (x - wx0))] = c / 16.0;
    }
  return cov;
}

// Separable Gaussian blur of a window, zero outside it (templates vanish well inside the window).
std::vector<double> blur_window(const std::vector<double>& in, int64_t ww, int64_t wh, double sigma) {
  if (sigma <= 0) return in;
  const int64_t rad = int64_t(std::ceil(3.0 * sigma));
  std::vector<double> k(size_t(2 * rad + 1));
  double sum = 0;
  for (int64_t i = -rad; i <= rad; ++i) sum += k[size_t(i + rad)] = std::exp(-0.5 * double(i * i) / (sigma * sigma));
  for (double& v : k) v /= sum;
  std::vector<double> tmp(in.size(), 0.0), out(in.size(), 0.0);
  for (int64_t y = 0; y < wh; ++y)
    for (int64_t x = 0; x < ww; ++x) {
      const double v = in[size_t(y * ww + x)];
      if (v == 0.0) continue;
      for (int64_t t = std::max<int64_t>(-rad, -x); t <= std::min<int64_t>(rad, ww - 1 - x); ++t)
        tmp[size_t(y * ww + x + t)] += v * k[size_t(t + rad)];
    }
  for (int64_t y = 0; y < wh; ++y)
    for (int64_t x = 0; x < ww; ++x) {
      const double v = tmp[size_t(y * ww + x)];
      if (v == 0.0) continue;
      for (int64_t t = std::max<int64_t>(-rad, -y); t <= std::min<int64_t>(rad, wh - 1 - y); ++t)
        out[size_t((y + t) * ww + x)] += v * k[size_t(t + rad)];
    }
  return out;
}

}  // namespace

ShapeEstimate classify_shape_image(const Tensor& hwc_u8) {
  check_image(hwc_u8, "classify_shape_image");
  SD_CHECK(hwc_u8.size(0) >= 16 && hwc_u8.size(1) >= 16, "classify_shape_image: the image is ", hwc_u8.size(1), "x",
           hwc_u8.size(0), ", under 16x16");
  const Image im = to_working_image(hwc_u8.is_contiguous() ? hwc_u8 : contiguous_raw(hwc_u8));
  const int64_t H = im.h, W = im.w, N = H * W;
  ShapeEstimate est;
  auto sq = [](double x) { return x * x; };

  // Background: vote of the border ring's nearest named colours, and the mean of the winners.
  const int64_t ring = std::max<int64_t>(1, std::min(H, W) / 32);
  std::vector<int64_t> border;
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      if (y < ring || y >= H - ring || x < ring || x >= W - ring) border.push_back(y * W + x);
  int64_t votes[kNumShapeColors] = {};
  std::vector<int> border_color;
  for (int64_t i : border) border_color.push_back(nearest_color(&im.px[size_t(3 * i)]));
  for (int c : border_color) ++votes[c];
  const int bg = int(std::max_element(votes, votes + kNumShapeColors) - votes);
  est.attr.background = ShapeColor(bg);
  double bg_rgb[3] = {0, 0, 0};
  for (size_t j = 0; j < border.size(); ++j)
    if (border_color[j] == bg)
      for (int ch = 0; ch < 3; ++ch) bg_rgb[ch] += im.px[size_t(3 * border[j] + ch)];
  for (int ch = 0; ch < 3; ++ch) est.background_rgb[size_t(ch)] = bg_rgb[ch] /= double(votes[bg]);

  // The pixels that differ most from the background, and their per-channel median.
  std::vector<double> dist(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i)
    dist[size_t(i)] = std::sqrt(sq(im.px[size_t(3 * i)] - bg_rgb[0]) + sq(im.px[size_t(3 * i + 1)] - bg_rgb[1]) +
                                sq(im.px[size_t(3 * i + 2)] - bg_rgb[2]));
  std::vector<double> sorted = dist;
  const size_t q = std::min(size_t(N) - 1, size_t(double(N) * 0.995));
  std::nth_element(sorted.begin(), sorted.begin() + ptrdiff_t(q), sorted.end());
  const double d_hi = sorted[q];
  if (d_hi < 30.0) return est;  // nothing stands out: no shape
  double core[3];
  for (int ch = 0; ch < 3; ++ch) {
    std::vector<double> v;
    for (int64_t i = 0; i < N; ++i)
      if (dist[size_t(i)] >= 0.7 * d_hi) v.push_back(im.px[size_t(3 * i + ch)]);
    std::nth_element(v.begin(), v.begin() + ptrdiff_t(v.size() / 2), v.end());
    est.shape_rgb[size_t(ch)] = core[ch] = v[v.size() / 2];
  }

  // Where the shape is: pixels past halfway to that colour, largest 8-connected component.
  double dir[3], len2 = 0;
  for (int ch = 0; ch < 3; ++ch) dir[ch] = core[ch] - bg_rgb[ch], len2 += dir[ch] * dir[ch];
  std::vector<int32_t> label(size_t(N), 0);  // -1: in the mask, not yet labelled
  for (int64_t i = 0; i < N; ++i) {
    double t = 0;
    for (int ch = 0; ch < 3; ++ch) t += (im.px[size_t(3 * i + ch)] - bg_rgb[ch]) * dir[ch];
    if (t > 0.5 * len2) label[size_t(i)] = -1;
  }
  std::vector<int64_t> stack;
  int32_t best_label = 0, next_label = 0;
  int64_t best_count = 0;
  for (int64_t s = 0; s < N; ++s) {
    if (label[size_t(s)] != -1) continue;
    const int32_t l = ++next_label;
    int64_t count = 0;
    stack.assign(1, s);
    label[size_t(s)] = l;
    while (!stack.empty()) {
      const int64_t i = stack.back();
      stack.pop_back();
      ++count;
      const int64_t y = i / W, x = i % W;
      for (int64_t yy = std::max<int64_t>(0, y - 1); yy <= std::min(H - 1, y + 1); ++yy)
        for (int64_t xx = std::max<int64_t>(0, x - 1); xx <= std::min(W - 1, x + 1); ++xx)
          if (label[size_t(yy * W + xx)] == -1) label[size_t(yy * W + xx)] = l, stack.push_back(yy * W + xx);
    }
    if (count > best_count) best_count = count, best_label = l;
  }
  if (best_count < 2) return est;
  int64_t bx0 = W, bx1 = -1, by0 = H, by1 = -1;
  for (int64_t i = 0; i < N; ++i)
    if (label[size_t(i)] == best_label) {
      const int64_t y = i / W, x = i % W;
      bx0 = std::min(bx0, x), bx1 = std::max(bx1, x), by0 = std::min(by0, y), by1 = std::max(by1, y);
    }
  // The window the templates are compared in: the component's box plus room for the widest blur.
  const int64_t margin = 2 + int64_t(std::ceil(3.0 * kBlurSigmas[std::size(kBlurSigmas) - 1]));
  const int64_t wx0 = std::max<int64_t>(0, bx0 - margin), wx1 = std::min(W - 1, bx1 + margin);
  const int64_t wy0 = std::max<int64_t>(0, by0 - margin), wy1 = std::min(H - 1, by1 + margin);
  const int64_t ww = wx1 - wx0 + 1, wh = wy1 - wy0 + 1;

  // Analysis by synthesis: pixel = background + alpha (colour - background) blur_sigma(coverage of the
  // shape) over the window, for each shape and blur level; the shape's centre and radius from the
  // moments of the coverage map (blur keeps both: mass = alpha * area * r^2), alpha (0.7-1.3: contrast)
  // by least squares; the lowest squared error wins. The shape is chosen with the named colour nearest
  // the core colour; the next two colours are then tried with that shape (a small blurred shape's core
  // mixes with the background: red on yellow can look orange).
  std::vector<std::pair<double, int>> by_distance;
  for (int c = 0; c < kNumShapeColors; ++c)
    if (c != bg)
      by_distance.push_back(
          {sq(core[0] - kColorRgb[c][0]) + sq(core[1] - kColorRgb[c][1]) + sq(core[2] - kColorRgb[c][2]), c});
  std::sort(by_distance.begin(), by_distance.end());
  const ShapeMoments& mom = shape_moments();
  double best_sse = 1e300;
  for (size_t ci = 0; ci < 3 && ci < by_distance.size(); ++ci) {
    const int c = by_distance[ci].second;
    // The colour as this image shows it: the palette value moved by the background's offset.
    double D[3], dd = 0;
    for (int ch = 0; ch < 3; ++ch) {
      D[ch] = double(kColorRgb[c][ch]) + (bg_rgb[ch] - kColorRgb[bg][ch]) - bg_rgb[ch];
      dd += D[ch] * D[ch];
    }
    // Per pixel: the offset from the background, and its coverage by this colour (projection).
    std::vector<double> t(size_t(ww * wh)), off(size_t(ww * wh * 3));
    double mass = 0, mx = 0, my = 0, off2 = 0;
    for (int64_t y = 0; y < wh; ++y)
      for (int64_t x = 0; x < ww; ++x) {
        const double* p = im.at(wy0 + y, wx0 + x);
        double* o = &off[size_t((y * ww + x) * 3)];
        for (int ch = 0; ch < 3; ++ch) o[ch] = p[ch] - bg_rgb[ch], off2 += o[ch] * o[ch];
        const double v = (o[0] * D[0] + o[1] * D[1] + o[2] * D[2]) / dd;
        t[size_t(y * ww + x)] = v;
        mass += v, mx += v * (double(wx0 + x) + 0.5), my += v * (double(wy0 + y) + 0.5);
      }
    if (mass <= 1.0) continue;
    mx /= mass, my /= mass;
    for (int k = 0; k < kNumShapeKinds; ++k) {
      if (ci > 0 && k != int(est.attr.shape)) continue;
      double alpha = 1.0, sse = 1e300, r = 0, cy = my, sigma = 0;
      for (int iter = 0; iter < 2; ++iter) {
        r = std::sqrt(mass / (alpha * mom.area[k]));
        cy = my - mom.centroid_v[k] * r;
        const std::vector<double> cov = render_coverage(ShapeKind(k), mx, cy, r, wx0, wy0, ww, wh);
        double it_sse = 1e300, it_alpha = alpha, it_sigma = 0;
        for (double s : kBlurSigmas) {
          const std::vector<double> b = blur_window(cov, ww, wh, s);
          double tb = 0, bb = 0;
          for (size_t i = 0; i < b.size(); ++i) tb += t[i] * b[i], bb += b[i] * b[i];
          const double a = bb > 0 ? std::clamp(tb / bb, 0.7, 1.3) : 1.0;
          // |off - a b D|^2 summed = |off|^2 - 2 a dd sum(t b) + a^2 dd sum(b^2)
          const double e = off2 - 2.0 * a * dd * tb + a * a * dd * bb;
          if (e < it_sse) it_sse = e, it_alpha = a, it_sigma = s;
        }
        sse = it_sse;
        alpha = it_alpha;
        sigma = it_sigma;
      }
      if (sse < best_sse) {
        best_sse = sse;
        est.found = true;
        est.attr.shape = ShapeKind(k);
        est.attr.color = ShapeColor(c);
        est.center_x = mx / double(W);
        est.center_y = cy / double(H);
        est.radius = r / double(std::min(H, W));
        est.fit_rms = std::sqrt(std::max(0.0, sse) / double(ww * wh * 3));
        est.blur = sigma;
      }
    }
  }
  if (!est.found) return est;

  int best_pos = 0;
  double best_pd = 1e300;
  for (int k = 0; k < kNumShapePositions; ++k) {
    const double pd = sq(est.center_x - kAnchorMilli[k][0] / 1000.0) + sq(est.center_y - kAnchorMilli[k][1] / 1000.0);
    if (pd < best_pd) best_pd = pd, best_pos = k;
  }
  est.attr.position = ShapePosition(best_pos);
  est.attr.size = est.radius < kSizeThreshold ? ShapeSize::Small : ShapeSize::Large;
  return est;
}

void ShapeAccuracy::add(const ShapeAttributes& truth, const ShapeEstimate& e) {
  ++images;
  const bool found = e.found;
  shape += found && e.attr.shape == truth.shape;
  color += found && e.attr.color == truth.color;
  background += e.attr.background == truth.background;
  position += found && e.attr.position == truth.position;
  size += found && e.attr.size == truth.size;
  all += found && e.attr == truth;
}

std::string ShapeAccuracy::summary() const {
  auto pct = [&](int64_t n) { return images ? 100.0 * double(n) / double(images) : 0.0; };
  char buf[256];
  std::snprintf(
      buf, sizeof(buf),
      "shape %.1f%%  color %.1f%%  background %.1f%%  position %.1f%%  size %.1f%%  all %.1f%%  (%lld images)",
      pct(shape), pct(color), pct(background), pct(position), pct(size), pct(all), (long long)images);
  return buf;
}

// ---- degradations --------------------------------------------------------------------------------

Tensor degrade_image(const Tensor& hwc_u8, const ImageDegradation& d) {
  check_image(hwc_u8, "degrade_image");
  const Tensor img = hwc_u8.is_contiguous() ? hwc_u8 : contiguous_raw(hwc_u8);
  const int64_t H = img.size(0), W = img.size(1), N = H * W;
  const uint8_t* src = img.data<uint8_t>();
  std::vector<double> v(size_t(N) * 3);
  for (int64_t i = 0; i < N * 3; ++i) v[size_t(i)] = src[i];

  if (d.blur_sigma > 0) {
    const int64_t rad = int64_t(std::ceil(3.0 * d.blur_sigma));
    std::vector<double> k(size_t(2 * rad + 1));
    double sum = 0;
    for (int64_t i = -rad; i <= rad; ++i)
      sum += k[size_t(i + rad)] = std::exp(-0.5 * double(i * i) / (d.blur_sigma * d.blur_sigma));
    for (double& x : k) x /= sum;
    std::vector<double> tmp(v.size());
    for (int pass = 0; pass < 2; ++pass) {  // rows, then columns
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x)
          for (int ch = 0; ch < 3; ++ch) {
            double acc = 0;
            for (int64_t t = -rad; t <= rad; ++t) {
              const int64_t xx = pass == 0 ? std::clamp<int64_t>(x + t, 0, W - 1) : x;
              const int64_t yy = pass == 1 ? std::clamp<int64_t>(y + t, 0, H - 1) : y;
              acc += k[size_t(t + rad)] * v[size_t((yy * W + xx) * 3 + ch)];
            }
            tmp[size_t((y * W + x) * 3 + ch)] = acc;
          }
      v.swap(tmp);
    }
  }
  if (d.block > 1) {
    for (int64_t by = 0; by < H; by += d.block)
      for (int64_t bx = 0; bx < W; bx += d.block) {
        const int64_t ey = std::min(H, by + d.block), ex = std::min(W, bx + d.block);
        for (int ch = 0; ch < 3; ++ch) {
          double mean = 0;
          for (int64_t y = by; y < ey; ++y)
            for (int64_t x = bx; x < ex; ++x) mean += v[size_t((y * W + x) * 3 + ch)];
          mean /= double((ey - by) * (ex - bx));
          for (int64_t y = by; y < ey; ++y)
            for (int64_t x = bx; x < ex; ++x) {
              double& e = v[size_t((y * W + x) * 3 + ch)];
              e = 0.5 * e + 0.5 * mean;
            }
        }
      }
  }
  std::vector<float> noise;
  if (d.noise_sigma > 0) noise = draw_normal({N * 3}, d.seed).to_float_vector();
  Tensor out = empty({H, W, 3}, DType::U8);
  uint8_t* dst = out.data<uint8_t>();
  for (int64_t i = 0; i < N * 3; ++i) {
    double x = 128.0 + d.contrast * (v[size_t(i)] - 128.0) + d.color_shift[size_t(i % 3)];
    if (!noise.empty()) x += d.noise_sigma * double(noise[size_t(i)]);
    dst[i] = uint8_t(std::clamp(std::lround(x), 0L, 255L));
  }
  return out;
}

}  // namespace sd::train
