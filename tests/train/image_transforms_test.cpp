// Training-image decoding and transforms. ImageTransforms.*: the rules (sizes, offsets, flips,
// normalisation, the seeded draw, errors). GoldenImageTransforms.*: against PIL 13 on the fixtures
// of tests/golden/make_image_transform_goldens.py (decoded pixels, every resize filter at
// down/up/mixed sizes, the full diffusers transform), bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/error.h"
#include "runtime/safetensors.h"
#include "train/image_transforms.h"

namespace sd::train {
namespace {

using json = nlohmann::json;

const std::string kDir = std::string(SD_TEST_DATA_DIR) + "/image_transforms";

std::string tmp_dir() {
  std::string d = std::string(::testing::TempDir()) + "sd_image_transforms";
  std::filesystem::create_directories(d);
  return d;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

Tensor u8_image(int64_t h, int64_t w, int64_t c, uint32_t seed) {
  Tensor t = empty({h, w, c}, DType::U8);
  uint8_t* p = t.data<uint8_t>();
  uint32_t s = seed * 2654435761u + 1;
  for (int64_t i = 0; i < h * w * c; ++i) {
    s = s * 1664525u + 1013904223u;
    p[i] = uint8_t(s >> 24);
  }
  return t;
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const auto* p = static_cast<const uint8_t*>(t.data_ptr());
  return std::vector<uint8_t>(p, p + t.nbytes());
}

// Equal shapes and bytes; on a mismatch, how many elements differ and by how much at most.
::testing::AssertionResult same_u8(const Tensor& actual, const Tensor& expected) {
  if (actual.shape() != expected.shape())
    return ::testing::AssertionFailure() << "shape " << actual.str() << " vs " << expected.str();
  const auto a = bytes_of(actual), e = bytes_of(expected);
  int64_t bad = 0, worst = 0, first = -1;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != e[i]) {
      if (first < 0) first = int64_t(i);
      ++bad;
      worst = std::max<int64_t>(worst, std::abs(int(a[i]) - int(e[i])));
    }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << a.size() << " values differ, by up to " << worst
                                       << " (first at element " << first << ": " << int(a[size_t(first)]) << " vs "
                                       << int(e[size_t(first)]) << ")";
}

int max_abs_diff_u8(const Tensor& a, const Tensor& b) {
  const auto x = bytes_of(a), y = bytes_of(b);
  int m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(int(x[i]) - int(y[i])));
  return m;
}

void expect_error_naming(const std::function<void()>& f, const std::string& name) {
  try {
    f();
    ADD_FAILURE() << "no error for " << name;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
}

// ---- rules ---------------------------------------------------------------------------------

TEST(ImageTransforms, ParsesTheInterpolationNames) {
  EXPECT_EQ(parse_interpolation("lanczos"), Interpolation::Lanczos);
  EXPECT_EQ(parse_interpolation("bilinear"), Interpolation::Bilinear);
  EXPECT_EQ(parse_interpolation("bicubic"), Interpolation::Bicubic);
  EXPECT_EQ(parse_interpolation("nearest"), Interpolation::Nearest);
  for (auto i : {Interpolation::Lanczos, Interpolation::Bilinear, Interpolation::Bicubic, Interpolation::Nearest})
    EXPECT_EQ(parse_interpolation(interpolation_name(i)), i);
  try {
    parse_interpolation("area");
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const char* n : {"'area'", "lanczos", "bilinear", "bicubic", "nearest"}) EXPECT_NE(m.find(n), std::string::npos) << m;
  }
}

TEST(ImageTransforms, ShorterSideSizeTruncatesLikeTorchvision) {
  using A = std::array<int64_t, 2>;
  EXPECT_EQ(shorter_side_size(37, 53, 32), (A{32, 45}));      // 45.83 -> 45
  EXPECT_EQ(shorter_side_size(53, 37, 32), (A{45, 32}));
  EXPECT_EQ(shorter_side_size(768, 1024, 512), (A{512, 682}));  // 682.67 -> 682
  EXPECT_EQ(shorter_side_size(512, 512, 512), (A{512, 512}));
  EXPECT_EQ(shorter_side_size(1000, 1001, 512), (A{512, 512}));
  EXPECT_EQ(shorter_side_size(100, 50, 200), (A{400, 200}));   // upscaling too
}

TEST(ImageTransforms, CenterCropRoundsHalfToEven) {
  using A = std::array<int64_t, 2>;
  // Python round(): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4, 6.5 -> 6.
  EXPECT_EQ(center_crop_offsets(33, 35, 32, 32), (A{0, 2}));
  EXPECT_EQ(center_crop_offsets(37, 39, 32, 32), (A{2, 4}));
  EXPECT_EQ(center_crop_offsets(32, 45, 32, 32), (A{0, 6}));
  EXPECT_EQ(center_crop_offsets(36, 40, 32, 32), (A{2, 4}));
  EXPECT_THROW(center_crop_offsets(31, 40, 32, 32), Error);
}

TEST(ImageTransforms, CropAndFlipMoveWholePixels) {
  Tensor img = u8_image(5, 7, 3, 1);
  Tensor c = crop(img, 1, 2, 3, 4);
  ASSERT_EQ(c.shape(), (Shape{3, 4, 3}));
  Tensor f = hflip(c);
  const uint8_t *s = img.data<uint8_t>(), *cp = c.data<uint8_t>(), *fp = f.data<uint8_t>();
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 4; ++x)
      for (int k = 0; k < 3; ++k) {
        EXPECT_EQ(cp[(y * 4 + x) * 3 + k], s[((y + 1) * 7 + x + 2) * 3 + k]);
        EXPECT_EQ(fp[(y * 4 + x) * 3 + k], cp[(y * 4 + 3 - x) * 3 + k]);
      }
  EXPECT_THROW(crop(img, 3, 0, 3, 7), Error);
  EXPECT_THROW(crop(img, 0, -1, 2, 2), Error);
}

