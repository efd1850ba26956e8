// safetensors reader and writer: the reference conformance files, bytes written by Python's
// safetensors, round trips of every dtype, corruption, hostile headers, atomic writes, zero-copy maps.
#include "runtime/safetensors.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ops/view.h"
#include "tests/test_util.h"

namespace sd {
namespace {

namespace fs = std::filesystem;
using Kind = SafetensorsErrorKind;

const std::string kDataDir = SD_TEST_DATA_DIR;

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

// A fresh directory per test, removed with everything in it at the end.
struct TempDir {
  fs::path dir;
  TempDir() {
    static int counter = 0;
    // Prefer RAM-backed /dev/shm: the fuzz test rewrites a file thousands of times.
    std::error_code ec;
    const fs::path root = fs::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0
                              ? fs::path("/dev/shm")
                              : fs::temp_directory_path();
    dir = root / ("sd_safetensors_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir);
    fs::create_directories(dir);
    dir = fs::canonical(dir);  // /proc/self/maps shows resolved paths
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

// The u64 little-endian length prefix followed by the header and the data buffer.
std::string st_bytes(const std::string& header, const std::string& data = "", int64_t n_override = -1) {
  uint64_t n = n_override >= 0 ? uint64_t(n_override) : header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = char((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// Kind names as the Rust reference spells them (independent of safetensors_error_name).
const std::vector<std::pair<std::string, Kind>> kKindNames = {
    {"HeaderTooSmall", Kind::HeaderTooSmall},
    {"HeaderTooLarge", Kind::HeaderTooLarge},
    {"InvalidHeaderLength", Kind::InvalidHeaderLength},
    {"InvalidHeader", Kind::InvalidHeader},
    {"InvalidHeaderDeserialization", Kind::InvalidHeaderDeserialization},
    {"InvalidOffset", Kind::InvalidOffset},
    {"TensorInvalidInfo", Kind::TensorInvalidInfo},
    {"MetadataIncompleteBuffer", Kind::MetadataIncompleteBuffer},
    {"ValidationOverflow", Kind::ValidationOverflow},
    {"MisalignedSlice", Kind::MisalignedSlice},
    {"DuplicateKey", Kind::DuplicateKey},
    {"UnsupportedDtype", Kind::UnsupportedDtype},
    {"Io", Kind::Io},
};

std::string kind_str(Kind k) {
  for (const auto& [name, kind] : kKindNames)
    if (kind == k) return name;
  return "?";
}

// open() must throw a SafetensorsError of exactly `kind` whose message names the file and the kind.
::testing::AssertionResult rejects(const std::string& path, Kind kind) {
  try {
    SafetensorsFile::open(path);
  } catch (const SafetensorsError& e) {
    const std::string msg = e.what();
    if (e.kind() != kind)
      return ::testing::AssertionFailure() << path << ": expected " << kind_str(kind) << ", got " << msg;
    if (msg.find(path) == std::string::npos || msg.find(kind_str(kind)) == std::string::npos)
      return ::testing::AssertionFailure() << "message does not name the file and the kind: " << msg;
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << path << ": wrong exception type: " << e.what();
  }
  return ::testing::AssertionFailure() << path << ": accepted, expected " << kind_str(kind);
}

// Writes `bytes` to a file in `dir` and checks the reader's verdict.
::testing::AssertionResult rejects_bytes(const TempDir& dir, const std::string& bytes, Kind kind) {
  const std::string p = dir / "case.safetensors";
  write_bytes(p, bytes);
  return rejects(p, kind);
}

std::string raw_bytes(const Tensor& t) {
  Tensor c = contiguous_raw(t);
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

DType dtype_from_st(const std::string& s) {
  static const std::map<std::string, DType> m = {{"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16},
                                                 {"F64", DType::F64}, {"I32", DType::I32}, {"I64", DType::I64},
                                                 {"U8", DType::U8},   {"BOOL", DType::Bool}};
  return m.at(s);
}

// A tensor rebuilt from python_written.json alone (no reader involved). Integers are set
// through int64 so 64-bit values stay exact.
Tensor tensor_from_json(const nlohmann::json& e) {
  const DType dt = dtype_from_st(e["dtype"].get<std::string>());
  const Shape shape = e["shape"].get<Shape>();
  const auto& vals = e["values"];
  if (is_floating(dt)) return from_vector(vals.get<std::vector<double>>(), shape, dt);
  Tensor t = empty(shape, dt);
  for (size_t i = 0; i < vals.size(); ++i) {
    const int64_t v = vals[i].is_boolean() ? int64_t(vals[i].get<bool>()) : vals[i].get<int64_t>();
    switch (dt) {
      case DType::I64: t.data<int64_t>()[i] = v; break;
      case DType::I32: t.data<int32_t>()[i] = int32_t(v); break;
      case DType::U8: t.data<uint8_t>()[i] = uint8_t(v); break;
      case DType::Bool: t.data<bool>()[i] = v != 0; break;
      default: ADD_FAILURE() << "unexpected dtype";
    }
  }
  return t;
}

nlohmann::json python_fixture() {
  return nlohmann::json::parse(read_bytes(kDataDir + "/python_written.json"));
}

// The address range of the mappings of `path` in this process, from /proc/self/maps.
std::vector<std::pair<uintptr_t, uintptr_t>> mappings_of(const std::string& path) {
  std::vector<std::pair<uintptr_t, uintptr_t>> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const size_t slash = line.find('/');
    if (slash == std::string::npos || line.substr(slash) != path) continue;
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) == 2) out.emplace_back(uintptr_t(lo), uintptr_t(hi));
  }
  return out;
}

bool inside_mapping_of(const void* p, const std::string& path) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  for (const auto& [lo, hi] : mappings_of(path))
    if (a >= lo && a < hi) return true;
  return false;
}

// ---------------------------------------------------------------- conformance files

TEST(SafetensorsConformance, EveryValidFileLoads) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(kDataDir + "/safetensors")) {
    const std::string name = e.path().filename().string();
    if (name.rfind("valid_", 0) != 0) continue;
    ++n;
    SCOPED_TRACE(name);
    SafetensorsFile f = SafetensorsFile::open(e.path().string());
    for (const std::string& k : f.keys()) {
      Tensor t = f.get(k);
      EXPECT_EQ(t.shape(), f.info(k).shape);
    }
  }
  EXPECT_EQ(n, 6);

  SafetensorsFile a = SafetensorsFile::open(kDataDir + "/safetensors/valid_attn0_f32_1x2x3.safetensors");
  ASSERT_EQ(a.keys(), std::vector<std::string>{"attn.0"});
  Tensor t = a.get("attn.0");
  EXPECT_EQ(t.dtype(), DType::F32);
  EXPECT_EQ(t.shape(), (Shape{1, 2, 3}));
  EXPECT_EQ(t.to_vector(), (std::vector<double>{0, 1, 2, 3, 4, 5}));
  EXPECT_TRUE(a.metadata().empty());

  SafetensorsFile b =
      SafetensorsFile::open(kDataDir + "/safetensors/valid_forced_alignment_attn0_f32_1x1x2x3.safetensors");
  EXPECT_EQ(b.get("attn0").shape(), (Shape{1, 1, 2, 3}));
  EXPECT_EQ(b.get("attn0").to_vector(), (std::vector<double>{0, 1, 2, 3, 4, 5}));

  SafetensorsFile m = SafetensorsFile::open(kDataDir + "/safetensors/valid_empty_with_metadata.safetensors");
  EXPECT_EQ(m.size(), 0u);
  EXPECT_EQ(m.metadata(), (std::map<std::string, std::string>{{"framework", "pt"}}));

  SafetensorsFile z = SafetensorsFile::open(kDataDir + "/safetensors/valid_zero_sized_tensor.safetensors");
  EXPECT_EQ(z.info("test").dtype_str, "I32");
  EXPECT_EQ(z.get("test").shape(), (Shape{2, 0}));
  EXPECT_EQ(z.get("test").numel(), 0);

  EXPECT_EQ(SafetensorsFile::open(kDataDir + "/safetensors/valid_whitespace_leading_and_trailing_header.safetensors")
                .size(),
            0u);
}

TEST(SafetensorsConformance, EveryInvalidFileIsRejectedWithItsKind) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(kDataDir + "/safetensors")) {
    const std::string name = e.path().filename().string();
    if (name.rfind("invalid_", 0) != 0) continue;
    ++n;
    // invalid_<Kind>[_<what>].safetensors: kind names contain no '_' or '.'.
    const std::string rest = name.substr(8);
    const std::string kname = rest.substr(0, rest.find_first_of("_."));
    auto it = std::find_if(kKindNames.begin(), kKindNames.end(), [&](const auto& p) { return p.first == kname; });
    ASSERT_NE(it, kKindNames.end()) << "unknown kind in file name " << name;
    EXPECT_TRUE(rejects(e.path().string(), it->second));
  }
  EXPECT_EQ(n, 10);
}

TEST(SafetensorsConformance, KindNamesAreTheRustOnes) {
  for (const auto& [name, kind] : kKindNames) EXPECT_EQ(safetensors_error_name(kind), name);
}

// ---------------------------------------------------------------- files written by Python

TEST(SafetensorsRead, PythonWrittenFileValuesAndInfo) {
  const nlohmann::json fx = python_fixture();
  const std::string path = kDataDir + "/python_written.safetensors";
  SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.metadata(), (fx["metadata"].get<std::map<std::string, std::string>>()));

