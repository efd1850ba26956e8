// A captioned synthetic dataset small models can learn in minutes, and a classifier that reads the
// same attributes back from an image, so a trained model's outputs can be scored without a human.
//
// Every image is one filled shape in one named colour on a background of another named colour, at
// one of five positions and one of two sizes. Its caption says all five, in one grammar:
//
//   "a {size} {color} {shape} on a|an {background} background, {position}"
//   e.g. "a small red circle on a blue background, top left", "... on an orange background, center"
//
//   size:       small | large
//   color:      red | green | blue | yellow | white | black | purple | orange
//   shape:      circle | square | triangle | star | cross | diamond
//   background: one of the colours, never the shape's colour
//   position:   top left | top right | bottom left | bottom right | center
//
// Geometry, as fractions of the image side S (images are S x S): the shape's centre is its
// position's anchor (0.25 / 0.75 for the quadrants, 0.5 for center) moved by up to +-0.03 on each
// axis; its radius r is 0.09-0.11 (small) or 0.17-0.21 (large). In units of r around the centre
// (y down): circle u^2+v^2 <= 1; square |u|,|v| <= 1; triangle apex (0,-1), base corners (+-1, 1);
// diamond |u|+|v| <= 1; cross two bars of half-width 0.34; star five points, outer radius 1,
// inner 0.42, one point up. Each image draws all of this from Philox blocks (seed, 2i) and
// (seed, 2i + 1), and is rasterised in integer arithmetic with 4x4 supersampling (coverage in
// sixteenths), so the same (seed, index, S) gives the same bytes on every machine and build.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "runtime/tensor.h"

