// TensorBoard event files: TFRecord framing with masked CRC32C, hand-written protobuf wire
// format for Event / Summary / Summary.Value (field numbers in tensorboard.h).
#include "train/tensorboard.h"

#include <unistd.h>

#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "runtime/error.h"

namespace sd::train {
namespace {

// ---- CRC32C ------------------------------------------------------------------------------
// kCrc[k][b]: the CRC register after byte b followed by k zero bytes (k = 0: the classic
// byte-at-a-time table), so eight bytes are folded in with eight lookups.
using Crc32cTables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Crc32cTables make_crc32c_tables() {
  Crc32cTables t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t c = b;
    for (int bit = 0; bit < 8; ++bit) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    t[0][b] = c;
  }
  for (int k = 1; k < 8; ++k)
    for (uint32_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFF];
  return t;
}
constexpr Crc32cTables kCrc = make_crc32c_tables();

uint32_t load_le32(const unsigned char* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
uint64_t load_le64(const unsigned char* p) { return uint64_t(load_le32(p)) | uint64_t(load_le32(p + 4)) << 32; }

// ---- protobuf wire format, writing ---------------------------------------------------------
enum Wire : int { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out.push_back(char(v));
}
void put_key(std::string& out, int field, Wire wire) { put_varint(out, uint64_t(field) << 3 | wire); }
void put_le(std::string& out, uint64_t v, int nbytes) {
  for (int i = 0; i < nbytes; ++i) out.push_back(char(uint8_t(v >> (8 * i))));
}
void put_double(std::string& out, int field, double v) {
  put_key(out, field, kFixed64);
  put_le(out, std::bit_cast<uint64_t>(v), 8);
}
void put_float(std::string& out, int field, float v) {
  put_key(out, field, kFixed32);
  put_le(out, std::bit_cast<uint32_t>(v), 4);
}
void put_bytes(std::string& out, int field, std::string_view bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out.append(bytes);
}

// Event fields 1 (wall_time) and 2 (step), each left out when zero as proto3 does (a double is
// "zero" only when all its bits are: -0.0 is written).
std::string event_prefix(double wall_time, int64_t step) {
  std::string ev;
  if (std::bit_cast<uint64_t>(wall_time) != 0) put_double(ev, 1, wall_time);
  if (step != 0) {
    put_key(ev, 2, kVarint);
    put_varint(ev, uint64_t(step));  // negative int64: ten bytes, two's complement
  }
  return ev;
}

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

// ---- protobuf wire format, reading ---------------------------------------------------------
struct Malformed {
  std::string what;
};

struct Field {
  int number = 0;
  int wire = 0;
  uint64_t value = 0;     // varint, fixed64 or fixed32 payload
  std::string_view bytes;  // length-delimited payload
};

// Walks the fields of one serialized message; throws Malformed on bad input.
class FieldReader {
 public:
  explicit FieldReader(std::string_view msg) : p_(reinterpret_cast<const unsigned char*>(msg.data())),
                                               end_(p_ + msg.size()) {}

  bool next(Field& f) {
    if (p_ == end_) return false;
    const uint64_t key = varint();
    f.number = int(key >> 3);
    f.wire = int(key & 7);
    if (f.number == 0 || (key >> 3) > 0x1FFFFFFF) throw Malformed{"invalid field number"};
    switch (f.wire) {
      case kVarint:
        f.value = varint();
        break;
      case kFixed64:
        need(8);
        f.value = load_le64(p_);
        p_ += 8;
        break;
      case kFixed32:
        need(4);
        f.value = load_le32(p_);
        p_ += 4;
        break;
      case kLengthDelimited: {
        const uint64_t n = varint();
        need(n);
        f.bytes = std::string_view(reinterpret_cast<const char*>(p_), size_t(n));
        p_ += n;
        break;
      }
      default:
        throw Malformed{"field " + std::to_string(f.number) + " has unsupported wire type " + std::to_string(f.wire)};
    }
    return true;
  }

 private:
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      need(1);
      const unsigned char b = *p_++;
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    throw Malformed{"varint longer than 10 bytes"};
  }
  void need(uint64_t n) const {
    if (n > uint64_t(end_ - p_)) throw Malformed{"message ends inside a field"};
  }

  const unsigned char* p_;
  const unsigned char* end_;
};

void expect_wire(const Field& f, int wire, const char* name) {
  if (f.wire != wire)
    throw Malformed{std::string(name) + " (field " + std::to_string(f.number) + ") has wire type " +
                    std::to_string(f.wire) + ", expected " + std::to_string(wire)};
}

// Appends the simple_values of one serialized Event to `out`.
void decode_event(std::string_view data, std::vector<ScalarEvent>& out) {
  double wall_time = 0;
  int64_t step = 0;
  std::vector<std::string_view> summaries;  // a repeated embedded message merges: all count
  FieldReader event(data);
  for (Field f; event.next(f);) {
    if (f.number == 1) {
      expect_wire(f, kFixed64, "Event.wall_time");
      wall_time = std::bit_cast<double>(f.value);
    } else if (f.number == 2) {
      expect_wire(f, kVarint, "Event.step");
      step = int64_t(f.value);
    } else if (f.number == 5) {
      expect_wire(f, kLengthDelimited, "Event.summary");
      summaries.push_back(f.bytes);
    }
  }
  for (std::string_view summary : summaries) {
    FieldReader values(summary);
    for (Field v; values.next(v);) {
      if (v.number != 1) continue;
      expect_wire(v, kLengthDelimited, "Summary.value");
      ScalarEvent ev{.tag = {}, .step = step, .value = 0, .wall_time = wall_time};
      bool simple = false;
      FieldReader value(v.bytes);
      for (Field g; value.next(g);) {
        if (g.number == 1) {
          expect_wire(g, kLengthDelimited, "Summary.Value.tag");
          ev.tag = std::string(g.bytes);
        } else if (g.number == 2) {
          expect_wire(g, kFixed32, "Summary.Value.simple_value");
          ev.value = std::bit_cast<float>(uint32_t(g.value));
          simple = true;
        } else if (g.number >= 3 && g.number <= 8 && g.number != 7) {
          simple = false;  // another member of the `value` oneof (histo, image, tensor...) wins
        }
      }
      if (simple) out.push_back(std::move(ev));
    }
  }
}

}  // namespace

