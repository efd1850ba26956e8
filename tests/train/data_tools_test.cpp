// sd_data's library (train/shapes_dataset.h, train/data_tools.h): the shapes generator and its
// caption grammar, the classifier on clean and degraded images, image inspection, caption templates,
// and clean / caption / resize on small folders made here.
//
// Classifier accuracy measured on 2,000 images (seed 7, 64 px; every attribute, all five right):
//   clean 100%; blur sigma 1.0 / 1.5: 100% / 100%; noise sigma 10 / 20: 100% / 99.4%;
//   colour shift (+18, -12, +10) with contrast 0.9: 100%; 4x4 blockiness: 99.3%;
//   blur 0.8 + noise 8 + shift + contrast: 100%; harder: blur 2.0 95.8%, noise 30 98.2%,
//   8x8 blockiness 91.7%. The tests below use 120-150 images per condition, thresholds with margin.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "infer/image_io.h"
#include "infer/sha256.h"
#include "train/data_tools.h"
#include "train/dataset.h"
#include "train/shapes_dataset.h"
#include "tests/test_util.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;
using test::read_jsonl;
using test::read_text;
using test::textured;
using test::write_text;

class DataToolsFolders : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sd_data_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// ---- the generator ---------------------------------------------------------------------------------

TEST(ShapesDataset, CaptionGrammarRoundTrips) {
  int n = 0;
  for (int k = 0; k < kNumShapeKinds; ++k)
    for (int c = 0; c < kNumShapeColors; ++c)
      for (int b = 0; b < kNumShapeColors; ++b)
        for (int p = 0; p < kNumShapePositions; ++p)
          for (int s = 0; s < kNumShapeSizes; ++s) {
            if (b == c) continue;
            const ShapeAttributes a{ShapeKind(k), ShapeColor(c), ShapeColor(b), ShapePosition(p), ShapeSize(s)};
            const std::string text = shape_caption(a);
            const auto back = parse_shape_caption(text);
            ASSERT_TRUE(back.has_value()) << text;
            EXPECT_EQ(*back, a) << text;
            ++n;
          }
  EXPECT_EQ(n, 6 * 8 * 7 * 5 * 2);
  EXPECT_EQ(
      shape_caption({ShapeKind::Circle, ShapeColor::Red, ShapeColor::Blue, ShapePosition::TopLeft, ShapeSize::Small}),
      "a small red circle on a blue background, top left");
  EXPECT_EQ(
      shape_caption({ShapeKind::Star, ShapeColor::White, ShapeColor::Orange, ShapePosition::Center, ShapeSize::Large}),
      "a large white star on an orange background, center");
  EXPECT_TRUE(parse_shape_caption("  A Small red circle on a blue background,   top left "));
  EXPECT_FALSE(parse_shape_caption("a small red circle on a red background, top left"));  // same colour twice
  EXPECT_FALSE(parse_shape_caption("a small red circle on a blue background"));
  EXPECT_FALSE(parse_shape_caption("a tiny red circle on a blue background, top left"));
  EXPECT_FALSE(parse_shape_caption("a small red hexagon on a blue background, top left"));
  EXPECT_FALSE(parse_shape_caption("a small red circle on a blue background, middle"));
}

TEST(ShapesDataset, ScenesCoverEveryValueAndAreDeterministic) {
  std::set<int> shapes, colors, backgrounds, positions, sizes;
  for (uint64_t i = 0; i < 600; ++i) {
    const ShapeScene s = shape_scene(11, i);
    const ShapeScene again = shape_scene(11, i);
    EXPECT_EQ(s.attr, again.attr);
    EXPECT_EQ(s.center_x_milli, again.center_x_milli);
    EXPECT_EQ(s.radius_milli, again.radius_milli);
    EXPECT_NE(s.attr.color, s.attr.background);
    shapes.insert(int(s.attr.shape)), colors.insert(int(s.attr.color)), backgrounds.insert(int(s.attr.background));
    positions.insert(int(s.attr.position)), sizes.insert(int(s.attr.size));
    // Inside the image, with the stated size.
    const bool small = s.attr.size == ShapeSize::Small;
    EXPECT_GE(s.radius_milli, small ? 90 : 170);
    EXPECT_LE(s.radius_milli, small ? 110 : 210);
    EXPECT_GT(s.center_x_milli - s.radius_milli, 0);
    EXPECT_LT(s.center_y_milli + s.radius_milli, 1000);
  }
  EXPECT_EQ(shapes.size(), size_t(kNumShapeKinds));
  EXPECT_EQ(colors.size(), size_t(kNumShapeColors));
  EXPECT_EQ(backgrounds.size(), size_t(kNumShapeColors));
  EXPECT_EQ(positions.size(), size_t(kNumShapePositions));
  EXPECT_EQ(sizes.size(), size_t(kNumShapeSizes));
  // Another seed, another dataset.
  int same = 0;
  for (uint64_t i = 0; i < 50; ++i) same += shape_scene(11, i).attr == shape_scene(12, i).attr;
  EXPECT_LT(same, 10);
}

