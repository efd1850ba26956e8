// Internals shared by the safetensors reader and writer: the format's dtype table and UTF-8
// validation. Not part of the public API.
#pragma once
#include <cstddef>
#include <optional>
#include <string_view>

#include "runtime/dtype.h"

namespace sd::safetensors_detail {

struct FormatDType {
  const char* name;            // spelling in the header JSON
  int bits;                    // bits per element (F4 = 4, F6_* = 6)
  int rank;                    // position in the reference enum; the writer sorts by it, descending
  std::optional<DType> dtype;  // sd's type, when it has one
};

// nullptr for a string the reference reader does not know (a deserialization error there).
const FormatDType* find_format_dtype(std::string_view name);
const FormatDType& format_dtype_of(DType dtype);

// Strict UTF-8 as Rust's str::from_utf8 checks it: no overlong forms, no surrogates, <= U+10FFFF.
bool valid_utf8(const char* p, size_t n);

}  // namespace sd::safetensors_detail