  std::vector<std::string> names;
  for (const auto& e : fx["tensors"]) names.push_back(e["name"].get<std::string>());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(f.keys(), names);

  for (const auto& e : fx["tensors"]) {
    const std::string name = e["name"].get<std::string>();
    SCOPED_TRACE(name);
    ASSERT_TRUE(f.contains(name));
    const TensorInfo& ti = f.info(name);
    EXPECT_EQ(ti.name, name);
    EXPECT_EQ(ti.dtype_str, e["dtype"].get<std::string>());
    ASSERT_TRUE(ti.dtype.has_value());
    EXPECT_EQ(*ti.dtype, dtype_from_st(ti.dtype_str));
    EXPECT_EQ(ti.shape, e["shape"].get<Shape>());
    Tensor t = f.get(name);
    EXPECT_EQ(t.dtype(), *ti.dtype);
    EXPECT_EQ(t.shape(), ti.shape);
    EXPECT_EQ(size_t(t.nbytes()), ti.nbytes());
    // Bitwise equal to the tensor rebuilt from the JSON values.
    EXPECT_EQ(raw_bytes(t), raw_bytes(tensor_from_json(e)));
  }
  EXPECT_EQ(f.get("z_ids").data<int64_t>()[3], -(int64_t(1) << 62));
  EXPECT_EQ(f.get("alpha").dim(), 0);
  EXPECT_EQ(f.get("alpha").item(), 4.0);
  EXPECT_FALSE(f.contains("nope"));
}

TEST(SafetensorsRead, UnknownKeyNamesKeyAndFile) {
  const std::string path = kDataDir + "/python_written.safetensors";
  SafetensorsFile f = SafetensorsFile::open(path);
  for (auto call : {+[](const SafetensorsFile& f) { f.info("no.such.tensor"); },
                    +[](const SafetensorsFile& f) { f.get("no.such.tensor"); },
                    +[](const SafetensorsFile& f) { f.get("no.such.tensor", DType::F32, Device::cpu()); }}) {
    try {
      call(f);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("no.such.tensor"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
}

TEST(SafetensorsRead, MissingFilesDirectoriesAndFifosAreIoErrors) {
  TempDir dir;
  EXPECT_TRUE(rejects(dir / "missing.safetensors", Kind::Io));
  EXPECT_TRUE(rejects(dir.dir.string(), Kind::Io));
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  EXPECT_TRUE(rejects(dir / "fifo", Kind::Io));  // and does not block waiting for a writer
}

TEST(SafetensorsRead, ConvertedGetCopiesToRequestedDtype) {
  SafetensorsFile f = SafetensorsFile::open(kDataDir + "/python_written.safetensors");
  Tensor h = f.get("a.bias", DType::F32, Device::cpu());
  EXPECT_EQ(h.dtype(), DType::F32);
  EXPECT_TRUE(h.is_contiguous());
  EXPECT_EQ(h.to_vector(), (std::vector<double>{0.25, -1.75, 1024.0}));
  Tensor w = f.get("weight", DType::F64, Device::cpu());
  EXPECT_EQ(w.shape(), (Shape{2, 3}));
  EXPECT_EQ(w.to_vector(), f.get("weight").to_vector());
  Tensor bf = f.get("weight", DType::BF16, Device::cpu());
  EXPECT_EQ(bf.dtype(), DType::BF16);
  EXPECT_TRUE(test::all_close(bf, f.get("weight").to_vector(), 1.0 / 128, 0));
  Tensor ids = f.get("z_ids", DType::F32, Device::cpu());
  EXPECT_EQ(ids.to_vector()[2], 1099511627776.0);
  // A converted copy never aliases the mapping, even in the file's own dtype.
  EXPECT_NE(f.get("weight", DType::F32, Device::cpu()).data_ptr(), f.get("weight").data_ptr());
}

// Converted copies are read from the file, not through the mapping (whose touched pages would stay
// resident beside the copies): a file cut short after open() gives an Io error naming the tensor
// where a mapped read would die of SIGBUS.
TEST(SafetensorsRead, ConvertedGetReadsTheFileAndNamesATensorCutOffAfterOpen) {
  TempDir dir;
  const std::string p = dir / "t.safetensors";
  std::vector<double> big(1000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = double(i) - 300.0;
  save_safetensors(p, {{"a", from_vector({1, 2, 3, 4}, {4})}, {"b", from_vector(big, {1000})}});
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(f.get("b", DType::F64, Device::cpu()).to_vector(), big);
  fs::resize_file(p, fs::file_size(p) - 100);  // the last 25 floats of "b" are gone
  EXPECT_EQ(f.get("a", DType::BF16, Device::cpu()).to_vector(), (std::vector<double>{1, 2, 3, 4}));
  try {
    f.get("b", DType::F64, Device::cpu());
    FAIL() << "a truncated tensor was read";
  } catch (const SafetensorsError& e) {
    EXPECT_EQ(e.kind(), Kind::Io);
    EXPECT_NE(std::string(e.what()).find("\"b\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("shrank"), std::string::npos) << e.what();
  }
}

TEST(SafetensorsRead, GetToGpuWhenPresent) {
  SD_REQUIRE_CUDA();
  SafetensorsFile f = SafetensorsFile::open(kDataDir + "/python_written.safetensors");
  Tensor g = f.get("a.bias", DType::F32, Device::cuda(0));
  EXPECT_TRUE(g.is_cuda());
  EXPECT_EQ(g.to_vector(), (std::vector<double>{0.25, -1.75, 1024.0}));
}

// ---------------------------------------------------------------- writer: bytes

TEST(SafetensorsWrite, ByteExactWithPythonWriter) {
  TempDir dir;
  const std::string expected = read_bytes(kDataDir + "/python_written.safetensors");
  const nlohmann::json fx = python_fixture();
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& e : fx["tensors"]) tensors.emplace_back(e["name"].get<std::string>(), tensor_from_json(e));
  const auto meta = fx["metadata"].get<std::map<std::string, std::string>>();

  save_safetensors(dir / "a.safetensors", tensors, meta);
  EXPECT_EQ(read_bytes(dir / "a.safetensors"), expected);

  // Input order does not matter; non-contiguous sources write the same bytes.
  std::reverse(tensors.begin(), tensors.end());
  for (auto& [name, t] : tensors) t = test::non_contiguous(t);
  save_safetensors(dir / "b.safetensors", tensors, meta);
  EXPECT_EQ(read_bytes(dir / "b.safetensors"), expected);

  // Tensors read back (zero-copy views of the map) write the same bytes too.
  SafetensorsFile f = SafetensorsFile::open(kDataDir + "/python_written.safetensors");
  std::vector<std::pair<std::string, Tensor>> loaded;
  for (const std::string& k : f.keys()) loaded.emplace_back(k, f.get(k));
  save_safetensors(dir / "c.safetensors", loaded, f.metadata());
  EXPECT_EQ(read_bytes(dir / "c.safetensors"), expected);
}

TEST(SafetensorsWrite, ByteExactWithReferenceUnitTests) {
  TempDir dir;
  const std::string st = kDataDir + "/safetensors/";
  save_safetensors(dir / "x", {{"attn.0", from_vector({0, 1, 2, 3, 4, 5}, {1, 2, 3})}});
  EXPECT_EQ(read_bytes(dir / "x"), read_bytes(st + "valid_attn0_f32_1x2x3.safetensors"));
  save_safetensors(dir / "x", {{"attn0", from_vector({0, 1, 2, 3, 4, 5}, {1, 1, 2, 3})}});
  EXPECT_EQ(read_bytes(dir / "x"), read_bytes(st + "valid_forced_alignment_attn0_f32_1x1x2x3.safetensors"));
  save_safetensors(dir / "x", {});
  EXPECT_EQ(read_bytes(dir / "x"), read_bytes(st + "valid_empty.safetensors"));
  save_safetensors(dir / "x", {}, {{"framework", "pt"}});
  EXPECT_EQ(read_bytes(dir / "x"), read_bytes(st + "valid_empty_with_metadata.safetensors"));
}

TEST(SafetensorsWrite, HeaderIsCompactPaddedAndEscapedLikeSerde) {
  TempDir dir;
  // serde_json escapes only '"', '\\' and control characters (\u00xx lowercase); '/', DEL and
  // UTF-8 stay raw. Bytes checked against what Python's safetensors 0.8.0 wrote for this input.
  save_safetensors(dir / "x", {{"b", zeros({1}, DType::U8)}}, {{"m", "\xc3\xa9\n\x01/\x7f\"\\"}});
  const std::string bytes = read_bytes(dir / "x");
  const std::string header =
      "{\"__metadata__\":{\"m\":\"\xc3\xa9\\n\\u0001/\x7f\\\"\\\\\"},"
      "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
  const size_t padded = (header.size() + 7) / 8 * 8;
  EXPECT_EQ(bytes, st_bytes(header + std::string(padded - header.size(), ' '), std::string(1, '\0')));
}

// ---------------------------------------------------------------- round trips

TEST(SafetensorsRoundTrip, EveryDtypeScalarsZeroSizeAndNonContiguous) {
  TempDir dir;
  const std::vector<DType> dtypes = {DType::F32, DType::F16, DType::BF16, DType::F64,
                                     DType::I32, DType::I64, DType::U8,   DType::Bool};
  const std::vector<Shape> shapes = {{}, {0}, {3, 0, 2}, {1}, {7}, {2, 3, 5}, {4, 1, 3, 2}};
  const std::map<DType, std::string> st_name = {{DType::F32, "F32"}, {DType::F16, "F16"}, {DType::BF16, "BF16"},
                                                {DType::F64, "F64"}, {DType::I32, "I32"}, {DType::I64, "I64"},
                                                {DType::U8, "U8"},   {DType::Bool, "BOOL"}};
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint64_t seed = 10;
  for (DType dt : dtypes) {
    for (size_t s = 0; s < shapes.size(); ++s) {
      Tensor t = shape_numel(shapes[s]) == 0 ? zeros(shapes[s], dt)
                 : dt == DType::U8           ? test::random_tensor(shapes[s], dt, seed++, 0, 256)
                 : dt == DType::Bool ? copy_to(test::random_tensor(shapes[s], DType::U8, seed++, 0, 2), dt, Device::cpu())
                                     : test::random_tensor(shapes[s], dt, seed++, -1000, 1000);
      // Every other tensor goes in as a strided view.
      if (s % 2 == 1 && t.dim() > 0) t = test::non_contiguous(t);
      tensors.emplace_back(std::string(dtype_name(dt)) + "/" + std::to_string(s), t);
    }
  }
  // A transposed and a sliced view as sources.
  Tensor base = test::random_tensor({4, 6}, DType::F32, 99);
  tensors.emplace_back("transposed", transpose(base, 0, 1));
  tensors.emplace_back("sliced", slice(base, 1, 1, 5));
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "round trip"}, {"", ""}};

  save_safetensors(dir / "rt.safetensors", tensors, meta);
  SafetensorsFile f = SafetensorsFile::open(dir / "rt.safetensors");
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.size(), tensors.size());
  for (const auto& [name, src] : tensors) {
    SCOPED_TRACE(name);
    const TensorInfo& ti = f.info(name);
    EXPECT_EQ(ti.dtype_str, st_name.at(src.dtype()));
    Tensor t = f.get(name);
    EXPECT_EQ(t.dtype(), src.dtype());
    EXPECT_EQ(t.shape(), src.shape());
    EXPECT_EQ(raw_bytes(t), raw_bytes(src));
    // Written in the reference order, every tensor starts aligned for its element type.
    EXPECT_EQ(ti.begin % dtype_size(src.dtype()), 0u);
  }
}

TEST(SafetensorsRoundTrip, UnusualNamesAndMetadata) {
  TempDir dir;
  const std::map<std::string, std::string> meta = {
      {"quote\"back\\slash", "tab\tnl\ncr\rbs\bff\f"}, {"ctl\x01\x1f", "\x7f/"}, {"\xe2\x82\xac", "\xf0\x9f\x98\x80"}};
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"a \"quoted\" name", ones({2})}, {"caf\xc3\xa9.weight", zeros({1}, DType::F16)}, {"", full({}, 3.0)}};
  save_safetensors(dir / "u.safetensors", tensors, meta);
  SafetensorsFile f = SafetensorsFile::open(dir / "u.safetensors");
  EXPECT_EQ(f.metadata(), meta);
  EXPECT_EQ(f.keys(), (std::vector<std::string>{"", "a \"quoted\" name", "caf\xc3\xa9.weight"}));
  EXPECT_EQ(f.get("").item(), 3.0);
  EXPECT_EQ(f.get("a \"quoted\" name").to_vector(), (std::vector<double>{1, 1}));
}

// ---------------------------------------------------------------- header edge cases

TEST(SafetensorsHeader, DuplicateKeysAreRejectedAtEveryLevel) {
  TempDir dir;
  const std::string t = R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  EXPECT_TRUE(rejects_bytes(dir, st_bytes("{\"a\":" + t + ",\"a\":" + t + "}", std::string(4, '\0')),
                            Kind::DuplicateKey));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"__metadata__":{"k":"1","k":"2"}})"), Kind::DuplicateKey));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"__metadata__":{},"__metadata__":{}})"), Kind::DuplicateKey));
  EXPECT_TRUE(rejects_bytes(
      dir, st_bytes(R"({"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
      Kind::DuplicateKey));
  // The same key in two different objects is fine.
  write_bytes(dir / "ok", st_bytes(R"({"__metadata__":{"dtype":"x"},"dtype":{"dtype":"U8","shape":[],"data_offsets":[0,1]}})",
                                   std::string(1, '\7')));
  SafetensorsFile f = SafetensorsFile::open(dir / "ok");
  EXPECT_EQ(f.get("dtype").item(), 7.0);
}