TEST(ImageTransforms, TrainingTensorIsToTensorThenNormalize) {
  Tensor img = empty({1, 256, 3}, DType::U8);
  for (int v = 0; v < 256; ++v)
    for (int c = 0; c < 3; ++c) img.data<uint8_t>()[v * 3 + c] = uint8_t((v + 85 * c) % 256);
  Tensor t = to_training_tensor(img);
  ASSERT_EQ(t.shape(), (Shape{3, 1, 256}));
  const float* p = t.data<float>();
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) {
      const float x = float((v + 85 * c) % 256) / 255.0f;
      EXPECT_EQ(p[c * 256 + v], (x - 0.5f) / 0.5f);
    }
  EXPECT_EQ(p[0], -1.0f);
  EXPECT_EQ(p[255], 1.0f);
}

TEST(ImageTransforms, ResizeKeepsConstantImagesAndShapes) {
  Tensor img = full({13, 17, 3}, 200.0, DType::U8);
  for (auto i : {Interpolation::Nearest, Interpolation::Bilinear, Interpolation::Bicubic, Interpolation::Lanczos})
    for (auto [h, w] : std::vector<std::pair<int64_t, int64_t>>{{5, 6}, {40, 9}, {13, 30}, {1, 1}}) {
      Tensor r = resize_u8(img, h, w, i);
      ASSERT_EQ(r.shape(), (Shape{h, w, 3}));
      for (uint8_t v : bytes_of(r)) ASSERT_EQ(v, 200) << interpolation_name(i) << " " << h << "x" << w;
    }
  Tensor same = resize_u8(img, 13, 17, Interpolation::Lanczos);
  EXPECT_TRUE(same_u8(same, img));
  EXPECT_THROW(resize_u8(img, 0, 5, Interpolation::Bilinear), Error);
  EXPECT_THROW(resize_u8(empty({4, 4}, DType::U8), 2, 2, Interpolation::Bilinear), Error);
}

TEST(ImageTransforms, SeededDrawDependsOnlyOnSeedAndIndex) {
  Tensor img = u8_image(40, 61, 3, 7);
  TransformParams p{.resolution = 32, .interp = Interpolation::Bilinear, .center_crop = false, .random_flip = true};
  // resized to 32 x 48: the crop's left offset ranges over 0..16, top is always 0.
  constexpr int kN = 600;
  std::vector<TrainImage> serial(kN);
  for (int i = 0; i < kN; ++i) serial[i] = transform_for_training(img, p, 1234, uint64_t(i));
  // Other threads, reversed order: the same draws and pixels.
  std::vector<TrainImage> threaded(kN);
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t)
    pool.emplace_back([&, t] {
      for (int i = kN - 1 - t; i >= 0; i -= 4) threaded[i] = transform_for_training(img, p, 1234, uint64_t(i));
    });
  for (auto& th : pool) th.join();
  std::set<int64_t> lefts;
  int flips = 0;
  for (int i = 0; i < kN; ++i) {
    const TrainImage& a = serial[i];
    const TrainImage& b = threaded[i];
    ASSERT_EQ(a.crop_offset, b.crop_offset);
    ASSERT_EQ(a.flipped, b.flipped);
    ASSERT_EQ(bytes_of(a.pixels), bytes_of(b.pixels));
    EXPECT_EQ(a.original_size, (std::array<int64_t, 2>{40, 61}));
    EXPECT_EQ(a.crop_offset[0], 0);
    EXPECT_GE(a.crop_offset[1], 0);
    EXPECT_LE(a.crop_offset[1], 16);
    lefts.insert(a.crop_offset[1]);
    if (a.flipped) {
      ++flips;
      EXPECT_EQ(a.crop_top_left[1], 32 - a.crop_offset[1]);  // diffusers' x1 = image.width - x1
    } else {
      EXPECT_EQ(a.crop_top_left, a.crop_offset);
    }
  }
  EXPECT_EQ(lefts.size(), 17u);  // every position reached
  EXPECT_GT(flips, kN / 2 - 60);
  EXPECT_LT(flips, kN / 2 + 60);
  // Another seed draws differently; the pixels match an explicit crop (+ flip).
  int differ = 0;
  for (int i = 0; i < 50; ++i) differ += transform_for_training(img, p, 99, uint64_t(i)).crop_offset != serial[i].crop_offset;
  EXPECT_GT(differ, 25);
  const TrainImage& s = serial[3];
  Tensor expect = crop(resize_shorter_side(img, 32, Interpolation::Bilinear), s.crop_offset[0], s.crop_offset[1], 32, 32);
  if (s.flipped) expect = hflip(expect);
  EXPECT_EQ(bytes_of(to_training_tensor(expect)), bytes_of(s.pixels));
}

