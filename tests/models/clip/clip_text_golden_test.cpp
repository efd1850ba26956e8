// The CLIP text encoder against transformers on the three tiny random-weight models written by
// tests/golden/make_clip_goldens.py (CLIP-L-like quick_gelu with EOS padding, OpenCLIP-H-like
// gelu with legacy eos_token_id 2, bigG-like with projection): every output of one forward,
// f32, relative error of the whole tensor <= 1e-4.
#include <gtest/gtest.h>

#include <cstdio>

#include "models/clip/clip_text.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

constexpr double kTol = 1e-4;

void check_golden(const std::string& name) {
  const std::string dir = std::string(SD_TEST_DATA_DIR) + "/clip_tiny_" + name;
  auto model = ClipTextModel::from_pretrained(dir);
  SafetensorsFile io = SafetensorsFile::open(dir + "/io.safetensors");
  ClipTextRequest req;
  req.all_hidden_states = req.pooled = true;
  req.text_embeds = model->config().with_projection;
  ClipTextOutput out = model->forward(io.get("input_ids"), req);

  auto expect = [&](const std::string& key, const Tensor& actual) {
    const Tensor ref = io.get(key);
    ASSERT_EQ(actual.shape(), ref.shape()) << name << " " << key;
    const double err = test::relative_error(actual, ref);
    std::printf("[ GoldenClipText ] %-5s %-18s rel err %.3g\n", name.c_str(), key.c_str(), err);
    EXPECT_LE(err, kTol) << name << " " << key;
  };
  expect("last_hidden_state", out.last_hidden_state);
  ASSERT_EQ(out.hidden_states.size(), size_t(model->config().num_hidden_layers + 1));
  for (size_t i = 0; i < out.hidden_states.size(); ++i)
    expect("hidden_states." + std::to_string(i), out.hidden_states[i]);
  expect("pooler_output", out.pooled);
  if (req.text_embeds) expect("text_embeds", out.text_embeds);
  EXPECT_FALSE(io.contains("text_embeds") && !req.text_embeds) << "golden has a projection the model lacks";
}

TEST(GoldenClipText, ClipL_QuickGeluEosPaddingFirstEosPooling) { check_golden("l"); }
TEST(GoldenClipText, OpenClipH_GeluZeroPaddingLegacyArgmaxPooling) { check_golden("h"); }
TEST(GoldenClipText, OpenClipBigG_WithProjection) { check_golden("bigg"); }

}  // namespace
}  // namespace sd::nn