TEST(ShapesDataset, RenderingIsPinnedAndDrawsWhatItSays) {
  // Integer rasterisation: the same pixels on every machine. Pinned so a change is noticed.
  infer::Sha256 h;
  for (uint64_t i = 0; i < 12; ++i) {
    const Tensor img = render_shape_scene(shape_scene(42, i), 64);
    h.update(img.data_ptr(), img.nbytes());
  }
  EXPECT_EQ(h.hex_digest(), "3d58bc5560bbd43c1381f79c744c60a72f6675e6d437037666658470497e1827");

  ShapeScene s;
  s.attr = {ShapeKind::Square, ShapeColor::Red, ShapeColor::Blue, ShapePosition::TopLeft, ShapeSize::Large};
  s.center_x_milli = 250, s.center_y_milli = 250, s.radius_milli = 200;
  const Tensor img = render_shape_scene(s, 100);  // the square covers [5, 45) x [5, 45)
  const uint8_t* p = img.data<uint8_t>();
  auto px = [&](int y, int x) {
    return std::array<int, 3>{p[(y * 100 + x) * 3], p[(y * 100 + x) * 3 + 1], p[(y * 100 + x) * 3 + 2]};
  };
  EXPECT_EQ(px(25, 25), (std::array<int, 3>{220, 20, 20}));
  EXPECT_EQ(px(5, 5), (std::array<int, 3>{220, 20, 20}));
  EXPECT_EQ(px(44, 44), (std::array<int, 3>{220, 20, 20}));
  EXPECT_EQ(px(4, 25), (std::array<int, 3>{30, 60, 220}));
  EXPECT_EQ(px(45, 25), (std::array<int, 3>{30, 60, 220}));
  EXPECT_EQ(px(99, 99), (std::array<int, 3>{30, 60, 220}));
  int64_t red = 0;
  for (int y = 0; y < 100; ++y)
    for (int x = 0; x < 100; ++x) red += px(y, x) == std::array<int, 3>{220, 20, 20};
  EXPECT_EQ(red, 40 * 40);
}

// ---- the classifier --------------------------------------------------------------------------------

ShapeAccuracy accuracy_on(int64_t n, int64_t size, const ImageDegradation& d, uint64_t seed = 2024) {
  ShapeAccuracy acc;
  for (int64_t i = 0; i < n; ++i) {
    const ShapeScene s = shape_scene(seed, uint64_t(i));
    Tensor img = render_shape_scene(s, size);
    ImageDegradation di = d;
    di.seed = 1000 + uint64_t(i);
    const bool degrade = d.blur_sigma > 0 || d.block > 1 || d.contrast != 1 || d.noise_sigma > 0 ||
                         d.color_shift != std::array<double, 3>{};
    acc.add(s.attr, classify_shape_image(degrade ? degrade_image(img, di) : img));
  }
  return acc;
}

void expect_at_least(const ShapeAccuracy& a, double shape, double other, const char* what) {
  const double n = double(a.images);
  SCOPED_TRACE(std::string(what) + ": " + a.summary());
  std::printf("[ classifier ] %-28s %s\n", what, a.summary().c_str());
  EXPECT_GE(a.shape / n, shape);
  EXPECT_GE(a.color / n, other);
  EXPECT_GE(a.background / n, other);
  EXPECT_GE(a.position / n, other);
  EXPECT_GE(a.size / n, other);
}