uint32_t crc32c(std::string_view bytes, uint32_t crc) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size();
  crc = ~crc;
  for (; n >= 8; p += 8, n -= 8) {
    const uint32_t lo = load_le32(p) ^ crc;
    const uint32_t hi = load_le32(p + 4);
    crc = kCrc[7][lo & 0xFF] ^ kCrc[6][(lo >> 8) & 0xFF] ^ kCrc[5][(lo >> 16) & 0xFF] ^ kCrc[4][lo >> 24] ^
          kCrc[3][hi & 0xFF] ^ kCrc[2][(hi >> 8) & 0xFF] ^ kCrc[1][(hi >> 16) & 0xFF] ^ kCrc[0][hi >> 24];
  }
  for (; n > 0; ++p, --n) crc = (crc >> 8) ^ kCrc[0][(crc ^ *p) & 0xFF];
  return ~crc;
}

uint32_t masked_crc32c(std::string_view bytes) {
  const uint32_t crc = crc32c(bytes);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

// ---- writer --------------------------------------------------------------------------------

void TensorBoardWriter::Closer::operator()(std::FILE* f) const { std::fclose(f); }

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  SD_CHECK(!dir.empty(), "TensorBoardWriter: empty logging directory");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  SD_CHECK(!ec, "TensorBoardWriter: cannot create directory ", dir, ": ", ec.message());

  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::strcpy(host, "localhost");
  // One counter per process, like TensorBoard's: two writers started in the same second get
  // different names. "x" (exclusive) never reuses an existing file; a clash takes the next number.
  static std::atomic<uint64_t> counter{0};
  for (int attempt = 0;; ++attempt) {
    char name[400];
    std::snprintf(name, sizeof(name), "events.out.tfevents.%010lld.%s.%lld.%llu", (long long)std::time(nullptr),
                  host, (long long)getpid(), (unsigned long long)counter.fetch_add(1));
    path_ = (std::filesystem::path(dir) / name).string();
    file_.reset(std::fopen(path_.c_str(), "wbx"));
    if (file_) break;
    const int err = errno;
    SD_CHECK(err == EEXIST && attempt < 1000, "TensorBoardWriter: cannot create ", path_, ": ", std::strerror(err));
  }

  std::string ev = event_prefix(now_seconds(), 0);
  put_bytes(ev, 3, "brain.Event:2");
  write_record(ev);
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_ && std::fflush(file_.get()) != 0)
    std::fprintf(stderr, "warning: TensorBoardWriter: cannot write %s: %s\n", path_.c_str(), std::strerror(errno));
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step, double wall_time) {
  SD_CHECK(file_, "TensorBoardWriter: add_scalar on a moved-from writer");
  std::string val;
  put_bytes(val, 1, tag);
  put_float(val, 2, float(value));
  std::string summary;
  put_bytes(summary, 1, val);
  std::string ev = event_prefix(wall_time < 0 ? now_seconds() : wall_time, step);
  put_bytes(ev, 5, summary);
  write_record(ev);
}

