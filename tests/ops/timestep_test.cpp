// timestep_embedding against a float64 loop of diffusers' get_timestep_embedding formula.
#include <gtest/gtest.h>

#include <cmath>

#include "ops/timestep.h"
#include "tests/test_util.h"

namespace sd {
namespace {

std::vector<double> embedding_ref(const std::vector<double>& t, int64_t dim, bool flip, double shift, double scale,
                                  int64_t max_period) {
  const int64_t half = dim / 2;
  std::vector<double> out(t.size() * dim, 0.0);
  for (size_t n = 0; n < t.size(); ++n) {
    for (int64_t j = 0; j < half; ++j) {
      const double exponent = -std::log(double(max_period)) * double(j) / (double(half) - shift);
      const double arg = scale * t[n] * std::exp(exponent);
      double* row = &out[n * dim];
      row[(flip ? half : 0) + j] = std::sin(arg);
      row[(flip ? 0 : half) + j] = std::cos(arg);
    }
  }
  return out;
}

// Timesteps with an exact f32 value, so the reference sees what the op sees.
const std::vector<double> kTimesteps = {0, 1, 10.5, 250, 999};

TEST(TimestepEmbedding, MatchesFormula) {
  Tensor t = from_vector(kTimesteps, {int64_t(kTimesteps.size())}, DType::F32);
  for (int64_t dim : {320, 321, 7}) {
    for (bool flip : {true, false}) {
      for (double shift : {0.0, 1.0}) {
        Tensor out = timestep_embedding(t, dim, flip, shift);
        EXPECT_EQ(out.shape(), (Shape{int64_t(kTimesteps.size()), dim}));
        EXPECT_EQ(out.dtype(), DType::F32);
        // f32 arithmetic on arguments up to 1000 rad: absolute error ~1e-4 at most.
        EXPECT_TRUE(test::all_close(out, embedding_ref(kTimesteps, dim, flip, shift, 1.0, 10000), 0, 5e-4))
            << "dim " << dim << " flip " << flip << " shift " << shift;
        if (dim % 2) {  // the padding column is exactly zero
          for (int64_t n = 0; n < int64_t(kTimesteps.size()); ++n)
            EXPECT_EQ(out.data<float>()[n * dim + dim - 1], 0.0f);
        }
      }
    }
  }
}

TEST(TimestepEmbedding, ScaleMaxPeriodAndIntegerTimesteps) {
  const std::vector<double> ts = {0, 3, 500, 999};
  const std::vector<double> expected = embedding_ref(ts, 64, true, 1.0, 0.5, 1000);
  for (DType dt : {DType::I64, DType::I32, DType::F64, DType::F16, DType::F32}) {
    Tensor t = from_vector(ts, {4}, dt);
    EXPECT_TRUE(test::all_close(timestep_embedding(t, 64, true, 1.0, 0.5, 1000), expected, 0, 5e-4))
        << dtype_name(dt);
  }
}

TEST(TimestepEmbedding, NonContiguousTimesteps) {
  Tensor t = from_vector(kTimesteps, {int64_t(kTimesteps.size())}, DType::F32);
  EXPECT_TRUE(test::all_close(timestep_embedding(test::non_contiguous(t), 16), timestep_embedding(t, 16), 0, 0));
}

TEST(TimestepEmbedding, BadInputsRaise) {
  EXPECT_THROW(timestep_embedding(zeros({2, 3}), 8), Error);
  EXPECT_THROW(timestep_embedding(zeros({2}), 0), Error);
  EXPECT_THROW(timestep_embedding(zeros({2}), 2, true, 1.0), Error);  // half - shift == 0
  EXPECT_THROW(timestep_embedding(Tensor(), 8), Error);
}

}  // namespace
}  // namespace sd