TEST(SafetensorsHeader, SchemaViolationsAreDeserializationErrors) {
  TempDir dir;
  const Kind K = Kind::InvalidHeaderDeserialization;
  const std::string d4(4, '\0');
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"__metadata__":{"k":1}})"), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"__metadata__":{"k":null}})"), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"__metadata__":["pt"]})"), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"([])"), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"("text")"), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(""), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes("{} {}"), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(std::string("{}\0\0", 4)), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,4]}})", d4), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", d4), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", d4), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", d4), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F32","shape":1,"data_offsets":[0,4]}})", d4), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}})", d4), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", d4), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F32","shape":[1]}})", d4), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", d4), K));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":[1]})", d4), K));
  EXPECT_TRUE(rejects_bytes(
      dir, st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551616]}})", d4), K));
  // Nesting far beyond serde_json's limit, inside a field the reader would otherwise ignore.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_TRUE(rejects_bytes(
      dir, st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":)" + deep + "}}", d4), K));
}

TEST(SafetensorsHeader, TolerantWhereTheReferenceIs) {
  TempDir dir;
  // null metadata = none; unknown fields in a tensor entry are ignored; whitespace around JSON.
  write_bytes(dir / "a", st_bytes(" \n{\"__metadata__\":null,\"t\":{\"data_offsets\":[0,2],\"extra\":{\"y\":[1,{}]},"
                                  "\"shape\":[],\"dtype\":\"BF16\"}}\t ",
                                  std::string("\x80\x3f", 2)));
  SafetensorsFile f = SafetensorsFile::open(dir / "a");
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(f.get("t").item(), 1.0);
  // Header order is free: tensors are validated in offset order.
  write_bytes(dir / "b", st_bytes(R"({"y":{"dtype":"U8","shape":[2],"data_offsets":[1,3]},"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
                                  "\1\2\3"));
  SafetensorsFile g = SafetensorsFile::open(dir / "b");
  EXPECT_EQ(g.get("x").to_vector(), (std::vector<double>{1}));
  EXPECT_EQ(g.get("y").to_vector(), (std::vector<double>{2, 3}));
}

