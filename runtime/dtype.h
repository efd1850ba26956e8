// Element types. F64 exists for the CPU reference and the float64 gradient checks.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/error.h"
#include "runtime/half.h"

namespace sd {

enum class DType : uint8_t { F32, F16, BF16, F64, I32, I64, U8, Bool };

size_t dtype_size(DType t);
const char* dtype_name(DType t);          // "f32", "f16", ...
bool is_floating(DType t);                // f32, f16, bf16, f64
bool is_half(DType t);                    // f16 or bf16
DType parse_dtype(const std::string& s);  // "f32" / "fp32" / "float32" / "bf16" ...

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };
template <> struct dtype_of<Half> { static constexpr DType value = DType::F16; };
template <> struct dtype_of<BFloat16> { static constexpr DType value = DType::BF16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::I32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::I64; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::U8; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::Bool; };

// Accumulation type for CPU kernels: double stays double, everything else computes in float.
template <class T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };
template <class T> using acc_t = typename acc_type<T>::type;

}  // namespace sd

// Calls the body with `scalar_t` bound to the storage type of a floating dtype.
#define SD_DISPATCH_FLOAT(DT, NAME, ...)                                             \
  [&] {                                                                              \
    switch (DT) {                                                                    \
      case ::sd::DType::F32: { using scalar_t = float; return __VA_ARGS__(); }       \
      case ::sd::DType::F64: { using scalar_t = double; return __VA_ARGS__(); }      \
      case ::sd::DType::F16: { using scalar_t = ::sd::Half; return __VA_ARGS__(); }  \
      case ::sd::DType::BF16: { using scalar_t = ::sd::BFloat16; return __VA_ARGS__(); } \
      default: SD_FAIL(NAME, ": expected a floating dtype, got ", ::sd::dtype_name(DT)); \
    }                                                                                \
  }()

// Every dtype.
#define SD_DISPATCH_ALL(DT, NAME, ...)                                               \
  [&] {                                                                              \
    switch (DT) {                                                                    \
      case ::sd::DType::F32: { using scalar_t = float; return __VA_ARGS__(); }       \
      case ::sd::DType::F64: { using scalar_t = double; return __VA_ARGS__(); }      \
      case ::sd::DType::F16: { using scalar_t = ::sd::Half; return __VA_ARGS__(); }  \
      case ::sd::DType::BF16: { using scalar_t = ::sd::BFloat16; return __VA_ARGS__(); } \
      case ::sd::DType::I32: { using scalar_t = int32_t; return __VA_ARGS__(); }     \
      case ::sd::DType::I64: { using scalar_t = int64_t; return __VA_ARGS__(); }     \
      case ::sd::DType::U8: { using scalar_t = uint8_t; return __VA_ARGS__(); }      \
      case ::sd::DType::Bool: { using scalar_t = bool; return __VA_ARGS__(); }       \
    }                                                                                \
    SD_FAIL(NAME, ": bad dtype");                                                    \
  }()
