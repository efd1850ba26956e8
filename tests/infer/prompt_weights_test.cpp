// A1111 prompt emphasis parsing (expected values from the docstring examples of A1111's
// modules/prompt_parser.py, which Python computed) and the weighted, chunked tokenization.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "models/clip/clip_tokenizer.h"
#include "infer/prompt_weights.h"
#include "runtime/error.h"

namespace sd {
namespace {

struct Frag {
  std::string text;
  double weight;
};

::testing::AssertionResult parses_to(const std::string& prompt, const std::vector<Frag>& want) {
  const auto got = parse_prompt_weights(prompt);
  std::string shown;
  for (const auto& f : got) shown += "['" + f.text + "', " + std::to_string(f.weight) + (f.is_break ? " BREAK" : "") + "] ";
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << prompt << " -> " << shown << "(expected " << want.size() << " fragments)";
  for (size_t i = 0; i < got.size(); ++i) {
    const bool is_break = want[i].weight == -1.0 && want[i].text == "BREAK";
    if (got[i].text != want[i].text || got[i].is_break != is_break || (!is_break && got[i].weight != want[i].weight))
      return ::testing::AssertionFailure() << prompt << " -> " << shown << "(fragment " << i << " differs)";
  }
  return ::testing::AssertionSuccess();
}

TEST(PromptWeights, A1111DocExamples) {
  EXPECT_TRUE(parses_to("normal text", {{"normal text", 1.0}}));
  EXPECT_TRUE(parses_to("an (important) word", {{"an ", 1.0}, {"important", 1.1}, {" word", 1.0}}));
  EXPECT_TRUE(parses_to("(unbalanced", {{"unbalanced", 1.1}}));
  EXPECT_TRUE(parses_to("\\(literal\\]", {{"(literal]", 1.0}}));
  EXPECT_TRUE(parses_to("(unnecessary)(parens)", {{"unnecessaryparens", 1.1}}));
  // Bit-exact doubles as Python printed them.
  EXPECT_TRUE(parses_to("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
                        {{"a ", 1.0},
                         {"house", 1.5730000000000004},
                         {" ", 1.1},
                         {"on", 1.0},
                         {" a ", 1.1},
                         {"hill", 0.55},
                         {", sun, ", 1.1},
                         {"sky", 1.4641000000000006},
                         {".", 1.1}}));
}

TEST(PromptWeights, Rules) {
  EXPECT_TRUE(parses_to("", {{"", 1.0}}));
  EXPECT_TRUE(parses_to("(word:1.3)", {{"word", 1.3}}));
  EXPECT_TRUE(parses_to("( word : 1.3 )", {{" word ", 1.3}}));
  EXPECT_TRUE(parses_to("((word))", {{"word", 1.1 * 1.1}}));
  EXPECT_TRUE(parses_to("[word]", {{"word", 1 / 1.1}}));
  EXPECT_TRUE(parses_to("[[word]]", {{"word", (1 / 1.1) * (1 / 1.1)}}));
  EXPECT_TRUE(parses_to("((a:1.5) b)", {{"a", 1.5 * 1.1}, {" b", 1.1}}));
  EXPECT_TRUE(parses_to("(a:-0.5)", {{"a", -0.5}}));
  EXPECT_TRUE(parses_to("(a:.5)", {{"a", 0.5}}));
  // ':' only makes a weight inside '(' and right before ')'.
  EXPECT_TRUE(parses_to("[word:1.3]", {{"word:1.3", 1 / 1.1}}));
  EXPECT_TRUE(parses_to("word:1.3)", {{"word:1.3)", 1.0}}));
  EXPECT_TRUE(parses_to("a:b", {{"a:b", 1.0}}));
  EXPECT_TRUE(parses_to("(a:1.2.3)", {{"a:1.2.3)", 1.1}}));  // not a number: literal (A1111 raises)
  // Unmatched closers are text; escapes; stray backslashes vanish.
  EXPECT_TRUE(parses_to("a) b]", {{"a) b]", 1.0}}));
  EXPECT_TRUE(parses_to("\\\\(x)", {{"\\", 1.0}, {"x", 1.1}}));
  EXPECT_TRUE(parses_to("a\\nb", {{"anb", 1.0}}));
  EXPECT_TRUE(parses_to("\\[not\\] \\(weighted:1.2\\)", {{"[not] (weighted:1.2)", 1.0}}));
  // Open brackets at the end apply to everything after them.
  EXPECT_TRUE(parses_to("a [b (c", {{"a ", 1.0}, {"b ", 1 / 1.1}, {"c", 1.1 * (1 / 1.1)}}));
}

TEST(PromptWeights, Break) {
  EXPECT_TRUE(parses_to("a cat BREAK a dog", {{"a cat", 1.0}, {"BREAK", -1.0}, {"a dog", 1.0}}));
  EXPECT_TRUE(parses_to("BREAK", {{"", 1.0}, {"BREAK", -1.0}, {"", 1.0}}));
  EXPECT_TRUE(parses_to("a,BREAK,b", {{"a,", 1.0}, {"BREAK", -1.0}, {",b", 1.0}}));
  EXPECT_TRUE(parses_to("BREAKFAST break xBREAK", {{"BREAKFAST break xBREAK", 1.0}}));
  EXPECT_TRUE(parses_to("(a) BREAK (b)", {{"a", 1.1}, {"", 1.0}, {"BREAK", -1.0}, {"", 1.0}, {"b", 1.1}}));
}

std::string weight_error(const std::string& prompt) {
  try {
    parse_prompt_weights(prompt);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Weights that overflow (1,000 nested brackets: 1.1^1000 = 2.5e41, inf once in f32) are refused with a
// message naming the text; everything up to +-1000 parses as A1111 parses it.
TEST(PromptWeights, OverflowingWeightsAreRefused) {
  auto nested = [](int n, const std::string& text) { return std::string(size_t(n), '(') + text + std::string(size_t(n), ')'); };
  double w = 1.0;
  for (int i = 0; i < 72; ++i) w *= 1.1;  // 956.6: still a weight
  EXPECT_TRUE(parses_to(nested(72, "cat"), {{"cat", w}}));
  EXPECT_TRUE(parses_to("(cat:1000)", {{"cat", 1000.0}}));
  EXPECT_TRUE(parses_to("(cat:-1000)", {{"cat", -1000.0}}));
  double tiny = 1.0;
  for (int i = 0; i < 1000; ++i) tiny *= 1 / 1.1;
  EXPECT_TRUE(parses_to(std::string(1000, '[') + "cat", {{"cat", tiny}}));  // 2.6e-42 is harmless
  EXPECT_TRUE(parses_to(nested(1000, ""), {{"", 1.0}}));  // no text, nothing to weigh
  const std::string e = weight_error(nested(1000, "cat"));
  EXPECT_NE(e.find("the weight of \"cat\""), std::string::npos) << e;
  EXPECT_NE(e.find("2.4"), std::string::npos) << e;  // 1.1^1000 = 2.47e41
  EXPECT_NE(weight_error(nested(73, "cat")).find("weights beyond +-1000"), std::string::npos);
  EXPECT_NE(weight_error(std::string(1000, '(') + "cat").find("cat"), std::string::npos);  // unclosed, same
  EXPECT_NE(weight_error("a (cat:1000.5) b").find("\"cat\""), std::string::npos);
  EXPECT_NE(weight_error("(dog:-5000)").find("-5000"), std::string::npos);
  EXPECT_NE(weight_error("(x:" + std::string(400, '9') + ")").find("inf"), std::string::npos);  // strtod: inf
  EXPECT_NE(weight_error("(" + std::string(60, 'x') + ":5000)").find(std::string(40, 'x') + "...\""), std::string::npos);
}

const ClipTokenizer& tok() {
  static const ClipTokenizer t = ClipTokenizer::from_folder(std::string(SD_TEST_DATA_DIR) + "/clip");
  return t;
}

std::vector<int> frame(std::vector<int> ids, int pad = 49407) {
  ids.insert(ids.begin(), 49406);
  ids.push_back(49407);
  ids.resize(77, pad);
  return ids;
}

TEST(PromptWeights, WeightedTokens) {
  const auto w = encode_weighted_chunks(tok(), "a (red:1.5) [cat]s");
  ASSERT_EQ(w.ids.size(), 1u);
  // Each fragment is tokenized alone: "cat" and "s" stay separate words.
  std::vector<int> ids = tok().encode("a ");
  const size_t n_a = ids.size();
  for (const char* p : {"red", "cat", "s"}) {
    auto more = tok().encode(p);
    ids.insert(ids.end(), more.begin(), more.end());
  }
  EXPECT_EQ(w.ids[0], frame(ids));
  std::vector<float> want(77, 1.0f);
  want[1 + n_a] = 1.5f;
  want[2 + n_a] = float(1 / 1.1);
  EXPECT_EQ(w.weights[0], want);
}

TEST(PromptWeights, ChunksAndBreak) {
  std::string p;
  for (int i = 0; i < 80; ++i) p += "(dog) ";
  auto w = encode_weighted_chunks(tok(), p);
  ASSERT_EQ(w.ids.size(), 2u);
  EXPECT_EQ(w.ids[0], frame(std::vector<int>(75, 1929)));
  EXPECT_EQ(w.ids[1], frame(std::vector<int>(5, 1929)));
  EXPECT_FLOAT_EQ(w.weights[0][0], 1.0f);
  EXPECT_FLOAT_EQ(w.weights[0][75], 1.1f);
  EXPECT_FLOAT_EQ(w.weights[0][76], 1.0f);
  EXPECT_FLOAT_EQ(w.weights[1][5], 1.1f);
  EXPECT_FLOAT_EQ(w.weights[1][6], 1.0f);
  // BREAK closes the chunk, even an empty one; a trailing empty chunk is not added.
  w = encode_weighted_chunks(tok(), "cat BREAK dog");
  ASSERT_EQ(w.ids.size(), 2u);
  EXPECT_EQ(w.ids[0], frame({2368}));
  EXPECT_EQ(w.ids[1], frame({1929}));
  w = encode_weighted_chunks(tok(), "BREAK BREAK cat BREAK");
  ASSERT_EQ(w.ids.size(), 3u);
  EXPECT_EQ(w.ids[0], frame({}));
  EXPECT_EQ(w.ids[2], frame({2368}));
  EXPECT_EQ(encode_weighted_chunks(tok(), "").ids, std::vector<std::vector<int>>{frame({})});
  // Exactly 75 tokens stay one chunk.
  p.clear();
  for (int i = 0; i < 75; ++i) p += "dog ";
  EXPECT_EQ(encode_weighted_chunks(tok(), p).ids.size(), 1u);
  // The pad id comes from the tokenizer.
  EXPECT_EQ(encode_weighted_chunks(tok().with_config({.pad_token = 0}), "cat").ids[0], frame({2368}, 0));
}

TEST(PromptWeights, CommaBacktrack) {
  // 70 x "a", ",", then 6 more words: 77 tokens, one too many for a chunk.
  std::string p;
  for (int i = 0; i < 70; ++i) p += "a ";
  p += ", b c d e f g";
  const std::vector<int> tail = {321, 322, 323, 324, 325, 326};  // b..g
  std::vector<int> head(70, 320);
  head.push_back(267);  // ",</w>"
  // Without backtracking: cut at 75 tokens.
  auto w = encode_weighted_chunks(tok(), p);
  ASSERT_EQ(w.ids.size(), 2u);
  std::vector<int> first = head;
  first.insert(first.end(), tail.begin(), tail.begin() + 4);
  EXPECT_EQ(w.ids[0], frame(first));
  EXPECT_EQ(w.ids[1], frame({325, 326}));
  // With A1111's default of 20: everything after the comma moves to the second chunk.
  w = encode_weighted_chunks(tok(), p, 20);
  ASSERT_EQ(w.ids.size(), 2u);
  EXPECT_EQ(w.ids[0], frame(head));
  EXPECT_EQ(w.ids[1], frame(tail));
  // A comma further back than the limit does not move anything.
  w = encode_weighted_chunks(tok(), p, 3);
  EXPECT_EQ(w.ids[0], frame(first));
}

}  // namespace
}  // namespace sd
