#include "infer/prompt_weights.h"

#include <cmath>
#include <cstdlib>

#include "models/clip/unicode_text.h"
#include "runtime/error.h"

namespace sd {
namespace {

constexpr double kRoundMultiplier = 1.1;
constexpr double kSquareMultiplier = 1 / 1.1;

bool ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool word_char(char32_t c) { return c == U'_' || text::is_letter(c) || text::is_number(c); }  // Python's \w

// re.split(r"\s*\bBREAK\b\s*", run): the pieces between the BREAK words (possibly empty).
std::vector<std::string> split_on_break(const std::string& run) {
  const std::u32string s = text::decode_utf8(run, "parse_prompt_weights");
  static constexpr std::u32string_view kBreak = U"BREAK";
  std::vector<std::string> parts;
  size_t piece_start = 0, search = 0;
  while (search + kBreak.size() <= s.size()) {
    const size_t i = s.find(kBreak, search);
    if (i == std::u32string::npos) break;
    const size_t e = i + kBreak.size();
    const bool bounded = (i == 0 || !word_char(s[i - 1])) && (e == s.size() || !word_char(s[e]));
    if (!bounded) {
      search = i + 1;
      continue;
    }
    size_t b = i, after = e;
    while (b > piece_start && text::is_python_space(s[b - 1])) --b;
    while (after < s.size() && text::is_python_space(s[after])) ++after;
    parts.push_back(text::encode_utf8(std::u32string_view(s).substr(piece_start, b - piece_start)));
    piece_start = search = after;
  }
  parts.push_back(text::encode_utf8(std::u32string_view(s).substr(piece_start)));
  return parts;
}

// Tries ':\s*([+-]?[.\d]+)\s*\)' at p (which holds ':'); on success returns the end offset and
// the number text.
bool match_weight(std::string_view s, size_t p, size_t& end, std::string& number) {
  size_t i = p + 1;
  while (i < s.size() && ascii_space(s[i])) ++i;
  const size_t num_start = i;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  const size_t digits = i;
  while (i < s.size() && (s[i] == '.' || (s[i] >= '0' && s[i] <= '9'))) ++i;
  if (i == digits) return false;
  number.assign(s.substr(num_start, i - num_start));
  while (i < s.size() && ascii_space(s[i])) ++i;
  if (i >= s.size() || s[i] != ')') return false;
  end = i + 1;
  return true;
}

// Python float() of "[+-]?[.0-9]+": false for "1.2.3", "." and the like.
bool parse_number(const std::string& t, double& v) {
  size_t dots = 0, digits = 0;
  for (char c : t) dots += c == '.', digits += (c >= '0' && c <= '9');
  if (dots > 1 || digits == 0) return false;
  v = std::strtod(t.c_str(), nullptr);
  return true;
}

// A fragment's weight beyond kMaxPromptWeight in magnitude (or not finite) is refused. Useful weights
// are a few units; 1,000 nested brackets give 1.1^1000 = 2.5e41, which overflows the f32 weights and
// then the text encoder's output, so the image comes out black without a word. A1111 takes any weight;
// every prompt it gives a usable image for stays within this bound.
constexpr double kMaxPromptWeight = 1000.0;

void check_weight(const PromptFragment& f) {
  if (std::isfinite(f.weight) && std::fabs(f.weight) <= kMaxPromptWeight) return;
  const std::string shown = f.text.size() > 40 ? f.text.substr(0, 40) + "..." : f.text;
  SD_FAIL("prompt emphasis: the weight of \"", shown, "\" is ", f.weight, " (nested brackets multiply: each ( ) by 1.1, ",
          "and (text:N) by N); weights beyond +-", kMaxPromptWeight, " are refused: write (text:N) with a small N");
}

}  // namespace

std::vector<PromptFragment> parse_prompt_weights(std::string_view prompt) {
  std::vector<PromptFragment> res;
  std::vector<size_t> round, square;  // index into res where each open bracket started
  auto multiply_range = [&](size_t start, double m) {
    for (size_t k = start; k < res.size(); ++k) res[k].weight *= m;
  };
  auto add_text = [&](const std::string& t) {
    const std::vector<std::string> parts = split_on_break(t);
    for (size_t k = 0; k < parts.size(); ++k) {
      if (k > 0) res.push_back(PromptFragment{"BREAK", -1.0, true});
      res.push_back(PromptFragment{parts[k], 1.0, false});
    }
  };
  size_t i = 0;
  while (i < prompt.size()) {
    const char c = prompt[i];
    if (c == '\\') {
      // \( \) \[ \] \\ give the character; a backslash before anything else vanishes.
      const bool escapes = i + 1 < prompt.size() && std::string_view("()[]\\").find(prompt[i + 1]) != std::string_view::npos;
      res.push_back(PromptFragment{escapes ? std::string(1, prompt[i + 1]) : std::string(), 1.0, false});
      i += escapes ? 2 : 1;
    } else if (c == '(') {
      round.push_back(res.size());
      ++i;
    } else if (c == '[') {
      square.push_back(res.size());
      ++i;
    } else if (c == ':') {
      size_t end = 0;
      std::string number;
      double w = 0;
      if (match_weight(prompt, i, end, number) && !round.empty() && parse_number(number, w)) {
        multiply_range(round.back(), w);
        round.pop_back();
        i = end;
      } else if (end != 0) {
        add_text(std::string(prompt.substr(i, end - i)));  // ":1.3)" with no '(' open: literal
        i = end;
      } else {
        add_text(":");
        ++i;
      }
    } else if (c == ')' && !round.empty()) {
      multiply_range(round.back(), kRoundMultiplier);
      round.pop_back();
      ++i;
    } else if (c == ']' && !square.empty()) {
      multiply_range(square.back(), kSquareMultiplier);
      square.pop_back();
      ++i;
    } else if (c == ')' || c == ']') {
      add_text(std::string(1, c));
      ++i;
    } else {
      size_t j = i;
      while (j < prompt.size() && std::string_view("\\()[]:").find(prompt[j]) == std::string_view::npos) ++j;
      add_text(std::string(prompt.substr(i, j - i)));
      i = j;
    }
  }
  for (size_t p : round) multiply_range(p, kRoundMultiplier);
  for (size_t p : square) multiply_range(p, kSquareMultiplier);
  if (res.empty()) res.push_back(PromptFragment{"", 1.0, false});
  for (const PromptFragment& f : res)
    if (!f.is_break && !f.text.empty()) check_weight(f);  // the weight of no text changes nothing
  for (size_t k = 0; k + 1 < res.size();) {
    if (!res[k].is_break && !res[k + 1].is_break && res[k].weight == res[k + 1].weight) {
      res[k].text += res[k + 1].text;
      res.erase(res.begin() + std::ptrdiff_t(k + 1));
    } else {
      ++k;
    }
  }
  return res;
}

WeightedChunks encode_weighted_chunks(const ClipTokenizer& tok, std::string_view prompt, int comma_backtrack) {
  const size_t chunk_len = size_t(tok.chunk_length());
  const int comma = tok.token_to_id(",</w>").value_or(-1);
  WeightedChunks out;
  std::vector<int> ids;
  std::vector<float> mults;
  long last_comma = -1;  // index of the last comma in the current chunk
  auto next_chunk = [&] {
    std::vector<int> framed = tok.frame(ids);
    std::vector<float> w(framed.size(), 1.0f);
    std::copy(mults.begin(), mults.end(), w.begin() + 1);
    out.ids.push_back(std::move(framed));
    out.weights.push_back(std::move(w));
    ids.clear();
    mults.clear();
    last_comma = -1;
  };
  for (const PromptFragment& frag : parse_prompt_weights(prompt)) {
    if (frag.is_break) {
      next_chunk();
      continue;
    }
    for (int t : tok.encode(frag.text)) {
      if (t == comma) {
        last_comma = long(ids.size());
      } else if (comma_backtrack > 0 && ids.size() == chunk_len && last_comma != -1 &&
                 long(ids.size()) - last_comma <= comma_backtrack) {
        // Move what follows the last comma to the next chunk.
        const size_t cut = size_t(last_comma) + 1;
        std::vector<int> moved_ids(ids.begin() + std::ptrdiff_t(cut), ids.end());
        std::vector<float> moved_w(mults.begin() + std::ptrdiff_t(cut), mults.end());
        ids.resize(cut);
        mults.resize(cut);
        next_chunk();
        ids = std::move(moved_ids);
        mults = std::move(moved_w);
      }
      if (ids.size() == chunk_len) next_chunk();
      ids.push_back(t);
      mults.push_back(float(frag.weight));
    }
  }
  if (!ids.empty() || out.ids.empty()) next_chunk();
  return out;
}

}  // namespace sd
