// 16-bit float storage types. CPU code loads them into float, computes in float and rounds
// to nearest-even on store; CUDA code uses __half / __nv_bfloat16, which have the same bits.
#pragma once
#include <cstdint>
#include <cstring>

namespace sd {

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// IEEE binary16, round to nearest even; overflow goes to inf, NaN stays NaN.
inline uint16_t float_to_half_bits(float value) {
  uint32_t f = float_bits(value);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint32_t out;
  if (f >= (127u + 16u) << 23) {              // >= 65536 (or inf/nan): inf, or quiet NaN
    out = f > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (f < (127u - 14u) << 23) {        // below the smallest normal half: subnormal or 0
    // Adding 0.5 aligns the half's subnormal bits at the bottom of the float mantissa,
    // and the float adder does the round-to-nearest-even for us.
    const uint32_t magic_bits = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    float v = bits_float(f) + bits_float(magic_bits);
    out = float_bits(v) - magic_bits;
  } else {
    const uint32_t mant_odd = (f >> 13) & 1u;
    f += (uint32_t(15 - 127) << 23) + 0xfffu;  // rebias exponent, add rounding bias
    f += mant_odd;                              // ties to even
    out = f >> 13;                              // may carry into inf: correct overflow
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    float v = float(mant) * (1.0f / 16777216.0f);  // mant * 2^-24, exact
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Round to nearest even; NaN stays a (quiet) NaN. Branch-free, so loops that store bf16 vectorise
// (with an early return for NaN, GroupNorm's bf16 output loop ran 8x slower than the f32 one).
inline uint16_t float_to_bf16_bits(float value) {
  const uint32_t u = float_bits(value);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}
inline float bf16_bits_to_float(uint16_t b) { return bits_float(uint32_t(b) << 16); }

struct Half {
  uint16_t bits = 0;
  Half() = default;
  Half(float f) : bits(float_to_half_bits(f)) {}  // NOLINT: implicit by design, like __half
  operator float() const { return half_bits_to_float(bits); }
  static Half from_bits(uint16_t b) { Half h; h.bits = b; return h; }
};

struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  BFloat16(float f) : bits(float_to_bf16_bits(f)) {}  // NOLINT
  operator float() const { return bf16_bits_to_float(bits); }
  static BFloat16 from_bits(uint16_t b) { BFloat16 h; h.bits = b; return h; }
};

static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2);

}  // namespace sd
