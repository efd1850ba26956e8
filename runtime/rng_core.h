// Philox4x32-10 and the transforms from its 32-bit words to uniform and normal numbers,
// written once for host and device. Every floating operation here is an explicitly
// rounded add, multiply, fma, divide or square root, so the host (compiled with
// -ffp-contract=off) and the GPU produce the same bits for the same (seed, counter).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SD_HD __host__ __device__ __forceinline__
#else
#define SD_HD inline
#endif

#if defined(__CUDA_ARCH__)
#define SD_RNG_ADD(a, b) __dadd_rn(a, b)
#define SD_RNG_MUL(a, b) __dmul_rn(a, b)
#define SD_RNG_FMA(a, b, c) __fma_rn(a, b, c)
#define SD_RNG_DIV(a, b) __ddiv_rn(a, b)
#define SD_RNG_SQRT(a) __dsqrt_rn(a)
#else
#include <cmath>
#define SD_RNG_ADD(a, b) ((a) + (b))
#define SD_RNG_MUL(a, b) ((a) * (b))
#define SD_RNG_FMA(a, b, c) std::fma(a, b, c)
#define SD_RNG_DIV(a, b) ((a) / (b))
#define SD_RNG_SQRT(a) std::sqrt(a)
#endif

namespace sd::rng {

// Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC'11): 10 rounds of
// multiply-xor with a Weyl-sequence key schedule.
SD_HD void philox4x32_10(const uint32_t ctr_in[4], const uint32_t key_in[2], uint32_t out[4]) {
  uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
  uint32_t k0 = key_in[0], k1 = key_in[1];
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
    const uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// The 4 words of block `block` of stream `seed`.
SD_HD void philox_block(uint64_t seed, uint64_t block, uint32_t out[4]) {
  const uint32_t ctr[4] = {uint32_t(block), uint32_t(block >> 32), 0u, 0u};
  const uint32_t key[2] = {uint32_t(seed), uint32_t(seed >> 32)};
  philox4x32_10(ctr, key, out);
}

// One word -> float in [0, 1): the top 24 bits, exactly representable.
SD_HD float uniform_from_word(uint32_t w) { return float(w >> 8) * (1.0f / 16777216.0f); }

// Two words -> double in [0, 1) with 53 random bits.
SD_HD double uniform53(uint32_t a, uint32_t b) {
  return double((uint64_t(a >> 5) << 26) | uint64_t(b >> 6)) * (1.0 / 9007199254740992.0);
}

// Natural log for x in (0, 1], own series so both sides agree bit for bit.
SD_HD double portable_log(double x) {
  // x = m * 2^e with m in [sqrt(1/2), sqrt(2)); exponent extracted by exact scaling.
  int e = 0;
  double m = x;
  while (m < 0.70710678118654752440) {
    m = SD_RNG_MUL(m, 2.0);
    --e;
  }
  // log(m) = 2 atanh(s), s = (m-1)/(m+1), |s| <= 0.1716: series in s^2 to 1e-19.
  const double s = SD_RNG_DIV(SD_RNG_ADD(m, -1.0), SD_RNG_ADD(m, 1.0));
  const double z = SD_RNG_MUL(s, s);
  double p = 1.0 / 25.0;
  p = SD_RNG_FMA(p, z, 1.0 / 23.0);
  p = SD_RNG_FMA(p, z, 1.0 / 21.0);
  p = SD_RNG_FMA(p, z, 1.0 / 19.0);
  p = SD_RNG_FMA(p, z, 1.0 / 17.0);
  p = SD_RNG_FMA(p, z, 1.0 / 15.0);
  p = SD_RNG_FMA(p, z, 1.0 / 13.0);
  p = SD_RNG_FMA(p, z, 1.0 / 11.0);
  p = SD_RNG_FMA(p, z, 1.0 / 9.0);
  p = SD_RNG_FMA(p, z, 1.0 / 7.0);
  p = SD_RNG_FMA(p, z, 1.0 / 5.0);
  p = SD_RNG_FMA(p, z, 1.0 / 3.0);
  p = SD_RNG_FMA(p, z, 1.0);
  const double log_m = SD_RNG_MUL(SD_RNG_MUL(2.0, s), p);
  return SD_RNG_FMA(double(e), 0.69314718055994530942, log_m);
}

// sin and cos of 2*pi*u for u in [0, 1). The quadrant split of u is exact in binary; the
// remaining angle phi is within [-pi/4, pi/4), where short Taylor series reach 1e-19.
SD_HD void portable_sincos_2pi(double u, double* sin_out, double* cos_out) {
  const double u4 = SD_RNG_MUL(u, 4.0);
  const int q = int(u4);                         // quadrant 0..3
  const double t = SD_RNG_ADD(SD_RNG_ADD(u4, -double(q)), -0.5);  // in [-0.5, 0.5), exact
  const double phi = SD_RNG_MUL(t, 1.57079632679489661923);      // angle - q*pi/2 - pi/4
  const double z = SD_RNG_MUL(phi, phi);
  // sin(phi) = phi * sum_k (-1)^k z^k / (2k+1)!,  cos(phi) = sum_k (-1)^k z^k / (2k)!  (Horner).
  double sp = 1.0 / 355687428096000.0;            //  1/17!
  sp = SD_RNG_FMA(sp, z, -1.0 / 1307674368000.0); // -1/15!
  sp = SD_RNG_FMA(sp, z, 1.0 / 6227020800.0);     //  1/13!
  sp = SD_RNG_FMA(sp, z, -1.0 / 39916800.0);      // -1/11!
  sp = SD_RNG_FMA(sp, z, 1.0 / 362880.0);         //  1/9!
  sp = SD_RNG_FMA(sp, z, -1.0 / 5040.0);          // -1/7!
  sp = SD_RNG_FMA(sp, z, 1.0 / 120.0);            //  1/5!
  sp = SD_RNG_FMA(sp, z, -1.0 / 6.0);             // -1/3!
  sp = SD_RNG_FMA(sp, z, 1.0);
  const double sin_phi = SD_RNG_MUL(phi, sp);
  double cp = -1.0 / 6402373705728000.0;          // -1/18!
  cp = SD_RNG_FMA(cp, z, 1.0 / 20922789888000.0); //  1/16!
  cp = SD_RNG_FMA(cp, z, -1.0 / 87178291200.0);   // -1/14!
  cp = SD_RNG_FMA(cp, z, 1.0 / 479001600.0);      //  1/12!
  cp = SD_RNG_FMA(cp, z, -1.0 / 3628800.0);       // -1/10!
  cp = SD_RNG_FMA(cp, z, 1.0 / 40320.0);          //  1/8!
  cp = SD_RNG_FMA(cp, z, -1.0 / 720.0);           // -1/6!
  cp = SD_RNG_FMA(cp, z, 1.0 / 24.0);             //  1/4!
  cp = SD_RNG_FMA(cp, z, -1.0 / 2.0);             // -1/2!
  const double cos_phi = SD_RNG_FMA(cp, z, 1.0);
  // Rotate by pi/4, then by the quadrant.
  const double r = 0.70710678118654752440;
  const double s = SD_RNG_MUL(SD_RNG_ADD(sin_phi, cos_phi), r);
  const double c = SD_RNG_MUL(SD_RNG_ADD(cos_phi, -sin_phi), r);
  switch (q & 3) {
    case 0: *sin_out = s; *cos_out = c; break;
    case 1: *sin_out = c; *cos_out = -s; break;
    case 2: *sin_out = -s; *cos_out = -c; break;
    default: *sin_out = -c; *cos_out = s; break;
  }
}

// Box-Muller over one Philox block: two standard normals.
SD_HD void normal_pair(uint64_t seed, uint64_t block, double* z0, double* z1) {
  uint32_t w[4];
  philox_block(seed, block, w);
  const double u1 = SD_RNG_ADD(uniform53(w[0], w[1]), 1.0 / 9007199254740992.0);  // (0, 1]
  const double u2 = uniform53(w[2], w[3]);                                         // [0, 1)
  const double radius = SD_RNG_SQRT(SD_RNG_MUL(-2.0, portable_log(u1)));
  double s, c;
  portable_sincos_2pi(u2, &s, &c);
  *z0 = SD_RNG_MUL(radius, c);
  *z1 = SD_RNG_MUL(radius, s);
}

}  // namespace sd::rng
