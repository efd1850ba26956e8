// Parquet reading, from the specifications (apache/parquet-format: Parquet.md, Encodings.md,
// src/main/thrift/parquet.thrift; Apache Thrift: the compact protocol):
//
//   file    = "PAR1" <column chunks> <FileMetaData, Thrift compact> <u32 LE length> "PAR1"
//   chunk   = [dictionary page] data page...     (each page = PageHeader (Thrift) + bytes)
//   page v1 = compressed( [rep levels: u32 len + RLE] [def levels: u32 len + RLE] values )
//   page v2 = rep levels (RLE) + def levels (RLE), both uncompressed, + compressed(values)
//
// Only the fields this reader needs are decoded; every other Thrift field is skipped by its
// wire type, so newer writers' additions are harmless.
#include "train/parquet.h"

#include <fcntl.h>
#include <snappy.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <functional>
#include <sstream>
#include <string_view>

#include "runtime/error.h"

namespace sd::train {

namespace {

// ---- limits ----------------------------------------------------------------------------------
// Thrift nesting deeper than this is not a Parquet footer (real ones nest fewer than 10 deep).
constexpr int kMaxThriftDepth = 32;
// Thrift lists longer than this are refused: a footer with a million row groups or columns is
// damage, and each decoded element costs far more memory than the byte it may take on disk.
constexpr uint64_t kMaxThriftList = uint64_t(1) << 20;
// Schema nesting: levels stay small and fit the level decoder's bit widths comfortably.
constexpr int kMaxSchemaDepth = 64;
// No page may claim more than this uncompressed (writers default to 1 MiB pages).
constexpr uint64_t kMaxPageBytes = uint64_t(1) << 30;
// One column read may decompress and return at most max(kMinBudget, kBudgetPerFileByte x the
// file's size) bytes: real data expands a few times (dictionaries, compression), a hostile
// RLE run or compression bomb would expand without bound.
constexpr uint64_t kMinBudget = uint64_t(256) << 20;
constexpr uint64_t kBudgetPerFileByte = 64;

// ---- enums of parquet.thrift -----------------------------------------------------------------
enum PhysicalType : int32_t { kBoolean = 0, kInt32, kInt64, kInt96, kFloat, kDouble, kByteArray, kFixedLenByteArray };
enum Repetition : int32_t { kRequired = 0, kOptional = 1, kRepeated = 2 };
enum Codec : int32_t { kUncompressed = 0, kSnappy = 1, kGzip = 2, kLzo = 3, kBrotli = 4, kLz4 = 5, kZstd = 6, kLz4Raw = 7 };
enum Encoding : int32_t { kPlain = 0, kPlainDictionary = 2, kRle = 3, kBitPacked = 4, kRleDictionary = 8 };
enum PageType : int32_t { kDataPage = 0, kIndexPage = 1, kDictionaryPage = 2, kDataPageV2 = 3 };

const char* type_name(int32_t t) {
  static const char* names[] = {"BOOLEAN", "INT32", "INT64", "INT96", "FLOAT", "DOUBLE", "BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY"};
  return t >= 0 && t < 8 ? names[t] : "unknown type";
}
const char* codec_name(int32_t c) {
  static const char* names[] = {"UNCOMPRESSED", "SNAPPY", "GZIP", "LZO", "BROTLI", "LZ4", "ZSTD", "LZ4_RAW"};
  return c >= 0 && c < 8 ? names[c] : "unknown codec";
}
const char* encoding_name(int32_t e) {
  static const char* names[] = {"PLAIN", "GROUP_VAR_INT", "PLAIN_DICTIONARY", "RLE", "BIT_PACKED",
                                "DELTA_BINARY_PACKED", "DELTA_LENGTH_BYTE_ARRAY", "DELTA_BYTE_ARRAY",
                                "RLE_DICTIONARY", "BYTE_STREAM_SPLIT"};
  return e >= 0 && e < 10 ? names[e] : "unknown encoding";
}

uint64_t checked_add(uint64_t a, uint64_t b, const std::string& where) {
  uint64_t r;
  SD_CHECK(!__builtin_add_overflow(a, b, &r), where, ": size overflow (", a, " + ", b, ")");
  return r;
}

uint32_t load_le32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

// ---- Thrift compact protocol -----------------------------------------------------------------
// Wire types of the compact protocol (a field header's low nibble, a list's element type).
namespace wire {
enum : uint8_t {
  kStop = 0, kTrue = 1, kFalse = 2, kI8 = 3, kI16 = 4, kI32 = 5, kI64 = 6, kDouble = 7,
  kBinary = 8, kList = 9, kSet = 10, kMap = 11, kStruct = 12
};
}  // namespace wire

// Reads compact-protocol values from [p, p + n); any read past the end is an sd::Error that
// starts with `where` (the file and what is being decoded).
class CompactReader {
 public:
  CompactReader(const uint8_t* p, size_t n, std::string where) : p_(p), n_(n), where_(std::move(where)) {}
  size_t pos() const { return pos_; }
  size_t left() const { return n_ - pos_; }
  const std::string& where() const { return where_; }