TEST(ShapesClassifier, ReadsCleanImagesBack) {
  expect_at_least(accuracy_on(150, 64, {}), 0.99, 0.99, "clean 64 px");
  expect_at_least(accuracy_on(60, 32, {}), 0.97, 0.98, "clean 32 px");
  expect_at_least(accuracy_on(40, 256, {}), 0.99, 0.99, "clean 256 px");
  // Not square: 12 columns of background added on each side of a 96 px image (positions stay nearest
  // their anchors; the radius is measured against the shorter side).
  for (uint64_t i = 0; i < 6; ++i) {
    const ShapeScene s = shape_scene(5, i);
    const Tensor sq = render_shape_scene(s, 96);
    Tensor wide = empty({96, 120, 3}, DType::U8);
    const std::array<uint8_t, 3> bg = shape_color_rgb(s.attr.background);
    for (int64_t y = 0; y < 96; ++y)
      for (int64_t x = 0; x < 120; ++x)
        for (int ch = 0; ch < 3; ++ch)
          wide.data<uint8_t>()[(y * 120 + x) * 3 + ch] =
              x < 12 || x >= 108 ? bg[size_t(ch)] : sq.data<uint8_t>()[(y * 96 + x - 12) * 3 + ch];
    EXPECT_EQ(classify_shape_image(wide).attr, s.attr) << shape_caption(s.attr);
  }
}

TEST(ShapesClassifier, ToleratesBlurNoiseAndColourShifts) {
  ImageDegradation blur;
  blur.blur_sigma = 1.0;
  expect_at_least(accuracy_on(120, 64, blur), 0.96, 0.98, "blur sigma 1.0");
  ImageDegradation noise;
  noise.noise_sigma = 20;
  expect_at_least(accuracy_on(120, 64, noise), 0.96, 0.98, "noise sigma 20");
  ImageDegradation shift;
  shift.contrast = 0.9;
  shift.color_shift = {18, -12, 10};
  expect_at_least(accuracy_on(120, 64, shift), 0.97, 0.98, "shift (+18,-12,+10) x0.9");
  ImageDegradation block;
  block.block = 4;
  expect_at_least(accuracy_on(120, 64, block), 0.95, 0.98, "4x4 blockiness");
  ImageDegradation all;
  all.blur_sigma = 0.8, all.noise_sigma = 8, all.contrast = 0.9, all.color_shift = {12, -8, 8};
  expect_at_least(accuracy_on(120, 64, all), 0.95, 0.98, "blur+noise+shift");
}

TEST(ShapesClassifier, PlainImageHasNoShape) {
  Tensor img = render_shape_scene(shape_scene(1, 0), 64);
  const std::array<uint8_t, 3> green = shape_color_rgb(ShapeColor::Green);
  uint8_t* p = img.data<uint8_t>();
  for (int64_t i = 0; i < 64 * 64; ++i) std::memcpy(p + 3 * i, green.data(), 3);
  ImageDegradation d;
  d.noise_sigma = 5;
  const ShapeEstimate e = classify_shape_image(degrade_image(img, d));
  EXPECT_FALSE(e.found);
  EXPECT_EQ(e.attr.background, ShapeColor::Green);
  EXPECT_THROW(classify_shape_image(empty({8, 8, 3}, DType::U8)), Error);
}

TEST(ShapesClassifier, DegradationsDoWhatTheySay) {
  const Tensor img = render_shape_scene(shape_scene(3, 1), 64);
  ImageDegradation none;
  const Tensor same = degrade_image(img, none);
  EXPECT_EQ(std::memcmp(same.data_ptr(), img.data_ptr(), img.nbytes()), 0);
  ImageDegradation shift;
  shift.color_shift = {10, 0, -300};
  const Tensor s = degrade_image(img, shift);
  EXPECT_EQ(s.data<uint8_t>()[0], std::min(255, img.data<uint8_t>()[0] + 10));
  EXPECT_EQ(s.data<uint8_t>()[2], 0);
  ImageDegradation noise;
  noise.noise_sigma = 10, noise.seed = 9;
  const Tensor n1 = degrade_image(img, noise), n2 = degrade_image(img, noise);
  EXPECT_EQ(std::memcmp(n1.data_ptr(), n2.data_ptr(), n1.nbytes()), 0);  // seeded
}

// ---- inspecting files ------------------------------------------------------------------------------

