// Zip reading: end-of-central-directory (plus its ZIP64 form), central directory entries, local
// headers; everything bounds-checked against the mapped file.
#include "models/formats/zip_archive.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "runtime/error.h"

namespace sd {

namespace {

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr uint32_t kEnd64Sig = 0x06064b50, kEnd64LocatorSig = 0x07064b50;

// Little-endian reads with a bounds check against the file.
class Reader {
 public:
  Reader(const char* base, size_t size, const std::string& path) : base_(base), size_(size), path_(path) {}
  void need(uint64_t off, uint64_t len, const char* what) const {
    SD_CHECK(off <= size_ && len <= size_ - off, "zip: '", path_, "': ", what, " at offset ", off, " (", len,
             " bytes) lies outside the file of ", size_, " bytes");
  }
  uint64_t le(uint64_t off, int bytes, const char* what) const {
    need(off, uint64_t(bytes), what);
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | uint8_t(base_[off + uint64_t(i)]);
    return v;
  }
  uint16_t u16(uint64_t off, const char* what) const { return uint16_t(le(off, 2, what)); }
  uint32_t u32(uint64_t off, const char* what) const { return uint32_t(le(off, 4, what)); }
  uint64_t u64(uint64_t off, const char* what) const { return le(off, 8, what); }
  std::string str(uint64_t off, uint64_t len, const char* what) const {
    need(off, len, what);
    return std::string(base_ + off, size_t(len));
  }

