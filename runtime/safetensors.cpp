// safetensors reader: map, validate like the reference reader (FORMATS.md §1.3), hand out views.
#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "runtime/safetensors_detail.h"

namespace sd {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is viewed in place: big-endian hosts need byte swaps");

namespace safetensors_detail {

namespace {
// The reference enum, in its order ("alignment order", smallest first): the rank is the index.
const FormatDType kDTypes[] = {
    {"BOOL", 8, 0, DType::Bool},       {"F4", 4, 1, std::nullopt},         {"F6_E2M3", 6, 2, std::nullopt},
    {"F6_E3M2", 6, 3, std::nullopt},   {"U8", 8, 4, DType::U8},            {"I8", 8, 5, std::nullopt},
    {"F8_E5M2", 8, 6, std::nullopt},   {"F8_E4M3", 8, 7, std::nullopt},    {"F8_E8M0", 8, 8, std::nullopt},
    {"F8_E4M3FNUZ", 8, 9, std::nullopt}, {"F8_E5M2FNUZ", 8, 10, std::nullopt}, {"I16", 16, 11, std::nullopt},
    {"U16", 16, 12, std::nullopt},     {"F16", 16, 13, DType::F16},        {"BF16", 16, 14, DType::BF16},
    {"I32", 32, 15, DType::I32},       {"U32", 32, 16, std::nullopt},      {"F32", 32, 17, DType::F32},
    {"C64", 64, 18, std::nullopt},     {"F64", 64, 19, DType::F64},        {"I64", 64, 20, DType::I64},
    {"U64", 64, 21, std::nullopt},
};
}  // namespace

const FormatDType* find_format_dtype(std::string_view name) {
  for (const FormatDType& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const FormatDType& format_dtype_of(DType dtype) {
  for (const FormatDType& d : kDTypes)
    if (d.dtype == dtype) return d;
  SD_FAIL("safetensors: dtype ", dtype_name(dtype), " has no safetensors spelling");
}

bool valid_utf8(const char* s, size_t n) {
  const auto* p = reinterpret_cast<const unsigned char*>(s);
  size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    if (c < 0x80) { ++i; continue; }
    // Lead byte decides the length and the allowed range of the first continuation byte
    // (that range is what excludes overlong forms, surrogates and code points > U+10FFFF).
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c == 0xED) { len = 3; hi = 0x9F; }
    else if (c >= 0xE1 && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; }
    else return false;
    if (n - i < len) return false;
    if (p[i + 1] < lo || p[i + 1] > hi) return false;
    for (size_t k = 2; k < len; ++k)
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return false;
    i += len;
  }
  return true;
}

}  // namespace safetensors_detail

using safetensors_detail::FormatDType;
using Kind = SafetensorsErrorKind;

const char* safetensors_error_name(SafetensorsErrorKind kind) {
  switch (kind) {
    case Kind::HeaderTooSmall: return "HeaderTooSmall";
    case Kind::HeaderTooLarge: return "HeaderTooLarge";
    case Kind::InvalidHeaderLength: return "InvalidHeaderLength";
    case Kind::InvalidHeader: return "InvalidHeader";
    case Kind::InvalidHeaderDeserialization: return "InvalidHeaderDeserialization";
    case Kind::InvalidOffset: return "InvalidOffset";
    case Kind::TensorInvalidInfo: return "TensorInvalidInfo";
    case Kind::MetadataIncompleteBuffer: return "MetadataIncompleteBuffer";
    case Kind::ValidationOverflow: return "ValidationOverflow";
    case Kind::MisalignedSlice: return "MisalignedSlice";
    case Kind::DuplicateKey: return "DuplicateKey";
    case Kind::UnsupportedDtype: return "UnsupportedDtype";
    case Kind::Io: return "Io";
  }
  return "?";
}

SafetensorsError::SafetensorsError(SafetensorsErrorKind kind, const std::string& path, const std::string& detail)
    : Error("safetensors: " + path + ": " + safetensors_error_name(kind) + ": " + detail), kind_(kind) {}

// ---------------------------------------------------------------- mapping

namespace {

// The whole file, mapped private and writable: pages are shared with the page cache until a
// tensor viewing them is written to, then copied for this process only (the file never changes,
// and an in-place update of a loaded weight works instead of faulting).
struct Mapping {
  void* addr = nullptr;
  size_t len = 0;
  bool writable = false;  // PROT_WRITE (copy-on-write): views of it may be written to
  int fd = -1;            // the open file, for converting reads that bypass the mapping
  Mapping(void* a, size_t n, bool w, int f) : addr(a), len(n), writable(w), fd(f) {}
  ~Mapping() {
    if (addr) munmap(addr, len);
    if (fd >= 0) ::close(fd);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  const char* bytes() const { return static_cast<const char*>(addr); }
};

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

std::string errno_str(const char* what) { return std::string(what) + " failed: " + std::strerror(errno); }

}  // namespace

struct SafetensorsFile::Impl {
  std::string path;
  std::shared_ptr<Mapping> map;  // the whole file
  size_t data_start = 0;         // 8 + N
  std::map<std::string, std::string> metadata;
  std::map<std::string, TensorInfo> tensors;

