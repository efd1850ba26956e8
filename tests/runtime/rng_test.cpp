#include <gtest/gtest.h>

#include <cmath>

#include "runtime/rng.h"
#include "runtime/rng_core.h"

namespace sd {

// Random123's published known-answer vectors for Philox4x32-10 (its tests/kat_vectors).
TEST(Philox, KnownAnswerVectors) {
  struct Kat {
    uint32_t ctr[4], key[2], expected[4];
  } kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    uint32_t out[4];
    rng::philox4x32_10(k.ctr, k.key, out);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(out[i], k.expected[i]) << "word " << i;
  }
}

TEST(Philox, PortableMathMatchesLibm) {
  for (double u : {1.0, 0.5, 0.999999, 1e-3, 1e-10, 0.7071, 0.3}) {
    EXPECT_NEAR(rng::portable_log(u), std::log(u), 1e-15 * (1 + std::fabs(std::log(u)))) << u;
  }
  for (int i = 0; i < 1000; ++i) {
    double u = i / 1000.0;
    double s, c;
    rng::portable_sincos_2pi(u, &s, &c);
    EXPECT_NEAR(s, std::sin(2 * M_PI * u), 2e-15) << u;
    EXPECT_NEAR(c, std::cos(2 * M_PI * u), 2e-15) << u;
  }
}

TEST(Philox, NormalFillHasUnitMomentsAndIsDeterministic) {
  Tensor a = randn_seeded({1 << 18}, 42);
  Tensor b = randn_seeded({1 << 18}, 42);
  std::vector<float> va = a.to_float_vector(), vb = b.to_float_vector();
  EXPECT_EQ(va, vb);
  double sum = 0, sq = 0, four = 0;
  for (float v : va) {
    sum += v;
    sq += double(v) * v;
    four += double(v) * v * v * v;
  }
  const double n = double(va.size());
  const double mean = sum / n, var = sq / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 5.0 / std::sqrt(n));  // 5 standard errors
  EXPECT_NEAR(var, 1.0, 5.0 * std::sqrt(2.0 / n));
  EXPECT_NEAR(four / n, 3.0, 0.05);  // kurtosis of a normal
  Tensor c = randn_seeded({1 << 18}, 43);
  EXPECT_NE(c.to_float_vector(), va);
}

TEST(Philox, UniformFillRangeAndMean) {
  Tensor u = empty({100000});
  fill_uniform_(u, 7, 0, -2.0, 3.0);
  double sum = 0;
  for (float v : u.to_float_vector()) {
    ASSERT_GE(v, -2.0f);
    ASSERT_LT(v, 3.0f);
    sum += v;
  }
  EXPECT_NEAR(sum / 100000, 0.5, 5 * 5 / std::sqrt(12.0 * 100000));
}

TEST(Philox, OffsetsSelectDisjointBlocks) {
  // Filling 6 normals from offset 0 equals 2 from offset 0 followed by 4 from offset 1.
  Tensor whole = empty({6}, DType::F64);
  fill_normal_(whole, 9, 0);
  Tensor first = empty({2}, DType::F64), rest = empty({4}, DType::F64);
  fill_normal_(first, 9, 0);
  fill_normal_(rest, 9, 1);
  std::vector<double> w = whole.to_vector(), f = first.to_vector(), r = rest.to_vector();
  EXPECT_EQ(w[0], f[0]);
  EXPECT_EQ(w[1], f[1]);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(w[2 + i], r[i]);
  // The generator advances by the blocks used.
  Generator g(5);
  Tensor x = randn({5}, DType::F32, Device::cpu(), g);
  EXPECT_EQ(g.offset, 3u);
}

TEST(Philox, HalfFillsRoundTheFloatValues) {
  Tensor f = empty({1000});
  Tensor h = empty({1000}, DType::F16);
  fill_normal_(f, 3, 10);
  fill_normal_(h, 3, 10);
  std::vector<float> vf = f.to_float_vector(), vh = h.to_float_vector();
  for (size_t i = 0; i < vf.size(); ++i) EXPECT_EQ(float(Half(vf[i])), vh[i]);
}

}  // namespace sd