TEST_F(DataToolsFolders, InspectTellsModesTruncationAndCorruption) {
  const std::string data = SD_TEST_DATA_DIR;
  struct Case {
    std::string file, format, mode;
  } cases[] = {
      {"image_transforms/rgb_37x53.png", "png", "RGB"},
      {"image_transforms/rgba_29x31.png", "png", "RGBA"},
      {"image_transforms/gray_23x19.png", "png", "L"},
      {"image_transforms/gray16_5x9.png", "png", "I;16"},
      {"image_transforms/rgb16_4x5.png", "png", "RGB;16"},
      {"image_transforms/la_7x9.png", "png", "LA"},
      {"image_transforms/palette_10x12.png", "png", "P"},
      {"image_transforms/palette_10x12.gif", "gif", "P"},
      {"image_transforms/rgb_37x53_420.jpg", "jpeg", "RGB"},
      {"sd_data/cmyk_24x16.jpg", "jpeg", "CMYK"},
      {"image_transforms/rgba_29x31_lossless.webp", "webp", "RGBA"},
      {"image_transforms/rgb_9x11.bmp", "bmp", "RGB"},
  };
  for (const Case& c : cases) {
    const ImageFileInfo info = inspect_image_bytes(read_text(data + "/" + c.file), c.file);
    EXPECT_EQ(info.format, c.format) << c.file;
    EXPECT_EQ(info.mode, c.mode) << c.file;
    EXPECT_EQ(info.problem, "") << c.file;
    EXPECT_GT(info.width, 0) << c.file;
  }
  const std::string png = read_text(data + "/image_transforms/rgb_37x53.png");
  EXPECT_EQ(inspect_image_bytes(png.substr(0, png.size() / 2), "half.png").problem.rfind("truncated: ", 0), 0u);
  EXPECT_EQ(inspect_image_bytes(png.substr(0, png.size() - 12), "no_iend.png").problem.rfind("truncated: ", 0), 0u);
  std::string flipped = png;
  flipped[png.size() / 2] ^= 0x55;
  EXPECT_EQ(inspect_image_bytes(flipped, "crc.png").problem.rfind("corrupt: ", 0), 0u);
  EXPECT_EQ(inspect_image_bytes("hello, world", "text.png").problem.rfind("corrupt: ", 0), 0u);
  EXPECT_EQ(inspect_image_bytes("", "empty.png").problem, "corrupt: empty file");
  const std::string jpg = read_text(data + "/image_transforms/rgb_37x53_444.jpg");
  EXPECT_EQ(inspect_image_bytes(jpg.substr(0, jpg.size() * 2 / 3), "cut.jpg").problem.rfind("truncated: ", 0), 0u);
}

TEST(DataTools, CaptionTemplates) {
  const std::string txt = "a red fox";
  EXPECT_EQ(expand_caption_template("a photo of {name}", "red_fox-01.jpg", "root", nullptr), "a photo of red fox 01");
  EXPECT_EQ(expand_caption_template("{name}", "__a__b--c_.png", "root", nullptr), "a b c");
  EXPECT_EQ(expand_caption_template("{folder}: {name}", "10_sks dog/x.png", "root", nullptr), "sks dog: x");
  EXPECT_EQ(expand_caption_template("{folder}", "cats/x.png", "root", nullptr), "cats");
  EXPECT_EQ(expand_caption_template("{folder}", "x.png", "my_set", nullptr), "my_set");
  EXPECT_EQ(expand_caption_template("{caption}, {{photo}}", "x.png", "r", &txt), "a red fox, {photo}");
  EXPECT_THROW(expand_caption_template("{caption}", "x.png", "r", nullptr), Error);
  EXPECT_THROW(check_caption_template("a {nmae}"), DataUsageError);
  EXPECT_THROW(check_caption_template("a {name"), DataUsageError);
  EXPECT_THROW(check_caption_template("a name}"), DataUsageError);
  EXPECT_NO_THROW(check_caption_template("{name} {folder} {caption} {{x}}"));
}

// ---- folders ---------------------------------------------------------------------------------------

TEST_F(DataToolsFolders, GenerateWritesWhatSdTrainReads) {
  GenerateOptions o;
  o.output_dir = (dir_ / "a").string();
  o.num_images = 12;
  o.seed = 5;
  generate_shapes_dataset(o);
  o.output_dir = (dir_ / "b").string();
  generate_shapes_dataset(o);
  const auto lines = read_jsonl(dir_ / "a" / "metadata.jsonl");
  ASSERT_EQ(lines.size(), 12u);
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string f = lines[i]["file_name"];
    EXPECT_EQ(read_text(dir_ / "a" / f), read_text(dir_ / "b" / f)) << f;
    const ShapeScene s = shape_scene(5, i);
    EXPECT_EQ(lines[i]["text"], shape_caption(s.attr));
    const Tensor img = infer::load_image_u8((dir_ / "a" / f).string());
    const Tensor expect = render_shape_scene(s, 64);
    EXPECT_EQ(std::memcmp(img.data_ptr(), expect.data_ptr(), expect.nbytes()), 0) << f;
  }
  EXPECT_EQ(read_text(dir_ / "a" / "metadata.jsonl"), read_text(dir_ / "b" / "metadata.jsonl"));
  const TrainDataset d = TrainDataset::from_folder((dir_ / "a").string());
  EXPECT_EQ(d.size(), 12);
  EXPECT_EQ(d.item(0).caption, lines[0]["text"].get<std::string>());
  // Not into a folder that holds files, unless asked.
  o.output_dir = (dir_ / "a").string();
  EXPECT_THROW(generate_shapes_dataset(o), Error);
  o.overwrite = true;
  EXPECT_NO_THROW(generate_shapes_dataset(o));
}

