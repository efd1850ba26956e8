// safetensors writer: the exact bytes of Python's safetensors.save_file (FORMATS.md §1.4),
// written atomically so an interrupted save never damages the file at the target path.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "runtime/safetensors.h"
#include "runtime/safetensors_detail.h"

namespace sd {

namespace {

using safetensors_detail::FormatDType;

// JSON string literal as serde_json writes it: only '"', '\\' and control characters are
// escaped (short forms where JSON has them, else \u00xx in lowercase hex); everything else,
// including '/', DEL and non-ASCII UTF-8, is copied as is.
void append_json_string(std::string& out, const std::string& s) {
  static const char* hex = "0123456789abcdef";
  out += '"';
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

struct Entry {
  const std::string* name;
  const Tensor* tensor;
  const FormatDType* fdt;
  size_t nbytes;
};

[[noreturn]] void io_fail(const std::string& path, const std::string& what) {
  throw SafetensorsError(SafetensorsErrorKind::Io, path, what + " failed: " + std::strerror(errno));
}

// Closes and deletes the temp file unless release() was called after the rename.
struct TempFile {
  std::string path;
  int fd = -1;
  bool keep = false;
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    if (!keep) ::unlink(path.c_str());
  }
};

void write_all(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    // Linux writes at most ~2 GiB per call: loop over partial writes (and EINTR).
    ssize_t w = ::write(fd, p, std::min(n, size_t(1) << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      io_fail(path, "write");
    }
    p += w;
    n -= size_t(w);
  }
}

}  // namespace

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // -- check everything before touching the file system
  for (const auto& [k, v] : metadata)
    SD_CHECK(safetensors_detail::valid_utf8(k.data(), k.size()) && safetensors_detail::valid_utf8(v.data(), v.size()),
             "save_safetensors: ", path, ": metadata entry \"", k, "\" is not valid UTF-8");
  std::vector<Entry> entries;
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    SD_CHECK(t.defined(), "save_safetensors: ", path, ": tensor \"", name, "\" is undefined");
    SD_CHECK(name != "__metadata__", "save_safetensors: ", path, ": \"__metadata__\" is reserved, not a tensor name");
    SD_CHECK(safetensors_detail::valid_utf8(name.data(), name.size()), "save_safetensors: ", path,
             ": tensor name \"", name, "\" is not valid UTF-8");
    SD_CHECK(seen.insert(name).second, "save_safetensors: ", path, ": tensor \"", name, "\" given twice");
    entries.push_back({&name, &t, &safetensors_detail::format_dtype_of(t.dtype()), t.nbytes()});
  }

  // -- reference order: dtype descending in the enum order, then name ascending (byte order;
  //    std::string compares as unsigned char, like Rust's String)
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    if (a.fdt->rank != b.fdt->rank) return a.fdt->rank > b.fdt->rank;
    return *a.name < *b.name;
  });

  // -- header: compact JSON, "__metadata__" first, tensors in offset order, space padding to 8
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) header += ',';
      first = false;
      append_json_string(header, k);
      header += ':';
      append_json_string(header, v);
    }
    header += '}';
  }
  size_t offset = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    if (i > 0 || !metadata.empty()) header += ',';
    append_json_string(header, *e.name);
    header += ":{\"dtype\":\"";
    header += e.fdt->name;
    header += "\",\"shape\":[";
    const Shape& sh = e.tensor->shape();
    for (size_t d = 0; d < sh.size(); ++d) {
      if (d) header += ',';
      header += std::to_string(sh[d]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + e.nbytes) + "]}";
    offset += e.nbytes;
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');

  // -- temp file next to the target (same file system, so rename is atomic)
  TempFile tmp;
  tmp.path = path + ".tmp." + std::to_string(::getpid());
  tmp.fd = ::open(tmp.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (tmp.fd < 0) {
    tmp.keep = true;  // nothing was created: do not unlink a file of someone else's by that name
    io_fail(path, "creating temp file " + tmp.path);
  }
  // Overwriting keeps the old file's permission bits, as writing in place would.
  struct stat old {};
  if (::stat(path.c_str(), &old) == 0) (void)::fchmod(tmp.fd, old.st_mode & 07777);

  const uint64_t n = header.size();
  char prefix[8];
  std::memcpy(prefix, &n, 8);  // little-endian host (static_assert in safetensors.cpp)
  write_all(tmp.fd, prefix, 8, path);
  write_all(tmp.fd, header.data(), header.size(), path);
  for (const Entry& e : entries) {
    if (e.nbytes == 0) continue;
    // One tensor at a time on the host, so a GPU model is never copied out whole.
    const Tensor& t = *e.tensor;
    Tensor host = t.is_cpu() ? contiguous_raw(t) : copy_to(t, t.dtype(), Device::cpu());
    write_all(tmp.fd, static_cast<const char*>(host.data_ptr()), e.nbytes, path);
  }
  if (::fsync(tmp.fd) != 0) io_fail(path, "fsync");
  const int fd = tmp.fd;
  tmp.fd = -1;
  if (::close(fd) != 0) io_fail(path, "close");
  if (::rename(tmp.path.c_str(), path.c_str()) != 0) io_fail(path, "rename of " + tmp.path);
  tmp.keep = true;

  // Make the rename itself durable (best effort: some file systems refuse fsync on directories).
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace sd
