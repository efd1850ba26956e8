// The CLIP tokenizer on arbitrary bytes (invalid UTF-8 included) and A1111 prompt weighting
// ("(word:1.3)", nested brackets, BREAK), through what sd_infer does with a prompt.
#include <cmath>

#include "infer/prompt_weights.h"
#include "models/clip/clip_tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const sd::ClipTokenizer tok = sd::ClipTokenizer::from_files(std::string(SD_CLIP_VOCAB_DIR) + "/vocab.json",
                                                                     std::string(SD_CLIP_VOCAB_DIR) + "/merges.txt");
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  sd::fuzz::expect_ok_or_sd_error([&] {
    for (const std::vector<int>& chunk : tok.encode_chunks(text))
      if (chunk.size() != 77) std::abort();  // every chunk is framed to the model's length
  });
  sd::fuzz::expect_ok_or_sd_error([&] {
    const sd::WeightedChunks w = sd::encode_weighted_chunks(tok, text, 5);
    for (const std::vector<float>& ws : w.weights)
      for (float x : ws)
        if (!std::isfinite(x)) std::abort();  // an overflowing weight must be clamped or refused
  });
  return 0;
}