 private:
  const char* base_;
  size_t size_;
  const std::string& path_;
};

struct Mapping {
  void* addr = nullptr;
  size_t len = 0;
  ~Mapping() {
    if (addr) munmap(addr, len);
  }
};

}  // namespace

bool ZipArchive::looks_like_zip(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char sig[4] = {};
  in.read(sig, 4);
  return in.gcount() == 4 && sig[0] == 'P' && sig[1] == 'K' && sig[2] == 3 && sig[3] == 4;
}

ZipArchive ZipArchive::open(const std::string& path) {
  ZipArchive z;
  z.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SD_CHECK(fd >= 0, "zip: cannot open '", path, "': ", std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    SD_FAIL("zip: cannot stat '", path, "': ", std::strerror(err));
  }
  auto map = std::make_shared<Mapping>();
  map->len = size_t(st.st_size);
  if (map->len > 0) {
    // Private and writable: tensors viewing the mapping may be modified in memory (copy-on-write).
    void* a = mmap(nullptr, map->len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    SD_CHECK(a != MAP_FAILED, "zip: cannot map '", path, "': ", std::strerror(err));
    map->addr = a;
  } else {
    ::close(fd);
  }
  z.map_ = map;
  z.base_ = static_cast<const char*>(map->addr);
  z.file_size_ = map->len;
  Reader r(z.base_, z.file_size_, z.path_);

  // End of central directory: 22 bytes + a comment of up to 65535 bytes at the very end.
  SD_CHECK(z.file_size_ >= 22, "zip: '", path, "' is too small to be a zip archive (", z.file_size_, " bytes)");
  uint64_t eocd = UINT64_MAX;
  const uint64_t lowest = z.file_size_ > 22 + 65535 ? z.file_size_ - 22 - 65535 : 0;
  for (uint64_t off = z.file_size_ - 22;; --off) {
    if (r.u32(off, "end of central directory") == kEndSig && off + 22 + r.u16(off + 20, "comment length") == z.file_size_) {
      eocd = off;
      break;
    }
    if (off == lowest) break;
  }
  SD_CHECK(eocd != UINT64_MAX, "zip: '", path, "' has no end-of-central-directory record (not a zip archive, or truncated)");
  uint64_t count = r.u16(eocd + 10, "entry count");
  uint64_t cd_size = r.u32(eocd + 12, "central directory size");
  uint64_t cd_offset = r.u32(eocd + 16, "central directory offset");
  if (count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) {
    // ZIP64: the locator sits right before the classic record and points at the 64-bit one.
    SD_CHECK(eocd >= 20 && r.u32(eocd - 20, "zip64 locator") == kEnd64LocatorSig, "zip: '", path,
             "' needs a ZIP64 end-of-central-directory locator and has none");
    const uint64_t e64 = r.u64(eocd - 20 + 8, "zip64 record offset");
    SD_CHECK(r.u32(e64, "zip64 end of central directory") == kEnd64Sig, "zip: '", path,
             "': bad ZIP64 end-of-central-directory signature at offset ", e64);
    count = r.u64(e64 + 32, "zip64 entry count");
    cd_size = r.u64(e64 + 40, "zip64 central directory size");
    cd_offset = r.u64(e64 + 48, "zip64 central directory offset");
  }
  r.need(cd_offset, cd_size, "central directory");
  // Each central entry is at least 46 bytes: a count larger than that allows is a damaged file.
  SD_CHECK(count <= cd_size / 46, "zip: '", path, "': ", count, " entries cannot fit in a central directory of ",
           cd_size, " bytes");

  uint64_t off = cd_offset;
  z.entries_.reserve(size_t(count));
  for (uint64_t i = 0; i < count; ++i) {
    SD_CHECK(r.u32(off, "central directory entry") == kCentralSig, "zip: '", path,
             "': bad central directory entry signature at offset ", off);
    Entry e;
    const uint16_t flags = r.u16(off + 8, "flags");
    e.method = r.u16(off + 10, "method");
    e.compressed_size = r.u32(off + 20, "compressed size");
    e.size = r.u32(off + 24, "size");
    const uint16_t name_len = r.u16(off + 28, "name length");
    const uint16_t extra_len = r.u16(off + 30, "extra length");
    const uint16_t comment_len = r.u16(off + 32, "comment length");
    e.local_header = r.u32(off + 42, "local header offset");
    e.name = r.str(off + 46, name_len, "entry name");
    SD_CHECK(!(flags & 1), "zip: '", path, "': entry '", e.name, "' is encrypted");
    // ZIP64 extended information (header id 1): the 64-bit values, in this order, of exactly the
    // fields whose 32-bit slot holds 0xFFFFFFFF.
    uint64_t x = off + 46 + name_len;
    const uint64_t x_end = x + extra_len;
    r.need(x, extra_len, "extra field");
    while (x + 4 <= x_end) {
      const uint16_t id = r.u16(x, "extra id"), len = r.u16(x + 2, "extra length");
      SD_CHECK(x + 4 + len <= x_end, "zip: '", path, "': extra field of entry '", e.name, "' overruns its block");
      if (id == 1) {
        uint64_t p = x + 4;
        auto take = [&](uint64_t& field) {
          if (field != 0xFFFFFFFF) return;
          SD_CHECK(p + 8 <= x + 4 + len, "zip: '", path, "': ZIP64 extra field of entry '", e.name, "' is too short");
          field = r.u64(p, "zip64 value");
          p += 8;
        };
        take(e.size);
        take(e.compressed_size);
        take(e.local_header);
      }
      x += 4 + uint64_t(len);
    }
    // The local header repeats name and extra (the extra may differ: torch pads it for alignment).
    SD_CHECK(r.u32(e.local_header, "local header") == kLocalSig, "zip: '", path, "': bad local header of entry '",
             e.name, "' at offset ", e.local_header);
    const uint16_t lname = r.u16(e.local_header + 26, "local name length");
    const uint16_t lextra = r.u16(e.local_header + 28, "local extra length");
    e.data_offset = e.local_header + 30 + lname + lextra;
    r.need(e.data_offset, e.compressed_size, "entry data");
    // Two entries of one name would make "which one is read" a matter of reader: refuse.
    SD_CHECK(z.by_name_.emplace(e.name, z.entries_.size()).second, "zip: '", path, "' holds two entries named '",
             e.name, "'");
    z.entries_.push_back(std::move(e));
    off += 46 + uint64_t(name_len) + extra_len + comment_len;
  }
  return z;
}

const ZipArchive::Entry* ZipArchive::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

ZipArchive::Bytes ZipArchive::read(const Entry& e) const {
  Bytes b;
  if (e.method == 0) {
    SD_CHECK(e.compressed_size == e.size, "zip: '", path_, "': stored entry '", e.name, "' has compressed size ",
             e.compressed_size, " != size ", e.size);
    b.data = const_cast<char*>(base_) + e.data_offset;
    b.size = size_t(e.size);
    b.owner = map_;
    return b;
  }
  SD_CHECK(e.method == 8, "zip: '", path_, "': entry '", e.name, "' uses compression method ", e.method,
           " (only stored and deflated entries are supported)");
  // Deflate cannot expand more than ~1032:1; a larger claim is a damaged (or hostile) header.
  SD_CHECK(e.size <= e.compressed_size * 1040 + 1024, "zip: '", path_, "': entry '", e.name, "' claims ", e.size,
           " bytes from ", e.compressed_size, " compressed bytes");
  SD_CHECK(e.size <= inflate_budget() - std::min(*inflated_, inflate_budget()), "zip: '", path_, "': entry '", e.name,
           "' would inflate to ", e.size, " bytes, past the budget of ", inflate_budget(), " bytes for an archive of ",
           file_size_, " bytes (", *inflated_, " already inflated): refusing a likely decompression bomb");
  *inflated_ += e.size;
  auto buf = std::shared_ptr<char[]>(new char[size_t(e.size) + 1]);
  z_stream zs{};
  SD_CHECK(inflateInit2(&zs, -MAX_WBITS) == Z_OK, "zip: inflateInit2 failed");
  struct InflateEnd {  // also when a check below throws
    z_stream* zs;
    ~InflateEnd() { inflateEnd(zs); }
  } end_guard{&zs};
  uint64_t in_done = 0, out_done = 0;
  int rc = Z_OK;
  // zlib counts in 32-bit uInt: feed and drain in chunks so entries past 4 GiB work.
  const uint64_t chunk = 1u << 30;
  while (rc == Z_OK) {
    if (zs.avail_in == 0 && in_done < e.compressed_size) {
      const uint64_t n = std::min(chunk, e.compressed_size - in_done);
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(base_) + e.data_offset + in_done);
      zs.avail_in = uInt(n);
      in_done += n;
    }
    if (zs.avail_out == 0) {
      // One spare byte beyond the declared size lets us notice data longer than declared.
      SD_CHECK(out_done < e.size + 1, "zip: '", path_, "': entry '", e.name, "' inflates to more than the ", e.size,
               " bytes the directory says");
      const uint64_t n = std::min(chunk, e.size + 1 - out_done);
      zs.next_out = reinterpret_cast<Bytef*>(buf.get() + out_done);
      zs.avail_out = uInt(n);
      out_done += n;
    }
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc == Z_BUF_ERROR && zs.avail_in == 0 && in_done == e.compressed_size) break;  // input ran out
  }
  const uint64_t produced = zs.total_out;
  SD_CHECK(rc == Z_STREAM_END, "zip: '", path_, "': entry '", e.name, "' is not valid deflate data (zlib code ", rc,
           ")");
  SD_CHECK(produced == e.size, "zip: '", path_, "': entry '", e.name, "' inflates to ", produced,
           " bytes, the directory says ", e.size);
  b.data = buf.get();
  b.size = size_t(e.size);
  b.owner = std::shared_ptr<void>(buf, buf.get());
  return b;
}

}  // namespace sd
