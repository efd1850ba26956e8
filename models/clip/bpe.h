// Byte-level BPE as GPT-2/CLIP use it: every UTF-8 byte of a pre-token is first mapped to one
// printable character (bytes_to_unicode), the last one gets the "</w>" end-of-word suffix, then
// adjacent symbols are merged by merge rank until no ranked pair is left.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sd {

// bytes_to_unicode(): bytes 33..126, 161..172 and 174..255 map to the same code point; the other
// 68 bytes (0..32, 127..160, 173), in increasing order, map to U+0100, U+0101, ... U+0143.
const std::array<char32_t, 256>& bytes_to_unicode();
// The inverse: the byte of one of those 256 characters, or -1.
int unicode_to_byte(char32_t c);
// The bytes in the order CLIP's simple_tokenizer lists them when it builds its vocabulary
// (the printable ranges first, then the remapped ones): ids 0..255 of the CLIP vocabulary.
const std::array<uint8_t, 256>& clip_byte_order();

class Bpe {
 public:
  using Merges = std::vector<std::pair<std::string, std::string>>;
  // vocab maps token strings (UTF-8, e.g. "cat</w>") to ids >= 0; merges are in rank order
  // (a later duplicate of a pair overrides the earlier rank, as Python's dict does). Symbols
  // missing from the vocabulary come out as unk_id.
  Bpe(std::unordered_map<std::string, int> vocab, const Merges& merges, int unk_id);
  Bpe(const Bpe&) = delete;
  Bpe& operator=(const Bpe&) = delete;

  // Appends the ids of one pre-token given as its raw UTF-8 bytes. Thread-safe (memoised).
  void encode_word(std::string_view bytes, std::vector<int>& out) const;

  const std::unordered_map<std::string, int>& vocab() const { return vocab_; }
  int size() const { return int(id_to_token_.size()); }  // largest id + 1
  // Token string of an id, or nullptr where the vocabulary has no such id.
  const std::string* token(int id) const;
  int num_merges() const { return num_merges_; }

 private:
  int intern(const std::string& s);
  std::vector<int> merge_symbols(std::vector<int> word) const;

  std::unordered_map<std::string, int> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<char> id_known_;
  int unk_id_;
  int num_merges_ = 0;
  // Symbols seen while merging: every byte character (with and without "</w>") and every merge
  // part and result, interned so a word is a vector of ints.
  std::unordered_map<std::string, int> symbol_index_;
  std::vector<int> symbol_vocab_id_;
  std::array<int, 256> byte_symbol_{}, byte_end_symbol_{};
  struct MergeInfo {
    int rank;
    int result;
  };
  std::unordered_map<uint64_t, MergeInfo> merges_;  // key: (left symbol << 32) | right symbol

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int>> cache_;
};

}  // namespace sd
