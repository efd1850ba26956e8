// CLIP tokenizer: every prompt of tests/data/tokenizer_goldens.jsonl (made by transformers, see
// tests/golden/make_tokenizer_goldens.py) in both clean-up flavours and both pad flavours, the
// gzip'd OpenAI vocabulary against vocab.json/merges.txt, and unit tests for padding, chunking,
// added tokens, decoding, invalid UTF-8 and bad vocabulary files.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "models/clip/clip_tokenizer.h"
#include "runtime/error.h"

namespace sd {
namespace {

namespace fs = std::filesystem;

const std::string kClipDir = std::string(SD_TEST_DATA_DIR) + "/clip";

const ClipTokenizer& slow_tok() {
  static const ClipTokenizer t = ClipTokenizer::from_folder(kClipDir);
  return t;
}
const ClipTokenizer& gz_tok() {
  static const ClipTokenizer t = ClipTokenizer::from_bpe_gz(kClipDir + "/bpe_simple_vocab_16e6.txt.gz");
  return t;
}

struct Golden {
  std::string prompt;
  std::vector<std::string> added;
  std::vector<int> ids, padded_eos, padded_zero, fast, fast_padded_zero;
  bool has_decoded = false;
  std::string decoded;
};

const std::vector<Golden>& goldens() {
  static const std::vector<Golden> g = [] {
    std::vector<Golden> out;
    std::ifstream f(std::string(SD_TEST_DATA_DIR) + "/tokenizer_goldens.jsonl");
    EXPECT_TRUE(f.good()) << "missing tests/data/tokenizer_goldens.jsonl";
    std::string line;
    while (std::getline(f, line)) {
      if (line.empty()) continue;
      const auto j = nlohmann::json::parse(line);
      Golden r;
      r.prompt = j.at("prompt").get<std::string>();
      if (j.contains("added")) r.added = j["added"].get<std::vector<std::string>>();
      r.ids = j.at("ids").get<std::vector<int>>();
      r.padded_eos = j.at("padded_eos").get<std::vector<int>>();
      r.padded_zero = j.at("padded_zero").get<std::vector<int>>();
      r.fast = j.contains("fast") ? j["fast"].get<std::vector<int>>() : r.ids;
      r.fast_padded_zero = j.contains("fast_padded_zero") ? j["fast_padded_zero"].get<std::vector<int>>() : r.padded_zero;
      if (j.contains("decoded")) {
        r.has_decoded = true;
        r.decoded = j["decoded"].get<std::string>();
      }
      out.push_back(std::move(r));
    }
    return out;
  }();
  return g;
}

ClipTokenizer with_added(const ClipTokenizer& base, const std::vector<std::string>& added) {
  ClipTokenizer t = base;
  for (const auto& a : added) t.add_token(a);
  return t;
}

// [BOS, first 75 ids, EOS, pad...] written out independently of ClipTokenizer::frame.
std::vector<int> framed(const std::vector<int>& ids, int pad) {
  std::vector<int> out(77, pad);
  out[0] = 49406;
  size_t n = std::min<size_t>(ids.size(), 75);
  for (size_t i = 0; i < n; ++i) out[i + 1] = ids[i];
  out[n + 1] = 49407;
  return out;
}

std::string show(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? " " : "") + std::to_string(v[i]);
  return s + "]";
}

// Runs `check` on every golden record and reports at most a few failures in full.
template <class F>
void for_each_golden(const char* what, F&& check) {
  const auto& g = goldens();
  ASSERT_GT(g.size(), 1000u);
  int failures = 0;
  for (const Golden& r : g) {
    std::string msg;
    if (!check(r, msg)) {
      if (++failures <= 8) ADD_FAILURE() << what << ": prompt " << nlohmann::json(r.prompt).dump() << ": " << msg;
    }
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << g.size() << " prompts differ";
  std::cout << "[          ] " << what << ": " << g.size() - size_t(failures) << " / " << g.size()
            << " prompts identical\n";
}

bool same(const std::vector<int>& got, const std::vector<int>& want, const char* label, std::string& msg) {
  if (got == want) return true;
  msg += std::string(label) + " got " + show(got) + " want " + show(want) + "; ";
  return false;
}

TEST(GoldenTokenizer, SlowTransformersIds) {
  const ClipTokenizer eos = slow_tok();
  const ClipTokenizer zero = eos.with_config({.pad_token = 0});
  for_each_golden("slow CLIPTokenizer", [&](const Golden& r, std::string& msg) {
    const ClipTokenizer te = with_added(eos, r.added), tz = with_added(zero, r.added);
    bool ok = same(te.encode(r.prompt), r.ids, "ids", msg);
    ok = same(te.encode_padded(r.prompt), r.padded_eos, "padded pad=49407", msg) && ok;
    ok = same(tz.encode_padded(r.prompt), r.padded_zero, "padded pad=0", msg) && ok;
    return ok;
  });
}

TEST(GoldenTokenizer, FastTransformersIds) {
  const ClipTokenizer eos = slow_tok().with_config({.norm = ClipTextNorm::HfFast});
  const ClipTokenizer zero = slow_tok().with_config({.pad_token = 0, .norm = ClipTextNorm::HfFast});
  for_each_golden("transformers 5 CLIPTokenizer", [&](const Golden& r, std::string& msg) {
    const ClipTokenizer te = with_added(eos, r.added), tz = with_added(zero, r.added);
    bool ok = same(te.encode(r.prompt), r.fast, "ids", msg);
    ok = same(te.encode_padded(r.prompt), framed(r.fast, 49407), "padded pad=49407", msg) && ok;
    ok = same(tz.encode_padded(r.prompt), r.fast_padded_zero, "padded pad=0", msg) && ok;
    return ok;
  });
}

TEST(GoldenTokenizer, GzVocabularyGivesSameIds) {
  const ClipTokenizer& a = slow_tok();
  const ClipTokenizer& b = gz_tok();
  ASSERT_EQ(a.size(), 49408);
  ASSERT_EQ(b.size(), 49408);
  int differing = 0;
  for (int id = 0; id < a.size(); ++id) differing += a.id_to_token(id) != b.id_to_token(id);
  EXPECT_EQ(differing, 0) << "vocab.json and the vocabulary derived from the .gz differ";
  for_each_golden("bpe_simple_vocab_16e6.txt.gz", [&](const Golden& r, std::string& msg) {
    return same(with_added(b, r.added).encode(r.prompt), r.ids, "ids", msg);
  });
}

TEST(GoldenTokenizer, DecodeMatchesTransformers) {
  int n = 0;
  for (const Golden& r : goldens()) {
    if (!r.has_decoded) continue;
    ++n;
    EXPECT_EQ(with_added(slow_tok(), r.added).decode(r.ids), r.decoded) << nlohmann::json(r.prompt).dump();
  }
  EXPECT_GT(n, 100);
}

// ---------------------------------------------------------------------------------------------

TEST(Tokenizer, VocabularyFacts) {
  const ClipTokenizer& t = slow_tok();
  EXPECT_EQ(t.bos_id(), 49406);
  EXPECT_EQ(t.eos_id(), 49407);
  EXPECT_EQ(t.pad_id(), 49407);
  EXPECT_EQ(t.token_to_id("!"), 0);
  EXPECT_EQ(t.token_to_id("!</w>"), 256);
  EXPECT_EQ(t.token_to_id("a</w>"), 320);
  EXPECT_EQ(t.token_to_id("aaaah</w>"), 49151);
  EXPECT_EQ(t.id_to_token(781), "about</w>");
  EXPECT_FALSE(t.token_to_id("no such token").has_value());
  EXPECT_FALSE(t.id_to_token(49408).has_value());
}

TEST(Tokenizer, ReferenceIds) {
  // FORMATS.md section 5.2.
  const ClipTokenizer& t = slow_tok();
  EXPECT_EQ(t.encode("a photo of a cat"), (std::vector<int>{320, 1125, 539, 320, 2368}));
  EXPECT_EQ(t.encode("an astronaut riding a horse on mars"), (std::vector<int>{550, 18376, 6765, 320, 4558, 525, 7496}));
  EXPECT_EQ(t.encode("it's 1024x1024 pixels"),
            (std::vector<int>{585, 568, 272, 271, 273, 275, 343, 272, 271, 273, 275, 34099}));
  EXPECT_EQ(t.encode(""), std::vector<int>{});
  EXPECT_EQ(t.encode(" \t\n "), std::vector<int>{});
}

TEST(Tokenizer, PaddingAndTruncation) {
  const ClipTokenizer& t = slow_tok();
  std::string long_prompt;
  for (int i = 0; i < 100; ++i) long_prompt += "cat ";
  const std::vector<int> ids = t.encode(long_prompt);
  ASSERT_EQ(ids.size(), 100u);
  for (int pad : {49407, 0}) {
    const ClipTokenizer tp = t.with_config({.pad_token = pad});
    const std::vector<int> p = tp.encode_padded(long_prompt);
    ASSERT_EQ(p.size(), 77u);
    EXPECT_EQ(p[0], 49406);
    EXPECT_EQ(p[76], 49407);
    for (int i = 1; i < 76; ++i) EXPECT_EQ(p[size_t(i)], 2368);
    const std::vector<int> s = tp.encode_padded("a cat");
    EXPECT_EQ(s, framed({320, 2368}, pad));
  }
  const ClipTokenizer t10 = t.with_config({.max_length = 10});
  EXPECT_EQ(t10.encode_padded("a b c d e f g h i j"),
            (std::vector<int>{49406, 320, 321, 322, 323, 324, 325, 326, 327, 49407}));
}

TEST(Tokenizer, PadTokenMatchedAsSpecial) {
  const ClipTokenizer zero = slow_tok().with_config({.pad_token = 0});
  EXPECT_EQ(zero.encode("wow!"), (std::vector<int>{2781, 0}));
  const ClipTokenizer open_clip = slow_tok().with_config({.pad_token = 0, .match_pad_token = false});
  EXPECT_EQ(open_clip.encode("wow!"), (std::vector<int>{2781, 256}));
  EXPECT_EQ(open_clip.encode_padded("wow!"), framed({2781, 256}, 0));
  EXPECT_EQ(slow_tok().encode("wow!"), (std::vector<int>{2781, 256}));
}

TEST(Tokenizer, Chunks) {
  const ClipTokenizer& t = slow_tok();
  auto words = [](int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += "dog ";
    return s;
  };
  for (int n : {0, 1, 74, 75, 76, 150, 151, 200}) {
    for (int pad : {49407, 0}) {
      const ClipTokenizer tp = t.with_config({.pad_token = pad});
      const auto chunks = tp.encode_chunks(words(n));
      const size_t want = n == 0 ? 1 : size_t((n + 74) / 75);
      ASSERT_EQ(chunks.size(), want) << n;
      int left = n;
      for (const auto& c : chunks) {
        const int in_chunk = std::min(left, 75);
        left -= in_chunk;
        EXPECT_EQ(c, framed(std::vector<int>(size_t(in_chunk), 1929), pad)) << n;  // "dog</w>" = 1929
      }
    }
  }
  // Long real prompt: the chunk contents concatenate back to encode().
  std::string p;
  for (int i = 0; i < 40; ++i) p += "masterpiece, best quality, 8k, ";
  const auto ids = t.encode(p);
  std::vector<int> joined;
  for (const auto& c : t.encode_chunks(p)) {
    ASSERT_EQ(c.size(), 77u);
    auto end = std::find(c.begin() + 1, c.end(), 49407);
    joined.insert(joined.end(), c.begin() + 1, end);
  }
  EXPECT_EQ(joined, ids);
}

TEST(Tokenizer, AddedTokens) {
  ClipTokenizer t = slow_tok();
  EXPECT_EQ(t.add_token("<cat-toy>"), 49408);
  EXPECT_EQ(t.add_token("<cat-toy>"), 49408);
  EXPECT_EQ(t.add_token("<cat>"), 49409);
  EXPECT_EQ(t.add_token("cat</w>"), 2368);  // already a vocabulary entry: keeps its id
  EXPECT_EQ(t.size(), 49410);
  EXPECT_EQ(t.encode("a <cat-toy> and <cat>"), (std::vector<int>{320, 49408, 537, 49409}));
  EXPECT_EQ(t.encode("x<cat-toy>y"), (std::vector<int>{343, 49408, 344}));  // matched inside words
  EXPECT_EQ(t.token_to_id("<cat>"), 49409);
  EXPECT_EQ(t.id_to_token(49408), "<cat-toy>");
  EXPECT_EQ(t.decode({320, 49408, 537, 49409}), "a <cat-toy> and <cat>");
  // Copies are independent; with_config keeps the added tokens.
  EXPECT_EQ(slow_tok().size(), 49408);
  EXPECT_EQ(t.with_config({.pad_token = 0}).encode("<cat>"), std::vector<int>{49409});
  // HfSlow matches the raw text case-sensitively; HfFast matches the normalised (lower-cased) text.
  EXPECT_NE(t.encode("<CAT>"), std::vector<int>{49409});
  EXPECT_EQ(t.with_config({.norm = ClipTextNorm::HfFast}).encode("<CAT>"), std::vector<int>{49409});
  EXPECT_THROW(t.add_token(""), Error);
}

TEST(Tokenizer, DecodeRoundTripAscii) {
  const ClipTokenizer& t = slow_tok();
  std::mt19937 rng(7);
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.!?'\"-_()[]{}:;/\\&%$#@*+=~|`^>  ";
  for (int k = 0; k < 300; ++k) {
    std::string s;
    const int len = int(rng() % 60);
    for (int i = 0; i < len; ++i) s += alphabet[rng() % alphabet.size()];
    std::string want;
    for (char c : s)
      if (c != ' ') want += char(std::tolower(static_cast<unsigned char>(c)));
    std::string got;
    for (char c : t.decode(t.encode(s)))
      if (c != ' ') got += c;
    EXPECT_EQ(got, want) << s;
  }
  // Specials are part of the byte-level text (transformers joins them without spaces).
  std::string want = "<|startoftext|>a photo , of a cat ! ";
  for (int i = 0; i < 77 - 1 - 7; ++i) want += "<|endoftext|>";
  EXPECT_EQ(t.decode(t.encode_padded("A Photo, of a CAT!")), want);
  EXPECT_EQ(t.decode(t.encode_padded("A Photo, of a CAT!"), /*skip_special=*/true), "a photo , of a cat !");
  EXPECT_THROW(t.decode({49408}), Error);
}

TEST(Tokenizer, DecodeReplacesBrokenUtf8) {
  // "é" is bytes C3 A9: byte-level tokens "Ã" (C3) and "©" (A9) each alone are invalid UTF-8.
  const ClipTokenizer& t = slow_tok();
  const std::vector<int> e = t.encode("é");
  ASSERT_EQ(t.decode(e), "é");
  const int lead = t.token_to_id("\u00c3").value();  // the byte C3 on its own
  EXPECT_EQ(t.decode({lead, 320}), "\uFFFDa");
}

TEST(Tokenizer, InvalidUtf8IsAnError) {
  const ClipTokenizer& t = slow_tok();
  struct Case {
    std::string text;
    std::string where;
  };
  const Case cases[] = {{"ab\xff", "0xFF at offset 2"},       {"a\xc0\xaf", "0xC0 at offset 1"},
                        {"\xe2\x82", "0xE2 at offset 0"},     {"x\xed\xa0\x80", "0xED at offset 1"},
                        {"\xf4\x90\x80\x80", "0xF4 at offset 0"}, {"ok \x80", "0x80 at offset 3"},
                        {"\xe2(\xa1", "0xE2 at offset 0"}};
  for (const Case& c : cases) {
    try {
      t.encode(c.text);
      ADD_FAILURE() << "no error for " << c.where;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.where), std::string::npos) << e.what();
    }
  }
  EXPECT_NO_THROW(t.encode("\xf0\x9f\x99\x82 \xe2\x82\xac"));
}