  [[noreturn]] void fail(Kind kind, const std::string& detail) const { throw SafetensorsError(kind, path, detail); }
};

// ---------------------------------------------------------------- header parsing

namespace {

constexpr uint64_t kMaxHeaderSize = 100'000'000;  // the reference reader's MAX_HEADER_SIZE
constexpr int kMaxDepth = 128;                    // serde_json's recursion limit

// First pass over the header JSON, without building anything: rejects duplicate keys (at any
// level; nlohmann's DOM keeps the last one silently) and nesting deeper than serde_json allows
// (so a hostile 100 MB "[[[[..." costs no memory). Stops at the first problem.
class HeaderChecker : public nlohmann::json_sax<nlohmann::json> {
 public:
  enum class Problem { None, Syntax, TooDeep, Duplicate };
  Problem problem = Problem::None;
  std::string detail;

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    keys_.emplace_back();
    return enter();
  }
  bool key(string_t& k) override {
    if (!keys_.back().insert(k).second) {
      problem = Problem::Duplicate;
      detail = "key \"" + k + "\" appears twice" + (keys_.size() > 1 ? " in a nested object" : "");
      return false;
    }
    return true;
  }
  bool end_object() override {
    keys_.pop_back();
    --depth_;
    return true;
  }
  bool start_array(std::size_t) override { return enter(); }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    problem = Problem::Syntax;
    detail = e.what();
    return false;
  }

 private:
  bool enter() {
    if (++depth_ > kMaxDepth) {
      problem = Problem::TooDeep;
      detail = "JSON nested deeper than " + std::to_string(kMaxDepth) + " levels";
      return false;
    }
    return true;
  }
  int depth_ = 0;
  std::vector<std::set<std::string>> keys_;
};

// A non-negative JSON integer (serde's usize), or nullopt for anything else.
std::optional<uint64_t> as_u64(const nlohmann::json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return uint64_t(v.get<int64_t>());
  return std::nullopt;
}

struct RawInfo {
  std::string name;
  const FormatDType* fdt = nullptr;
  std::vector<uint64_t> shape;
  uint64_t begin = 0, end = 0;
};

std::string in_quotes(const std::string& s) { return "\"" + s + "\""; }

// 64-bit multiply that reports overflow instead of wrapping.
bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto impl = std::make_shared<Impl>();
  impl->path = path;
  const Impl& I = *impl;

