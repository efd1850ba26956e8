// Textual-inversion embeddings (A1111 / kohya / diffusers safetensors layouts) loaded into a fresh
// copy of the tiny CLIP tokenizer and text encoder of tests/data for every input.
#include "models/adapters/textual_inversion.h"
#include "models/clip/clip_text.h"
#include "models/clip/clip_tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The tiny 1000-token vocabulary of the adapter tests (its pad token is id 999).
  static const sd::ClipTokenizer tok = [] {
    sd::TokenizerConfig cfg;
    cfg.pad_token = 999;
    return sd::ClipTokenizer::from_folder(std::string(SD_TEST_DATA_DIR) + "/lora/tokenizer", cfg);
  }();
  static const sd::nn::ClipTextConfig cfg =
      sd::nn::ClipTextConfig::from_file(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l/config.json");
  const std::string path = sd::fuzz::scratch_file(data, size, ".safetensors");
  sd::ClipTokenizer t = tok;
  sd::nn::ClipTextModel te(cfg);
  sd::nn::TextualInversions ti;
  sd::fuzz::expect_ok_or_sd_error([&] { ti.load(path, {{&t, &te}, {}}); });
  return 0;
}