TEST(SafetensorsHeader, Utf8IsValidatedBeforeJson) {
  TempDir dir;
  for (std::string bad : {std::string("\xc0\xaf"), std::string("\xed\xa0\x80"), std::string("\xf4\x90\x80\x80"),
                          std::string("\xe2\x82"), std::string("\x80"), std::string("\xff")}) {
    EXPECT_TRUE(rejects_bytes(dir, st_bytes("{\"__metadata__\":{\"k\":\"" + bad + "\"}}"), Kind::InvalidHeader));
  }
  write_bytes(dir / "ok", st_bytes("{\"__metadata__\":{\"k\":\"\xf0\x9f\x98\x80\xe2\x82\xac\xc3\xa9\"}}"));
  EXPECT_EQ(SafetensorsFile::open(dir / "ok").metadata().at("k"), "\xf0\x9f\x98\x80\xe2\x82\xac\xc3\xa9");
}

TEST(SafetensorsHeader, OffsetsSizesAndLengths) {
  TempDir dir;
  const std::string d8(8, '\0');
  // A gap, an overlap, a reversed range: InvalidOffset naming the tensor.
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"gap":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                          std::string(12, '\0')),
                            Kind::InvalidOffset));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8),
                            Kind::InvalidOffset));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", d8),
                            Kind::InvalidOffset));
  try {
    write_bytes(dir / "g", st_bytes(R"({"first":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", std::string(2, '\0')));
    SafetensorsFile::open(dir / "g");
    ADD_FAILURE() << "accepted";
  } catch (const SafetensorsError& e) {
    EXPECT_EQ(e.kind(), Kind::InvalidOffset);
    EXPECT_NE(std::string(e.what()).find("\"first\""), std::string::npos) << e.what();
  }
  // Sub-byte dtypes must fill whole bytes.
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", std::string(2, '\0')),
                            Kind::MisalignedSlice));
  // shape [2,2] F32 needs 16 bytes.
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}})", d8),
                            Kind::TensorInvalidInfo));
  // Element count overflow; bit count overflow; a dimension past int64 next to a zero.
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"),
                            Kind::ValidationOverflow));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
                            Kind::ValidationOverflow));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes(R"({"a":{"dtype":"U8","shape":[0,9223372036854775808],"data_offsets":[0,0]}})"),
                            Kind::ValidationOverflow));
  // Lengths: just over the limit vs at it (the file is small: then it points past the end).
  EXPECT_TRUE(rejects_bytes(dir, st_bytes("{}", "", 100000001), Kind::HeaderTooLarge));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes("{}", "", 100000000), Kind::InvalidHeaderLength));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes("{}", "", -1 + (int64_t(1) << 62)), Kind::HeaderTooLarge));
  EXPECT_TRUE(rejects_bytes(dir, std::string(7, '\0'), Kind::HeaderTooSmall));
  EXPECT_TRUE(rejects_bytes(dir, st_bytes("{}", "x"), Kind::MetadataIncompleteBuffer));
}