  // -- the file and its size
  Fd f;
  // O_NONBLOCK: opening a FIFO by mistake must not hang (it is then refused as not a regular file).
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (f.fd < 0) I.fail(Kind::Io, errno_str("open"));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) I.fail(Kind::Io, errno_str("fstat"));
  if (!S_ISREG(st.st_mode)) I.fail(Kind::Io, "not a regular file");
  const uint64_t file_len = uint64_t(st.st_size);
  if (file_len < 8) I.fail(Kind::HeaderTooSmall, "file is " + std::to_string(file_len) + " bytes, the length prefix alone is 8");

  void* addr = ::mmap(nullptr, size_t(file_len), PROT_READ | PROT_WRITE, MAP_PRIVATE, f.fd, 0);
  bool writable = addr != MAP_FAILED;
  if (addr == MAP_FAILED && errno == ENOMEM)  // strict overcommit may refuse a writable map: read-only still works
    addr = ::mmap(nullptr, size_t(file_len), PROT_READ, MAP_PRIVATE, f.fd, 0);
  if (addr == MAP_FAILED) I.fail(Kind::Io, errno_str("mmap"));
  impl->map = std::make_shared<Mapping>(addr, size_t(file_len), writable, f.fd);
  f.fd = -1;  // the mapping owns it now
  const char* bytes = impl->map->bytes();

  // -- length prefix
  uint64_t n = 0;
  std::memcpy(&n, bytes, 8);  // little-endian host (static_assert above)
  if (n > kMaxHeaderSize)
    I.fail(Kind::HeaderTooLarge, "header length " + std::to_string(n) + " exceeds the limit of " +
                                     std::to_string(kMaxHeaderSize) + " bytes");
  if (n > file_len - 8)
    I.fail(Kind::InvalidHeaderLength, "header length " + std::to_string(n) + " reaches past the end of the " +
                                          std::to_string(file_len) + "-byte file");
  const char* hdr = bytes + 8;
  impl->data_start = size_t(8 + n);

  // -- header text
  if (!safetensors_detail::valid_utf8(hdr, size_t(n))) I.fail(Kind::InvalidHeader, "header is not valid UTF-8");
  // nlohmann's lexer takes a NUL byte for the end of input ("{}\0junk" would parse); JSON allows
  // NUL nowhere (raw control characters are invalid even inside strings), serde rejects it.
  if (std::memchr(hdr, 0, size_t(n)) != nullptr)
    I.fail(Kind::InvalidHeaderDeserialization, "header contains a NUL byte, which is not valid JSON");
  HeaderChecker checker;
  const bool ok = nlohmann::json::sax_parse(hdr, hdr + n, &checker);
  if (!ok || checker.problem != HeaderChecker::Problem::None) {
    if (checker.problem == HeaderChecker::Problem::Duplicate) I.fail(Kind::DuplicateKey, checker.detail);
    I.fail(Kind::InvalidHeaderDeserialization,
           checker.detail.empty() ? std::string("header is not valid JSON") : checker.detail);
  }
  nlohmann::json j = nlohmann::json::parse(hdr, hdr + n, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) I.fail(Kind::InvalidHeaderDeserialization, "header is not valid JSON");
  if (!j.is_object()) I.fail(Kind::InvalidHeaderDeserialization, "header is not a JSON object");

  // -- schema: "__metadata__" (string -> string) and name -> {dtype, shape, data_offsets}
  std::vector<RawInfo> raw;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const nlohmann::json& v = it.value();
    if (key == "__metadata__") {
      if (v.is_null()) continue;  // serde's Option: null means absent
      if (!v.is_object()) I.fail(Kind::InvalidHeaderDeserialization, "\"__metadata__\" is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          I.fail(Kind::InvalidHeaderDeserialization,
                 "metadata value of " + in_quotes(m.key()) + " is not a string (" + m.value().type_name() + ")");
        impl->metadata.emplace(m.key(), m.value().get<std::string>());
      }
      continue;
    }
    auto bad = [&](const std::string& what) {
      I.fail(Kind::InvalidHeaderDeserialization, "tensor " + in_quotes(key) + ": " + what);
    };
    if (!v.is_object()) bad("entry is not an object");
    RawInfo r;
    r.name = key;
    // Fields other than these three are ignored, as serde does without deny_unknown_fields.
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) bad("missing or non-string \"dtype\"");
    r.fdt = safetensors_detail::find_format_dtype(dt->get_ref<const std::string&>());
    if (!r.fdt) bad("unknown dtype " + in_quotes(dt->get<std::string>()));
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) bad("missing or non-array \"shape\"");
    for (const auto& d : *sh) {
      auto u = as_u64(d);
      if (!u) bad("shape entry " + d.dump() + " is not a non-negative integer");
      r.shape.push_back(*u);
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2) bad("\"data_offsets\" is not a pair");
    auto b = as_u64((*off)[0]), e = as_u64((*off)[1]);
    if (!b || !e) bad("\"data_offsets\" entries are not non-negative integers");
    r.begin = *b;
    r.end = *e;
    raw.push_back(std::move(r));
  }

  // -- validation, in offset order (header order is free): contiguous, sized, covering the buffer
  std::sort(raw.begin(), raw.end(), [](const RawInfo& a, const RawInfo& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
  uint64_t cursor = 0;
  for (const RawInfo& r : raw) {
    if (r.begin != cursor || r.end < r.begin)
      I.fail(Kind::InvalidOffset, "tensor " + in_quotes(r.name) + " has data_offsets [" + std::to_string(r.begin) +
                                      ", " + std::to_string(r.end) + "], expected it to start at " +
                                      std::to_string(cursor) + " (no gaps, no overlaps)");
    cursor = r.end;
    uint64_t numel = 1, nbits = 0;
    for (uint64_t d : r.shape)
      if (mul_overflows(numel, d, &numel))
        I.fail(Kind::ValidationOverflow, "tensor " + in_quotes(r.name) + ": element count overflows 64 bits");
    // A tensor with a zero dimension has no elements, but its other dimensions still set its
    // strides, which must fit a signed 64-bit size (shape [0, 2^62, 4] is valid safetensors).
    uint64_t span = 1;
    for (uint64_t d : r.shape)
      if (mul_overflows(span, std::max<uint64_t>(d, 1), &span) || span > uint64_t(std::numeric_limits<int64_t>::max()))
        I.fail(Kind::ValidationOverflow, "tensor " + in_quotes(r.name) + ": the strides of its shape overflow 64 bits");
    if (mul_overflows(numel, uint64_t(r.fdt->bits), &nbits))
      I.fail(Kind::ValidationOverflow, "tensor " + in_quotes(r.name) + ": bit count overflows 64 bits");
    if (nbits % 8 != 0)
      I.fail(Kind::MisalignedSlice, "tensor " + in_quotes(r.name) + ": " + std::to_string(numel) + " elements of " +
                                        r.fdt->name + " are not a whole number of bytes");
    if (r.end - r.begin != nbits / 8)
      I.fail(Kind::TensorInvalidInfo, "tensor " + in_quotes(r.name) + ": dtype " + r.fdt->name + " and " +
                                          std::to_string(numel) + " elements need " + std::to_string(nbits / 8) +
                                          " bytes, data_offsets span " + std::to_string(r.end - r.begin));
  }
  if (cursor != file_len - 8 - n)
    I.fail(Kind::MetadataIncompleteBuffer, "tensors cover " + std::to_string(cursor) + " data bytes, the file has " +
                                               std::to_string(file_len - 8 - n) + " after the header");

  for (RawInfo& r : raw) {
    TensorInfo t;
    t.name = r.name;
    t.dtype_str = r.fdt->name;
    t.dtype = r.fdt->dtype;
    for (uint64_t d : r.shape) {
      // Only a tensor with a zero dimension can have another one this large (its bytes are in the file).
      if (d > uint64_t(std::numeric_limits<int64_t>::max()))
        I.fail(Kind::ValidationOverflow, "tensor " + in_quotes(r.name) + ": dimension " + std::to_string(d) +
                                             " does not fit a signed 64-bit size");
      t.shape.push_back(int64_t(d));
    }
    t.begin = size_t(r.begin);
    t.end = size_t(r.end);
    impl->tensors.emplace(r.name, std::move(t));
  }
  return SafetensorsFile(std::move(impl));
}

// ---------------------------------------------------------------- lookups

const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return impl_->metadata; }
const std::string& SafetensorsFile::path() const { return impl_->path; }
size_t SafetensorsFile::size() const { return impl_->tensors.size(); }
bool SafetensorsFile::contains(const std::string& name) const { return impl_->tensors.count(name) != 0; }

