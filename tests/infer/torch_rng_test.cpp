// --rng torch-cuda: torch.randn on a CUDA generator, reproduced on the CPU, against values
// recorded from torch on an H200 (tests/golden/record_torch_cuda_randn.py).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "infer/torch_rng.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace sd::infer {
namespace {

// The first and last 2048 values, as recorded.
std::vector<float> ends(const Tensor& t) {
  std::vector<float> v = t.to_float_vector();
  if (v.size() <= 4096) return v;
  std::vector<float> out(v.begin(), v.begin() + 2048);
  out.insert(out.end(), v.end() - 2048, v.end());
  return out;
}

TEST(GoldenTorchRng, MatchesTorchCudaRandnForSeedsShapesAndSecondDraws) {
  SafetensorsFile f = SafetensorsFile::open(std::string(SD_TEST_DATA_DIR) + "/torch_cuda_randn.safetensors");
  int checked = 0;
  double worst_all = 0;
  for (uint64_t seed : {uint64_t(0), uint64_t(42), uint64_t(1234), (uint64_t(1) << 32) + 7}) {
    for (const Shape& shape : {Shape{1, 4, 64, 64}, Shape{2, 4, 128, 128}, Shape{1, 4, 96, 96}, Shape{3, 5}}) {
      std::string name = "seed" + std::to_string(seed) + "_";
      for (size_t i = 0; i < shape.size(); ++i) name += (i ? "x" : "") + std::to_string(shape[i]);
      TorchCudaGenerator g(seed);
      for (const std::string& key : {name, name + "_second"}) {
        const std::vector<float> ours = ends(g.randn(shape));
        const std::vector<float> ref = f.get(key).to_float_vector();
        ASSERT_EQ(ours.size(), ref.size()) << key;
        double worst = 0;
        for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, double(std::fabs(ours[i] - ref[i])));
        // torch computes sin/cos with the approximate __sincosf: ~1e-6 apart.
        EXPECT_LT(worst, 2e-5) << key;
        worst_all = std::max(worst_all, worst);
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 32);
  std::printf("[ GoldenTorchRng ] largest difference from torch over %d draws: %.2e\n", checked, worst_all);
}

}  // namespace
}  // namespace sd::infer