void TensorBoardWriter::flush() {
  SD_CHECK(file_, "TensorBoardWriter: flush on a moved-from writer");
  SD_CHECK(std::fflush(file_.get()) == 0, "TensorBoardWriter: cannot write ", path_, ": ", std::strerror(errno));
}

void TensorBoardWriter::write_record(std::string_view data) {
  std::string rec;
  rec.reserve(data.size() + 16);
  put_le(rec, data.size(), 8);
  put_le(rec, masked_crc32c(rec), 4);
  rec.append(data);
  put_le(rec, masked_crc32c(data), 4);
  SD_CHECK(std::fwrite(rec.data(), 1, rec.size(), file_.get()) == rec.size(), "TensorBoardWriter: cannot write ",
           path_, ": ", std::strerror(errno));
}

// ---- reader --------------------------------------------------------------------------------

std::vector<ScalarEvent> read_scalar_events(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SD_CHECK(in, "read_scalar_events: cannot open ", path, ": ", std::strerror(errno));
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  SD_CHECK(!in.bad(), "read_scalar_events: cannot read ", path);

  const auto* base = reinterpret_cast<const unsigned char*>(file.data());
  std::vector<ScalarEvent> out;
  size_t pos = 0;
  for (size_t index = 0; pos < file.size(); ++index) {
    const size_t left = file.size() - pos;
    SD_CHECK(left >= 12, "read_scalar_events: ", path, ": record ", index, " at byte ", pos,
             " is truncated: ", left, " bytes left, its header needs 12");
    const uint64_t len = load_le64(base + pos);
    const uint32_t len_crc = load_le32(base + pos + 8);
    SD_CHECK(masked_crc32c(std::string_view(file).substr(pos, 8)) == len_crc, "read_scalar_events: ", path,
             ": record ", index, " at byte ", pos, ": length CRC mismatch (corrupted file)");
    SD_CHECK(len <= left - 12 && left - 12 - len >= 4, "read_scalar_events: ", path, ": record ", index,
             " at byte ", pos, " is truncated: ", len, " data bytes + 4 CRC bytes announced, ", left - 12, " left");
    const std::string_view data = std::string_view(file).substr(pos + 12, size_t(len));
    SD_CHECK(masked_crc32c(data) == load_le32(base + pos + 12 + len), "read_scalar_events: ", path, ": record ",
             index, " at byte ", pos, ": data CRC mismatch (corrupted file)");
    try {
      decode_event(data, out);
    } catch (const Malformed& m) {
      SD_FAIL("read_scalar_events: ", path, ": record ", index, " at byte ", pos, " is not a valid Event: ", m.what);
    }
    pos += 12 + len + 4;
  }
  return out;
}

}  // namespace sd::train
