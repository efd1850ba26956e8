// Textual-inversion loading rules: rows and ids, triggers that are prefixes of others, overrides,
// 1-D vectors, and the errors (width, SDXL without a second encoder, taken triggers, tokenizer/encoder
// size mismatch, unknown layouts) -- each leaving the models unchanged.
#include <gtest/gtest.h>

#include <functional>

#include "models/adapters/textual_inversion.h"
#include "ops/view.h"
#include "tests/models/adapters/lora_fixtures.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

struct Tiny {
  ClipTokenizer tok = tokenizer(999);
  std::shared_ptr<ClipTextModel> te = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l");
  TextualInversionTargets targets() { return {{&tok, te.get()}, {}}; }
  static ClipTokenizer tokenizer(int pad) {
    TokenizerConfig cfg;
    cfg.pad_token = pad;
    return ClipTokenizer::from_folder(test::lora_file("tokenizer"), cfg);
  }
  Tensor rows(int64_t first, int64_t n) {
    const Tensor& w = te->text_model->embeddings->token_embedding->weight;
    return copy_to(as_strided(w, {n, w.size(1)}, {w.size(1), 1}, first * w.size(1)), DType::F32, Device::cpu());
  }
};

void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "no error (expected '" << needles.front() << "')";
  } catch (const Error& e) {
    for (const std::string& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(TextualInversion, VectorsBecomeRowsAndTriggersExpandOnIds) {
  Tiny t;
  TextualInversions ti;
  const Tensor emb = test::random_tensor({2, 32}, DType::F32, 1), emb_v2 = test::random_tensor({3, 32}, DType::F32, 2);
  const auto& a = ti.load(MapSource({{"emb_params", emb}}, "emb.safetensors"), "emb", t.targets());
  const auto& b = ti.load(MapSource({{"emb_params", emb_v2}}, "emb_v2.safetensors"), "emb_v2", t.targets());
  EXPECT_EQ(a.added.at(0).ids, (std::vector<int>{1000, 1001}));
  EXPECT_EQ(b.added.at(0).ids, (std::vector<int>{1002, 1003, 1004}));
  EXPECT_EQ(t.tok.token_to_id("emb_v2_2"), 1004);
  EXPECT_TRUE(test::all_close(t.rows(1000, 2), emb, 0, 0));
  EXPECT_TRUE(test::all_close(t.rows(1002, 3), emb_v2, 0, 0));
  // "emb" is a prefix of "emb_v2": the tokenizer matches the longer one whole, and the id-level
  // expansion keeps them apart (diffusers' string replacement would turn "emb_v2" into "emb emb_1_v2").
  const std::vector<int> plain = t.tok.encode("and");
  std::vector<int> expected = {1000, 1001};
  expected.insert(expected.end(), plain.begin(), plain.end());
  for (int id : {1002, 1003, 1004}) expected.push_back(id);
  EXPECT_EQ(ti.expand(t.tok, t.tok.encode("emb and emb_v2")), expected);
  // A copy of the tokenizer (found by token name) expands the same way; an unrelated one does nothing.
  const ClipTokenizer copy = t.tok.with_config(t.tok.config());
  EXPECT_EQ(ti.expand(copy, copy.encode("emb and emb_v2")), expected);
  const ClipTokenizer fresh = Tiny::tokenizer(999);
  EXPECT_EQ(ti.expand(fresh, {1, 2, 3}), (std::vector<int>{1, 2, 3}));
  // encode_padded frames the expanded ids.
  const std::vector<int> padded = ti.encode_padded(t.tok, "emb");
  EXPECT_EQ(std::vector<int>(padded.begin(), padded.begin() + 4), (std::vector<int>{998, 1000, 1001, 999}));
  EXPECT_EQ(padded.size(), 77u);
}

TEST(TextualInversion, DiffusersOneDimensionalVectorAndTokenOverride) {
  Tiny t;
  TextualInversions ti;
  const Tensor v = test::random_tensor({32}, DType::F32, 3);
  EXPECT_EQ(ti.load(MapSource({{"<thing>", v}}, "mem"), "stem", t.targets()).token, "<thing>");
  EXPECT_TRUE(test::all_close(t.rows(1000, 1), reshape(v, {1, 32}), 0, 0));
  const auto& o = ti.load(MapSource({{"<thing>", v}}, "mem"), "stem", t.targets(), "other");
  EXPECT_EQ(o.token, "other");
  EXPECT_EQ(o.num_vectors, 1);
  EXPECT_EQ(ti.embeddings().size(), 2u);
  // Into an f16 encoder the rows are converted.
  ClipTokenizer tok = Tiny::tokenizer(999);
  auto te16 = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l", DType::F16);
  TextualInversions ti16;
  ti16.load(test::lora_file("ti/tinyemb.safetensors"), {{&tok, te16.get()}, {}});
  EXPECT_EQ(te16->text_model->embeddings->token_embedding->weight.dtype(), DType::F16);
  EXPECT_EQ(te16->text_model->embeddings->token_embedding->weight.size(0), 1002);
}

TEST(TextualInversion, ErrorsNameTheProblemAndChangeNothing) {
  Tiny t;
  TextualInversions ti;
  // An encoder of another width.
  ClipTextConfig wide = t.te->config();
  wide.hidden_size = 48;
  ClipTextModel te48(wide);
  te48.init_parameters(1);
  ClipTokenizer tok = Tiny::tokenizer(999);
  expect_error([&] { ti.load(test::lora_file("ti/tinyemb.safetensors"), {{&tok, &te48}, {}}); },
               {"tinyemb.safetensors", "'emb_params'", "(2, 32)", "48-wide", "(1000, 48)"});
  // SDXL file without the second encoder.
  expect_error([&] { ti.load(test::lora_file("ti/tinyxl.safetensors"), t.targets()); },
               {"tinyxl.safetensors", "SDXL", "second text encoder"});
  // A taken trigger: loaded twice, or a word of the vocabulary.
  ti.load(test::lora_file("ti/cat_toy"), t.targets());
  expect_error([&] { ti.load(test::lora_file("ti/cat_toy"), t.targets()); }, {"'<cat-toy>'", "already in tokenizer"});
  expect_error([&] { ti.load(test::lora_file("ti/tinyemb.safetensors"), t.targets(), "a"); }, {"'a'", "already"});
  // Tokenizer and encoder disagree on the vocabulary size (the full CLIP tokenizer on the tiny encoder).
  ClipTokenizer full = ClipTokenizer::from_folder(std::string(SD_TEST_DATA_DIR) + "/clip");
  expect_error([&] { ti.load(test::lora_file("ti/tinyemb.safetensors"), {{&full, t.te.get()}, {}}); },
               {"49408 tokens", "1003 embedding rows"});
  // Unknown layouts.
  expect_error([&] {
    ti.load(MapSource({{"a", test::random_tensor({1, 32}, DType::F32, 1)}, {"b", test::random_tensor({1, 32}, DType::F32, 2)}},
                      "two.safetensors"),
            "two", t.targets());
  },
               {"unknown layout", "'a', 'b'"});
  expect_error([&] { ti.load(MapSource({{"<x>", test::random_tensor({1, 2, 32}, DType::F32, 1)}}, "3d"), "x", t.targets()); },
               {"'<x>'", "[n, D]"});
  expect_error([&] { ti.load(test::lora_dir(), t.targets()); }, {"no learned_embeds"});
  // Only the first embedding got in.
  EXPECT_EQ(ti.embeddings().size(), 1u);
  EXPECT_EQ(t.tok.size(), 1003);
  EXPECT_EQ(t.te->text_model->embeddings->token_embedding->weight.size(0), 1003);
  EXPECT_EQ(tok.size(), 1000);
}

}  // namespace
}  // namespace sd::nn
