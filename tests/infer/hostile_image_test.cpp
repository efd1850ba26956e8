// Hostile and damaged images (init images, dataset files): every one ends in an sd::Error naming
// the file -- no out-of-bounds read (the sanitizer build runs these too), no silent acceptance of
// a truncated file, no allocation from a header's claimed size.
#include <gtest/gtest.h>

#include <zlib.h>

#include <filesystem>

#include "infer/image_decode.h"
#include "infer/image_io.h"
#include "runtime/rng_core.h"
#include "tests/test_util.h"

namespace sd {
namespace {

namespace fs = std::filesystem;
using test::error_of;
using test::peak_rss_mib;

const std::string kImages = std::string(SD_TEST_DATA_DIR) + "/image_transforms/";

std::string decode_error(const std::string& bytes, const std::string& name = "hostile-image") {
  return error_of([&] { infer::decode_image_rgb(bytes.data(), bytes.size(), name); });
}

void put_be32(std::string& s, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) s[at + size_t(i)] = char(v >> (24 - 8 * i));
}

TEST(HostileImage, DamagedJpegHuffmanTablesAreErrors) {
  // The report's crafted JPEG sent stb_image's Huffman decoder out of bounds; libjpeg-turbo
  // checks its tables. Oversubscribe the first DHT (code counts far over what 16 bits allow),
  // then break the Huffman-coded scan data itself.
  const std::string jpg = test::read_text(kImages + "rgb_37x53_420.jpg");
  ASSERT_FALSE(jpg.empty());
  const size_t dht = jpg.find("\xFF\xC4");
  ASSERT_NE(dht, std::string::npos);
  std::string bad = jpg;
  for (size_t i = 0; i < 16; ++i) bad[dht + 5 + i] = char(0xFF);
  std::string msg = decode_error(bad, "crafted.jpg");
  EXPECT_NE(msg.find("crafted.jpg"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Huffman"), std::string::npos) << msg;
  // Random damage in the scan: each copy either decodes (libjpeg recovers, as PIL does) or is an
  // error; what matters is that none reads out of bounds (checked under AddressSanitizer).
  const size_t sos = jpg.find("\xFF\xDA");
  ASSERT_NE(sos, std::string::npos);
  uint64_t state = 12345;
  for (int round = 0; round < 200; ++round) {
    std::string d = jpg;
    for (int k = 0; k < 8; ++k) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      const size_t at = sos + 2 + size_t((state >> 33) % (d.size() - sos - 4));
      d[at] = char(state >> 24);
    }
    const std::string m = decode_error(d, "flipped.jpg");
    if (!m.empty()) EXPECT_NE(m.find("flipped.jpg"), std::string::npos) << m;
  }
}

TEST(HostileImage, TruncatedFilesAreRefused) {
  for (const char* f : {"rgb_37x53_420.jpg", "rgb_37x53.png", "palette_10x12.gif", "rgb_37x53_lossy.webp", "rgb_9x11.bmp"}) {
    const std::string whole = test::read_text(kImages + f);
    ASSERT_FALSE(whole.empty()) << f;
    EXPECT_EQ(decode_error(whole), "") << f;
    const std::string msg = decode_error(whole.substr(0, whole.size() * 2 / 3), std::string("cut-") + f);
    EXPECT_NE(msg.find(std::string("cut-") + f), std::string::npos) << f << ": " << msg;
  }
}

TEST(HostileImage, FormatsOutsideTheListAreRefusedByTheirSignature) {
  // The report's truncated 16-bit PPM, which stb accepted silently: PNM is not read at all now.
  std::string ppm = "P6\n4 4\n65535\n";
  ppm.append(20, '\x7f');  // 4x4x3 16-bit samples need 96 bytes
  const fs::path p = fs::temp_directory_path() / ("sd_hostile_" + std::to_string(::getpid()) + ".ppm");
  test::write_text(p, ppm);
  const std::string msg = error_of([&] { infer::load_image(p.string()); });
  EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a PNG, JPEG, WebP, GIF or BMP"), std::string::npos) << msg;
  fs::remove(p);
  for (const std::string& other : {std::string("8BPS\x00\x01"), std::string("#?RADIANCE\n"), std::string("\x00\x00\x02\x00", 4)})
    EXPECT_NE(decode_error(other).find("not a PNG"), std::string::npos);
}

TEST(HostileImage, HeaderSizesOverTheLimitAreRefusedBeforeAllocation) {
  // A PNG whose header claims 100000 x 100000 pixels (40 GB of RGBA): refused from the header.
  std::string png = test::read_text(kImages + "rgb_37x53.png");
  put_be32(png, 16, 100000);
  put_be32(png, 20, 100000);
  put_be32(png, 29, uint32_t(crc32(0, reinterpret_cast<const Bytef*>(png.data() + 12), 17)));  // IHDR's CRC
  const double before = peak_rss_mib();
  std::string msg = decode_error(png, "huge.png");
  EXPECT_NE(msg.find("decompression-bomb limit"), std::string::npos) << msg;
  infer::ImageHeader h;
  EXPECT_NE(infer::probe_image(png.data(), png.size(), &h).find("decompression-bomb"), std::string::npos);
  // A JPEG claiming 60000 x 60000.
  std::string jpg = test::read_text(kImages + "rgb_37x53_420.jpg");
  const size_t sof = jpg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  jpg[sof + 5] = char(0xEA), jpg[sof + 6] = char(0x60), jpg[sof + 7] = char(0xEA), jpg[sof + 8] = char(0x60);
  msg = decode_error(jpg, "huge.jpg");
  EXPECT_NE(msg.find("decompression-bomb limit"), std::string::npos) << msg;
  // A GIF whose logical screen is 65535 x 65535 (4.3 G pixels).
  std::string gif = test::read_text(kImages + "palette_10x12.gif");
  gif[6] = gif[7] = gif[8] = gif[9] = char(0xFF);
  msg = decode_error(gif, "huge.gif");
  EXPECT_NE(msg.find("decompression-bomb limit"), std::string::npos) << msg;
  EXPECT_LT(peak_rss_mib() - before, 50.0);
}

TEST(HostileImage, GifWhoseErrorCodeGiflibCannotNameIsAnError) {
  // Found by fuzz_image in CI: a damaged GIF whose failing call left an error code without a
  // message (GifErrorString returned null and the message was built from it).
  const unsigned char gif[] = {0x47, 0x49, 0x46, 0x38, 0x37, 0x61, 0x0c, 0x00, 0x0a, 0x00, 0x82, 0x00, 0x00, 0x00, 0x5b, 0xb6,
                               0x25, 0x80, 0xdb, 0x4a, 0xa5, 0x00, 0x6f, 0xca, 0x25, 0x94, 0xef, 0x4a, 0xb9, 0x14, 0x6f, 0xde,
                               0x39, 0x94, 0x03, 0x5e, 0xb9, 0x2c, 0x5a, 0x98, 0x02, 0x22, 0x1a, 0x08, 0x00, 0x00, 0x3b};
  const std::string msg = decode_error(std::string(reinterpret_cast<const char*>(gif), sizeof(gif)), "fuzzed.gif");
  EXPECT_NE(msg.find("cannot decode GIF image 'fuzzed.gif'"), std::string::npos) << msg;
}

TEST(HostileImage, EmptyAndTinyInputsAreErrors) {
  for (const std::string& s : {std::string(), std::string("\x89PNG\r\n\x1a\n"), std::string("\xFF\xD8\xFF"),
                               std::string("GIF89a"), std::string("BM"), std::string("RIFF\0\0\0\0WEBP", 12)})
    EXPECT_NE(decode_error(s), "") << s.size();
}

}  // namespace
}  // namespace sd
