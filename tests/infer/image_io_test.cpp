// PNG round trip with text chunks, image decoding errors, and file naming.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "infer/image_io.h"
#include "tests/test_util.h"

namespace sd::infer {
namespace {

std::string tmp_dir() {
  std::string d = std::string(::testing::TempDir()) + "sd_image_io";
  std::filesystem::create_directories(d);
  return d;
}

TEST(ImageIo, PngRoundTripKeepsPixelsAndParameters) {
  Tensor img = test::random_tensor({3, 17, 23}, DType::F32, 3, -1.2, 1.2);  // beyond range: clamped
  const std::string path = tmp_dir() + "/roundtrip.png";
  const std::string params = "a photo of a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 23x17";
  save_png(path, img, {{"parameters", params}, {"comment", "caf\xc3\xa9 \xe7\x8c\xab"}});
  auto text = read_png_text(path);
  EXPECT_EQ(text["parameters"], params);
  EXPECT_EQ(text["comment"], "caf\xc3\xa9 \xe7\x8c\xab");  // UTF-8 kept through iTXt
  Tensor back = load_image(path);
  ASSERT_EQ(back.shape(), (Shape{3, 17, 23}));
  std::vector<float> a = img.to_float_vector(), b = back.to_float_vector();
  for (size_t i = 0; i < a.size(); ++i) {
    const float expected = std::min(1.f, std::max(-1.f, a[i]));
    ASSERT_NEAR(b[i], expected, 1.0 / 127.5 * 0.51 + 1e-6) << i;  // one 8-bit step of quantisation
  }
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(ImageIo, DecodingErrorsNameTheFile) {
  const std::string dir = tmp_dir();
  try {
    load_image(dir + "/missing.png");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.png"), std::string::npos);
  }
  const std::string bad = dir + "/corrupt.jpg";
  std::ofstream(bad) << "this is not an image";
  try {
    load_image(bad);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("corrupt.jpg"), std::string::npos) << e.what();
  }
}

TEST(ImageIo, NextFreePathNeverOverwrites) {
  const std::string dir = tmp_dir() + "/names";
  std::filesystem::remove_all(dir);
  const std::string a = next_free_png_path(dir, "img");
  save_png(a, zeros({4, 4, 3}, DType::U8));
  const std::string b = next_free_png_path(dir, "img");
  EXPECT_NE(a, b);
  EXPECT_TRUE(std::filesystem::exists(a));
  EXPECT_FALSE(std::filesystem::exists(b));
}

TEST(ImageIo, DecodesTheDreamBoothJpegs) {
  Tensor img = load_image_u8(std::string(SD_TEST_DATA_DIR) + "/images/dog_00.jpg");
  EXPECT_EQ(img.dim(), 3);
  EXPECT_EQ(img.size(2), 3);
  EXPECT_GT(img.size(0), 256);
}

}  // namespace
}  // namespace sd::infer
