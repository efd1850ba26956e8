// Loading the CLIP vocabulary: the diffusers/transformers tokenizer folder (vocab.json +
// merges.txt, or only tokenizer.json as transformers 5 saves it) and OpenAI's gzip'd merge list
// (bpe_simple_vocab_16e6.txt.gz).
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "models/clip/bpe.h"
#include "models/clip/clip_tokenizer.h"
#include "models/clip/unicode_text.h"
#include "runtime/error.h"

namespace sd {
namespace {

// CLIP uses the first 49152 - 256 - 2 merges: 256 byte tokens, 256 with "</w>", the merges and
// 2 special tokens make its 49,408-entry vocabulary. transformers applies the same cut.
constexpr size_t kMaxMerges = 49152 - 256 - 2;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  SD_CHECK(f.good(), "ClipTokenizer: cannot open '", path, "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  SD_CHECK(!f.bad(), "ClipTokenizer: error reading '", path, "'");
  return ss.str();
}

std::string inflate_gzip(const std::string& data, const std::string& path) {
  SD_CHECK(data.size() >= 2 && static_cast<unsigned char>(data[0]) == 0x1F &&
               static_cast<unsigned char>(data[1]) == 0x8B,
           "ClipTokenizer: '", path, "' is not a gzip file");
  z_stream zs{};
  SD_CHECK(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, "ClipTokenizer: zlib init failed for '", path, "'");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = uInt(data.size());
  std::string out;
  char buf[1 << 16];
  int rc = Z_OK;
  while (rc == Z_OK) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf, sizeof buf - zs.avail_out);
    if (rc == Z_BUF_ERROR && zs.avail_in == 0) break;  // input ended before the stream did
  }
  const std::string msg = zs.msg ? zs.msg : (rc == Z_BUF_ERROR ? "truncated" : "error");
  inflateEnd(&zs);
  SD_CHECK(rc == Z_STREAM_END, "ClipTokenizer: '", path, "': corrupt gzip data (zlib: ", msg, ")");
  return out;
}

// Python's str.split() on a merge line: merge symbols never contain whitespace (the byte table
// maps every whitespace byte to a printable character), so ASCII whitespace is enough.
std::vector<std::string> split_ws(std::string_view line) {
  std::vector<std::string> parts;
  size_t i = 0;
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; };
  while (i < line.size()) {
    while (i < line.size() && ws(line[i])) ++i;
    size_t j = i;
    while (j < line.size() && !ws(line[j])) ++j;
    if (j > i) parts.emplace_back(line.substr(i, j - i));
    i = j;
  }
  return parts;
}

// Merge lines after the header line (line 1), at most kMaxMerges of them; line numbers in
// errors count from 1 at the first line of `text`.
Bpe::Merges parse_merges(std::string_view text, const std::string& path, bool require_hash_header) {
  text::decode_utf8(text, ("ClipTokenizer: '" + path + "'").c_str());  // rejects invalid UTF-8
  Bpe::Merges merges;
  size_t line_no = 0, pos = 0;
  while (pos <= text.size() && merges.size() < kMaxMerges) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    const std::string_view line = text.substr(pos, nl - pos);
    ++line_no;
    pos = nl + 1;
    if (line_no == 1) {
      SD_CHECK(!require_hash_header || (!line.empty() && line[0] == '#'), "ClipTokenizer: '", path,
               "' line 1: expected the '#version' header, got '", line, "'");
      continue;
    }
    std::vector<std::string> parts = split_ws(line);
    if (parts.empty() && pos > text.size()) break;  // final newline (or trailing blank text)
    SD_CHECK(parts.size() == 2, "ClipTokenizer: '", path, "' line ", line_no,
             ": malformed merge (expected two symbols separated by a space): '", line, "'");
    merges.emplace_back(std::move(parts[0]), std::move(parts[1]));
  }
  return merges;
}

}  // namespace

ClipTokenizer ClipTokenizer::from_folder(const std::string& dir, TokenizerConfig cfg) {
  SD_CHECK(std::filesystem::is_directory(dir), "ClipTokenizer: '", dir, "' is not a directory");
  const std::filesystem::path d(dir);
  if (!std::filesystem::exists(d / "vocab.json") && std::filesystem::is_regular_file(d / "tokenizer.json"))
    return from_tokenizer_json((d / "tokenizer.json").string(), cfg);
  SD_CHECK(std::filesystem::exists(d / "vocab.json"), "ClipTokenizer: '", dir,
           "' has neither vocab.json + merges.txt nor tokenizer.json");
  return from_files((d / "vocab.json").string(), (d / "merges.txt").string(), cfg);
}

namespace {

nlohmann::json parse_json_file(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    SD_FAIL("ClipTokenizer: '", path, "' is not valid JSON: ", e.what());
  }
}