TEST(ImageTransforms, CenterCropWithoutFlipIsDeterministic) {
  Tensor img = u8_image(50, 41, 3, 3);
  TransformParams p{.resolution = 24, .interp = Interpolation::Lanczos, .center_crop = true, .random_flip = false};
  TrainImage a = transform_for_training(img, p, 1, 0), b = transform_for_training(img, p, 2, 77);
  EXPECT_EQ(bytes_of(a.pixels), bytes_of(b.pixels));
  EXPECT_FALSE(a.flipped);
  // 41 -> 24 wide, 50 -> int(24 * 50 / 41) = 29 high; top = round(2.5) = 2.
  EXPECT_EQ(a.crop_offset, (std::array<int64_t, 2>{2, 0}));
  EXPECT_EQ(a.crop_top_left, a.crop_offset);
  EXPECT_EQ(a.pixels.shape(), (Shape{3, 24, 24}));
}

TEST(ImageTransforms, BadDataRaisesErrorsNamingTheFile) {
  const std::string dir = tmp_dir();
  const std::string png = read_bytes(kDir + "/rgb_37x53.png");
  const std::string jpg = read_bytes(kDir + "/rgb_37x53_420.jpg");
  const std::string webp = read_bytes(kDir + "/rgb_37x53_lossy.webp");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"truncated.png", png.substr(0, png.size() / 2)},
      {"header_only.png", png.substr(0, 40)},
      {"truncated.jpg", jpg.substr(0, jpg.size() * 2 / 3)},
      {"truncated.webp", webp.substr(0, webp.size() / 2)},
      {"random.png", std::string("\x13\x37\xbe\xef random bytes that are no image at all \x01\x02")},
      {"riff_not_webp.webp", std::string("RIFF\x10\0\0\0WEBPVP8 \x04\0\0\0abcd", 24)},
      {"empty.png", ""},
  };
  for (const auto& c : cases) {
    const std::string& name = c.first;  // plain references: the lambdas capture them (clang < 16)
    const std::string& bytes = c.second;
    const std::string path = dir + "/" + name;
    write_bytes(path, bytes);
    expect_error_naming([&] { decode_image_file(path); }, name);
    expect_error_naming([&] { decode_image(bytes.data(), bytes.size(), "in-memory " + name); }, "in-memory " + name);
  }
  expect_error_naming([&] { decode_image_file(dir + "/missing.png"); }, "missing.png");
  expect_error_naming([&] { decode_image_file(dir); }, dir);
}

TEST(ImageTransforms, DecodesFromMemoryAsFromFile) {
  const std::string bytes = read_bytes(kDir + "/rgb_37x53_lossy.webp");
  EXPECT_TRUE(same_u8(decode_image(bytes.data(), bytes.size(), "x.webp"), decode_image_file(kDir + "/rgb_37x53_lossy.webp")));
}

// ---- against PIL ---------------------------------------------------------------------------

struct Goldens {
  SafetensorsFile file;
  json files, full, size_rule;
  Tensor t(const std::string& k) const { return file.get(k); }
};

const Goldens& goldens() {
  static const Goldens g = [] {
    SafetensorsFile f = SafetensorsFile::open(kDir + "/goldens.safetensors");
    const auto& m = f.metadata();
    return Goldens{f, json::parse(m.at("files")), json::parse(m.at("full")), json::parse(m.at("size_rule"))};
  }();
  return g;
}

Tensor source(const std::string& name) {
  return decode_image_file(kDir + "/" + goldens().files.at(name).get<std::string>());
}