  uint8_t byte() {
    need(1);
    return p_[pos_++];
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      const uint8_t b = byte();
      // The tenth byte may only carry the top bit of a 64-bit value.
      SD_CHECK(shift < 63 || b <= 1, where_, ": varint longer than 64 bits at byte ", pos_);
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    SD_FAIL(where_, ": varint longer than 10 bytes at byte ", pos_);
  }
  int64_t zigzag() {
    const uint64_t u = varint();
    return int64_t(u >> 1) ^ -int64_t(u & 1);
  }
  int32_t i32(uint8_t wt, const char* field) {
    expect(wt, wire::kI32, field);
    const int64_t v = zigzag();
    SD_CHECK(v >= INT32_MIN && v <= INT32_MAX, where_, ": field ", field, " = ", v, " does not fit 32 bits");
    return int32_t(v);
  }
  int64_t i64(uint8_t wt, const char* field) {
    expect(wt, wire::kI64, field);
    return zigzag();
  }
  std::string binary(uint8_t wt, const char* field) {
    expect(wt, wire::kBinary, field);
    const uint64_t len = varint();
    need(len);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
    pos_ += size_t(len);
    return s;
  }
  // A list header: the element count (checked against the bytes left: every element takes at
  // least one) and the element type.
  std::pair<uint64_t, uint8_t> list(uint8_t wt, const char* field) {
    SD_CHECK(wt == wire::kList || wt == wire::kSet, where_, ": field ", field, " has wire type ", int(wt), ", expected a list");
    const uint8_t h = byte();
    uint64_t count = h >> 4;
    if (count == 15) count = varint();
    SD_CHECK(count <= left() && count <= kMaxThriftList, where_, ": list ", field, " claims ", count, " elements in ",
             left(), " bytes");
    return {count, uint8_t(h & 0x0f)};
  }
  void expect(uint8_t wt, uint8_t want, const char* field) const {
    SD_CHECK(wt == want, where_, ": field ", field, " has wire type ", int(wt), ", expected ", int(want));
  }

  // Calls on_field(id, wire_type) for each field of a struct; on_field returns false for the
  // fields it does not know, which are then skipped.
  void read_struct(int depth, const std::function<bool(int16_t, uint8_t)>& on_field) {
    SD_CHECK(depth < kMaxThriftDepth, where_, ": structures nested deeper than ", kMaxThriftDepth);
    int16_t last_id = 0;
    for (;;) {
      const uint8_t h = byte();
      if (h == wire::kStop) return;
      const uint8_t wt = h & 0x0f;
      int64_t id = h >> 4;
      if (id == 0) {
        id = zigzag();  // a long-form header: the field id follows as a zigzag i16
        SD_CHECK(id >= INT16_MIN && id <= INT16_MAX, where_, ": field id ", id, " does not fit 16 bits");
      } else {
        id += last_id;  // a short-form header holds the delta from the previous field id
      }
      last_id = int16_t(id);
      if (!on_field(int16_t(id), wt)) skip(wt, depth + 1, false);
    }
  }

  // Skips one value of wire type `wt`. In lists, sets and maps a bool is a byte of its own;
  // as a struct field it lives in the field header (in_collection false).
  void skip(uint8_t wt, int depth, bool in_collection) {
    SD_CHECK(depth < kMaxThriftDepth, where_, ": values nested deeper than ", kMaxThriftDepth);
    switch (wt) {
      case wire::kTrue:
      case wire::kFalse:
        if (in_collection) byte();
        return;
      case wire::kI8: byte(); return;
      case wire::kI16:
      case wire::kI32:
      case wire::kI64: varint(); return;
      case wire::kDouble: need(8); pos_ += 8; return;
      case wire::kBinary: {
        const uint64_t len = varint();
        need(len);
        pos_ += size_t(len);
        return;
      }
      case wire::kList:
      case wire::kSet: {
        const auto [count, elem] = list(wt, "(skipped)");
        for (uint64_t i = 0; i < count; ++i) skip(elem, depth + 1, true);
        return;
      }
      case wire::kMap: {
        const uint64_t count = varint();
        if (count == 0) return;
        SD_CHECK(count <= left() / 2, where_, ": map claims ", count, " entries in ", left(), " bytes");
        const uint8_t kv = byte();
        for (uint64_t i = 0; i < count; ++i) {
          skip(kv >> 4, depth + 1, true);
          skip(kv & 0x0f, depth + 1, true);
        }
        return;
      }
      case wire::kStruct: read_struct(depth + 1, [](int16_t, uint8_t) { return false; }); return;
      default: SD_FAIL(where_, ": unknown Thrift wire type ", int(wt), " at byte ", pos_);
    }
  }

