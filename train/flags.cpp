#include "train/flags.h"

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <sstream>

#include <CLI/CLI.hpp>
#include <toml++/toml.h>

#include "runtime/error.h"

namespace sd::train {

namespace fs = std::filesystem;

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

FlagParser::FlagParser(std::string program, std::string summary)
    : program_(std::move(program)), summary_(std::move(summary)) {}

void FlagParser::add(FlagSpec spec) {
  SD_CHECK(!find(spec.name) && spec.name != "config" && spec.name != "help", "flag --", spec.name, " declared twice");
  std::string initial = spec.binding.toml ? spec.binding.toml() : std::string();
  entries_.push_back({std::move(spec), std::move(initial)});
}

void FlagParser::add_ignored(const std::string& name, bool takes_value, const std::string& why) {
  ignored_[name] = {takes_value, why};
}

const FlagSpec* FlagParser::find(const std::string& name) const {
  for (const Entry& e : entries_) {
    const FlagSpec& s = e.spec;
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

std::vector<std::string> FlagParser::groups() const {
  std::vector<std::string> out;
  for (const Entry& e : entries_)
    if (std::find(out.begin(), out.end(), e.spec.group) == out.end()) out.push_back(e.spec.group);
  return out;
}

std::string FlagParser::did_you_mean(const std::string& name) const {
  std::string best;
  size_t best_d = 4;
  for (const Entry& e : entries_) {
    const size_t d = edit_distance(name, e.spec.name);
    if (d < best_d) best_d = d, best = e.spec.name;
  }
  return best;
}

void FlagParser::apply(const FlagSpec& spec, const std::vector<std::string>& values, const std::string& origin) {
  std::vector<std::string> used = values;
  if (!spec.repeatable && used.size() > 1) used = {used.back()};  // argparse: the last one wins
  for (const std::string& v : used) {
    try {
      spec.binding.set(v);
    } catch (const Error& e) {
      SD_FAIL("--", spec.name, spec.metavar.empty() ? "" : " " + v, origin, ": ", e.what());
    }
  }
  given_text_[spec.name] = used;
  if (std::find(given_.begin(), given_.end(), spec.name) == given_.end()) given_.push_back(spec.name);
}

namespace {

// A TOML value as the text a flag's setter reads; sd::Error for tables, dates and nested lists.
std::string flag_text(const toml::node& v, const std::string& where, const std::string& key) {
  if (const auto* s = v.as_string()) return s->get();
  if (const auto* i = v.as_integer()) return std::to_string(i->get());
  if (const auto* d = v.as_floating_point()) return toml_double(d->get());
  if (const auto* b = v.as_boolean()) return b->get() ? "true" : "false";
  SD_FAIL(where, ": key '", key, "' holds a ", v.is_table() ? "table" : v.is_array() ? "list of lists" : "date or time",
          "; expected text, a number, true/false, or a list of them for a repeatable flag");
}

}  // namespace

void FlagParser::read_config_file(const std::string& path, const std::vector<std::string>& command_line_names) {
  const std::string where = "--config '" + path + "'";
  SD_CHECK(fs::exists(path), where, ": no such file");
  SD_CHECK(!fs::is_directory(path), where, " is a folder: --config reads a TOML file whose keys are flag names (to "
           "take a single file's architecture from a diffusers folder, sd_infer has --model_config DIR)");
  SD_CHECK(fs::is_regular_file(path), where, ": not a file (expected a TOML file whose keys are flag names)");
  SD_CHECK(fs::file_size(path) <= (size_t(16) << 20), where, " is larger than 16 MiB: not a file of flags");
  toml::table file;
  try {
    file = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    SD_FAIL(where, " line ", e.source().begin.line, ": ", e.description(), " (not valid TOML)");
  }
  // Keys at the top, or under one [section] as kohya's files group them; sections are flattened.
  std::vector<std::pair<std::string, const toml::node*>> items;
  for (const auto& [k, v] : file) {
    if (const toml::table* section = v.as_table()) {
      for (const auto& [k2, v2] : *section) {
        SD_CHECK(!v2.is_table(), where, ": key '", k.str(), ".", k2.str(), "' is nested deeper than one [section] "
                 "(keys are flag names, optionally under one section header as kohya's files have)");
        items.emplace_back(std::string(k2.str()), &v2);
      }
    } else {
      items.emplace_back(std::string(k.str()), &v);
    }
  }
  const std::string origin = " (from " + path + ")";
  for (const auto& [raw_key, node] : items) {
    std::string key = raw_key;
    std::replace(key.begin(), key.end(), '-', '_');
    SD_CHECK(key != "config", where, ": a config file cannot name another (key 'config')");
    if (auto ig = ignored_.find(key); ig != ignored_.end()) {
      std::fprintf(stderr, "note: %s: key '%s' is accepted for compatibility and ignored: %s\n", path.c_str(),
                   key.c_str(), ig->second.second.c_str());
      continue;
    }
    const FlagSpec* spec = find(key);
    if (!spec) {
      const std::string best = did_you_mean(key);
      SD_FAIL(where, ": unknown key '", raw_key, "'", best.empty() ? std::string() : " (did you mean " + best + "?)",
              "; keys are the flag names of --help");
    }
    // The command line wins over the file.
    if (std::find(command_line_names.begin(), command_line_names.end(), spec->name) != command_line_names.end()) continue;
    std::vector<std::string> values;
    if (const toml::array* list = node->as_array()) {
      for (const toml::node& e : *list) values.push_back(flag_text(e, where, key));
      SD_CHECK(spec->repeatable, where, ": key '", key, "' takes one value, not a list of ", values.size());
      if (values.empty()) continue;  // an empty list: nothing given
    } else {
      values.push_back(flag_text(*node, where, key));
    }
    if (spec->metavar.empty()) {
      bool on = false;
      try {
        on = parse_bool(values[0]);
      } catch (const Error&) {
        SD_FAIL(where, ": key '", key, "' is a switch: true or false, not '", values[0], "'");
      }
      if (on) apply(*spec, {""}, origin);
      continue;
    }
    apply(*spec, values, origin);
  }
}

bool FlagParser::parse(int argc, const char* const* argv) {
  // 1) Names are normalized (--train-batch-size is --train_batch_size), ignored flags dropped with a
  //    note, and an unknown flag or a stray word fails here with a "did you mean". A value is passed on
  //    as --name=value so that CLI11 takes it verbatim even when it starts with '-'.
  std::vector<std::string> tokens = {program_};
  std::vector<std::string> config_files, command_line_names;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(help().c_str(), stdout);
      return false;
    }
    std::string name, value;
    bool inline_value = false;
    if (arg.size() == 2 && arg[0] == '-' && arg[1] != '-') {
      name = arg.substr(1);  // a short flag: a one-letter alias
    } else {
      if (arg.rfind("--", 0) != 0) SD_FAIL("unexpected argument '", arg, "': every option is a --flag (see --help)");
      name = arg.substr(2);
      if (const size_t eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        inline_value = true;
      }
      // argparse accepts dashes for underscores in practice through users' habits (--train-batch-size).
      std::replace(name.begin(), name.end(), '-', '_');
    }
    auto take_value = [&](const std::string& what) {
      if (inline_value) return value;
      SD_CHECK(i + 1 < argc, "--", name, " needs a value", what.empty() ? "" : " (" + what + ")");
      return std::string(argv[++i]);
    };
    if (name == "config") {
      config_files.push_back(take_value("FILE.toml"));
      continue;
    }
    if (auto ig = ignored_.find(name); ig != ignored_.end()) {
      if (ig->second.first) take_value("");
      std::fprintf(stderr, "note: --%s is accepted for compatibility and ignored: %s\n", name.c_str(),
                   ig->second.second.c_str());
      continue;
    }
    const FlagSpec* spec = find(name);
    if (!spec) {
      const std::string best = did_you_mean(name);
      SD_FAIL("unknown flag ", arg.rfind("--", 0) == 0 ? "--" : "-", name,
              best.empty() ? std::string() : " (did you mean --" + best + "?)", "; see --help for every flag");
    }
    if (!spec->metavar.empty()) {
      value = take_value(spec->metavar);
      // "--name=" would be "no value" to CLI11; an empty value goes as its own word.
      if (value.empty()) tokens.insert(tokens.end(), {"--" + spec->name, ""});
      else tokens.push_back("--" + spec->name + "=" + value);
    } else {
      // "--flag=true/false" for switches, as argparse users of BooleanOptionalAction expect.
      if (inline_value) {
        bool on = false;
        try {
          on = parse_bool(value);
        } catch (const Error& e) {
          SD_FAIL("--", spec->name, "=", value, ": ", e.what());
        }
        if (!on) continue;
      }
      tokens.push_back("--" + spec->name);
    }
    command_line_names.push_back(spec->name);
  }

  // 2) Config files, in order; the command line wins over them.
  for (const std::string& f : config_files) read_config_file(f, command_line_names);

  // 3) The command line, through CLI11: each flag's values in order, the last one winning unless the
  //    flag is repeatable.
  CLI::App app(summary_, program_);
  app.set_help_flag();
  for (const Entry& e : entries_) {
    const FlagSpec* spec = &e.spec;
    if (spec->metavar.empty()) {
      app.add_flag_function("--" + spec->name, [this, spec](int64_t count) {
        if (count > 0) apply(*spec, {""}, "");
      });
    } else {
      app.add_option_function<std::vector<std::string>>(
             "--" + spec->name, [this, spec](const std::vector<std::string>& v) { apply(*spec, v, ""); })
          ->expected(1)
          ->multi_option_policy(spec->repeatable ? CLI::MultiOptionPolicy::TakeAll : CLI::MultiOptionPolicy::TakeLast);
    }
  }
  std::vector<const char*> cargv;
  for (const std::string& t : tokens) cargv.push_back(t.c_str());
  try {
    app.parse(int(cargv.size()), cargv.data());
  } catch (const CLI::ParseError& e) {
    SD_FAIL(e.what());
  }
  return true;
}

std::string FlagParser::help() const {
  std::ostringstream os;
  os << "usage: " << program_ << " [options]\n\n" << summary_ << "\n";
  constexpr size_t kColumn = 34;
  auto line = [&](std::string head, const std::string& text) {
    if (head.size() + 1 > kColumn) os << head << "\n" << std::string(kColumn, ' ');
    else os << head << std::string(kColumn - head.size(), ' ');
    os << wrap(text, kColumn, 100 - kColumn) << "\n";
  };
  for (const std::string& g : groups()) {
    os << "\n" << g << ":\n";
    for (const Entry& e : entries_) {
      const FlagSpec& s = e.spec;
      if (s.group != g) continue;
      std::string head = "  ";
      for (const std::string& a : s.aliases)
        if (a.size() == 1) head += "-" + a + ", ";
      head += "--" + s.name + (s.metavar.empty() ? "" : " " + s.metavar);
      for (const std::string& a : s.aliases)
        if (a.size() > 1) head += ", --" + a;
      std::string text = s.help;
      if (!s.default_text.empty()) text += " (default: " + s.default_text + ")";
      line(head, text);
    }
  }
  os << "\nconfiguration files:\n";
  line("  --config FILE.toml", "read flags from a TOML file whose keys are the flag names (name = value; a list "
       "for a repeatable flag; true/false for a switch; kohya's [section] headers are allowed). Flags on the "
       "command line win over the file. Text with backslashes reads as typed in 'single quotes'");
  line("  -h, --help", "show this help and exit");
  if (!ignored_.empty()) {
    os << "\naccepted for compatibility with the diffusers scripts, and ignored:\n";
    for (const auto& [name, v] : ignored_) os << "  --" << name << ": " << v.second << "\n";
  }
  if (!epilog_.empty()) os << "\n" << epilog_;
  return os.str();
}

std::string FlagParser::effective_config(const std::string& header) const {
  std::ostringstream os;
  std::istringstream lines(header);
  for (std::string l; std::getline(lines, l);) os << "# " << l << "\n";
  for (const std::string& g : groups()) {
    os << "\n# ---- " << g << "\n";
    for (const Entry& e : entries_) {
      const FlagSpec& s = e.spec;
      if (s.group != g) continue;
      const auto given = given_text_.find(s.name);
      std::string value;
      if (s.binding.toml) {
        value = s.binding.toml();
      } else if (given != given_text_.end()) {
        std::vector<std::string> rendered;
        for (const std::string& v : given->second) rendered.push_back(toml_string(v));
        value = s.repeatable ? toml_array(rendered) : rendered.back();
      }
      const bool active = !value.empty() && (given != given_text_.end() || value != e.initial_toml);
      if (active) os << s.name << " = " << value << "\n";
      else if (!value.empty()) os << "# " << s.name << " = " << value << "\n";
      else os << "# " << s.name << (s.default_text.empty() ? " (not set)" : " (default: " + s.default_text + ")") << "\n";
    }
  }
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

// A 'literal' string when the text allows (readable: backslashes stay as typed), else a "basic" one
// with TOML's escapes.
std::string toml_string(const std::string& s) {
  const bool control = std::any_of(s.begin(), s.end(), [](unsigned char c) { return c < 0x20 || c == 0x7f; });
  if (s.find('\'') == std::string::npos && !control) return "'" + s + "'";
  std::string out = "\"";
  for (const char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string toml_int(int64_t v) { return std::to_string(v); }

std::string toml_double(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[40];
  for (int digits : {15, 17}) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s = buf;
  if (s.find_first_of(".en") == std::string::npos) s += ".0";  // a float, as TOML spells one
  return s;
}

std::string toml_bool(bool v) { return v ? "true" : "false"; }

std::string toml_array(const std::vector<std::string>& rendered) {
  std::string out = "[";
  for (size_t i = 0; i < rendered.size(); ++i) out += (i ? ", " : "") + rendered[i];
  return out + "]";
}

}  // namespace sd::train
