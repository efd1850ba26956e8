#include "train/flags.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "runtime/error.h"

namespace sd::train {

namespace {

// Levenshtein distance, for "did you mean" on a misspelt flag.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string wrap(const std::string& text, size_t indent, size_t width) {
  std::istringstream words(text);
  std::string word, out, line;
  while (words >> word) {
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      out += line + "\n" + std::string(indent, ' ');
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
  }
  return out + line;
}

}  // namespace

void FlagParser::add(FlagSpec spec) {
  SD_CHECK(!find(spec.name), "flag --", spec.name, " declared twice");
  specs_.push_back(std::move(spec));
}

void FlagParser::add_ignored(const std::string& name, bool takes_value, const std::string& why) {
  ignored_[name] = {takes_value, why};
}

const FlagSpec* FlagParser::find(const std::string& name) const {
  for (const FlagSpec& s : specs_) {
    if (s.name == name) return &s;
    if (std::find(s.aliases.begin(), s.aliases.end(), name) != s.aliases.end()) return &s;
  }
  return nullptr;
}

bool FlagParser::was_given(const std::string& name) const {
  const FlagSpec* s = find(name);
  const std::string canonical = s ? s->name : name;
  return std::find(given_.begin(), given_.end(), canonical) != given_.end();
}

bool FlagParser::parse(int argc, const char* const* argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(help().c_str(), stdout);
      return false;
    }
    if (arg.rfind("--", 0) != 0) SD_FAIL("unexpected argument '", arg, "': every option is a --flag (see --help)");
    std::string name = arg.substr(2), value;
    bool inline_value = false;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    // argparse accepts dashes for underscores in practice through users' habits (--train-batch-size).
    std::replace(name.begin(), name.end(), '-', '_');
    if (auto ig = ignored_.find(name); ig != ignored_.end()) {
      if (ig->second.first && !inline_value) {
        SD_CHECK(i + 1 < argc, "--", name, " needs a value");
        ++i;
      }
      std::fprintf(stderr, "note: --%s is accepted for compatibility and ignored: %s\n", name.c_str(),
                   ig->second.second.c_str());
      continue;
    }
    const FlagSpec* spec = find(name);
    if (!spec) {
      std::string best;
      size_t best_d = 4;
      for (const FlagSpec& s : specs_) {
        const size_t d = edit_distance(name, s.name);
        if (d < best_d) best_d = d, best = s.name;
      }
      SD_FAIL("unknown flag --", name, best.empty() ? std::string() : " (did you mean --" + best + "?)",
              "; see --help for every flag");
    }
    if (!spec->metavar.empty() && !inline_value) {
      SD_CHECK(i + 1 < argc, "--", spec->name, " needs a value (", spec->metavar, ")");
      value = argv[++i];
    }
    if (spec->metavar.empty() && inline_value) {
      // "--flag=true/false" for switches, as argparse users of BooleanOptionalAction expect.
      if (!parse_bool(value)) continue;
      value.clear();
    }
    // Given twice: the last one wins, as with argparse (scripts append overrides to long commands).
    given_.push_back(spec->name);
    try {
      spec->set(value);
    } catch (const Error& e) {
      SD_FAIL("--", spec->name, " ", value, ": ", e.what());
    }
  }
  return true;
}

std::string FlagParser::help() const {
  std::ostringstream os;
  os << "usage: " << program_ << " [options]\n\n" << summary_ << "\n";
  std::vector<std::string> groups;
  for (const FlagSpec& s : specs_)
    if (std::find(groups.begin(), groups.end(), s.group) == groups.end()) groups.push_back(s.group);
  constexpr size_t kColumn = 34;
  for (const std::string& g : groups) {
    os << "\n" << g << ":\n";
    for (const FlagSpec& s : specs_) {
      if (s.group != g) continue;
      std::string head = "  --" + s.name + (s.metavar.empty() ? "" : " " + s.metavar);
      for (const std::string& a : s.aliases) head += ", --" + a;
      std::string text = s.help;
      if (!s.default_text.empty()) text += " (default: " + s.default_text + ")";
      if (head.size() + 1 > kColumn) os << head << "\n" << std::string(kColumn, ' ');
      else os << head << std::string(kColumn - head.size(), ' ');
      os << wrap(text, kColumn, 100 - kColumn) << "\n";
    }
  }
  if (!ignored_.empty()) {
    os << "\naccepted for compatibility with the diffusers scripts, and ignored:\n";
    for (const auto& [name, v] : ignored_) os << "  --" << name << ": " << v.second << "\n";
  }
  if (!epilog_.empty()) os << "\n" << epilog_;
  return os.str();
}

int64_t parse_int(const std::string& v) {
  size_t used = 0;
  long long x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (...) {
    used = 0;
  }
  SD_CHECK(used == v.size() && !v.empty(), "expected an integer");
  return x;
}

double parse_double(const std::string& v) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (...) {
    used = 0;
  }
  SD_CHECK(used == v.size() && !v.empty(), "expected a number");
  return x;
}

bool parse_bool(const std::string& v) {
  std::string s = v;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (s == "true" || s == "1" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "0" || s == "no" || s == "off") return false;
  SD_FAIL("expected true or false");
}

std::vector<std::string> split_list(const std::string& v, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream is(v);
  while (std::getline(is, cur, sep)) {
    const size_t b = cur.find_first_not_of(" \t"), e = cur.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(cur.substr(b, e - b + 1));
  }
  return out;
}

}  // namespace sd::train
