// The Parquet reader against files pyarrow and `datasets` wrote (tests/data/parquet, made by
// tests/golden/make_parquet_fixtures.py): every value of every byte-array column of every file
// must equal what pyarrow reads back (expected.json), over all codecs, PLAIN and dictionary
// encodings, data pages v1 and v2, several row groups and pages, nulls, a struct column, a
// dictionary that falls back to PLAIN mid-chunk and a compressed dictionary short enough for a
// std::string's inline buffer (a view kept into one dangled once). Then the refusals and damaged
// files: each must raise sd::Error naming the file (and the column, row group and page where one
// is involved), and randomly damaged files must never do anything else.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "runtime/error.h"
#include "train/parquet.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;

const std::string kDir = std::string(SD_TEST_DATA_DIR) + "/parquet";

nlohmann::json expected() {
  std::ifstream in(kDir + "/expected.json");
  EXPECT_TRUE(in.good()) << "missing " << kDir << "/expected.json";
  return nlohmann::json::parse(in);
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A damaged copy of a fixture in the test's temporary folder.
std::string write_temp(const std::string& name, const std::string& bytes) {
  const std::string path = (fs::path(::testing::TempDir()) / ("parquet_" + name)).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  EXPECT_TRUE(out.good()) << "cannot write " << path;
  return path;
}

std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string h;
  for (unsigned char c : s) {
    h += digits[c >> 4];
    h += digits[c & 15];
  }
  return h;
}

// Runs f, which must throw sd::Error; returns its message ("" and a test failure otherwise).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const sd::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no sd::Error was thrown";
  return "";
}

TEST(Parquet, ReadsEveryValueAsPyarrowDoes) {
  const nlohmann::json all = expected();
  ASSERT_GE(all["files"].size(), 20u);
  std::set<std::string> codecs;
  for (const auto& [name, want] : all["files"].items()) {
    SCOPED_TRACE(name);
    const ParquetFile f = ParquetFile::open(kDir + "/" + name);
    EXPECT_EQ(f.num_rows(), want["num_rows"].get<int64_t>());
    EXPECT_EQ(f.num_row_groups(), want["num_row_groups"].get<int64_t>());
    EXPECT_EQ(f.column_paths(), want["column_paths"].get<std::vector<std::string>>());
    for (const auto& c : want["codecs"]) codecs.insert(c.get<std::string>());
    ASSERT_FALSE(want["byte_columns"].empty());
    for (const auto& [column, values] : want["byte_columns"].items()) {
      SCOPED_TRACE(column);
      const std::vector<ParquetBytes> got = f.read_bytes_column(column);
      ASSERT_EQ(got.size(), values.size());
      for (size_t i = 0; i < got.size(); ++i) {
        if (values[i].is_null()) {
          EXPECT_FALSE(got[i].has_value()) << "row " << i << " should be null";
        } else {
          ASSERT_TRUE(got[i].has_value()) << "row " << i << " should not be null";
          EXPECT_EQ(hex(*got[i]), values[i].get<std::string>()) << "row " << i;
        }
      }
    }
  }
  // The fixtures cover every codec the reader supports.
  EXPECT_EQ(codecs, (std::set<std::string>{"GZIP", "SNAPPY", "UNCOMPRESSED", "ZSTD"}));
}

