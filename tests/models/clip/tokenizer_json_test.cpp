// Tokenizer folders saved by transformers 5 hold only tokenizer.json (vocabulary and merges of the
// Hugging Face tokenizers format): sd reads them as it reads vocab.json + merges.txt, with the ids
// transformers computes (tests/golden/make_tokenizer_json_fixture.py).
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "infer/pipeline.h"
#include "models/clip/clip_tokenizer.h"
#include "tests/test_util.h"

namespace sd {
namespace {

namespace fs = std::filesystem;
const std::string kData = SD_TEST_DATA_DIR;

TEST(TokenizerJson, GivesTheIdsTransformersGives) {
  TokenizerConfig cfg;
  cfg.pad_token = 999;  // <|endoftext|> of the tiny vocabulary
  const ClipTokenizer tok = ClipTokenizer::from_folder(kData + "/tokenizer_json_sd1", cfg);
  const ClipTokenizer plain = ClipTokenizer::from_folder(kData + "/pipe_tiny_sd1/tokenizer", cfg);
  const nlohmann::json golden = nlohmann::json::parse(test::read_text(kData + "/tokenizer_json_sd1/ids.json"));
  ASSERT_GE(golden["ids"].size(), 4u);
  for (const auto& [prompt, ids] : golden["ids"].items()) {
    EXPECT_EQ(tok.encode_padded(prompt), ids.get<std::vector<int>>()) << prompt;
    EXPECT_EQ(plain.encode_padded(prompt), ids.get<std::vector<int>>()) << prompt;
  }
}

TEST(TokenizerJson, APipelineFolderWithOnlyTokenizerJsonLoads) {
  const fs::path dir = fs::temp_directory_path() / ("sd_tokjson_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::copy(kData + "/pipe_tiny_sd1", dir, fs::copy_options::recursive);
  fs::remove_all(dir / "tokenizer");
  fs::create_directories(dir / "tokenizer");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(kData + "/tokenizer_json_sd1/" + f, dir / "tokenizer" / f);
  const ClipTokenizer tok = infer::load_tokenizer_folder((dir / "tokenizer").string());
  const ClipTokenizer ref = infer::load_tokenizer_folder(kData + "/pipe_tiny_sd1/tokenizer");
  EXPECT_EQ(tok.encode_padded("a red circle"), ref.encode_padded("a red circle"));
  EXPECT_NO_THROW(infer::Pipeline::load(dir.string()));
  fs::remove_all(dir);
}

TEST(TokenizerJson, OtherModelsAndDamagedMergesAreErrorsNamingTheFile) {
  const fs::path dir = fs::temp_directory_path() / ("sd_tokjson_bad_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  nlohmann::json j = nlohmann::json::parse(test::read_text(kData + "/tokenizer_json_sd1/tokenizer.json"));
  auto error_of = [&](const nlohmann::json& file) -> std::string {
    test::write_text(dir / "tokenizer.json", file.dump());
    try {
      ClipTokenizer::from_folder(dir.string());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  nlohmann::json wordpiece = j;
  wordpiece["model"]["type"] = "WordPiece";
  std::string msg = error_of(wordpiece);
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not BPE"), std::string::npos) << msg;
  nlohmann::json bad_merge = j;
  bad_merge["model"]["merges"][0] = nlohmann::json::array({"a"});
  msg = error_of(bad_merge);
  EXPECT_NE(msg.find("malformed merge"), std::string::npos) << msg;
  // The older "a b" string form of the merges reads the same as pairs.
  nlohmann::json strings = j;
  for (auto& m : strings["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  test::write_text(dir / "tokenizer.json", strings.dump());
  TokenizerConfig cfg;
  cfg.pad_token = 999;
  EXPECT_EQ(ClipTokenizer::from_folder(dir.string(), cfg).encode("a photo of a cat"),
            ClipTokenizer::from_folder(kData + "/tokenizer_json_sd1", cfg).encode("a photo of a cat"));
  // A folder with neither form says so.
  fs::remove(dir / "tokenizer.json");
  try {
    ClipTokenizer::from_folder(dir.string());
    ADD_FAILURE() << "an empty tokenizer folder loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("neither vocab.json + merges.txt nor tokenizer.json"), std::string::npos)
        << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sd
