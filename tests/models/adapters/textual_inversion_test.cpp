// Textual-inversion loading rules: rows and ids, triggers that are prefixes of others, overrides,
// 1-D vectors, and the errors (width, SDXL without a second encoder, taken triggers, tokenizer/encoder
// size mismatch, unknown layouts, NaN/Inf and integer vectors) -- each leaving the models unchanged.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <functional>
#include <limits>

#include "models/adapters/textual_inversion.h"
#include "runtime/safetensors.h"
#include "ops/view.h"
#include "tests/models/adapters/lora_fixtures.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

namespace fs = std::filesystem;

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

// Hostile files, written here with the project's safetensors writer: NaN/Inf in a vector and
// non-floating vectors are refused naming the file and key, and nothing is added.
TEST(TextualInversion, NanInfAndIntegerVectorsAreRefusedNamingFileAndKey) {
  Tiny t;
  TextualInversions ti;
  const fs::path dir = fs::temp_directory_path() / ("sd_ti_hostile_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto write = [&](const std::string& name, const std::vector<std::pair<std::string, Tensor>>& tensors) {
    const std::string path = (dir / name).string();
    save_safetensors(path, tensors);
    return path;
  };
  auto with_value = [](const Tensor& v, int64_t i, double x) {
    std::vector<double> d = v.to_vector();
    d[size_t(i)] = x;
    return from_vector(d, v.shape(), v.dtype(), Device::cpu());
  };
  const Tensor good = test::random_tensor({2, 32}, DType::F32, 1);
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  // A1111 emb_params with a NaN in vector 1, column 3.
  const std::string a = write("nan_emb.safetensors", {{"emb_params", with_value(good, 32 + 3, nan)}});
  expect_error([&] { ti.load(a, t.targets()); },
               {a, "'emb_params'", "NaN or Inf", "1 of 64 values", "vector 1 at column 3"});
  // diffusers learned_embeds with Inf.
  const std::string b = write("learned_embeds.safetensors", {{"<tok>", with_value(good, 0, -inf)}});
  expect_error([&] { ti.load(b, t.targets()); }, {b, "'<tok>'", "NaN or Inf"});
  // An SDXL file whose clip_g is bad (the second encoder is checked too).
  ClipTokenizer tok2 = Tiny::tokenizer(999);
  auto te2 = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l");
  const std::string c = write("xl_nan.safetensors", {{"clip_l", good}, {"clip_g", with_value(good, 1, nan)}});
  expect_error([&] { ti.load(c, {{&t.tok, t.te.get()}, {&tok2, te2.get()}}); }, {c, "'clip_g'", "NaN or Inf"});
  // Integer and boolean vectors.
  for (const DType dt : {DType::I64, DType::I32, DType::U8, DType::Bool}) {
    const std::string d = write(std::string("int_") + dtype_name(dt) + ".safetensors", {{"emb_params", to(good, dt)}});
    expect_error([&] { ti.load(d, t.targets()); }, {d, "'emb_params'", std::string("stored as ") + dtype_name(dt)});
  }
  // Finite f32 values beyond f16 overflow an f16 embedding table.
  ClipTokenizer tok16 = Tiny::tokenizer(999);
  auto te16 = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l", DType::F16);
  const std::string e = write("big.safetensors", {{"emb_params", with_value(good, 0, 1e6)}});
  expect_error([&] { ti.load(e, {{&tok16, te16.get()}, {}}); }, {e, "too large", "f16"});
  // Nothing was added anywhere.
  EXPECT_TRUE(ti.embeddings().empty());
  EXPECT_EQ(t.tok.size(), 1000);
  EXPECT_EQ(t.te->text_model->embeddings->token_embedding->weight.size(0), 1000);
  EXPECT_EQ(tok16.size(), 1000);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sd::nn