TEST(Tokenizer, CleanUp) {
  const ClipTokenizer& slow = slow_tok();
  const ClipTokenizer fast = slow.with_config({.norm = ClipTextNorm::HfFast});
  EXPECT_EQ(slow.clean("  A\tB\u00a0\u3000C \n"), "a b c");
  EXPECT_EQ(fast.clean("  A\tB\u00a0\u3000C \n"), " a b c ");
  EXPECT_EQ(slow.clean("猫咪"), "猫 咪");  // CJK ideographs become words of their own
  EXPECT_EQ(fast.clean("猫咪"), "猫咪");
  EXPECT_EQ(slow.clean("ΟΔΟΣ ΣΑΣ."), "οδος σας.");  // Python's final sigma
  EXPECT_EQ(fast.clean("ΟΔΟΣ"), "οδοσ");
  EXPECT_EQ(slow.clean("a\u200db\x01" "c\ufffd"), "abc");  // format/control characters and U+FFFD dropped
  EXPECT_EQ(fast.clean("a\u200db"), "a\u200db");
  EXPECT_EQ(slow.clean("e\u0301 \u212b"), "\u00e9 \u00e5");  // NFC, then lower case
  EXPECT_EQ(slow.clean("\u0130"), "i\u0307");
}

TEST(Tokenizer, BadConfig) {
  EXPECT_THROW(slow_tok().with_config({.pad_token = 49408}), Error);
  EXPECT_THROW(slow_tok().with_config({.pad_token = -1}), Error);
  EXPECT_THROW(slow_tok().with_config({.max_length = 2}), Error);
}

