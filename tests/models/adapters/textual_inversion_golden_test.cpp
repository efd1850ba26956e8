// Textual-inversion embeddings against diffusers' load_textual_inversion + maybe_convert_prompt on the
// tiny text encoders (tests/golden/make_lora_goldens.py): a diffusers folder (3 vectors), a kohya/A1111
// emb_params file (2), an A1111 .pt pickle (2) on clip_tiny_l, and an SDXL clip_l/clip_g file on
// clip_tiny_l + clip_tiny_bigg. Token ids must equal diffusers' exactly; encoder outputs within 1e-4.
#include <gtest/gtest.h>

#include <cstdio>

#include "models/adapters/textual_inversion.h"
#include "tests/models/adapters/lora_fixtures.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

constexpr double kTol = 1e-4;

ClipTokenizer tiny_tokenizer(int pad) {
  TokenizerConfig cfg;
  cfg.pad_token = pad;
  return ClipTokenizer::from_folder(test::lora_file("tokenizer"), cfg);
}

Tensor ids_tensor(const std::vector<int>& ids) {
  std::vector<double> v(ids.begin(), ids.end());
  return from_vector(v, {1, int64_t(ids.size())}, DType::I64);
}

std::vector<int> as_ints(const Tensor& t) {
  std::vector<int> out;
  for (double v : t.to_vector()) out.push_back(int(v));
  return out;
}

void expect_close(const char* what, const Tensor& actual, const Tensor& ref) {
  ASSERT_EQ(actual.shape(), ref.shape()) << what;
  const double err = test::relative_error(actual, ref);
  std::printf("[ GoldenTextualInversion ] %-12s rel err %.2e\n", what, err);
  EXPECT_LE(err, kTol) << what;
}

TEST(GoldenTextualInversion, Sd1DiffusersKohyaAndA1111Files) {
  auto io_src = SafetensorsSource::open(test::lora_file("ti_io.safetensors"));
  const auto& meta = io_src->metadata();
  ClipTokenizer tok = tiny_tokenizer(999);
  auto te = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l");
  TextualInversionTargets t;
  t.first = {&tok, te.get()};
  TextualInversions ti;
  const auto& cat = ti.load(test::lora_file("ti/cat_toy"), t);
  EXPECT_EQ(cat.token, "<cat-toy>");
  EXPECT_EQ(cat.num_vectors, 3);
  ASSERT_EQ(cat.added.size(), 1u);
  EXPECT_EQ(cat.added[0].ids, (std::vector<int>{1000, 1001, 1002}));
  const auto& emb = ti.load(test::lora_file("ti/tinyemb.safetensors"), t);
  EXPECT_EQ(emb.token, "tinyemb");
  EXPECT_EQ(emb.num_vectors, 2);
  const auto& old = ti.load(test::lora_file("ti/oldstyle.pt"), t);
  EXPECT_EQ(old.token, "oldstyle");  // the file stem, not the pickle's "name"
  EXPECT_EQ(tok.size(), 1007);
  EXPECT_EQ(te->config().vocab_size, 1007);

  for (int i = 0;; ++i) {
    auto p = meta.find("sd1.prompt." + std::to_string(i));
    if (p == meta.end()) {
      EXPECT_EQ(i, 4);
      break;
    }
    const std::vector<int> ids = ti.encode_padded(tok, p->second);
    EXPECT_EQ(ids, as_ints(io_src->get("sd1." + std::to_string(i) + ".ids", DType::I64, Device::cpu())))
        << p->second;
    expect_close(("sd1 prompt " + std::to_string(i)).c_str(), te->forward(ids_tensor(ids)),
                 io_src->get("sd1." + std::to_string(i) + ".out", DType::F32, Device::cpu()));
  }
}

TEST(GoldenTextualInversion, SdxlClipLAndClipG) {
  auto io_src = SafetensorsSource::open(test::lora_file("ti_io.safetensors"));
  const auto& meta = io_src->metadata();
  ClipTokenizer tok1 = tiny_tokenizer(999), tok2 = tiny_tokenizer(0);
  auto te1 = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l");
  auto te2 = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_bigg");
  TextualInversionTargets t;
  t.first = {&tok1, te1.get()};
  t.second = {&tok2, te2.get()};
  TextualInversions ti;
  const auto& xl = ti.load(test::lora_file("ti/tinyxl.safetensors"), t);
  EXPECT_EQ(xl.token, "tinyxl");
  EXPECT_EQ(xl.num_vectors, 2);
  ASSERT_EQ(xl.added.size(), 2u);

  auto get = [&](const std::string& k, DType dt) { return io_src->get(k, dt, Device::cpu()); };
  for (int i = 0; i < 2; ++i) {
    const std::string prompt = meta.at("sdxl.prompt." + std::to_string(i)), pre = "sdxl." + std::to_string(i) + ".";
    const std::vector<int> ids1 = ti.encode_padded(tok1, prompt), ids2 = ti.encode_padded(tok2, prompt);
    EXPECT_EQ(ids1, as_ints(get(pre + "ids", DType::I64))) << prompt;
    EXPECT_EQ(ids2, as_ints(get(pre + "ids2", DType::I64))) << prompt;
    expect_close(("sdxl " + std::to_string(i) + " clip_l").c_str(), te1->forward(ids_tensor(ids1)),
                 get(pre + "out", DType::F32));
    ClipTextRequest req;
    req.text_embeds = true;
    ClipTextOutput o = te2->forward(ids_tensor(ids2), req);
    expect_close(("sdxl " + std::to_string(i) + " clip_g").c_str(), o.last_hidden_state, get(pre + "out2", DType::F32));
    expect_close(("sdxl " + std::to_string(i) + " embeds").c_str(), o.text_embeds, get(pre + "embeds2", DType::F32));
  }
}

}  // namespace
}  // namespace sd::nn