// token -> id of a vocab.json object (or tokenizer.json's model.vocab).
std::unordered_map<std::string, int> read_vocab(const nlohmann::json& j, const std::string& where) {
  SD_CHECK(j.is_object(), "ClipTokenizer: ", where, " must be a JSON object of token -> id");
  std::unordered_map<std::string, int> vocab;
  vocab.reserve(j.size());
  for (auto it = j.begin(); it != j.end(); ++it) {
    SD_CHECK(it.value().is_number_integer() && it.value().get<int64_t>() >= 0 &&
                 it.value().get<int64_t>() < (int64_t(1) << 30),
             "ClipTokenizer: ", where, ": the id of token '", it.key(), "' is not a valid integer id");
    vocab[it.key()] = it.value().get<int>();
  }
  return vocab;
}

}  // namespace

ClipTokenizer ClipTokenizer::from_tokenizer_json(const std::string& path, TokenizerConfig cfg) {
  // Hugging Face tokenizers' file: model {type "BPE", vocab {token: id}, merges ["a b", ...] or
  // (tokenizers >= 0.20) [["a", "b"], ...]}. The normalizer and pre-tokenizer it describes are
  // CLIP's, which ClipTokenizer implements itself; anything but a BPE model is refused.
  const nlohmann::json j = parse_json_file(path);
  SD_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(), "ClipTokenizer: '", path,
           "' has no \"model\" object (not a tokenizers file)");
  const nlohmann::json& m = j["model"];
  SD_CHECK(m.value("type", std::string()) == "BPE", "ClipTokenizer: '", path, "': model type ",
           m.contains("type") ? m["type"].dump() : std::string("(none)"), " is not BPE (not a CLIP tokenizer)");
  SD_CHECK(m.contains("vocab") && m.contains("merges") && m["merges"].is_array(), "ClipTokenizer: '", path,
           "': the BPE model needs \"vocab\" and a \"merges\" list");
  std::unordered_map<std::string, int> vocab = read_vocab(m["vocab"], "'" + path + "' model.vocab");
  Bpe::Merges merges;
  for (const nlohmann::json& e : m["merges"]) {
    if (merges.size() == kMaxMerges) break;
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      SD_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < s.size() && s.find(' ', sp + 1) == std::string::npos,
               "ClipTokenizer: '", path, "': malformed merge '", s, "' (expected two symbols separated by a space)");
      merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else {
      SD_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(), "ClipTokenizer: '", path,
               "': malformed merge ", e.dump(), " (expected a pair of strings)");
      merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    }
  }
  auto unk = vocab.find("<|endoftext|>");
  SD_CHECK(unk != vocab.end(), "ClipTokenizer: '", path, "' has no token <|endoftext|>");
  const int unk_id = unk->second;
  auto bpe = std::make_shared<const Bpe>(std::move(vocab), merges, unk_id);
  return ClipTokenizer(std::move(bpe), cfg, "'" + path + "'");
}

ClipTokenizer ClipTokenizer::from_files(const std::string& vocab_json, const std::string& merges_txt,
                                        TokenizerConfig cfg) {
  std::unordered_map<std::string, int> vocab = read_vocab(parse_json_file(vocab_json), "'" + vocab_json + "'");
  // transformers: merges_handle.read().strip().split("\n")[1 : 49152 - 256 - 2 + 1]
  const std::string mtext = read_file(merges_txt);
  text::decode_utf8(mtext, ("ClipTokenizer: '" + merges_txt + "'").c_str());  // rejects invalid UTF-8
  const std::string stripped = text::python_strip(mtext);
  Bpe::Merges merges = parse_merges(stripped, merges_txt, /*require_hash_header=*/true);
  auto unk = vocab.find("<|endoftext|>");
  SD_CHECK(unk != vocab.end(), "ClipTokenizer: '", vocab_json, "' has no token <|endoftext|>");
  const int unk_id = unk->second;
  auto bpe = std::make_shared<const Bpe>(std::move(vocab), merges, unk_id);
  return ClipTokenizer(std::move(bpe), cfg, "'" + vocab_json + "'");
}

ClipTokenizer ClipTokenizer::from_bpe_gz(const std::string& path, TokenizerConfig cfg) {
  // simple_tokenizer: gzip.open(path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
  const std::string text = inflate_gzip(read_file(path), path);
  Bpe::Merges merges = parse_merges(text, path, /*require_hash_header=*/false);
  std::vector<std::string> tokens;
  tokens.reserve(512 + merges.size() + 2);
  for (uint8_t b : clip_byte_order()) {
    std::string s;
    text::append_utf8(s, bytes_to_unicode()[b]);
    tokens.push_back(std::move(s));
  }
  for (size_t i = 0; i < 256; ++i) tokens.push_back(tokens[i] + "</w>");
  for (const auto& [a, b] : merges) tokens.push_back(a + b);
  tokens.emplace_back("<|startoftext|>");
  tokens.emplace_back("<|endoftext|>");
  // dict(zip(vocab, range(len(vocab)))): a repeated token keeps its last id.
  std::unordered_map<std::string, int> vocab;
  vocab.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = int(i);
  const int unk_id = int(tokens.size()) - 1;
  auto bpe = std::make_shared<const Bpe>(std::move(vocab), merges, unk_id);
  return ClipTokenizer(std::move(bpe), cfg, "'" + path + "'");
}

}  // namespace sd