 private:
  void need(uint64_t len) const {
    SD_CHECK(len <= left(), where_, ": needs ", len, " more bytes at byte ", pos_, " of ", n_, " (truncated or damaged)");
  }
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  std::string where_;
};

// Reads a list<struct> field, calling read_one(reader, depth) per element.
template <class F>
void read_struct_list(CompactReader& r, uint8_t wt, const char* field, int depth, F read_one) {
  const auto [count, elem] = r.list(wt, field);
  r.expect(elem, wire::kStruct, field);
  for (uint64_t i = 0; i < count; ++i) read_one(r, depth + 1);
}

// ---- the metadata this reader uses -----------------------------------------------------------
struct SchemaElement {
  std::string name;
  int32_t type = -1;  // a physical type; absent (-1) for groups
  int32_t repetition = kRequired;
  int32_t num_children = 0;
};

struct ColumnMeta {
  int32_t type = -1;
  std::vector<std::string> path;
  int32_t codec = -1;
  int64_t num_values = -1;
  int64_t total_compressed_size = -1;
  int64_t data_page_offset = -1;
  int64_t dictionary_page_offset = -1;  // -1: none
};

struct ColumnChunk {
  bool has_meta = false;
  bool external = false;   // file_path set: the data lives in another file
  bool encrypted = false;  // crypto metadata present
  ColumnMeta meta;
};

struct RowGroup {
  std::vector<ColumnChunk> columns;
  int64_t num_rows = -1;
};

struct FileMeta {
  std::vector<SchemaElement> schema;
  int64_t num_rows = -1;
  std::vector<RowGroup> row_groups;
};

struct DataPageV1 {
  int32_t num_values = -1, encoding = -1, def_encoding = -1, rep_encoding = -1;
};
struct DictionaryPage {
  int32_t num_values = -1, encoding = -1;
};
struct DataPageV2 {
  int32_t num_values = -1, num_nulls = -1, num_rows = -1, encoding = -1, def_bytes = -1, rep_bytes = -1;
  bool is_compressed = true;
};
struct PageHeader {
  int32_t type = -1;
  int32_t uncompressed_size = -1;
  int32_t compressed_size = -1;
  std::optional<uint32_t> crc;
  std::optional<DataPageV1> v1;
  std::optional<DictionaryPage> dict;
  std::optional<DataPageV2> v2;
};

SchemaElement read_schema_element(CompactReader& r, int depth) {
  SchemaElement e;
  bool has_name = false;
  r.read_struct(depth, [&](int16_t id, uint8_t w) {
    switch (id) {
      case 1: e.type = r.i32(w, "SchemaElement.type"); return true;
      case 3: e.repetition = r.i32(w, "SchemaElement.repetition_type"); return true;
      case 4: e.name = r.binary(w, "SchemaElement.name"); has_name = true; return true;
      case 5: e.num_children = r.i32(w, "SchemaElement.num_children"); return true;
      default: return false;
    }
  });
  SD_CHECK(has_name, r.where(), ": a schema element has no name");
  SD_CHECK(e.repetition >= kRequired && e.repetition <= kRepeated, r.where(), ": schema element '", e.name,
           "' has repetition type ", e.repetition);
  SD_CHECK(e.num_children >= 0, r.where(), ": schema element '", e.name, "' has ", e.num_children, " children");
  return e;
}

ColumnMeta read_column_meta(CompactReader& r, int depth) {
  ColumnMeta m;
  r.read_struct(depth, [&](int16_t id, uint8_t w) {
    switch (id) {
      case 1: m.type = r.i32(w, "ColumnMetaData.type"); return true;
      case 3: {
        const auto [count, elem] = r.list(w, "ColumnMetaData.path_in_schema");
        r.expect(elem, wire::kBinary, "ColumnMetaData.path_in_schema");
        for (uint64_t i = 0; i < count; ++i) m.path.push_back(r.binary(wire::kBinary, "ColumnMetaData.path_in_schema"));
        return true;
      }
      case 4: m.codec = r.i32(w, "ColumnMetaData.codec"); return true;
      case 5: m.num_values = r.i64(w, "ColumnMetaData.num_values"); return true;
      case 7: m.total_compressed_size = r.i64(w, "ColumnMetaData.total_compressed_size"); return true;
      case 9: m.data_page_offset = r.i64(w, "ColumnMetaData.data_page_offset"); return true;
      case 11: m.dictionary_page_offset = r.i64(w, "ColumnMetaData.dictionary_page_offset"); return true;
      default: return false;
    }
  });
  return m;
}

ColumnChunk read_column_chunk(CompactReader& r, int depth) {
  ColumnChunk c;
  r.read_struct(depth, [&](int16_t id, uint8_t w) {
    switch (id) {
      case 1: r.binary(w, "ColumnChunk.file_path"); c.external = true; return true;
      case 3: c.meta = read_column_meta(r, depth + 1); c.has_meta = true; return true;
      case 8:
      case 9: c.encrypted = true; return false;
      default: return false;
    }
  });
  return c;
}

RowGroup read_row_group(CompactReader& r, int depth) {
  RowGroup g;
  r.read_struct(depth, [&](int16_t id, uint8_t w) {
    switch (id) {
      case 1:
        read_struct_list(r, w, "RowGroup.columns", depth,
                         [&](CompactReader& rr, int d) { g.columns.push_back(read_column_chunk(rr, d)); });
        return true;
      case 3: g.num_rows = r.i64(w, "RowGroup.num_rows"); return true;
      default: return false;
    }
  });
  return g;
}

FileMeta read_file_meta(CompactReader& r) {
  FileMeta f;
  r.read_struct(0, [&](int16_t id, uint8_t w) {
    switch (id) {
      case 2:
        read_struct_list(r, w, "FileMetaData.schema", 0,
                         [&](CompactReader& rr, int d) { f.schema.push_back(read_schema_element(rr, d)); });
        return true;
      case 3: f.num_rows = r.i64(w, "FileMetaData.num_rows"); return true;
      case 4:
        read_struct_list(r, w, "FileMetaData.row_groups", 0,
                         [&](CompactReader& rr, int d) { f.row_groups.push_back(read_row_group(rr, d)); });
        return true;
      default: return false;
    }
  });
  return f;
}

PageHeader read_page_header(CompactReader& r) {
  PageHeader h;
  r.read_struct(0, [&](int16_t id, uint8_t w) {
    switch (id) {
      case 1: h.type = r.i32(w, "PageHeader.type"); return true;
      case 2: h.uncompressed_size = r.i32(w, "PageHeader.uncompressed_page_size"); return true;
      case 3: h.compressed_size = r.i32(w, "PageHeader.compressed_page_size"); return true;
      case 4: h.crc = uint32_t(r.i32(w, "PageHeader.crc")); return true;
      case 5:
        h.v1.emplace();
        r.read_struct(1, [&](int16_t f, uint8_t fw) {
          switch (f) {
            case 1: h.v1->num_values = r.i32(fw, "DataPageHeader.num_values"); return true;
            case 2: h.v1->encoding = r.i32(fw, "DataPageHeader.encoding"); return true;
            case 3: h.v1->def_encoding = r.i32(fw, "DataPageHeader.definition_level_encoding"); return true;
            case 4: h.v1->rep_encoding = r.i32(fw, "DataPageHeader.repetition_level_encoding"); return true;
            default: return false;
          }
        });
        return true;
      case 7:
        h.dict.emplace();
        r.read_struct(1, [&](int16_t f, uint8_t fw) {
          switch (f) {
            case 1: h.dict->num_values = r.i32(fw, "DictionaryPageHeader.num_values"); return true;
            case 2: h.dict->encoding = r.i32(fw, "DictionaryPageHeader.encoding"); return true;
            default: return false;
          }
        });
        return true;
      case 8:
        h.v2.emplace();
        r.read_struct(1, [&](int16_t f, uint8_t fw) {
          switch (f) {
            case 1: h.v2->num_values = r.i32(fw, "DataPageHeaderV2.num_values"); return true;
            case 2: h.v2->num_nulls = r.i32(fw, "DataPageHeaderV2.num_nulls"); return true;
            case 3: h.v2->num_rows = r.i32(fw, "DataPageHeaderV2.num_rows"); return true;
            case 4: h.v2->encoding = r.i32(fw, "DataPageHeaderV2.encoding"); return true;
            case 5: h.v2->def_bytes = r.i32(fw, "DataPageHeaderV2.definition_levels_byte_length"); return true;
            case 6: h.v2->rep_bytes = r.i32(fw, "DataPageHeaderV2.repetition_levels_byte_length"); return true;
            case 7:
              // A bool field's value is its wire type (1 true, 2 false).
              SD_CHECK(fw == wire::kTrue || fw == wire::kFalse, r.where(), ": DataPageHeaderV2.is_compressed is not a bool");
              h.v2->is_compressed = fw == wire::kTrue;
              return true;
            default: return false;
          }
        });
        return true;
      default: return false;
    }
  });
  return h;
}

// ---- the schema's leaves ---------------------------------------------------------------------
struct Leaf {
  std::vector<std::string> parts;
  std::string dotted;
  int32_t type = -1;
  int max_def = 0;  // levels: how many OPTIONAL/REPEATED fields are on the path
  int max_rep = 0;
};

// The schema is a depth-first list; element 0 is the root, a group's children follow it. Walked
// with an explicit stack (no recursion), so a hostile schema cannot overflow the call stack.
std::vector<Leaf> schema_leaves(const std::vector<SchemaElement>& schema, const std::string& where) {
  SD_CHECK(!schema.empty(), where, ": the schema is empty");
  struct Frame {
    int64_t children_left;
    int def, rep;
    std::vector<std::string> parts;
  };
  std::vector<Frame> stack{{schema[0].num_children, 0, 0, {}}};
  std::vector<Leaf> leaves;
  size_t i = 1;
  while (!stack.empty()) {
    if (stack.back().children_left == 0) {
      stack.pop_back();
      continue;
    }
    SD_CHECK(i < schema.size(), where, ": the schema's groups claim more children than its ", schema.size(), " elements");
    --stack.back().children_left;
    const SchemaElement& e = schema[i++];
    Frame f{e.num_children, stack.back().def + (e.repetition != kRequired), stack.back().rep + (e.repetition == kRepeated),
            stack.back().parts};
    f.parts.push_back(e.name);
    if (e.num_children > 0) {
      SD_CHECK(stack.size() < size_t(kMaxSchemaDepth), where, ": the schema nests deeper than ", kMaxSchemaDepth);
      stack.push_back(std::move(f));
    } else if (e.type >= 0) {  // a group without children has no leaves
      Leaf leaf;
      for (const std::string& p : f.parts) leaf.dotted += (leaf.dotted.empty() ? "" : ".") + p;
      leaf.parts = std::move(f.parts);
      leaf.type = e.type;
      leaf.max_def = f.def;
      leaf.max_rep = f.rep;
      leaves.push_back(std::move(leaf));
    }
  }
  SD_CHECK(i == schema.size(), where, ": the schema has ", schema.size() - i, " elements outside its tree");
  return leaves;
}

// ---- the mapping -----------------------------------------------------------------------------
struct Mapping {
  void* addr = nullptr;
  size_t len = 0;
  ~Mapping() {
    if (addr) munmap(addr, len);
  }
};

std::shared_ptr<Mapping> map_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SD_CHECK(fd >= 0, "parquet: cannot open '", path, "': ", std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    SD_FAIL("parquet: cannot stat '", path, "': ", std::strerror(err));
  }
  auto map = std::make_shared<Mapping>();
  map->len = size_t(st.st_size);
  if (map->len > 0) {
    void* a = mmap(nullptr, map->len, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    SD_CHECK(a != MAP_FAILED, "parquet: cannot map '", path, "': ", std::strerror(err));
    map->addr = a;
  } else {
    ::close(fd);
  }
  return map;
}

}  // namespace

struct ParquetFile::Impl {
  std::string path;
  std::shared_ptr<Mapping> map;
  const uint8_t* data = nullptr;
  size_t size = 0;
  size_t footer_start = 0;  // column chunks must end before the footer
  FileMeta meta;
  std::vector<Leaf> leaves;
};

namespace {

// ---- where an error happened -----------------------------------------------------------------
struct Where {
  const std::string& file;
  const std::string& column;
  int64_t row_group = -1;
  int64_t page = -1;
  uint64_t offset = 0;  // of the page header in the file
  std::string str() const {
    std::ostringstream os;
    os << "parquet: '" << file << "': column '" << column << "'";
    if (row_group >= 0) os << ", row group " << row_group;
    if (page >= 0) os << ", page " << page << " (at byte " << offset << ")";
    return os.str();
  }
};

// The bytes one column read may still decompress and return (see kMinBudget).
class Budget {
 public:
  explicit Budget(uint64_t bytes) : left_(bytes) {}
  void take(uint64_t n, const Where& w, const char* what) {
    SD_CHECK(n <= left_, w.str(), ": ", what, " (", n, " bytes) would go past what a file of this size may expand to (",
             left_, " bytes left of max(256 MiB, 64 x the file size)): damaged or hostile file");
    left_ -= n;
  }