// What sd_train --dataset_name reads: a `datasets` Image column (struct {bytes, path}) and text.
TEST(Parquet, ReadsAHuggingFaceImageDataset) {
  const ParquetFile f = ParquetFile::open(kDir + "/pokemon_like/data/train-00000-of-00001.parquet");
  EXPECT_EQ(f.column_paths(), (std::vector<std::string>{"image.bytes", "image.path", "text"}));
  ASSERT_EQ(f.num_rows(), 6);
  const std::vector<ParquetBytes> images = f.read_bytes_column("image.bytes");
  const std::vector<ParquetBytes> paths = f.read_bytes_column("image.path");
  const std::vector<ParquetBytes> text = f.read_bytes_column("text");
  ASSERT_EQ(images.size(), 6u);
  for (size_t i = 0; i < images.size(); ++i) {
    EXPECT_FALSE(paths[i].has_value()) << "in-memory images have no path (row " << i << ")";
    if (i == 2) {
      EXPECT_FALSE(images[i].has_value()) << "a None image is a null struct: its bytes are null";
      continue;
    }
    ASSERT_TRUE(images[i].has_value());
    EXPECT_EQ(images[i]->substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << "row " << i;
  }
  EXPECT_EQ(text[1], "a drawing of a blue pokemon with 1 eyes");
}

TEST(Parquet, RefusesColumnsItCannotRead) {
  const std::string path = kDir + "/strings_snappy_dict_v1.parquet";
  const ParquetFile f = ParquetFile::open(path);
  std::string msg = error_of([&] { f.read_bytes_column("caption"); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("no column 'caption'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("text, blob, id, tags.list.element"), std::string::npos) << "lists the columns: " << msg;
  msg = error_of([&] { f.read_bytes_column("id"); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("column 'id'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("INT64"), std::string::npos) << msg;
  msg = error_of([&] { f.read_bytes_column("tags.list.element"); });
  EXPECT_NE(msg.find("column 'tags.list.element'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("repeated"), std::string::npos) << msg;
}

TEST(Parquet, MissingFileNamesIt) {
  const std::string path = kDir + "/no_such_file.parquet";
  const std::string msg = error_of([&] { ParquetFile::open(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
}

TEST(Parquet, TruncatedFilesAreErrors) {
  const std::string bytes = read_all(kDir + "/strings_zstd_plain_v2.parquet");
  for (size_t keep : {size_t(0), size_t(3), size_t(11), bytes.size() / 2, bytes.size() - 1}) {
    SCOPED_TRACE(keep);
    const std::string path = write_temp("truncated.parquet", bytes.substr(0, keep));
    const std::string msg = error_of([&] { ParquetFile::open(path); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
  }
}

TEST(Parquet, BadMagicAndFooterLengthAreErrors) {
  const std::string bytes = read_all(kDir + "/strings_none_plain_v1.parquet");
  std::string bad = bytes;
  bad[1] = 'X';  // "PXR1"
  std::string path = write_temp("bad_head.parquet", bad);
  std::string msg = error_of([&] { ParquetFile::open(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("magic"), std::string::npos) << msg;

  bad = bytes;
  bad[bad.size() - 2] = 'X';
  path = write_temp("bad_tail.parquet", bad);
  msg = error_of([&] { ParquetFile::open(path); });
  EXPECT_NE(msg.find("magic"), std::string::npos) << msg;

  bad = bytes;
  bad[bad.size() - 5] = '\x7f';  // the footer length's high byte: far past the file
  path = write_temp("bad_footer_length.parquet", bad);
  msg = error_of([&] { ParquetFile::open(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("footer length"), std::string::npos) << msg;
}

// A flipped byte in page data whose page carries a CRC: the reader names file, column, row
// group and page.
TEST(Parquet, CorruptPageWithCrcIsAnError) {
  const nlohmann::json where = expected()["corrupt_crc"];
  std::string bytes = read_all(kDir + "/" + where["file"].get<std::string>());
  const ParquetFile good = ParquetFile::open(kDir + "/" + where["file"].get<std::string>());
  EXPECT_EQ(good.read_bytes_column("text").size(), 23u);
  bytes[where["offset"].get<size_t>()] ^= 0x5a;
  const std::string path = write_temp("corrupt_crc.parquet", bytes);
  const ParquetFile f = ParquetFile::open(path);
  const std::string msg = error_of([&] { f.read_bytes_column("text"); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("column 'text', row group 0, page 0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("CRC"), std::string::npos) << msg;
  EXPECT_EQ(f.read_bytes_column("blob").size(), 23u) << "the other columns are intact";
}

// A flipped byte in a gzip page's trailer (CRC-32 and length of the inflated data).
TEST(Parquet, CorruptCompressedPageIsAnError) {
  const nlohmann::json where = expected()["corrupt_gzip"];
  std::string bytes = read_all(kDir + "/" + where["file"].get<std::string>());
  bytes[where["offset"].get<size_t>()] ^= 0x01;
  const std::string path = write_temp("corrupt_gzip.parquet", bytes);
  const ParquetFile f = ParquetFile::open(path);
  const std::string msg = error_of([&] { f.read_bytes_column(where["column"].get<std::string>()); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("column 'blob', row group 0, page"), std::string::npos) << msg;
  EXPECT_NE(msg.find("GZIP"), std::string::npos) << msg;
}

// 280 MiB of values from a file of 570 bytes (one 4 MiB dictionary entry in 70 rows): refused
// before the values are built, whatever the page claims.
TEST(Parquet, ExpansionFarBeyondTheFileSizeIsRefused) {
  const nlohmann::json bomb = expected()["bomb"];
  const std::string path = kDir + "/" + bomb["file"].get<std::string>();
  const ParquetFile f = ParquetFile::open(path);
  EXPECT_EQ(f.num_rows(), bomb["rows"].get<int64_t>());
  const std::string msg = error_of([&] { f.read_bytes_column(bomb["column"].get<std::string>()); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("column 'text', row group 0, page 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("what a file of this size may expand to"), std::string::npos) << msg;
}

// Random damage (flipped bytes anywhere or in the footer, truncations) over every codec and
// page version: each file must read or raise sd::Error, nothing else (no crash, no other
// exception, no runaway allocation).
TEST(Parquet, RandomDamageIsAnErrorOrHarmless) {
  std::mt19937 rng(1234);
  int errors = 0, reads = 0;
  for (const char* name : {"strings_none_plain_v1.parquet", "strings_snappy_dict_v2.parquet",
                           "strings_gzip_dict_v1.parquet", "strings_zstd_plain_v2.parquet", "dict_fallback.parquet",
                           "tiny_dict.parquet", "pokemon_like/data/train-00000-of-00001.parquet"}) {
    const std::string bytes = read_all(kDir + "/" + name);
    std::vector<std::string> columns;  // those the undamaged file reads
    const ParquetFile good = ParquetFile::open(kDir + "/" + name);
    for (const std::string& c : good.column_paths())
      if (c != "id" && c != "tags.list.element") columns.push_back(c);
    const uint32_t footer = uint32_t(uint8_t(bytes[bytes.size() - 8])) | uint32_t(uint8_t(bytes[bytes.size() - 7])) << 8;
    for (int trial = 0; trial < 150; ++trial) {
      std::string bad = bytes;
      const int kind = trial % 3;
      if (kind == 2) {
        bad.resize(rng() % bad.size());
        bad += "PAR1";  // keep a tail magic so the footer parser, not the magic check, meets the cut
      } else {
        const size_t lo = kind == 1 ? bad.size() - 8 - footer : 0;  // 1: within the footer
        for (int k = 0, flips = 1 + int(rng() % 4); k < flips; ++k)
          bad[lo + rng() % (bad.size() - lo)] ^= char(1 + rng() % 255);
      }
      const std::string path = write_temp("damaged.parquet", bad);
      try {
        const ParquetFile f = ParquetFile::open(path);
        for (const std::string& c : columns) {
          try {
            f.read_bytes_column(c);
            ++reads;
          } catch (const sd::Error& e) {
            ++errors;
            EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
          }
        }
      } catch (const sd::Error& e) {
        ++errors;
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      }
    }
  }
  std::printf("[ damaged files: %d errors, %d column reads succeeded ]\n", errors, reads);
  EXPECT_GT(errors, 100);
}

}  // namespace
}  // namespace sd::train
