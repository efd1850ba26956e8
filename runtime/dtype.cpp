#include "runtime/dtype.h"

#include <algorithm>

namespace sd {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::F64: case DType::I64: return 8;
    case DType::U8: case DType::Bool: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::F64: return "f64";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
    case DType::Bool: return "bool";
  }
  return "?";
}

bool is_floating(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64;
}
bool is_half(DType t) { return t == DType::F16 || t == DType::BF16; }

DType parse_dtype(const std::string& s0) {
  std::string s = s0;
  std::transform(s.begin(), s.end(), s.begin(), ::tolower);
  if (s == "f32" || s == "fp32" || s == "float32" || s == "float" || s == "no") return DType::F32;
  if (s == "f16" || s == "fp16" || s == "float16" || s == "half") return DType::F16;
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  if (s == "f64" || s == "fp64" || s == "float64" || s == "double") return DType::F64;
  if (s == "i32" || s == "int32") return DType::I32;
  if (s == "i64" || s == "int64") return DType::I64;
  if (s == "u8" || s == "uint8") return DType::U8;
  if (s == "bool") return DType::Bool;
  SD_FAIL("unknown dtype '", s0, "' (expected fp32, fp16, bf16, fp64, i32, i64, u8 or bool)");
}

}  // namespace sd