 private:
  uint64_t left_;
};

// ---- decompression ---------------------------------------------------------------------------
void inflate_gzip(std::string_view src, std::string& dst, const Where& w) {
  z_stream z{};
  SD_CHECK(inflateInit2(&z, 15 + 32) == Z_OK, w.str(), ": zlib init failed");  // +32: gzip or zlib header
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(src.data()));
  z.avail_in = uInt(src.size());
  z.next_out = reinterpret_cast<Bytef*>(dst.data());
  z.avail_out = uInt(dst.size());
  int rc = Z_OK;
  for (;;) {
    rc = inflate(&z, Z_FINISH);
    // Concatenated gzip members are one stream to a gzip reader: carry on with the next one.
    if (rc == Z_STREAM_END && z.avail_in > 0 && z.avail_out > 0) {
      rc = inflateReset(&z);
      if (rc == Z_OK) continue;
    }
    break;
  }
  const std::string msg = z.msg ? z.msg : "";
  const size_t produced = dst.size() - z.avail_out;
  const size_t unread = z.avail_in;
  inflateEnd(&z);
  SD_CHECK(rc == Z_STREAM_END, w.str(), ": GZIP data is damaged (zlib: ", msg.empty() ? std::to_string(rc) : msg, ")");
  SD_CHECK(produced == dst.size(), w.str(), ": GZIP data inflates to ", produced, " bytes, the page header says ",
           dst.size());
  SD_CHECK(unread == 0, w.str(), ": GZIP data has ", unread, " bytes past its end");
}

// A page's bytes: decompressed into `owned`, or a view of the mapping when stored. The view is
// made on demand: a string_view kept into `owned` would dangle once a short string is moved.
struct Bytes {
  std::string owned;
  std::string_view stored;
  bool is_owned = false;
  std::string_view view() const { return is_owned ? std::string_view(owned) : stored; }
};

Bytes decompress(int32_t codec, std::string_view src, uint64_t size, Budget& budget, const Where& w) {
  Bytes out;
  if (codec == kUncompressed) {
    SD_CHECK(src.size() == size, w.str(), ": uncompressed page of ", src.size(), " bytes, the header says ", size);
    out.stored = src;
    return out;
  }
  SD_CHECK(size <= kMaxPageBytes, w.str(), ": page claims ", size, " uncompressed bytes (limit ", kMaxPageBytes, ")");
  budget.take(size, w, "decompressed page");
  out.owned.resize(size_t(size));
  out.is_owned = true;
  if (codec == kSnappy) {
    size_t n = 0;
    SD_CHECK(snappy::GetUncompressedLength(src.data(), src.size(), &n) && n == size, w.str(),
             ": SNAPPY data is damaged or decompresses to a size other than the header's ", size);
    SD_CHECK(snappy::RawUncompress(src.data(), src.size(), out.owned.data()), w.str(), ": SNAPPY data is damaged");
  } else if (codec == kGzip) {
    inflate_gzip(src, out.owned, w);
  } else if (codec == kZstd) {
    const size_t n = ZSTD_decompress(out.owned.data(), out.owned.size(), src.data(), src.size());
    SD_CHECK(!ZSTD_isError(n), w.str(), ": ZSTD data is damaged (", ZSTD_getErrorName(n), ")");
    SD_CHECK(n == size, w.str(), ": ZSTD data decompresses to ", n, " bytes, the header says ", size);
  } else {
    SD_FAIL(w.str(), ": compression ", codec_name(codec), " is not supported (UNCOMPRESSED, SNAPPY, GZIP, ZSTD are)");
  }
  return out;
}

// ---- RLE / bit-packed hybrid -----------------------------------------------------------------
// Encodings.md: runs, each a ULEB128 header; header & 1: (header >> 1) groups of 8 values
// bit-packed LSB first; else a run of (header >> 1) copies of one value stored in
// ceil(bit_width / 8) little-endian bytes. Used for levels and dictionary indices.
class RleDecoder {
 public:
  RleDecoder(std::string_view data, int bit_width, const Where& w, const char* what)
      : p_(reinterpret_cast<const uint8_t*>(data.data())), n_(data.size()), bw_(bit_width), w_(w), what_(what) {}

