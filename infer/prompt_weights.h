// Prompt emphasis syntax of AUTOMATIC1111's web UI (modules/prompt_parser.py,
// parse_prompt_attention) and the per-token weights/chunks built from it
// (modules/sd_hijack_clip.py, tokenize_line). Rules implemented:
//   (text)        weight x 1.1           [text]        weight / 1.1
//   (text:1.3)    weight x 1.3 (instead of x 1.1); the number is [+-]?[0-9.]+ with optional
//                 spaces around it and must be followed by ')'
//   nesting multiplies: ((text)) = x 1.21, ((text:1.3)) = x 1.43, ...
//   \( \) \[ \]   literal brackets; \\ a literal backslash; any other backslash is dropped
//   an unmatched ')' or ']' is literal text; a bracket still open at the end applies its
//   multiplier to everything after it; ':' not starting a weight is literal text
//   BREAK (upper case, a whole word) ends the current 75-token chunk
//   adjacent fragments with exactly equal weights are merged; empty prompt -> ("", 1.0)
// Multiplications happen in double precision in the same order as the reference, so weights
// are bit-identical to A1111's (e.g. "(((house:1.3)))" -> 1.3*1.1*1.1 = 1.5730000000000004).
// Deliberate differences: A1111 turns BREAK inside brackets into literal text "BREAK" with a
// negative weight (a quirk of storing BREAK as weight -1); here BREAK always breaks. A weight
// that is not a number ("(a:1.2.3)") makes A1111 raise; here the ':...)' stays literal text. A weight
// beyond +-1000 or not finite (1,000 nested brackets: 1.1^1000) is an sd::Error naming the text: it
// would overflow the text encoder's output into a black image; A1111 takes it.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "models/clip/clip_tokenizer.h"

namespace sd {

struct PromptFragment {
  std::string text;
  double weight = 1.0;
  bool is_break = false;  // a BREAK marker (text "BREAK", weight unused)
};

std::vector<PromptFragment> parse_prompt_weights(std::string_view prompt);

// Chunks of exactly max_length ids ([BOS, up to 75 tokens, EOS, pad...], as ClipTokenizer::frame)
// with one weight per id (1.0 for BOS/EOS/pad). Each fragment is tokenized on its own, so words
// are split at weight boundaries, as A1111 does. A chunk is closed when it has 75 tokens and
// another one comes, at BREAK (even when empty), and at the end when it holds tokens or is the
// only one. comma_backtrack > 0 is A1111's "comma padding backtrack" (its default 20): when a
// chunk is full and its last comma is at most that many tokens back, the tokens after the comma
// move to the next chunk. 0 cuts strictly every 75 tokens (ComfyUI's simple rule).
struct WeightedChunks {
  std::vector<std::vector<int>> ids;
  std::vector<std::vector<float>> weights;
};
WeightedChunks encode_weighted_chunks(const ClipTokenizer& tok, std::string_view prompt, int comma_backtrack = 0);

}  // namespace sd