std::vector<std::string> SafetensorsFile::keys() const {
  std::vector<std::string> out;
  out.reserve(impl_->tensors.size());
  for (const auto& kv : impl_->tensors) out.push_back(kv.first);
  return out;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = impl_->tensors.find(name);
  if (it == impl_->tensors.end())
    SD_FAIL("safetensors: no tensor \"", name, "\" in ", impl_->path, " (", impl_->tensors.size(), " tensors)");
  return it->second;
}

// ---------------------------------------------------------------- tensors

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& ti = info(name);
  if (!ti.dtype)
    impl_->fail(Kind::UnsupportedDtype,
                "tensor " + in_quotes(name) + " has dtype " + ti.dtype_str + ", which sd has no tensor type for");
  const DType dt = *ti.dtype;
  const char* src = impl_->map->bytes() + impl_->data_start + ti.begin;
  const size_t nbytes = ti.nbytes();

  // A bool byte other than 0/1 is undefined behaviour in C++: such tensors are normalised in a copy.
  bool canonical = true;
  if (dt == DType::Bool)
    for (size_t i = 0; i < nbytes && canonical; ++i) canonical = static_cast<unsigned char>(src[i]) <= 1;

  // A read-only mapping (see open) gives copies: a weight may be trained in place.
  const bool aligned = reinterpret_cast<uintptr_t>(src) % dtype_size(dt) == 0;
  if (aligned && canonical && nbytes > 0 && impl_->map->writable) {
    auto timpl = std::make_shared<TensorImpl>();
    std::shared_ptr<Mapping> keep = impl_->map;  // the mapping outlives this file object if needed
    timpl->storage = std::make_shared<Storage>(const_cast<char*>(src), nbytes, Device::cpu(), [keep] {});
    timpl->shape = ti.shape;
    timpl->strides = contiguous_strides(ti.shape);
    timpl->dtype = dt;
    return Tensor(std::move(timpl));
  }
  Tensor out = empty(ti.shape, dt, Device::cpu());
  if (nbytes > 0) std::memcpy(out.data_ptr(), src, nbytes);
  if (!canonical) {
    auto* p = static_cast<unsigned char*>(out.data_ptr());
    for (size_t i = 0; i < nbytes; ++i) p[i] = p[i] != 0;
  }
  return out;
}

