#include "models/clip/bpe.h"

#include <algorithm>
#include <climits>

#include "models/clip/unicode_text.h"
#include "runtime/error.h"

namespace sd {
namespace {

bool printable_byte(int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255); }

uint64_t pair_key(int a, int b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

// The cache only saves work; bounding it keeps memory flat on endless distinct inputs.
constexpr size_t kMaxCacheEntries = 1 << 16;

}  // namespace

const std::array<char32_t, 256>& bytes_to_unicode() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) t[size_t(b)] = printable_byte(b) ? char32_t(b) : next++;
    return t;
  }();
  return table;
}

int unicode_to_byte(char32_t c) {
  if (c < 256) return printable_byte(int(c)) ? int(c) : -1;
  if (c >= 256 + 68) return -1;
  int n = int(c) - 256;  // the n-th non-printable byte
  for (int b = 0; b < 256; ++b)
    if (!printable_byte(b) && n-- == 0) return b;
  return -1;
}

const std::array<uint8_t, 256>& clip_byte_order() {
  static const std::array<uint8_t, 256> order = [] {
    std::array<uint8_t, 256> o{};
    size_t k = 0;
    for (int b = 0; b < 256; ++b)
      if (printable_byte(b)) o[k++] = uint8_t(b);
    for (int b = 0; b < 256; ++b)
      if (!printable_byte(b)) o[k++] = uint8_t(b);
    return o;
  }();
  return order;
}

Bpe::Bpe(std::unordered_map<std::string, int> vocab, const Merges& merges, int unk_id)
    : vocab_(std::move(vocab)), unk_id_(unk_id) {
  int max_id = -1;
  for (const auto& [tok, id] : vocab_) {
    SD_CHECK(id >= 0, "Bpe: negative id ", id, " for token '", tok, "'");
    max_id = std::max(max_id, id);
  }
  id_to_token_.assign(size_t(max_id + 1), std::string());
  id_known_.assign(size_t(max_id + 1), 0);
  for (const auto& [tok, id] : vocab_) {
    id_to_token_[size_t(id)] = tok;
    id_known_[size_t(id)] = 1;
  }
  const auto& table = bytes_to_unicode();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    text::append_utf8(s, table[size_t(b)]);
    byte_symbol_[size_t(b)] = intern(s);
    byte_end_symbol_[size_t(b)] = intern(s + "</w>");
  }
  int rank = 0;
  for (const auto& [a, b] : merges) {
    const int ia = intern(a), ib = intern(b), ir = intern(a + b);
    merges_[pair_key(ia, ib)] = MergeInfo{rank++, ir};
  }
  num_merges_ = rank;
}

int Bpe::intern(const std::string& s) {
  auto [it, inserted] = symbol_index_.emplace(s, int(symbol_vocab_id_.size()));
  if (inserted) {
    auto v = vocab_.find(s);
    symbol_vocab_id_.push_back(v == vocab_.end() ? unk_id_ : v->second);
  }
  return it->second;
}

const std::string* Bpe::token(int id) const {
  if (id < 0 || id >= size() || !id_known_[size_t(id)]) return nullptr;
  return &id_to_token_[size_t(id)];
}

std::vector<int> Bpe::merge_symbols(std::vector<int> word) const {
  std::vector<int> next;
  while (word.size() > 1) {
    // The adjacent pair with the lowest rank; stop when no pair is a known merge.
    int best_rank = INT_MAX;
    int first = -1, second = -1, result = -1;
    for (size_t j = 0; j + 1 < word.size(); ++j) {
      auto it = merges_.find(pair_key(word[j], word[j + 1]));
      if (it != merges_.end() && it->second.rank < best_rank) {
        best_rank = it->second.rank;
        first = word[j], second = word[j + 1], result = it->second.result;
      }
    }
    if (result < 0) break;
    // Merge every non-overlapping occurrence, scanning left to right.
    next.clear();
    for (size_t j = 0; j < word.size();) {
      if (word[j] == first && j + 1 < word.size() && word[j + 1] == second) {
        next.push_back(result);
        j += 2;
      } else {
        next.push_back(word[j]);
        ++j;
      }
    }
    word.swap(next);
  }
  return word;
}

void Bpe::encode_word(std::string_view bytes, std::vector<int>& out) const {
  if (bytes.empty()) return;
  const std::string key(bytes);
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int> word(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    const auto b = size_t(static_cast<unsigned char>(bytes[i]));
    word[i] = i + 1 < bytes.size() ? byte_symbol_[b] : byte_end_symbol_[b];
  }
  std::vector<int> ids = merge_symbols(std::move(word));
  for (int& s : ids) s = symbol_vocab_id_[size_t(s)];
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (cache_.size() >= kMaxCacheEntries) cache_.clear();
  cache_.emplace(key, std::move(ids));
}

}  // namespace sd