  // Appends `count` values; an error when the data runs out first or a value needs more bits.
  void decode(size_t count, std::vector<uint32_t>& out) {
    while (count > 0) {
      const uint64_t header = varint();
      const size_t got = (header & 1) ? bit_packed(header >> 1, count, out) : repeated(header >> 1, count, out);
      count -= got;
    }
  }

 private:
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      SD_CHECK(pos_ < n_, w_.str(), ": ", what_, ": RLE data ends early (", n_, " bytes)");
      const uint8_t b = p_[pos_++];
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    SD_FAIL(w_.str(), ": ", what_, ": RLE run header longer than 64 bits");
  }

  size_t repeated(uint64_t run, size_t count, std::vector<uint32_t>& out) {
    const size_t width_bytes = size_t(bw_ + 7) / 8;
    SD_CHECK(width_bytes <= n_ - pos_, w_.str(), ": ", what_, ": RLE run value lies past the data's end");
    uint32_t v = 0;
    for (size_t i = 0; i < width_bytes; ++i) v |= uint32_t(p_[pos_ + i]) << (8 * i);
    pos_ += width_bytes;
    SD_CHECK(bw_ == 32 || v >> bw_ == 0, w_.str(), ": ", what_, ": RLE value ", v, " needs more than ", bw_, " bits");
    const size_t take = size_t(std::min<uint64_t>(run, count));
    out.insert(out.end(), take, v);
    return take;
  }

  size_t bit_packed(uint64_t groups, size_t count, std::vector<uint32_t>& out) {
    SD_CHECK(groups > 0, w_.str(), ": ", what_, ": empty bit-packed run");
    // The run's bytes as written; a last run may stop short of its padding at the data's end.
    const uint64_t avail = n_ - pos_;
    const uint64_t run_bytes = bw_ == 0 ? 0 : (groups > avail / uint64_t(bw_) ? avail + 1 : groups * uint64_t(bw_));
    const uint64_t run_values = groups > (UINT64_MAX / 8) ? UINT64_MAX : groups * 8;
    const size_t take = size_t(std::min<uint64_t>(run_values, count));
    const uint64_t bits_needed = uint64_t(take) * uint64_t(bw_);
    SD_CHECK((bits_needed + 7) / 8 <= avail, w_.str(), ": ", what_, ": bit-packed run lies past the data's end");
    const uint8_t* base = p_ + pos_;
    const uint64_t mask = bw_ == 32 ? 0xffffffffu : (uint64_t(1) << bw_) - 1;
    for (size_t i = 0; i < take; ++i) {
      const uint64_t bit = uint64_t(i) * uint64_t(bw_);
      const size_t first = size_t(bit / 8), last = size_t((bit + uint64_t(bw_) + 7) / 8);  // [first, last)
      uint64_t word = 0;
      for (size_t b = first; b < last; ++b) word |= uint64_t(base[b]) << (8 * (b - first));
      out.push_back(uint32_t((word >> (bit % 8)) & mask));
    }
    pos_ += size_t(std::min(run_bytes, avail));
    return take;
  }

  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  int bw_;
  const Where& w_;
  const char* what_;
};