Tensor SafetensorsFile::get(const std::string& name, DType dtype, Device device) const {
  const TensorInfo& ti = info(name);
  // Bool (normalised on the way) and dtypes sd lacks (an error) go through the view.
  if (!ti.dtype || *ti.dtype == DType::Bool) return copy_to(get(name), dtype, device);
  // The bytes are read with pread, not through the mapping: mapped pages, once touched, count in this
  // process's resident memory for as long as the file stays open, so an f32 file loaded as bf16 (or
  // onto a GPU) held the whole file besides the converted weights. They come in 8 MiB pieces through
  // one staging buffer (still in cache when converted) rather than as a whole raw copy.
  const DType file_dtype = *ti.dtype;
  Tensor out = empty(ti.shape, dtype, device);
  const int64_t n = out.numel(), es = int64_t(dtype_size(file_dtype));
  const bool direct = dtype == file_dtype && device.is_cpu();
  const int64_t piece = direct ? n : std::max<int64_t>(1, (int64_t(8) << 20) / es);
  Tensor staging = direct ? Tensor() : empty({std::min(piece, n)}, file_dtype, Device::cpu());
  Tensor flat = as_strided(out, {n}, {1}, 0);
  for (int64_t i = 0; i < n; i += piece) {
    const int64_t k = std::min(piece, n - i);
    char* dst = direct ? static_cast<char*>(out.data_ptr()) + i * es : static_cast<char*>(staging.data_ptr());
    const size_t nbytes = size_t(k * es);
    const off_t at = off_t(impl_->data_start + ti.begin + size_t(i * es));
    for (size_t done = 0; done < nbytes;) {
      const ssize_t r = ::pread(impl_->map->fd, dst + done, nbytes - done, at + off_t(done));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) impl_->fail(Kind::Io, "reading tensor " + in_quotes(name) + ": " + errno_str("pread"));
      if (r == 0)
        impl_->fail(Kind::Io, "reading tensor " + in_quotes(name) + ": the file ended early (it shrank after it was opened)");
      done += size_t(r);
    }
    if (!direct) copy_(as_strided(flat, {k}, {1}, i), as_strided(staging, {k}, {1}, 0));
  }
  return out;
}

}  // namespace sd
