// Textual-inversion embeddings (FORMATS.md §4.4): new token vectors for the CLIP text encoder(s) and
// the trigger words that select them.
//
// Files understood:
//   diffusers   learned_embeds.safetensors / .bin: {"<token>": [D] or [n, D]}; trigger = the key
//   A1111 / kohya  .safetensors or .pt with {"emb_params": [n, D]}; trigger = the file stem
//   A1111 .pt   torch pickle {"string_to_param": {"*": [n, D]}, "name": ..., ...}; trigger = the file stem
//               (A1111 names embeddings after their files)
//   SDXL        {"clip_l": [n, 768], "clip_g": [n, 1280]}: clip_l into the first text encoder (CLIP-L),
//               clip_g into the second (OpenCLIP bigG); trigger = the file stem
// A folder is read as diffusers' layout (learned_embeds.safetensors, else learned_embeds.bin).
//
// Loading n vectors for trigger T adds the tokens T, T_1, ..., T_{n-1} to each tokenizer (whole-string
// matches, models/clip/clip_tokenizer.h) and the vectors as new rows of the encoder's token embedding, so
// token ids and rows stay aligned. In a prompt, T stands for all n vectors: expand() turns the id of T
// into the ids of T, T_1, ..., T_{n-1}, which is what diffusers' maybe_convert_prompt does to the text
// ("T" -> "T T_1 ... T_{n-1}"), but on ids: a trigger that is a prefix of another ("emb" and
// "emb_v2") does not break the longer one as diffusers' string replacement does.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <deque>
#include <vector>

#include "models/clip/clip_text.h"
#include "models/clip/clip_tokenizer.h"
#include "models/formats/tensor_source.h"

namespace sd::nn {

struct TextEncoderSlot {
  ClipTokenizer* tokenizer = nullptr;
  ClipTextModel* text_encoder = nullptr;
  bool present() const { return tokenizer && text_encoder; }
};

// SD1/SD2: `first` only. SDXL: first = (tokenizer, text_encoder) CLIP-L, second = (tokenizer_2,
// text_encoder_2) OpenCLIP bigG.
struct TextualInversionTargets {
  TextEncoderSlot first, second;
};

struct TextualInversionEmbedding {
  std::string token;     // the trigger word
  std::string source;    // the file
  int64_t num_vectors = 0;
  struct Added {
    const ClipTokenizer* tokenizer = nullptr;
    std::vector<int> ids;  // ids of token, token_1, ..., in that tokenizer (= rows of its encoder)
  };
  std::vector<Added> added;  // one per text encoder that got vectors
};

class TextualInversions {
 public:
  // Loads one embedding file (or diffusers folder). `token` overrides the trigger the file implies.
  // Errors (sd::Error, nothing changed): unknown layout, a vector width that does not fit an encoder
  // (naming file, key and shapes), a trigger already in a tokenizer, a tokenizer whose size differs
  // from its encoder's embedding rows, an SDXL file without a second encoder, vectors stored as
  // integers or booleans, and NaN or Inf in a vector (naming file, key and where the first one is).
  const TextualInversionEmbedding& load(const std::string& path, const TextualInversionTargets& targets,
                                        const std::string& token = "");
  // The same from tensors already in memory / any source; `stem` stands for the file stem (the trigger
  // of A1111, kohya and SDXL files).
  const TextualInversionEmbedding& load(const TensorSource& src, const std::string& stem,
                                        const TextualInversionTargets& targets, const std::string& token = "");
  // A1111's pickle form, already unpickled: {"string_to_param": {"*": vectors}}.
  const TextualInversionEmbedding& load_vectors(const Tensor& vectors, const std::string& token,
                                                const std::string& source, const TextualInversionTargets& targets);

  // ids (tokenizer.encode output) with every trigger id followed by the ids of its other vectors.
  std::vector<int> expand(const ClipTokenizer& tokenizer, const std::vector<int>& ids) const;
  // tokenizer.frame(expand(tokenizer.encode(prompt))): the padded ids a text encoder consumes.
  std::vector<int> encode_padded(const ClipTokenizer& tokenizer, std::string_view prompt) const;

  const std::deque<TextualInversionEmbedding>& embeddings() const { return embeddings_; }

 private:
  // vectors[i] goes to targets slot i (undefined: that slot gets nothing).
  const TextualInversionEmbedding& add(const std::string& token, const std::string& source,
                                       const std::vector<std::pair<std::string, Tensor>>& vectors,
                                       const TextualInversionTargets& targets);
  // A deque: load() returns a reference to its entry, which must stay valid as more are loaded.
  std::deque<TextualInversionEmbedding> embeddings_;
};

}  // namespace sd::nn