// ---- values ----------------------------------------------------------------------------------
// PLAIN BYTE_ARRAY: each value a u32 LE length and its bytes.
void plain_byte_arrays(std::string_view data, size_t count, std::vector<std::string_view>& out, const Where& w) {
  size_t pos = 0;
  for (size_t i = 0; i < count; ++i) {
    SD_CHECK(data.size() - pos >= 4, w.str(), ": PLAIN value ", i, " of ", count, ": its length lies past the page's end");
    const uint32_t len = load_le32(reinterpret_cast<const uint8_t*>(data.data()) + pos);
    pos += 4;
    SD_CHECK(len <= data.size() - pos, w.str(), ": PLAIN value ", i, " of ", count, " claims ", len,
             " bytes, the page has ", data.size() - pos, " left");
    out.push_back(data.substr(pos, len));
    pos += len;
  }
}

// The state of one column chunk while its pages are read.
struct ChunkReader {
  ChunkReader(const ParquetFile::Impl& f, const Leaf& l, const ColumnMeta& m, const Where& where, Budget& b,
              std::vector<ParquetBytes>& o, int64_t values)
      : file(f), leaf(l), meta(m), w(where), budget(b), out(o), values_left(values) {}

  const ParquetFile::Impl& file;
  const Leaf& leaf;
  const ColumnMeta& meta;
  Where w;
  Budget& budget;
  std::vector<ParquetBytes>& out;
  Bytes dict_data;  // the dictionary page's bytes, which `dict` views
  std::vector<std::string_view> dict;
  bool has_dict = false;
  int64_t values_left = 0;

  void read_dictionary(const PageHeader& h, std::string_view page) {
    SD_CHECK(h.dict, w.str(), ": a dictionary page without its DictionaryPageHeader");
    SD_CHECK(!has_dict, w.str(), ": a second dictionary page in one column chunk");
    SD_CHECK(h.dict->encoding == kPlain || h.dict->encoding == kPlainDictionary, w.str(), ": dictionary page encoding ",
             encoding_name(h.dict->encoding), " (PLAIN expected)");
    SD_CHECK(h.dict->num_values >= 0, w.str(), ": dictionary of ", h.dict->num_values, " values");
    dict_data = decompress(meta.codec, page, uint64_t(h.uncompressed_size), budget, w);
    // Every entry takes at least its 4-byte length: a count beyond that is damage.
    SD_CHECK(uint64_t(h.dict->num_values) <= dict_data.view().size() / 4, w.str(), ": dictionary claims ",
             h.dict->num_values, " values in ", dict_data.view().size(), " bytes");
    dict.reserve(size_t(h.dict->num_values));
    plain_byte_arrays(dict_data.view(), size_t(h.dict->num_values), dict, w);
    has_dict = true;
  }

  // Definition levels of `n` values (all max_def when the column cannot be null).
  std::vector<uint32_t> def_levels(std::string_view encoded, size_t n) {
    std::vector<uint32_t> levels;
    if (leaf.max_def == 0) {
      levels.assign(n, 0);
      return levels;
    }
    levels.reserve(n);
    RleDecoder(encoded, std::bit_width(unsigned(leaf.max_def)), w, "definition levels").decode(n, levels);
    for (uint32_t l : levels)
      SD_CHECK(l <= uint32_t(leaf.max_def), w.str(), ": definition level ", l, " above the column's maximum ", leaf.max_def);
    return levels;
  }

  // The values section of a data page: decodes one value per level equal to max_def and
  // appends each row (null below max_def) to `out`.
  void emit_values(int32_t encoding, std::string_view values, const std::vector<uint32_t>& levels) {
    const size_t present = size_t(std::count(levels.begin(), levels.end(), uint32_t(leaf.max_def)));
    std::vector<std::string_view> decoded;
    if (encoding == kPlain) {
      decoded.reserve(std::min(present, values.size() / 4));
      plain_byte_arrays(values, present, decoded, w);
    } else if (encoding == kPlainDictionary || encoding == kRleDictionary) {
      SD_CHECK(has_dict, w.str(), ": dictionary-encoded page without a dictionary page before it");
      std::vector<uint32_t> indices;
      if (present > 0) {
        SD_CHECK(!values.empty(), w.str(), ": dictionary indices without their bit-width byte");
        const int bw = uint8_t(values[0]);
        SD_CHECK(bw <= 32, w.str(), ": dictionary index bit width ", bw, " (at most 32)");
        indices.reserve(present);
        RleDecoder(values.substr(1), bw, w, "dictionary indices").decode(present, indices);
      }
      decoded.reserve(present);
      for (uint32_t i : indices) {
        SD_CHECK(i < dict.size(), w.str(), ": dictionary index ", i, " past the dictionary's ", dict.size(), " values");
        decoded.push_back(dict[i]);
      }
    } else {
      SD_FAIL(w.str(), ": value encoding ", encoding_name(encoding), " is not supported (PLAIN and dictionary are)");
    }
    // Charged before anything is copied: a dictionary entry repeated by an RLE run is the
    // cheapest way to make a small file expand without bound.
    uint64_t total = 0;
    for (std::string_view v : decoded) total += v.size();
    budget.take(total, w, "the page's values");
    size_t next = 0;
    for (uint32_t l : levels) {
      if (l < uint32_t(leaf.max_def))
        out.emplace_back(std::nullopt);
      else
        out.emplace_back(std::string(decoded[next++]));
    }
  }

