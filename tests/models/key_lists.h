// The parameter lists of the released models (tests/data/keys/*.tsv: name<TAB>[shape], in the
// order of diffusers' state_dict) and the check that a module built from a config has exactly them.
#pragma once
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "models/nn/module.h"

namespace sd::test {

inline std::string shape_text(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

// (name, "[d0, d1, ...]") rows of tests/data/keys/<file>.
inline std::vector<std::pair<std::string, std::string>> read_key_list(const std::string& file) {
  std::ifstream in(std::string(SD_TEST_DATA_DIR) + "/keys/" + file);
  EXPECT_TRUE(in.good()) << file;
  std::vector<std::pair<std::string, std::string>> out;
  std::string line;
  while (std::getline(in, line)) {
    const size_t tab = line.find('\t');
    out.emplace_back(line.substr(0, tab), line.substr(tab + 1));
  }
  return out;
}

// Names, shapes and order of m's parameters equal the list in `file`.
inline void expect_same_keys(nn::Module& m, const std::string& file) {
  const auto expected = read_key_list(file);
  std::vector<std::pair<std::string, std::string>> ours;
  for (auto& [k, p] : m.named_parameters()) ours.emplace_back(k, shape_text(p->shape));
  ASSERT_EQ(ours.size(), expected.size()) << file;
  for (size_t i = 0; i < ours.size(); ++i) {
    EXPECT_EQ(ours[i], expected[i]) << file << " entry " << i;  // same order as diffusers' state_dict
    if (ours[i] != expected[i]) break;
  }
}

}  // namespace sd::test