TEST_F(DataToolsFolders, ResizeSizesAndCaptions) {
  const fs::path in = dir_ / "in", out = dir_ / "out", out_crop = dir_ / "out_crop";
  fs::create_directories(in / "sub");
  infer::save_png((in / "wide.png").string(), textured(30, 40, 1));
  infer::save_png((in / "sub" / "tall.png").string(), textured(50, 30, 2));
  write_text(in / "wide.txt", "a wide one");
  write_text(in / "broken.png", "not a png");
  ResizeOptions o;
  o.input_dir = in.string(), o.output_dir = out.string(), o.resolution = 16;
  ResizeResult r = resize_dataset(o);
  EXPECT_EQ(r.written, 2);
  ASSERT_EQ(r.failed.size(), 1u);
  EXPECT_EQ(r.failed[0].first, "broken.png");
  Tensor a = infer::load_image_u8((out / "wide.png").string()),
         b = infer::load_image_u8((out / "sub" / "tall.png").string());
  EXPECT_EQ(a.shape(), (Shape{16, 21, 3}));  // int(16 * 40 / 30) = 21
  EXPECT_EQ(b.shape(), (Shape{26, 16, 3}));  // int(16 * 50 / 30) = 26
  EXPECT_EQ(read_text(out / "wide.txt"), "a wide one");
  // The same pixels sd_train's Resize makes.
  const Tensor ref = resize_shorter_side(decode_image_file((in / "wide.png").string()), 16, Interpolation::Lanczos);
  EXPECT_EQ(std::memcmp(a.data_ptr(), ref.data_ptr(), ref.nbytes()), 0);
  o.output_dir = out_crop.string(), o.center_crop = true, o.resolution = 12;
  r = resize_dataset(o);
  EXPECT_EQ(infer::load_image_u8((out_crop / "wide.png").string()).shape(), (Shape{12, 12, 3}));
  EXPECT_EQ(infer::load_image_u8((out_crop / "sub" / "tall.png").string()).shape(), (Shape{12, 12, 3}));
  o.output_dir = in.string();
  EXPECT_THROW(resize_dataset(o), DataUsageError);
}

TEST_F(DataToolsFolders, CleanDecidesInOrderAndKeepsTheFirstDuplicate) {
  const fs::path in = dir_ / "in";
  fs::create_directories(in);
  infer::save_png((in / "b_good.png").string(), textured(40, 40, 3));
  fs::copy_file(in / "b_good.png", in / "a_dup.png");  // the same bytes, sorted first: it stays
  fs::copy_file(in / "b_good.png", in / "c_dup.png");
  infer::save_png((in / "small.png").string(), textured(20, 40, 4));
  const std::string before = read_text(in / "b_good.png");
  CleanOptions o;
  o.input_dir = in.string(), o.min_side = 32, o.min_bytes = 0, o.dry_run = true;
  CleanReport r = clean_dataset(o);
  ASSERT_EQ(r.entries.size(), 4u);
  EXPECT_EQ(r.entries[0].file, "a_dup.png");
  EXPECT_EQ(r.entries[0].action, "keep");
  EXPECT_EQ(r.entries[1].action, "drop");
  EXPECT_EQ(r.entries[1].duplicate_of, "a_dup.png");
  EXPECT_EQ(r.entries[2].reason, "duplicate of a_dup.png");
  EXPECT_EQ(r.entries[3].reason, "too small: 40x20, shorter side under 32");
  EXPECT_EQ(r.report_path, "");
  EXPECT_FALSE(fs::exists(in / "clean_report.jsonl"));
  o.min_side = 0, o.min_bytes = int64_t(before.size()) + 1;
  r = clean_dataset(o);
  EXPECT_EQ(r.dropped, 4);
  EXPECT_EQ(r.entries[0].reason.rfind("too small: ", 0), 0u);
  EXPECT_EQ(read_text(in / "b_good.png"), before);
}

}  // namespace
}  // namespace sd::train