TEST(SafetensorsHeader, OtherFormatDtypesParseButGetRaisesUnsupported) {
  TempDir dir;
  // One tensor of each dtype sd has no tensor type for, laid out by their bit sizes.
  struct D { const char* name; int bits; };
  const std::vector<D> others = {{"U64", 64}, {"C64", 64}, {"U32", 32}, {"U16", 16}, {"I16", 16},
                                 {"F8_E5M2FNUZ", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E8M0", 8}, {"F8_E4M3", 8},
                                 {"F8_E5M2", 8}, {"I8", 8}, {"F6_E3M2", 6}, {"F6_E2M3", 6}, {"F4", 4}};
  std::string header = "{";
  size_t off = 0;
  for (const D& d : others) {
    const size_t bytes = size_t(8 * d.bits) / 8;  // 8 elements
    if (off) header += ",";
    header += std::string("\"t_") + d.name + "\":{\"dtype\":\"" + d.name + "\",\"shape\":[2,4],\"data_offsets\":[" +
              std::to_string(off) + "," + std::to_string(off + bytes) + "]}";
    off += bytes;
  }
  header += "}";
  write_bytes(dir / "o", st_bytes(header, std::string(off, '\x11')));
  SafetensorsFile f = SafetensorsFile::open(dir / "o");
  ASSERT_EQ(f.size(), others.size());
  for (const D& d : others) {
    const std::string name = std::string("t_") + d.name;
    SCOPED_TRACE(name);
    const TensorInfo& ti = f.info(name);
    EXPECT_EQ(ti.dtype_str, d.name);
    EXPECT_FALSE(ti.dtype.has_value());
    EXPECT_EQ(ti.shape, (Shape{2, 4}));
    EXPECT_EQ(ti.nbytes(), size_t(d.bits));
    for (int converted = 0; converted < 2; ++converted) {
      try {
        if (converted) f.get(name, DType::F32, Device::cpu());
        else f.get(name);
        ADD_FAILURE() << "get() accepted " << d.name;
      } catch (const SafetensorsError& e) {
        EXPECT_EQ(e.kind(), Kind::UnsupportedDtype);
        EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find(std::string("dtype ") + d.name), std::string::npos) << e.what();
      }
    }
  }
}

