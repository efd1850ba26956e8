// Text conditioning of a pipeline: prompt text -> token chunks -> CLIP hidden states, as diffusers'
// encode_prompt picks them (FORMATS.md §5.3), with A1111's long prompts and emphasis weights.
//
//   SD1/SD2   context = last_hidden_state [1, 77, D] (clip_skip n: hidden_states[-(n+1)] then
//             final_layer_norm)
//   SDXL      context = concat(CLIP-L hidden_states[-2], bigG hidden_states[-2]) [1, 77, 768+1280]
//             (clip_skip n: [-(n+2)], no final LN); pooled = bigG text_embeds [1, 1280]
//   refiner   context = bigG hidden_states[-2] [1, 77, 1280]; pooled as SDXL
//
// Long prompts: the token list is cut into chunks of 75 (A1111 rules: BREAK, comma backtrack),
// each framed [BOS, ..., EOS, pad] and encoded alone; the chunks' hidden states are concatenated
// along the sequence ([1, 77 k, D]); the pooled vector comes from the first chunk. The prompt and
// the negative prompt are padded with empty chunks to the same count (CFG batches them).
// Weights "(word:1.3)": each chunk's hidden states are multiplied by the token weights and
// rescaled to the chunk's original mean (A1111's sd_hijack_clip). A prompt without weights and
// under 76 tokens encodes exactly as diffusers does.
#pragma once
#include <optional>
#include <string>

#include "infer/pipeline.h"

namespace sd::nn {
class TextualInversions;
}  // namespace sd::nn

namespace sd::infer {

struct PromptEncodeOptions {
  // Loaded textual-inversion embeddings: a multi-vector trigger expands to all its tokens.
  const sd::nn::TextualInversions* embeddings = nullptr;
  // diffusers' clip_skip: 0 = the model's usual layer; n = n layers earlier (A1111's "Clip skip" is
  // this plus 1).
  int clip_skip = 0;
  // diffusers applies clip_skip to the prompt only and encodes the negative prompt at the model's
  // usual layer; A1111 and ComfyUI skip the layers for both. false = diffusers.
  bool clip_skip_negative = false;
  // A1111 syntax (weights, BREAK) and 75-token chunks. false: the text is taken literally and cut at
  // 75 tokens, exactly as diffusers' pipelines do.
  bool a1111_syntax = true;
  int comma_backtrack = 20;  // A1111's default "comma padding backtrack"
};

struct TextConditioning {
  Tensor context;  // [1, 77 k, D] in the pipeline's dtype
  Tensor pooled;   // [1, P] (SDXL family), else undefined
};

struct EncodedPrompts {
  TextConditioning cond;
  TextConditioning uncond;  // defined when asked for (CFG)
  int64_t chunks = 1;       // chunks per prompt
  int64_t tokens = 0;       // tokens of the prompt (no BOS/EOS), for messages
};

// negative: nullopt = no negative prompt given (SDXL with force_zeros_for_empty_prompt then uses
// zero conditioning, else the empty prompt is encoded). uncond is computed only when with_uncond.
EncodedPrompts encode_prompts(const Pipeline& pipe, const std::string& prompt,
                              const std::optional<std::string>& negative, bool with_uncond,
                              const PromptEncodeOptions& options = {});

}  // namespace sd::infer
