// safetensors files: the checkpoint format of diffusers, transformers, kohya and A1111.
//
// Layout (FORMATS.md §1): u64 little-endian header length N, N bytes of UTF-8 JSON, then one
// packed little-endian data buffer that every tensor's data_offsets index into.
//
// Reading maps the file (copy-on-write) and validates the whole header up front exactly as the
// reference Rust reader does, so a file accepted here is accepted there and vice versa. Tensors
// are materialised lazily: get() returns a zero-copy view of the mapping when it can, and the
// mapping lives as long as any tensor views it (the SafetensorsFile itself may go away first).
// As with any mapped file, another process truncating the file while it is mapped makes later
// reads fault (SIGBUS); replacing it by rename, as save_safetensors does, is safe.
//
// Writing reproduces Python's safetensors.save_file byte for byte and is atomic (temp file +
// rename), so an interrupted checkpoint save never leaves a half-written file at the target path.
#pragma once
#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace sd {

// One per SafeTensorError variant of the reference reader that a file can trigger, plus the
// ones that are ours: DuplicateKey (the spec forbids duplicates, serde silently keeps one),
// UnsupportedDtype (a valid file holding a dtype sd has no tensor type for) and Io.
enum class SafetensorsErrorKind {
  HeaderTooSmall,
  HeaderTooLarge,
  InvalidHeaderLength,
  InvalidHeader,
  InvalidHeaderDeserialization,
  InvalidOffset,
  TensorInvalidInfo,
  MetadataIncompleteBuffer,
  ValidationOverflow,
  MisalignedSlice,
  DuplicateKey,
  UnsupportedDtype,
  Io,
};

// The Rust-style spelling of a kind ("HeaderTooSmall", ...), as it appears in error messages.
const char* safetensors_error_name(SafetensorsErrorKind kind);

class SafetensorsError : public Error {
 public:
  // what() = "safetensors: <path>: <KindName>: <detail>"
  SafetensorsError(SafetensorsErrorKind kind, const std::string& path, const std::string& detail);
  SafetensorsErrorKind kind() const { return kind_; }

 private:
  SafetensorsErrorKind kind_;
};

struct TensorInfo {
  std::string name;
  std::string dtype_str;        // as in the file: "F32", "BF16", "F8_E4M3", ...
  std::optional<DType> dtype;   // set when sd has a tensor type for dtype_str
  Shape shape;
  size_t begin = 0, end = 0;    // byte range inside the data buffer (relative to 8 + N)
  size_t nbytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  // Maps and validates the whole file (FORMATS.md §1.3); throws SafetensorsError.
  static SafetensorsFile open(const std::string& path);

  const std::map<std::string, std::string>& metadata() const;
  std::vector<std::string> keys() const;  // sorted (byte order)
  size_t size() const;                    // number of tensors
  bool contains(const std::string& name) const;
  // Unknown name -> sd::Error naming the key and the file.
  const TensorInfo& info(const std::string& name) const;

  // CPU tensor with the file's dtype. Zero-copy (a view of the mapping, which it keeps alive)
  // when the data is aligned for its element type and the mapping is writable (copy-on-write);
  // otherwise a copy. Writing into a zero-copy tensor changes only this process's private pages,
  // never the file.
  // A dtype sd cannot represent raises SafetensorsError(UnsupportedDtype).
  Tensor get(const std::string& name) const;
  // A converted, contiguous copy on any device and dtype (e.g. an f16 file loaded as f32 on a
  // GPU). Reads only this tensor's bytes, from the file rather than the mapping, so converted
  // weights do not keep the file's pages resident as well. A file that shrank after open() raises
  // SafetensorsError(Io) naming the tensor.
  Tensor get(const std::string& name, DType dtype, Device device) const;

  const std::string& path() const;

 private:
  struct Impl;  // the mapping and the parsed header; immutable, so concurrent get() calls are safe
  explicit SafetensorsFile(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Writes `tensors` (any device, any strides) like Python's safetensors.save_file: tensors ordered
// by dtype (descending alignment order, FORMATS.md §1.4) then name; compact JSON with
// "__metadata__" first (omitted when empty); header padded with spaces to a multiple of 8.
// Metadata keys are written sorted: Python orders them by a randomly seeded hash map, so its
// output is reproducible only with at most one metadata key (the usual {"format":"pt"}), and then
// it is identical to ours. Atomic: writes <path>.tmp.<pid>, fsyncs, renames over path; on any error
// the old file is left intact and the temp file removed. Duplicate or invalid (non-UTF-8,
// "__metadata__") names and undefined tensors raise sd::Error before anything is written.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace sd