// ---------------------------------------------------------------- corruption

TEST(SafetensorsCorruption, TruncatedLengthPastEofNonJsonAndBadShape) {
  TempDir dir;
  const std::string good = read_bytes(kDataDir + "/python_written.safetensors");
  // Truncated in the data, in the header, in the length prefix.
  EXPECT_TRUE(rejects_bytes(dir, good.substr(0, good.size() - 5), Kind::MetadataIncompleteBuffer));
  EXPECT_TRUE(rejects_bytes(dir, good.substr(0, 300), Kind::InvalidHeaderLength));
  EXPECT_TRUE(rejects_bytes(dir, good.substr(0, 5), Kind::HeaderTooSmall));
  // Length prefix pointing past the end of the file.
  std::string past = good;
  const uint64_t n = good.size();
  std::memcpy(&past[0], &n, 8);
  EXPECT_TRUE(rejects_bytes(dir, past, Kind::InvalidHeaderLength));
  // Not JSON.
  EXPECT_TRUE(rejects_bytes(dir, st_bytes("this is not json"), Kind::InvalidHeaderDeserialization));
  // A shape whose byte count does not match the offsets.
  std::string bad_shape = good;
  const size_t at = bad_shape.find("\"shape\":[2,3]");
  ASSERT_NE(at, std::string::npos);
  bad_shape[at + 9] = '4';  // weight [2,3] -> [4,3]: 48 bytes for a 24-byte range
  EXPECT_TRUE(rejects_bytes(dir, bad_shape, Kind::TensorInvalidInfo));
}

