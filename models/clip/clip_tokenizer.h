// CLIP's byte-level BPE tokenizer, reproducing Hugging Face transformers' CLIPTokenizer id for id
// (tests/golden/make_tokenizer_goldens.py makes the reference ids).
//
// Encoding one string (text -> ids, no BOS/EOS):
//  1. Added tokens are cut out of the raw text first, leftmost then longest match, and become
//     their ids whole: <|startoftext|> (49406), <|endoftext|> (49407) and any add_token() string.
//  2. Each piece between them is cleaned up (see ClipTextNorm: lower-casing, whitespace, NFC).
//  3. The cleaned text is cut by CLIP's pattern
//       <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//     (tried in this order at each position; whitespace between matches is dropped): runs of
//     letters, each digit alone, runs of other symbols, English contractions.
//  4. Each match is encoded as UTF-8, bytes mapped to printable characters, "</w>" appended to
//     the last, and merged by BPE rank (models/clip/bpe.h).
// Padded form: [BOS, first max_length-2 ids, EOS, pad, ...] of length max_length (77).
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sd {

class Bpe;

// Which reference's text clean-up to reproduce; both agree on ordinary prompts (ASCII, accented
// Latin, emoji without joiners, ...) and differ on the rest, see ClipTokenizer::clean.
enum class ClipTextNorm {
  // transformers 4.x CLIPTokenizer (the Python one) when ftfy is not installed: BERT's
  // BasicTokenizer clean-up -- control/format/private/unassigned characters, NUL and U+FFFD are
  // removed, other whitespace becomes a space, spaces go around CJK ideographs (so each is its
  // own word), NFC, Python str.lower() per word (with final sigma) -- then the pattern above
  // with IGNORECASE (so "'\u017f" is a contraction and U+0345 matches nothing and is dropped).
  // Special-token strings only become 49406/49407 when they are exactly lower case after
  // clean-up; added tokens are matched case-sensitively in the raw text.
  HfSlow,
  // transformers 5.x CLIPTokenizer, which is the HF tokenizers pipeline of 4.x CLIPTokenizerFast:
  // NFC, every run of White_Space -> one space, per-character lower case (no final sigma), the
  // pattern without IGNORECASE, then GPT-2's byte-level split (which only splits a
  // special-token string found at this stage into "<|", name, "|>"). Special tokens are matched
  // in the raw text only; add_token() strings are matched in the normalised text, using their own
  // normalised form (so they match case-insensitively). 4.x CLIPTokenizerFast differs from this
  // only in also matching special tokens after normalisation ("<|ENDOFTEXT|>" -> 49407).
  HfFast,
};

struct TokenizerConfig {
  // SD1.x and SDXL's first tokenizer pad with <|endoftext|> (49407); SD2.x (OpenCLIP) and SDXL's
  // tokenizer_2 pad with 0 (the token "!"). The text encoders see the pad ids (no attention mask).
  int pad_token = 49407;
  int max_length = 77;  // BOS + 75 + EOS
  // transformers registers the pad token as a special token, so a pad token other than BOS/EOS
  // (SD2 / SDXL tokenizer_2: "!") is cut out of the text whole: "wow!" -> [2781, 0] instead of
  // [2781, 256] ("!</w>"). diffusers therefore feeds 0 for every "!" to those text encoders;
  // open_clip's tokenizer (the original SD2/SDXL code, ComfyUI) does not: set false for that.
  bool match_pad_token = true;
  ClipTextNorm norm = ClipTextNorm::HfSlow;
};

class ClipTokenizer {
 public:
  // diffusers tokenizer/ folder: vocab.json (token -> id) and merges.txt ("#version" line, then
  // one "left right" merge per line, in rank order; only the first 48,894 are used, as CLIP does),
  // or tokenizer.json alone.
  static ClipTokenizer from_folder(const std::string& dir, TokenizerConfig cfg = {});
  static ClipTokenizer from_files(const std::string& vocab_json, const std::string& merges_txt,
                                  TokenizerConfig cfg = {});
  // transformers 5 saves only tokenizer.json (Hugging Face tokenizers' format: the BPE vocabulary
  // and merges in one file); from_folder reads it when vocab.json is absent.
  static ClipTokenizer from_tokenizer_json(const std::string& path, TokenizerConfig cfg = {});
  // OpenAI/OpenCLIP bpe_simple_vocab_16e6.txt.gz: gzip'd merges (first line a header); the vocab
  // is derived as CLIP's simple_tokenizer does: 256 byte characters, the same with "</w>", one
  // token per merge, <|startoftext|>, <|endoftext|>.
  static ClipTokenizer from_bpe_gz(const std::string& path, TokenizerConfig cfg = {});

  // The same vocabulary and added tokens under another configuration (e.g. pad 0 for SDXL's
  // second text encoder) without reloading the files.
  ClipTokenizer with_config(TokenizerConfig cfg) const;

  // BPE ids of the text, no BOS/EOS, no truncation. Invalid UTF-8 throws sd::Error naming the
  // byte offset.
  std::vector<int> encode(std::string_view text) const;
  // [BOS, ids..., EOS, pad...], exactly max_length long; ids beyond max_length-2 are dropped.
  std::vector<int> encode_padded(std::string_view text) const;
  // Long prompts (A1111 / ComfyUI): ids cut into consecutive chunks of max_length-2 (75), each
  // framed like encode_padded; an empty prompt gives one chunk.
  std::vector<std::vector<int>> encode_chunks(std::string_view text) const;
  // Frames ids (at most max_length-2 of them are kept) as [BOS, ids..., EOS, pad...].
  std::vector<int> frame(const std::vector<int>& ids) const;

  // Registers a new token (textual inversion): from now on the exact string is matched whole
  // before BPE, anywhere in the text (also inside words, as transformers does). Returns its id:
  // the next free id (size() before the call), the existing id if the string already is a
  // vocabulary entry or an added token.
  int add_token(const std::string& token);

  // Ids back to text as transformers' decode: byte-level tokens are joined and "</w>" becomes a
  // space; added tokens are separate words. skip_special drops BOS, EOS and the pad id.
  std::string decode(const std::vector<int>& ids, bool skip_special = false) const;

  // The cleaned-up text the pattern runs on (step 2 above) for one piece of text without added
  // tokens; exposed for tests and debugging.
  std::string clean(std::string_view text) const;

  int bos_id() const { return bos_; }
  int eos_id() const { return eos_; }
  int pad_id() const { return cfg_.pad_token; }
  int chunk_length() const { return cfg_.max_length - 2; }
  int size() const;  // vocabulary plus added tokens
  std::optional<int> token_to_id(const std::string& token) const;
  std::optional<std::string> id_to_token(int id) const;
  const TokenizerConfig& config() const { return cfg_; }

 private:
  struct Added {
    std::string text;
    std::u32string raw;         // matched in the raw text (HfSlow)
    std::u32string normalized;  // matched after normalisation (HfFast)
    int id;
  };
  ClipTokenizer(std::shared_ptr<const Bpe> bpe, TokenizerConfig cfg, const std::string& origin);
  void check_config(const TokenizerConfig& cfg) const;
  void encode_clean_piece(std::u32string_view cleaned, std::vector<int>& out) const;
  void encode_segment(std::u32string_view raw, std::vector<int>& out) const;

  std::shared_ptr<const Bpe> bpe_;
  TokenizerConfig cfg_;
  int bos_ = 0, eos_ = 0;
  std::vector<Added> added_;
};

}  // namespace sd
