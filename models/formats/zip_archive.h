// Read-only zip archives, as far as PyTorch checkpoints need them (torch.save since 1.6 writes a
// zip of <archive>/data.pkl, <archive>/data/<storage key>, <archive>/version, ...).
//
// The file is memory-mapped (private, copy-on-write) and the central directory parsed by us:
// stored entries are returned as views of the mapping (what torch.save writes: no compression,
// data 64-byte aligned), deflated ones are inflated with zlib into memory of their own. ZIP64
// (archives, entries or offsets past 4 GiB) is understood. CRCs are not checked (torch does not
// either when it maps a file); sizes and offsets are, so a damaged archive raises sd::Error and
// never reads outside the file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace sd {

class ZipArchive {
 public:
  struct Entry {
    std::string name;
    uint16_t method = 0;           // 0 stored, 8 deflated (others are refused on read)
    uint64_t compressed_size = 0;
    uint64_t size = 0;             // uncompressed
    uint64_t local_header = 0;     // offset of the local file header
    uint64_t data_offset = 0;      // offset of the (compressed) data in the file
  };

  // A block of bytes that stays valid while `owner` lives (the mapping, or an inflated copy).
  // `data` is writable: pages of the mapping are copy-on-write, the file never changes.
  struct Bytes {
    char* data = nullptr;
    size_t size = 0;
    std::shared_ptr<void> owner;
  };

  // Maps the file and reads its central directory; sd::Error when it is not a readable zip.
  static ZipArchive open(const std::string& path);
  // True when the file starts like a zip (local file header "PK\3\4") -- cheap sniffing.
  static bool looks_like_zip(const std::string& path);

  const std::vector<Entry>& entries() const { return entries_; }
  const Entry* find(const std::string& name) const;  // nullptr when absent
  // Deflated entries are inflated into memory, never past their declared size, and all of an
  // archive's together never past inflate_budget() (a few megabytes of hostile deflate data can
  // claim gigabytes within deflate's real 1032:1 ratio).
  Bytes read(const Entry& e) const;
  uint64_t inflate_budget() const { return kInflateFloor + kInflatePerFileByte * file_size_; }
  static constexpr uint64_t kInflateFloor = 64ull << 20;
  static constexpr uint64_t kInflatePerFileByte = 16;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::shared_ptr<void> map_;  // the mapping, released with the last view
  const char* base_ = nullptr;
  size_t file_size_ = 0;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> by_name_;  // a .ckpt has one entry per storage: thousands
  mutable std::shared_ptr<uint64_t> inflated_ = std::make_shared<uint64_t>(0);  // bytes inflated so far, all copies
};

}  // namespace sd