  // A page's value count: positive, within what the chunk still owes; its rows are charged to
  // the budget before anything is allocated for them.
  size_t page_values(int32_t n) {
    SD_CHECK(n >= 0 && n <= values_left, w.str(), ": page of ", n, " values, the column chunk has ", values_left, " left");
    budget.take(uint64_t(n) * sizeof(ParquetBytes), w, "rows");
    values_left -= n;
    return size_t(n);
  }

  void read_v1(const PageHeader& h, std::string_view page) {
    SD_CHECK(h.v1, w.str(), ": a data page without its DataPageHeader");
    const size_t n = page_values(h.v1->num_values);
    const Bytes data = decompress(meta.codec, page, uint64_t(h.uncompressed_size), budget, w);
    std::string_view rest = data.view();
    std::string_view def;
    if (leaf.max_def > 0) {
      SD_CHECK(h.v1->def_encoding == kRle, w.str(), ": definition level encoding ", encoding_name(h.v1->def_encoding),
               " is not supported (RLE is)");
      SD_CHECK(rest.size() >= 4, w.str(), ": page too short for its definition levels' length");
      const uint32_t len = load_le32(reinterpret_cast<const uint8_t*>(rest.data()));
      SD_CHECK(len <= rest.size() - 4, w.str(), ": definition levels claim ", len, " bytes, the page has ", rest.size() - 4);
      def = rest.substr(4, len);
      rest.remove_prefix(4 + size_t(len));
    }
    emit_values(h.v1->encoding, rest, def_levels(def, n));
  }

  void read_v2(const PageHeader& h, std::string_view page) {
    SD_CHECK(h.v2, w.str(), ": a data page v2 without its DataPageHeaderV2");
    const DataPageV2& v2 = *h.v2;
    const size_t n = page_values(v2.num_values);
    SD_CHECK(v2.rep_bytes >= 0 && v2.def_bytes >= 0, w.str(), ": negative level lengths");
    const uint64_t levels_bytes = uint64_t(v2.rep_bytes) + uint64_t(v2.def_bytes);
    SD_CHECK(levels_bytes <= page.size() && levels_bytes <= uint64_t(h.uncompressed_size), w.str(), ": level bytes (",
             levels_bytes, ") exceed the page");
    SD_CHECK(v2.rep_bytes == 0, w.str(), ": repetition levels in a column that is not repeated");
    SD_CHECK(leaf.max_def > 0 || v2.def_bytes == 0, w.str(), ": definition levels in a column that cannot be null");
    const std::vector<uint32_t> levels = def_levels(page.substr(0, size_t(v2.def_bytes)), n);
    const size_t nulls = size_t(std::count_if(levels.begin(), levels.end(), [&](uint32_t l) { return l < uint32_t(leaf.max_def); }));
    SD_CHECK(v2.num_nulls < 0 || size_t(v2.num_nulls) == nulls, w.str(), ": header says ", v2.num_nulls,
             " nulls, the definition levels ", nulls);
    const std::string_view body = page.substr(size_t(levels_bytes));
    const uint64_t body_size = uint64_t(h.uncompressed_size) - levels_bytes;
    const Bytes values = v2.is_compressed ? decompress(meta.codec, body, body_size, budget, w)
                                          : decompress(kUncompressed, body, body_size, budget, w);
    emit_values(v2.encoding, values.view(), levels);
  }

  void read_page(const PageHeader& h, std::string_view page) {
    if (h.type == kDictionaryPage) return read_dictionary(h, page);
    if (h.type == kDataPage) return read_v1(h, page);
    if (h.type == kDataPageV2) return read_v2(h, page);
    // Index pages (and page types newer than this reader) carry no rows: skip them.
  }

  // Pages one after another from `start` until the chunk's values are all read.
  void read_pages(uint64_t start, uint64_t length) {
    const uint8_t* chunk = file.data + start;
    uint64_t pos = 0;
    for (int64_t page = 0; values_left > 0; ++page) {
      w.page = page;
      w.offset = start + pos;
      SD_CHECK(pos < length, w.str(), ": the column chunk (", length, " bytes) ends with ", values_left, " values unread");
      CompactReader r(chunk + pos, size_t(length - pos), w.str() + ": page header");
      const PageHeader h = read_page_header(r);
      pos += r.pos();
      SD_CHECK(h.compressed_size >= 0 && h.uncompressed_size >= 0, w.str(), ": negative page sizes (",
               h.compressed_size, ", ", h.uncompressed_size, ")");
      SD_CHECK(uint64_t(h.compressed_size) <= length - pos, w.str(), ": page of ", h.compressed_size,
               " bytes runs past the column chunk's end");
      const std::string_view bytes(reinterpret_cast<const char*>(chunk + pos), size_t(h.compressed_size));
      pos += uint64_t(h.compressed_size);
      if (h.crc) {
        const uint32_t crc = uint32_t(crc32(0L, reinterpret_cast<const Bytef*>(bytes.data()), uInt(bytes.size())));
        SD_CHECK(crc == *h.crc, w.str(), ": page CRC mismatch (stored ", *h.crc, ", computed ", crc, "): damaged data");
      }
      read_page(h, bytes);
    }
  }
};

const Leaf& find_leaf(const ParquetFile::Impl& f, const std::string& dotted) {
  for (const Leaf& l : f.leaves)
    if (l.dotted == dotted) return l;
  std::string names;
  for (const Leaf& l : f.leaves) names += (names.empty() ? "" : ", ") + l.dotted;
  SD_FAIL("parquet: '", f.path, "': no column '", dotted, "' (the file has: ", names, ")");
}

