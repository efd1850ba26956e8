#include "models/clip/clip_tokenizer.h"

#include <algorithm>

#include "models/clip/bpe.h"
#include "models/clip/unicode_text.h"
#include "runtime/error.h"

namespace sd {
namespace {

using text::is_letter;
using text::is_number;
using text::is_white_space;

constexpr std::u32string_view kStartOfText = U"<|startoftext|>";
constexpr std::u32string_view kEndOfText = U"<|endoftext|>";
constexpr char32_t kYpogegrammeni = 0x345;  // combining mark that IGNORECASE turns into a non-member of every class

// HfSlow: BERT BasicTokenizer(do_lower_case, strip_accents=False, do_split_on_punc=False).
std::u32string clean_slow(std::u32string_view s) {
  std::u32string a;
  a.reserve(s.size() + 8);
  for (char32_t c : s) {
    const bool keep_ws = c == U'\t' || c == U'\n' || c == U'\r';
    if (c == 0 || c == 0xFFFD || (text::is_other(c) && !keep_ws)) continue;
    if (c == U' ' || keep_ws || text::is_space_sep(c)) {
      a.push_back(U' ');
    } else if (text::is_cjk_ideograph(c)) {
      a.push_back(U' ');
      a.push_back(c);
      a.push_back(U' ');
    } else {
      a.push_back(c);
    }
  }
  // Lower-casing the whole text equals lower-casing each word: whitespace is neither cased
  // nor case-ignorable, so it ends the Final_Sigma context just like a word boundary.
  const std::u32string lowered = text::python_lower(text::nfc(a));
  // str.split() then " ".join(): one space between words, none at the ends.
  std::u32string out;
  out.reserve(lowered.size());
  bool pending_space = false;
  for (char32_t c : lowered) {
    if (text::is_python_space(c)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(U' ');
    pending_space = false;
    out.push_back(c);
  }
  return out;
}

// HfFast: normalizers.Sequence([NFC(), Replace(Regex(r"\s+"), " "), Lowercase()]).
std::u32string normalize_fast(std::u32string_view s) {
  const std::u32string n = text::nfc(s);
  std::u32string out;
  out.reserve(n.size());
  bool in_space = false;
  for (char32_t c : n) {
    if (is_white_space(c)) {
      if (!in_space) out.push_back(U' ');
      in_space = true;
      continue;
    }
    in_space = false;
    text::append_lower(out, c);
  }
  return out;
}

// Case-insensitive match of an ASCII lower-case literal as the `regex` module's IGNORECASE
// does it (simple case folding): besides the upper-case letter, U+017F folds to 's' and the
// Kelvin sign to 'k'.
bool same_char(char32_t c, char32_t lit, bool ignore_case) {
  if (c == lit) return true;
  if (!ignore_case) return false;
  if (lit >= U'a' && lit <= U'z' && c == lit - 32) return true;
  return (lit == U's' && c == 0x17F) || (lit == U'k' && c == 0x212A);
}

bool match_at(std::u32string_view s, size_t i, std::u32string_view lit, bool ignore_case) {
  if (s.size() - i < lit.size()) return false;
  for (size_t k = 0; k < lit.size(); ++k)
    if (!same_char(s[i + k], lit[k], ignore_case)) return false;
  return true;
}

// Leftmost, then longest, occurrence of any pattern (transformers' Trie.split and HF tokenizers'
// added-token matcher agree on this rule). on_text gets the text between matches.
struct Pattern {
  std::u32string_view text;
  int id;
};
template <class OnText, class OnToken>
void split_on_patterns(std::u32string_view s, const std::vector<Pattern>& pats, OnText&& on_text, OnToken&& on_token) {
  size_t start = 0, i = 0;
  while (i < s.size()) {
    const Pattern* best = nullptr;
    for (const Pattern& p : pats)
      if (!p.text.empty() && (!best || p.text.size() > best->text.size()) && s.size() - i >= p.text.size() &&
          s.compare(i, p.text.size(), p.text) == 0)
        best = &p;
    if (!best) {
      ++i;
      continue;
    }
    if (i > start) on_text(s.substr(start, i - start));
    on_token(best->id);
    i += best->text.size();
    start = i;
  }
  if (start < s.size()) on_text(s.substr(start));
}

}  // namespace

ClipTokenizer::ClipTokenizer(std::shared_ptr<const Bpe> bpe, TokenizerConfig cfg, const std::string& origin)
    : bpe_(std::move(bpe)), cfg_(cfg) {
  auto find = [&](const char* tok) {
    auto it = bpe_->vocab().find(tok);
    SD_CHECK(it != bpe_->vocab().end(), "ClipTokenizer: ", origin, " has no token ", tok);
    return it->second;
  };
  bos_ = find("<|startoftext|>");
  eos_ = find("<|endoftext|>");
  check_config(cfg_);
}

void ClipTokenizer::check_config(const TokenizerConfig& cfg) const {
  SD_CHECK(cfg.max_length >= 3, "ClipTokenizer: max_length ", cfg.max_length, " leaves no room for tokens");
  SD_CHECK(id_to_token(cfg.pad_token).has_value(), "ClipTokenizer: pad token ", cfg.pad_token,
           " is not in the vocabulary (size ", size(), ")");
}

ClipTokenizer ClipTokenizer::with_config(TokenizerConfig cfg) const {
  check_config(cfg);
  ClipTokenizer t = *this;
  t.cfg_ = cfg;
  return t;
}

int ClipTokenizer::size() const {
  int n = bpe_->size();
  for (const Added& a : added_) n = std::max(n, a.id + 1);
  return n;
}

std::optional<int> ClipTokenizer::token_to_id(const std::string& token) const {
  for (const Added& a : added_)
    if (a.text == token) return a.id;
  auto it = bpe_->vocab().find(token);
  if (it == bpe_->vocab().end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> ClipTokenizer::id_to_token(int id) const {
  for (const Added& a : added_)
    if (a.id == id) return a.text;
  if (const std::string* t = bpe_->token(id)) return *t;
  return std::nullopt;
}

std::string ClipTokenizer::clean(std::string_view text) const {
  const std::u32string s = text::decode_utf8(text, "ClipTokenizer::clean");
  return text::encode_utf8(cfg_.norm == ClipTextNorm::HfSlow ? clean_slow(s) : normalize_fast(s));
}

// Runs the pre-tokenizer pattern over cleaned text and BPE-encodes every match.
void ClipTokenizer::encode_clean_piece(std::u32string_view s, std::vector<int>& out) const {
  const bool slow = cfg_.norm == ClipTextNorm::HfSlow;
  std::string bytes;
  auto emit = [&](std::u32string_view piece) {
    bytes.clear();
    for (char32_t c : piece) text::append_utf8(bytes, c);
    bpe_->encode_word(bytes, out);
  };
  auto skipped = [&](char32_t c) { return is_white_space(c) || (slow && c == kYpogegrammeni); };
  static constexpr std::u32string_view kContractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};

  size_t i = 0;
  while (i < s.size()) {
    const char32_t c = s[i];
    if (skipped(c)) {
      ++i;
      continue;
    }
    if (c == U'<') {
      const std::u32string_view* special = nullptr;
      for (const auto* lit : {&kStartOfText, &kEndOfText})
        if (match_at(s, i, *lit, slow)) special = lit;
      if (special) {
        const std::u32string_view piece = s.substr(i, special->size());
        i += special->size();
        if (slow && piece == kStartOfText) {
          out.push_back(bos_);  // CLIPTokenizer's BPE cache maps the exact strings to themselves
        } else if (slow && piece == kEndOfText) {
          out.push_back(eos_);
        } else if (slow) {
          emit(piece);  // an IGNORECASE-only match (U+017F for 's'): BPE'd as one word
        } else {
          // HF tokenizers: the byte-level pre-tokenizer re-splits it with GPT-2's pattern.
          emit(piece.substr(0, 2));
          emit(piece.substr(2, piece.size() - 4));
          emit(piece.substr(piece.size() - 2));
        }
        continue;
      }
    }
    if (c == U'\'') {
      size_t len = 0;
      for (std::u32string_view con : kContractions)
        if (match_at(s, i, con, slow)) {
          len = con.size();
          break;
        }
      if (len) {
        emit(s.substr(i, len));
        i += len;
        continue;
      }
    }
    size_t j = i + 1;
    if (is_letter(c)) {
      while (j < s.size() && is_letter(s[j])) ++j;
    } else if (!is_number(c)) {  // a digit is a piece on its own
      while (j < s.size() && !skipped(s[j]) && !is_letter(s[j]) && !is_number(s[j])) ++j;
    }
    emit(s.substr(i, j - i));
    i = j;
  }
}

void ClipTokenizer::encode_segment(std::u32string_view raw, std::vector<int>& out) const {
  if (cfg_.norm == ClipTextNorm::HfSlow) {
    encode_clean_piece(clean_slow(raw), out);
    return;
  }
  const std::u32string normalized = normalize_fast(raw);
  std::vector<Pattern> pats;
  for (const Added& a : added_) pats.push_back({a.normalized, a.id});
  split_on_patterns(
      normalized, pats, [&](std::u32string_view piece) { encode_clean_piece(piece, out); },
      [&](int id) { out.push_back(id); });
}

std::vector<int> ClipTokenizer::encode(std::string_view text) const {
  const std::u32string s = text::decode_utf8(text, "ClipTokenizer::encode");
  std::vector<Pattern> pats = {{kStartOfText, bos_}, {kEndOfText, eos_}};
  std::u32string pad_text;
  if (cfg_.match_pad_token && cfg_.pad_token != bos_ && cfg_.pad_token != eos_) {
    pad_text = text::decode_utf8(id_to_token(cfg_.pad_token).value(), "ClipTokenizer::encode");
    pats.push_back({pad_text, cfg_.pad_token});
  }
  if (cfg_.norm == ClipTextNorm::HfSlow)
    for (const Added& a : added_) pats.push_back({a.raw, a.id});
  std::vector<int> out;
  split_on_patterns(
      s, pats, [&](std::u32string_view seg) { encode_segment(seg, out); }, [&](int id) { out.push_back(id); });
  return out;
}

std::vector<int> ClipTokenizer::frame(const std::vector<int>& ids) const {
  const size_t keep = std::min(ids.size(), size_t(chunk_length()));
  std::vector<int> out;
  out.reserve(size_t(cfg_.max_length));
  out.push_back(bos_);
  out.insert(out.end(), ids.begin(), ids.begin() + std::ptrdiff_t(keep));
  out.push_back(eos_);
  out.resize(size_t(cfg_.max_length), cfg_.pad_token);
  return out;
}

std::vector<int> ClipTokenizer::encode_padded(std::string_view text) const { return frame(encode(text)); }

std::vector<std::vector<int>> ClipTokenizer::encode_chunks(std::string_view text) const {
  const std::vector<int> ids = encode(text);
  const size_t n = size_t(chunk_length());
  std::vector<std::vector<int>> chunks;
  for (size_t start = 0; start < ids.size() || chunks.empty(); start += n) {
    const size_t end = std::min(ids.size(), start + n);
    chunks.push_back(frame(std::vector<int>(ids.begin() + std::ptrdiff_t(start), ids.begin() + std::ptrdiff_t(end))));
    if (end == ids.size()) break;
  }
  return chunks;
}

int ClipTokenizer::add_token(const std::string& token) {
  SD_CHECK(!token.empty(), "ClipTokenizer::add_token: empty token");
  for (const Added& a : added_)
    if (a.text == token) return a.id;
  Added a;
  a.text = token;
  a.raw = text::decode_utf8(token, "ClipTokenizer::add_token");
  a.normalized = normalize_fast(a.raw);
  auto it = bpe_->vocab().find(token);
  a.id = it != bpe_->vocab().end() ? it->second : size();
  added_.push_back(std::move(a));
  return added_.back().id;
}

std::string ClipTokenizer::decode(const std::vector<int>& ids, bool skip_special) const {
  std::vector<std::string> parts;
  std::string bytes;
  // convert_tokens_to_string: bytes -> text (invalid UTF-8 replaced), "</w>" -> " ", strip.
  auto flush = [&] {
    if (bytes.empty()) return;
    std::string t = text::decode_utf8_lenient(bytes);
    bytes.clear();
    std::string r;
    for (size_t k = 0; k < t.size();) {
      if (t.compare(k, 4, "</w>") == 0) {
        r.push_back(' ');
        k += 4;
      } else {
        r.push_back(t[k++]);
      }
    }
    parts.push_back(text::python_strip(r));
  };
  for (int id : ids) {
    if (skip_special && (id == bos_ || id == eos_ || id == cfg_.pad_token)) continue;
    const Added* added = nullptr;
    for (const Added& a : added_)
      if (a.id == id && id >= bpe_->size()) added = &a;
    if (added) {
      flush();
      parts.push_back(added->text);
      continue;
    }
    const std::string* tok = bpe_->token(id);
    SD_CHECK(tok, "ClipTokenizer::decode: id ", id, " is not in the vocabulary (size ", size(), ")");
    for (char32_t c : text::decode_utf8(*tok, "ClipTokenizer::decode")) {
      const int b = unicode_to_byte(c);
      if (b >= 0)
        bytes.push_back(char(b));
      else
        text::append_utf8(bytes, c);
    }
  }
  flush();
  std::string out;
  for (size_t k = 0; k < parts.size(); ++k) {
    if (k) out.push_back(' ');
    out += parts[k];
  }
  return out;
}

}  // namespace sd