namespace sd::train {

enum class ShapeKind : int { Circle, Square, Triangle, Star, Cross, Diamond };
enum class ShapeColor : int { Red, Green, Blue, Yellow, White, Black, Purple, Orange };
enum class ShapePosition : int { TopLeft, TopRight, BottomLeft, BottomRight, Center };
enum class ShapeSize : int { Small, Large };

inline constexpr int kNumShapeKinds = 6, kNumShapeColors = 8, kNumShapePositions = 5, kNumShapeSizes = 2;

const char* shape_kind_name(ShapeKind k);          // "circle", ...
const char* shape_color_name(ShapeColor c);        // "red", ...
const char* shape_position_name(ShapePosition p);  // "top left", ..., "center"
const char* shape_size_name(ShapeSize s);          // "small", "large"
// The RGB value each colour is drawn with (well apart: the closest pairs, red/orange and yellow/orange, are 106
// and 107 apart).
std::array<uint8_t, 3> shape_color_rgb(ShapeColor c);
// Name -> value (exact names as above); nullopt for anything else.
std::optional<ShapeKind> parse_shape_kind(const std::string& name);
std::optional<ShapeColor> parse_shape_color(const std::string& name);
std::optional<ShapePosition> parse_shape_position(const std::string& name);
std::optional<ShapeSize> parse_shape_size(const std::string& name);

// What a caption states.
struct ShapeAttributes {
  ShapeKind shape = ShapeKind::Circle;
  ShapeColor color = ShapeColor::Red;
  ShapeColor background = ShapeColor::White;
  ShapePosition position = ShapePosition::Center;
  ShapeSize size = ShapeSize::Small;
  bool operator==(const ShapeAttributes&) const = default;
};

// The caption grammar above, and its inverse (surrounding spaces and letter case are ignored;
// nullopt when the text does not follow the grammar or names the same colour twice).
std::string shape_caption(const ShapeAttributes& a);
std::optional<ShapeAttributes> parse_shape_caption(const std::string& text);

// One image of the dataset: the attributes plus where exactly the shape lies, in thousandths of
// the image side.
struct ShapeScene {
  ShapeAttributes attr;
  int32_t center_x_milli = 500, center_y_milli = 500;
  int32_t radius_milli = 100;
};

// Image `index` of the dataset of `seed` (uniform over shapes, colours, backgrounds other than the
// colour, positions and sizes; jitter as described above).
ShapeScene shape_scene(uint64_t seed, uint64_t index);
// [size, size, 3] u8; size 16..16384 (sd_data generate allows 32..4096). `shape_rgb`, when given,
// paints the shape in that colour instead of its named one (sd_data generate --new_color).
Tensor render_shape_scene(const ShapeScene& scene, int64_t size,
                          const std::optional<std::array<uint8_t, 3>>& shape_rgb = std::nullopt);

// ---- reading an image back ---------------------------------------------------------------------
// What classify_shape_image finds. When nothing stands out from the background, found is false and
// only attr.background (and background_rgb) mean something.
struct ShapeEstimate {
  bool found = false;
  ShapeAttributes attr;
  double center_x = 0, center_y = 0;                    // the shape's centre, fractions of the width / height
  double radius = 0;                                    // its radius, a fraction of min(H, W)
  double fit_rms = 0;                                   // RMS error of the best synthesis over its window (u8 levels)
  double blur = 0;                                      // the blur level (px of the working image) that fitted best
  std::array<double, 3> background_rgb{}, shape_rgb{};  // the colours measured in the image
};

// Estimates the five attributes of an RGB image ([H, W, 3] u8, H and W >= 16; any size, square or
// not; also blurred, noisy, colour-shifted or blocky, as a small diffusion model draws it). Images
// over 128 px are box-averaged to about 128 px first. Then:
//   background  the named colour most pixels of a border ring (max(1, min(H, W) / 32) wide) are
//               nearest to; its measured value is the mean of those pixels
//   where       pixels farther from the background than 0.7 x the 99.5th percentile of that
//               distance give the "core" colour (per-channel median); pixels past halfway from the
//               background to it form a mask, and its largest 8-connected component (noise specks
//               and stray blobs drop out), widened by the largest blur's reach, is the window
//   shape       analysis by synthesis in the window: pixel = background + alpha (colour -
//               background) x blur_sigma(coverage of the shape), for each of the six shapes and
//               five blur levels (sigma 0 to 2.2 px), with the colour the named colour nearest the
//               core; the centre and radius come from the moments of the coverage map (what blur
//               does not change: mass = alpha x area x r^2, and the centroid), alpha (0.7-1.3,
//               contrast) by least squares; the smallest squared error wins
//   colour      that fit repeated with the next two nearest named colours, for the chosen shape (a
//               blurred small red shape on yellow has an orange-looking core); background offsets
//               carry over to the shape's colour (a global colour shift)
//   position    the fitted centre's nearest anchor (0.25 / 0.75 quadrant centres, 0.5 center)
//   size        the fitted radius: small under 0.14 of min(H, W), large over
// About 2 ms for a 64 px image on one core.
ShapeEstimate classify_shape_image(const Tensor& hwc_u8);

// Per-attribute agreement of estimates with the truth, for reports and tests.
struct ShapeAccuracy {
  int64_t images = 0, shape = 0, color = 0, background = 0, position = 0, size = 0, all = 0;
  void add(const ShapeAttributes& truth, const ShapeEstimate& estimate);
  // "shape 98.5%  color 100.0%  background 100.0%  position 100.0%  size 99.0%  all 97.5%  (200 images)"
  std::string summary() const;
};

// ---- degraded copies (how the classifier is tested against imperfect images) --------------------
struct ImageDegradation {
  double blur_sigma = 0;                // Gaussian blur (separable, radius ceil(3 sigma), edges clamped)
  int64_t block = 0;                    // JPEG-like blockiness: each pixel 50/50 with its block x block tile's mean
  double contrast = 1;                  // x -> 128 + contrast * (x - 128)
  std::array<double, 3> color_shift{};  // added to R, G, B
  double noise_sigma = 0;               // additive Gaussian noise per channel, Philox stream `seed`
  uint64_t seed = 0;
};
// Applied in that order, rounded and clamped to u8 once at the end.
Tensor degrade_image(const Tensor& hwc_u8, const ImageDegradation& d);

}  // namespace sd::train
