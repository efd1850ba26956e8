// A small Parquet reader for the string/binary columns of Hugging Face datasets saved as
// Parquet (`data/train-*.parquet`: an `image` struct {bytes, path} and a `text` caption).
//
// What it reads: flat and struct (non-repeated) BYTE_ARRAY leaf columns; PLAIN and dictionary
// encodings (PLAIN_DICTIONARY / RLE_DICTIONARY); data pages v1 and v2; RLE definition levels;
// UNCOMPRESSED, SNAPPY, GZIP and ZSTD pages; page CRCs where the writer stored them. The
// metadata (Thrift compact protocol) is decoded by our own code. Everything else (other
// physical types, lists, other encodings and codecs, encryption, columns in other files) is
// refused with an sd::Error that names the file and the column, row group and page.
//
// The file is memory-mapped once; every offset and length read from it is checked against the
// file and the buffers it points into, and the work one column read may do (decompressed and
// returned bytes) is capped relative to the file size, so a damaged or hostile file raises
// sd::Error instead of reading out of bounds or exhausting memory.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace sd::train {

// A value of a BYTE_ARRAY column: nullopt for a null (definition level below the column's max).
using ParquetBytes = std::optional<std::string>;

class ParquetFile {
 public:
  // Maps the file and decodes its footer; sd::Error naming the file on any problem.
  static ParquetFile open(const std::string& path);

  const std::string& path() const;
  int64_t num_rows() const;
  int64_t num_row_groups() const;
  // Leaf columns in schema order as dotted paths: "image.bytes", "image.path", "text".
  std::vector<std::string> column_paths() const;
  // Every row's value of a BYTE_ARRAY (string/binary) leaf column, in row order across all row
  // groups. sd::Error naming the file and column for a missing column, another physical type,
  // a repeated (list) column, or damaged data (then also the row group and page).
  std::vector<ParquetBytes> read_bytes_column(const std::string& dotted_path) const;

  struct Impl;  // the mapping and the decoded footer (parquet.cpp)

 private:
  ParquetFile() = default;  // only open() makes one
  std::shared_ptr<const Impl> impl_;
};

}  // namespace sd::train