TEST(GoldenImageTransforms, DecodesLikePilConvertRgb) {
  // Exact: PNG (RGB, RGBA with alpha dropped, L, LA, 16-bit gray clipped, 16-bit RGB and gray +
  // alpha (high byte), palette with tRNS),
  // WebP (lossy and lossless with alpha), BMP, GIF.
  for (const char* name : {"rgb", "big", "rgba", "gray", "la", "gray16", "rgb16", "la16", "palette", "webp_lossy",
                           "webp_lossless", "bmp", "gif"}) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(same_u8(source(name), goldens().t(std::string("decoded/") + name)));
  }
}

TEST(GoldenImageTransforms, JpegDecodingMatchesPilBitForBit) {
  // JPEG goes through libjpeg-turbo with PIL's settings (integer IDCT, fancy upsampling), so the
  // decoded values are PIL's exactly (stb_image's decoder was off by up to 3 levels).
  for (const char* name : {"jpeg420", "jpeg444"}) {
    Tensor ours = source(name), pil = goldens().t(std::string("decoded/") + name);
    ASSERT_EQ(ours.shape(), pil.shape());
    EXPECT_EQ(max_abs_diff_u8(ours, pil), 0) << name;
  }
}

TEST(GoldenImageTransforms, ResizeMatchesPilBitForBit) {
  int cases = 0;
  for (const std::string& key : goldens().file.keys()) {
    if (key.rfind("resize/", 0) != 0) continue;
    // resize/<source>/<interp>/<h>x<w>
    const size_t a = key.find('/', 7), b = key.find('/', a + 1), x = key.find('x', b + 1);
    const std::string src = key.substr(7, a - 7), interp = key.substr(a + 1, b - a - 1);
    const int64_t h = std::stoll(key.substr(b + 1, x - b - 1)), w = std::stoll(key.substr(x + 1));
    SCOPED_TRACE(key);
    EXPECT_TRUE(same_u8(resize_u8(source(src), h, w, parse_interpolation(interp)), goldens().t(key)));
    ++cases;
  }
  EXPECT_EQ(cases, 48);
}

TEST(GoldenImageTransforms, SizeRuleMatchesTorchvision) {
  for (const auto& c : goldens().size_rule) {
    const auto hw = shorter_side_size(c[0].get<int64_t>(), c[1].get<int64_t>(), c[2].get<int64_t>());
    EXPECT_EQ(hw[0], c[3].get<int64_t>()) << c.dump();
    EXPECT_EQ(hw[1], c[4].get<int64_t>()) << c.dump();
  }
}

TEST(GoldenImageTransforms, FullTransformMatchesDiffusers) {
  for (const auto& c : goldens().full) {
    const std::string key = c.at("key");
    SCOPED_TRACE(key);
    Tensor img = source(c.at("source"));
    TransformParams p{.resolution = c.at("resolution").get<int64_t>(),
                      .interp = parse_interpolation(c.at("interpolation")),
                      .center_crop = true,
                      .random_flip = true};
    Tensor expected = goldens().t(key);
    const auto& resized = c.at("resized_hw");
    EXPECT_EQ(shorter_side_size(img.size(0), img.size(1), p.resolution),
              (std::array<int64_t, 2>{resized[0].get<int64_t>(), resized[1].get<int64_t>()}));
    bool seen[2] = {false, false};
    for (uint64_t index = 0; index < 64 && !(seen[0] && seen[1]); ++index) {
      TrainImage t = transform_for_training(img, p, 5, index);
      EXPECT_EQ(t.original_size[0], c.at("original_size")[0].get<int64_t>());
      EXPECT_EQ(t.original_size[1], c.at("original_size")[1].get<int64_t>());
      EXPECT_EQ(t.crop_offset[0], c.at("crop_top_left")[0].get<int64_t>());
      EXPECT_EQ(t.crop_offset[1], c.at("crop_top_left")[1].get<int64_t>());
      ASSERT_EQ(t.pixels.shape(), expected.shape());
      const int64_t R = p.resolution;
      const float *got = t.pixels.data<float>(), *want = expected.data<float>();
      int64_t bad = 0;
      for (int64_t ch = 0; ch < 3; ++ch)
        for (int64_t y = 0; y < R; ++y)
          for (int64_t x = 0; x < R; ++x) {
            const int64_t sx = t.flipped ? R - 1 - x : x;
            bad += got[(ch * R + y) * R + x] != want[(ch * R + y) * R + sx];  // exact float equality
          }
      EXPECT_EQ(bad, 0) << (t.flipped ? "flipped" : "not flipped");
      if (t.flipped) EXPECT_EQ(t.crop_top_left[1], R - t.crop_offset[1]);
      seen[t.flipped] = true;
    }
    EXPECT_TRUE(seen[0] && seen[1]);
  }
}

}  // namespace
}  // namespace sd::train