TEST(SafetensorsCorruption, EveryTruncationAndByteFlipFailsCleanly) {
  TempDir dir;
  const std::string good = read_bytes(kDataDir + "/python_written.safetensors");
  const std::string p = dir / "fuzz.safetensors";
  size_t accepted = 0, rejected = 0;
  auto attempt = [&](const std::string& bytes) {
    write_bytes(p, bytes);
    try {
      SafetensorsFile f = SafetensorsFile::open(p);
      ++accepted;
      for (const std::string& k : f.keys()) {
        try {
          (void)f.get(k).to_vector();
        } catch (const SafetensorsError& e) {
          EXPECT_EQ(e.kind(), Kind::UnsupportedDtype) << e.what();
        }
      }
    } catch (const SafetensorsError& e) {
      ++rejected;
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  };
  for (size_t len = 0; len < good.size(); ++len) attempt(good.substr(0, len));
  EXPECT_EQ(accepted, 0u);
  // Every byte of the prefix and the header, replaced by a few telling values.
  uint64_t n = 0;
  std::memcpy(&n, good.data(), 8);
  for (size_t i = 0; i < 8 + n; ++i) {
    for (int v : {0x00, 0xff, int('"'), int('{'), int(']'), int('9'), int(' ')}) {
      if (static_cast<unsigned char>(good[i]) == v) continue;
      std::string b = good;
      b[i] = char(v);
      attempt(b);
    }
  }
  EXPECT_GT(rejected, 1000u);
  EXPECT_GT(accepted, 0u);  // e.g. a flipped metadata or name character still makes a valid file
}

// ---------------------------------------------------------------- zero-copy mapping

TEST(SafetensorsMmap, AlignedGetViewsTheMappingAndOutlivesTheFile) {
  TempDir dir;
  const std::string p = dir / "m.safetensors";
  save_safetensors(p, {{"w", from_vector({1, 2, 3, 4, 5, 6}, {2, 3})}, {"h", full({5}, 0.5, DType::F16)}});
  Tensor w, h;
  {
    SafetensorsFile f = SafetensorsFile::open(p);
    w = f.get("w");
    h = f.get("h");
    EXPECT_TRUE(inside_mapping_of(w.data_ptr(), p));
    EXPECT_TRUE(inside_mapping_of(h.data_ptr(), p));
    EXPECT_EQ(f.get("w").data_ptr(), w.data_ptr());  // both views of the same bytes
  }
  // The file object is gone (and even the file itself): the views keep the mapping alive.
  fs::remove(p);
  EXPECT_EQ(w.to_vector(), (std::vector<double>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(h.to_vector(), (std::vector<double>(5, 0.5)));
  const std::string deleted = p + " (deleted)";
  EXPECT_TRUE(inside_mapping_of(w.data_ptr(), deleted));
  w = Tensor();
  EXPECT_FALSE(mappings_of(deleted).empty());  // h still holds it
  h = Tensor();
  EXPECT_TRUE(mappings_of(deleted).empty());   // last view gone: unmapped
}

TEST(SafetensorsMmap, WritingIntoAViewNeverChangesTheFile) {
  TempDir dir;
  const std::string p = dir / "m.safetensors";
  save_safetensors(p, {{"w", from_vector({1, 2, 3}, {3})}});
  const std::string before = read_bytes(p);
  SafetensorsFile f = SafetensorsFile::open(p);
  Tensor w = f.get("w");
  ASSERT_TRUE(inside_mapping_of(w.data_ptr(), p));
  fill_(w, 7.0);  // an in-place update of a loaded weight
  EXPECT_EQ(w.to_vector(), (std::vector<double>{7, 7, 7}));
  EXPECT_EQ(read_bytes(p), before);
  EXPECT_EQ(SafetensorsFile::open(p).get("w").to_vector(), (std::vector<double>{1, 2, 3}));
}

TEST(SafetensorsMmap, MisalignedDataAndOddBoolsAreCopied) {
  TempDir dir;
  // An old-style file with an unpadded 61-byte header: the f32 data starts at file offset 69.
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header.append(61 - header.size(), ' ');
  const float vals[2] = {1.5f, -2.0f};
  write_bytes(dir / "mis", st_bytes(header, std::string(reinterpret_cast<const char*>(vals), 8)));
  SafetensorsFile f = SafetensorsFile::open(dir / "mis");
  Tensor x = f.get("x");
  EXPECT_EQ(x.to_vector(), (std::vector<double>{1.5, -2.0}));
  EXPECT_FALSE(inside_mapping_of(x.data_ptr(), dir / "mis"));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(x.data_ptr()) % 4, 0u);
  // BOOL bytes other than 0/1 (legal in the file, not in a C++ bool) come back as true.
  write_bytes(dir / "b", st_bytes(R"({"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})", std::string("\0\2\xff", 3)));
  Tensor b = SafetensorsFile::open(dir / "b").get("b");
  EXPECT_EQ(b.to_vector(), (std::vector<double>{0, 1, 1}));
  EXPECT_EQ(raw_bytes(b), std::string("\0\1\1", 3));
}

// ---------------------------------------------------------------- atomic writes

TEST(SafetensorsWrite, MissingDirectoryThrowsAndLeavesNothing) {
  TempDir dir;
  const std::string missing = dir / "no/such/dir";
  try {
    save_safetensors(missing + "/x.safetensors", {{"a", ones({2})}});
    ADD_FAILURE() << "no error";
  } catch (const SafetensorsError& e) {
    EXPECT_EQ(e.kind(), Kind::Io);
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  EXPECT_TRUE(dir.entries().empty());
}

TEST(SafetensorsWrite, OverwriteReplacesFullyAndFailuresKeepTheOldFile) {
  TempDir dir;
  const std::string p = dir / "ckpt.safetensors";
  save_safetensors(p, {{"big", zeros({1000})}, {"other", ones({10}, DType::I64)}}, {{"step", "1"}});
  Tensor old_view = SafetensorsFile::open(p).get("other");
  fs::permissions(p, fs::perms::owner_read | fs::perms::owner_write);

  save_safetensors(p, {{"small", full({2}, 9.0, DType::F16)}}, {{"step", "2"}});
  {
    SafetensorsFile f = SafetensorsFile::open(p);
    EXPECT_EQ(f.keys(), std::vector<std::string>{"small"});
    EXPECT_EQ(f.metadata().at("step"), "2");
    EXPECT_EQ(f.get("small").to_vector(), (std::vector<double>{9, 9}));
  }
  EXPECT_EQ(fs::file_size(p), read_bytes(p).size());
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.safetensors"});  // no temp file left
  EXPECT_EQ(fs::status(p).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  // A tensor viewing the old file keeps the old contents (the rename swapped inodes, nothing was rewritten).
  EXPECT_EQ(old_view.to_vector(), std::vector<double>(10, 1.0));

  // Failures before writing: the old file stays byte-identical.
  const std::string before = read_bytes(p);
  EXPECT_THROW(save_safetensors(p, {{"a", ones({1})}, {"a", ones({1})}}), Error);
  EXPECT_THROW(save_safetensors(p, {{"__metadata__", ones({1})}}), Error);
  EXPECT_THROW(save_safetensors(p, {{"u", Tensor()}}), Error);
  EXPECT_THROW(save_safetensors(p, {{"bad\xff", ones({1})}}), Error);
  EXPECT_THROW(save_safetensors(p, {{"a", ones({1})}}, {{"k", "\xc0\x80"}}), Error);
  EXPECT_EQ(read_bytes(p), before);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.safetensors"});

  // A failure after the temp file was written (the rename onto a directory fails): the target
  // is untouched and the temp file is removed.
  fs::create_directory(dir / "adir");
  try {
    save_safetensors(dir / "adir", {{"a", ones({3})}});
    ADD_FAILURE() << "no error";
  } catch (const SafetensorsError& e) {
    EXPECT_EQ(e.kind(), Kind::Io);
  }
  EXPECT_TRUE(fs::is_directory(dir / "adir"));
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"adir", "ckpt.safetensors"}));
}

}  // namespace
}  // namespace sd