// Bad vocabulary files: the error names the file (and the line for merges).
class TokenizerFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sd_tok_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& content) {
    const fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }
  static void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one mentioning " << needles[0];
    } catch (const Error& e) {
      for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    }
  }
  fs::path dir_;
};

TEST_F(TokenizerFiles, BadFiles) {
  const std::string good_vocab = kClipDir + "/vocab.json", good_merges = kClipDir + "/merges.txt";
  const std::string missing = (dir_ / "nope.json").string();
  expect_error([&] { ClipTokenizer::from_folder((dir_ / "no_dir").string()); }, {"no_dir", "not a directory"});
  expect_error([&] { ClipTokenizer::from_folder(dir_.string()); }, {"vocab.json", "nor tokenizer.json"});
  expect_error([&] { ClipTokenizer::from_files(missing, good_merges); }, {missing, "cannot open"});
  expect_error([&] { ClipTokenizer::from_files(good_vocab, missing); }, {missing, "cannot open"});
  const std::string not_json = write("bad.json", "{\"a\": 1,,}");
  expect_error([&] { ClipTokenizer::from_files(not_json, good_merges); }, {not_json, "not valid JSON"});
  const std::string array = write("array.json", "[1, 2]");
  expect_error([&] { ClipTokenizer::from_files(array, good_merges); }, {array, "JSON object"});
  const std::string str_id = write("str.json", "{\"a\": \"x\"}");
  expect_error([&] { ClipTokenizer::from_files(str_id, good_merges); }, {str_id, "'a'"});
  const std::string no_eos = write("noeos.json", "{\"a\": 0}");
  expect_error([&] { ClipTokenizer::from_files(no_eos, good_merges); }, {no_eos, "<|endoftext|>"});
  const std::string bad_line = write("merges.txt", "#version: 0.2\na b\nc d e\n");
  expect_error([&] { ClipTokenizer::from_files(good_vocab, bad_line); }, {bad_line, "line 3", "malformed"});
  const std::string no_header = write("nohdr.txt", "a b\nc d\n");
  expect_error([&] { ClipTokenizer::from_files(good_vocab, no_header); }, {no_header, "line 1", "#version"});
  const std::string bad_utf8 = write("utf8.txt", "#version: 0.2\na \xff\n");
  expect_error([&] { ClipTokenizer::from_files(good_vocab, bad_utf8); }, {bad_utf8, "0xFF"});
  // gzip: a plain file, and a truncated archive.
  expect_error([&] { ClipTokenizer::from_bpe_gz(good_merges); }, {good_merges, "not a gzip file"});
  std::ifstream gz(kClipDir + "/bpe_simple_vocab_16e6.txt.gz", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(gz)), std::istreambuf_iterator<char>());
  const std::string cut = write("cut.gz", bytes.substr(0, 5000));
  expect_error([&] { ClipTokenizer::from_bpe_gz(cut); }, {cut, "corrupt gzip"});
  expect_error([&] { ClipTokenizer::from_bpe_gz(missing); }, {missing, "cannot open"});
  // A tiny consistent vocabulary loads and tokenizes.
  const std::string tiny_vocab = write(
      "tiny.json", "{\"a\": 0, \"b\": 1, \"a</w>\": 2, \"b</w>\": 3, \"ab</w>\": 4, \"<|startoftext|>\": 5, "
                   "\"<|endoftext|>\": 6}");
  const std::string tiny_merges = write("tiny.txt", "#version: 0.2\na b</w>\n");
  const ClipTokenizer tiny = ClipTokenizer::from_files(tiny_vocab, tiny_merges, {.pad_token = 6, .max_length = 5});
  EXPECT_EQ(tiny.encode("ab ba AB"), (std::vector<int>{4, 1, 2, 4}));
  EXPECT_EQ(tiny.encode("c"), std::vector<int>{6});  // symbols missing from the vocabulary: unk (= EOS)
  EXPECT_EQ(tiny.encode_padded("ab ab ab"), (std::vector<int>{5, 4, 4, 4, 6}));
}

}  // namespace
}  // namespace sd
