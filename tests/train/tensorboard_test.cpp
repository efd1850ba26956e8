// TensorBoard event files: CRC32C check values, write/read round trips, corruption and truncation
// detection, and compatibility both ways with the file PyTorch's SummaryWriter wrote
// (tests/data/tensorboard, made by tests/golden/make_tensorboard_fixture.py).
#include "train/tensorboard.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/error.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;

const std::string kFixtureDir = std::string(SD_TEST_DATA_DIR) + "/tensorboard";

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << "cannot read " << path;
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(f.good()) << "cannot write " << path;
}

// A fresh directory under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / ("sd_tb_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// The whole records (header, data, CRC) of a well-formed file, without checking CRCs.
std::vector<std::string> split_records(const std::string& bytes) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos + 12 <= bytes.size()) {
    uint64_t len = 0;
    for (int i = 7; i >= 0; --i) len = len << 8 | uint8_t(bytes[pos + i]);
    out.push_back(bytes.substr(pos, 16 + len));
    pos += 16 + len;
  }
  EXPECT_EQ(pos, bytes.size());
  return out;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(char(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string le_bytes(uint64_t v, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out.push_back(char(uint8_t(v >> (8 * i))));
  return out;
}

// A TFRecord with correct CRCs around arbitrary data.
std::string frame(const std::string& data) {
  const std::string len = le_bytes(data.size(), 8);
  return len + le_bytes(masked_crc32c(len), 4) + data + le_bytes(masked_crc32c(data), 4);
}

// The JSON's values: numbers, or "nan" / "inf" / "-inf".
double json_number(const nlohmann::json& v) {
  if (v.is_number()) return v.get<double>();
  const std::string s = v.get<std::string>();
  if (s == "nan") return std::nan("");
  if (s == "inf") return INFINITY;
  if (s == "-inf") return -INFINITY;
  ADD_FAILURE() << "bad value " << s;
  return 0;
}

// Runs f, which must throw sd::Error whose message holds every one of `parts`.
template <class F>
void expect_error(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning " << parts.front();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

// Plain bit-at-a-time CRC32C, the definition the slicing-by-8 version must agree with.
uint32_t crc32c_bitwise(std::string_view s) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}

TEST(TensorBoard, Crc32cCheckValues) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);  // the CRC-32C catalogue check value
  EXPECT_EQ(crc32c(""), 0u);
  // RFC 3720 (iSCSI) appendix B.4.
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc32c(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string up, down;
  for (int i = 0; i < 32; ++i) up.push_back(char(i)), down.push_back(char(31 - i));
  EXPECT_EQ(crc32c(up), 0x46DD794Eu);
  EXPECT_EQ(crc32c(down), 0x113FDB5Cu);

  // Slicing-by-8 against the bitwise definition: every length up to 80 at every alignment,
  // and continuing a CRC across a split at every point.
  std::string buf;
  for (int i = 0; i < 96; ++i) buf.push_back(char((i * 151 + 7) & 0xFF));
  for (size_t off = 0; off < 8; ++off)
    for (size_t n = 0; n <= 80; ++n) {
      const std::string_view s = std::string_view(buf).substr(off, n);
      ASSERT_EQ(crc32c(s), crc32c_bitwise(s)) << "offset " << off << " length " << n;
    }
  const std::string_view all(buf);
  for (size_t k = 0; k <= all.size(); ++k) ASSERT_EQ(crc32c(all.substr(k), crc32c(all.substr(0, k))), crc32c(all));

  // The TFRecord mask.
  EXPECT_EQ(masked_crc32c(""), 0xa282ead8u);
  const uint32_t c = 0xE3069283u;
  EXPECT_EQ(masked_crc32c("123456789"), uint32_t(((c >> 15) | (c << 17)) + 0xa282ead8u));
}

TEST(TensorBoard, WriteAndReadBack) {
  TempDir tmp("roundtrip");
  const std::string dir = (tmp.path / "logs" / "run1").string();  // parents are created
  const double before = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  TensorBoardWriter w(dir);
  const double after_open = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();

  // The name TensorBoard's writer uses: events.out.tfevents.<10-digit seconds>.<host>.<pid>.<n>.
  const fs::path p(w.path());
  EXPECT_EQ(p.parent_path(), fs::path(dir));
  const std::string name = p.filename().string();
  ASSERT_EQ(name.rfind("events.out.tfevents.", 0), 0u) << name;
  const std::string stamp = name.substr(20, 10);
  EXPECT_TRUE(std::all_of(stamp.begin(), stamp.end(), ::isdigit) && name[30] == '.') << name;
  EXPECT_NE(name.find("." + std::to_string(::getpid()) + "."), std::string::npos) << name;

  // The constructor flushed the file_version event: the file reads as valid, with no scalars.
  EXPECT_TRUE(read_scalar_events(w.path()).empty());
  const std::vector<std::string> first = split_records(read_bytes(w.path()));
  ASSERT_EQ(first.size(), 1u);
  EXPECT_NE(first[0].find("\x1a\x0d" "brain.Event:2"), std::string::npos);  // field 3, 13 bytes
  double first_wall = 0;
  std::memcpy(&first_wall, first[0].data() + 13, 8);  // after the 12-byte header and key 0x09
  EXPECT_EQ(first[0][12], '\x09');
  EXPECT_GE(first_wall, std::floor(before));
  EXPECT_LE(first_wall, after_open + 1);

  w.add_scalar("train/loss", 0.1, 1, 1700000000.5);
  w.add_scalar("lr", 1e-4, 2, 1700000001.0);
  w.add_scalar("grad_norm", -3.0, 0, 0.0);
  w.add_scalar("loss_scale", 65536.0, int64_t(1) << 40, 1700000002.0);
  w.add_scalar("train/loss", 7.0, -5);  // wall time: now
  w.flush();
  const double after = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();

  const std::vector<ScalarEvent> ev = read_scalar_events(w.path());
  ASSERT_EQ(ev.size(), 5u);
  EXPECT_EQ(ev[0].tag, "train/loss");
  EXPECT_EQ(ev[0].step, 1);
  EXPECT_EQ(ev[0].value, 0.1f);  // stored as float, as TensorBoard does
  EXPECT_EQ(ev[0].wall_time, 1700000000.5);
  EXPECT_EQ(ev[1].tag, "lr");
  EXPECT_EQ(ev[1].value, 1e-4f);
  EXPECT_EQ(ev[1].step, 2);
  EXPECT_EQ(ev[2].tag, "grad_norm");
  EXPECT_EQ(ev[2].value, -3.0f);
  EXPECT_EQ(ev[2].step, 0);
  EXPECT_EQ(ev[2].wall_time, 0.0);
  EXPECT_EQ(ev[3].step, int64_t(1) << 40);
  EXPECT_EQ(ev[3].value, 65536.0f);
  EXPECT_EQ(ev[4].step, -5);
  EXPECT_GE(ev[4].wall_time, before);
  EXPECT_LE(ev[4].wall_time, after);

  // A second writer (a resumed run) gets its own file in the same directory.
  TensorBoardWriter w2(dir);
  EXPECT_NE(w2.path(), w.path());
  w2.add_scalar("train/loss", 0.5, 3, 1700000003.0);
  w2.flush();
  ASSERT_EQ(read_scalar_events(w2.path()).size(), 1u);
  EXPECT_EQ(read_scalar_events(w.path()).size(), 5u);

  // The destructor flushes what add_scalar buffered.
  std::string path3;
  {
    TensorBoardWriter w3(dir);
    path3 = w3.path();
    w3.add_scalar("x", 1.0, 1, 1.0);
  }
  ASSERT_EQ(read_scalar_events(path3).size(), 1u);
}

TEST(TensorBoard, KnownEventBytes) {
  // add_scalar("grad_norm", 3.5, 127, walltime=1700000001.5) as PyTorch's SummaryWriter writes it
  // (record 3 of the fixture): length 31, masked CRC, Event{wall_time: 0x41D954FC40600000,
  // step: 127, summary{value{tag: "grad_norm", simple_value: 0x40600000}}}, masked CRC.
  const std::string expected = from_hex(
      "1f00000000000000514b4418"
      "0900006040fc54d941107f2a120a100a09677261645f6e6f726d1500006040"
      "8c94d458");
  TempDir tmp("known");
  TensorBoardWriter w(tmp.path.string());
  w.add_scalar("grad_norm", 3.5, 127, 1700000001.5);
  w.flush();
  const std::vector<std::string> rec = split_records(read_bytes(w.path()));
  ASSERT_EQ(rec.size(), 2u);
  EXPECT_EQ(rec[1], expected);
  const std::string python = read_bytes(kFixtureDir + "/events.out.tfevents.python_written");
  EXPECT_EQ(split_records(python).at(3), expected);
}

TEST(TensorBoard, ReadsPythonWrittenFile) {
  const nlohmann::json desc = nlohmann::json::parse(read_bytes(kFixtureDir + "/python_written.json"));
  const std::vector<ScalarEvent> ev = read_scalar_events(kFixtureDir + "/" + desc["file"].get<std::string>());
  const auto& want = desc["scalars"];
  ASSERT_EQ(ev.size(), want.size());
  for (size_t i = 0; i < ev.size(); ++i) {
    SCOPED_TRACE("scalar " + std::to_string(i));
    EXPECT_EQ(ev[i].tag, want[i]["tag"].get<std::string>());
    EXPECT_EQ(ev[i].step, want[i]["step"].get<int64_t>());
    EXPECT_EQ(ev[i].wall_time, want[i]["wall_time"].get<double>());
    const double v = json_number(want[i]["value"]);
    if (std::isnan(v))
      EXPECT_TRUE(std::isnan(ev[i].value));
    else
      EXPECT_EQ(double(ev[i].value), v);  // the JSON holds the float32 value, exactly
  }
}

TEST(TensorBoard, WritesTheBytesPythonWrites) {
  // The same scalars through the C++ writer: every scalar record equals PyTorch's, byte for byte
  // (only the file_version record differs: its wall time is the time of opening).
  const nlohmann::json desc = nlohmann::json::parse(read_bytes(kFixtureDir + "/python_written.json"));
  const std::vector<std::string> python =
      split_records(read_bytes(kFixtureDir + "/" + desc["file"].get<std::string>()));
  ASSERT_EQ(python.size(), desc["records"].size() + 1);

  TempDir tmp("bytes");
  TensorBoardWriter w(tmp.path.string());
  std::vector<size_t> python_index;
  for (size_t i = 0; i < desc["records"].size(); ++i) {
    const auto& r = desc["records"][i];
    if (r["kind"] != "scalar") continue;
    w.add_scalar(r["tag"].get<std::string>(), json_number(r["value"]), r["step"].get<int64_t>(),
                 r["wall_time"].get<double>());
    python_index.push_back(i + 1);
  }
  w.flush();
  const std::vector<std::string> ours = split_records(read_bytes(w.path()));
  ASSERT_EQ(ours.size(), python_index.size() + 1);
  ASSERT_GE(python_index.size(), 10u);
  for (size_t k = 0; k < python_index.size(); ++k)
    EXPECT_EQ(ours[k + 1], python[python_index[k]]) << "scalar record " << k << " (Python record " << python_index[k] << ")";
}

TEST(TensorBoard, DetectsCorruptionAndTruncation) {
  TempDir tmp("corrupt");
  std::string good;
  {
    TensorBoardWriter w(tmp.path.string());
    w.add_scalar("a", 1.0, 1, 10.0);
    w.add_scalar("b", 2.0, 2, 11.0);
    w.add_scalar("c", 3.0, 3, 12.0);
    w.flush();
    ASSERT_EQ(read_scalar_events(w.path()).size(), 3u);
    good = read_bytes(w.path());
  }
  const std::vector<std::string> rec = split_records(good);
  ASSERT_EQ(rec.size(), 4u);
  const size_t start2 = rec[0].size() + rec[1].size();  // byte offset of record 2
  const std::string bad = (tmp.path / "bad.tfevents").string();

  // One flipped byte in record 2's data, in its data CRC, in record 1's length.
  std::string s = good;
  s[start2 + 12 + 5] ^= 0x01;
  write_bytes(bad, s);
  expect_error([&] { read_scalar_events(bad); }, {bad, "record 2", "data CRC"});
  s = good;
  s[start2 + rec[2].size() - 1] ^= 0x80;
  write_bytes(bad, s);
  expect_error([&] { read_scalar_events(bad); }, {bad, "record 2", "data CRC"});
  s = good;
  s[rec[0].size()] ^= 0x04;
  write_bytes(bad, s);
  expect_error([&] { read_scalar_events(bad); }, {bad, "record 1", "length CRC"});

  // Truncated inside a header, inside the data, before the last CRC byte.
  for (size_t cut : {start2 + 5, start2 + 12 + 3, start2 + rec[2].size() - 1}) {
    write_bytes(bad, good.substr(0, cut));
    expect_error([&] { read_scalar_events(bad); }, {bad, "record 2", "truncated"});
  }
  write_bytes(bad, good.substr(0, start2));  // cut between records: a valid, shorter file
  EXPECT_EQ(read_scalar_events(bad).size(), 1u);
  write_bytes(bad, "");
  EXPECT_TRUE(read_scalar_events(bad).empty());

  // Correct CRCs around bytes that are no Event: a length running past the end, a group.
  write_bytes(bad, rec[0] + frame("\x2a\x10\x0a"));
  expect_error([&] { read_scalar_events(bad); }, {bad, "record 1", "not a valid Event"});
  write_bytes(bad, frame("\x0b"));
  expect_error([&] { read_scalar_events(bad); }, {bad, "record 0", "not a valid Event"});
  write_bytes(bad, frame(std::string("\x2a\x02\x0a\x00", 4)));  // a Summary.Value with no fields: skipped
  EXPECT_TRUE(read_scalar_events(bad).empty());

  const std::string missing = (tmp.path / "missing.tfevents").string();
  expect_error([&] { read_scalar_events(missing); }, {missing});
}

TEST(TensorBoard, DirectoryErrors) {
  TempDir tmp("direrr");
  fs::create_directories(tmp.path);
  const std::string file = (tmp.path / "a_file").string();
  write_bytes(file, "x");
  expect_error([&] { TensorBoardWriter w(file); }, {file});
  expect_error([&] { TensorBoardWriter w(file + "/sub"); }, {file + "/sub"});
}

}  // namespace
}  // namespace sd::train