// Checks a column chunk's metadata against its leaf and the file, returns its byte range.
std::pair<uint64_t, uint64_t> chunk_range(const ParquetFile::Impl& f, const ColumnChunk& c, const Leaf& leaf,
                                          int64_t rows, const Where& w) {
  SD_CHECK(!c.encrypted, w.str(), ": encrypted columns are not supported");
  SD_CHECK(!c.external, w.str(), ": the column chunk lives in another file (file_path), which is not supported");
  SD_CHECK(c.has_meta, w.str(), ": the column chunk has no metadata");
  const ColumnMeta& m = c.meta;
  SD_CHECK(m.path == leaf.parts, w.str(), ": the column chunk belongs to another column");
  SD_CHECK(m.type == leaf.type, w.str(), ": chunk type ", type_name(m.type), " differs from the schema's ", type_name(leaf.type));
  SD_CHECK(m.num_values == rows, w.str(), ": the chunk has ", m.num_values, " values for ", rows, " rows");
  SD_CHECK(m.data_page_offset >= 4 && m.total_compressed_size >= 0, w.str(), ": bad chunk offset ", m.data_page_offset,
           " or size ", m.total_compressed_size);
  // The chunk starts at its dictionary page when it has one (some writers put 0 there for none).
  uint64_t start = uint64_t(m.data_page_offset);
  if (m.dictionary_page_offset >= 4 && m.dictionary_page_offset < m.data_page_offset) start = uint64_t(m.dictionary_page_offset);
  const uint64_t end = checked_add(start, uint64_t(m.total_compressed_size), w.str());
  SD_CHECK(end <= f.footer_start, w.str(), ": the chunk [", start, ", ", end, ") runs past the data (footer at byte ",
           f.footer_start, ")");
  return {start, end - start};
}

void check_row_groups(const ParquetFile::Impl& f) {
  uint64_t total = 0;
  for (size_t g = 0; g < f.meta.row_groups.size(); ++g) {
    const RowGroup& rg = f.meta.row_groups[g];
    SD_CHECK(rg.num_rows >= 0, "parquet: '", f.path, "': row group ", g, " has ", rg.num_rows, " rows");
    SD_CHECK(rg.columns.size() == f.leaves.size(), "parquet: '", f.path, "': row group ", g, " has ", rg.columns.size(),
             " column chunks, the schema ", f.leaves.size(), " columns");
    total = checked_add(total, uint64_t(rg.num_rows), "parquet: '" + f.path + "': row counts");
  }
  SD_CHECK(f.meta.num_rows >= 0 && total == uint64_t(f.meta.num_rows), "parquet: '", f.path, "': the footer says ",
           f.meta.num_rows, " rows, the row groups hold ", total);
}

}  // namespace

ParquetFile ParquetFile::open(const std::string& path) {
  auto impl = std::make_shared<Impl>();
  impl->path = path;
  impl->map = map_file(path);
  impl->data = static_cast<const uint8_t*>(impl->map->addr);
  impl->size = impl->map->len;
  const uint8_t* d = impl->data;
  const size_t n = impl->size;
  // "PAR1" + footer length (4) + "PAR1": anything shorter is not a Parquet file.
  SD_CHECK(n >= 12, "parquet: '", path, "' is too small to be a Parquet file (", n, " bytes)");
  SD_CHECK(std::memcmp(d, "PAR1", 4) == 0, "parquet: '", path, "' does not start with the Parquet magic PAR1");
  SD_CHECK(std::memcmp(d + n - 4, "PARE", 4) != 0, "parquet: '", path, "' has an encrypted footer, which is not supported");
  SD_CHECK(std::memcmp(d + n - 4, "PAR1", 4) == 0, "parquet: '", path,
           "' does not end with the Parquet magic PAR1 (truncated or not a Parquet file)");
  const uint32_t meta_len = load_le32(d + n - 8);
  SD_CHECK(meta_len <= n - 12, "parquet: '", path, "': footer length ", meta_len, " exceeds the file's ", n, " bytes");
  impl->footer_start = n - 8 - meta_len;
  CompactReader r(d + impl->footer_start, meta_len, "parquet: '" + path + "': footer");
  impl->meta = read_file_meta(r);
  impl->leaves = schema_leaves(impl->meta.schema, "parquet: '" + path + "': schema");
  check_row_groups(*impl);
  ParquetFile f;
  f.impl_ = std::move(impl);
  return f;
}

const std::string& ParquetFile::path() const { return impl_->path; }
int64_t ParquetFile::num_rows() const { return impl_->meta.num_rows; }
int64_t ParquetFile::num_row_groups() const { return int64_t(impl_->meta.row_groups.size()); }

std::vector<std::string> ParquetFile::column_paths() const {
  std::vector<std::string> paths;
  for (const Leaf& l : impl_->leaves) paths.push_back(l.dotted);
  return paths;
}

std::vector<ParquetBytes> ParquetFile::read_bytes_column(const std::string& dotted_path) const {
  const Impl& f = *impl_;
  const Leaf& leaf = find_leaf(f, dotted_path);
  Where w{f.path, dotted_path};
  SD_CHECK(leaf.type == kByteArray, w.str(), ": physical type ", type_name(leaf.type), ", not BYTE_ARRAY (string/binary)");
  SD_CHECK(leaf.max_rep == 0, w.str(), ": a repeated (list) column; only flat and struct columns are read");
  const size_t index = size_t(&leaf - f.leaves.data());
  uint64_t budget_bytes = kMinBudget;
  if (f.size <= UINT64_MAX / kBudgetPerFileByte) budget_bytes = std::max(budget_bytes, f.size * kBudgetPerFileByte);
  Budget budget(budget_bytes);
  std::vector<ParquetBytes> out;
  for (size_t g = 0; g < f.meta.row_groups.size(); ++g) {
    const RowGroup& rg = f.meta.row_groups[g];
    w.row_group = int64_t(g);
    w.page = -1;
    const ColumnChunk& c = rg.columns[index];
    const auto [start, length] = chunk_range(f, c, leaf, rg.num_rows, w);
    ChunkReader(f, leaf, c.meta, w, budget, out, rg.num_rows).read_pages(start, length);
  }
  return out;
}

}  // namespace sd::train
