// A table-driven command-line parser in the style of Python's argparse, which is what the diffusers
// training scripts use: `--name value`, `--name=value`, switches without a value, repeatable flags,
// and --help generated from the same table (name, value placeholder, default, help text), so the
// help can never disagree with what is parsed.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace sd::train {

struct FlagSpec {
  std::string name;         // without the leading "--"
  std::string metavar;      // "" for a switch (takes no value)
  std::string default_text; // shown in --help ("" = no default shown)
  std::string help;
  std::string group;        // --help section
  // Receives the value ("" for a switch). Throws sd::Error on a bad value; the parser adds the flag name.
  std::function<void(const std::string&)> set;
  std::vector<std::string> aliases = {};  // other accepted names, e.g. "validation_prompts"
  bool repeatable = false;           // each value is collected; else the last one given wins (argparse)
};

class FlagParser {
 public:
  explicit FlagParser(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}
  void add(FlagSpec spec);
  // Flags the diffusers scripts take that mean nothing here: accepted with a note on stderr.
  void add_ignored(const std::string& name, bool takes_value, const std::string& why);

  // Parses argv[1..]; returns false when --help was given (the help was printed on stdout).
  // An unknown flag, a missing value or a bad value throws sd::Error with a sentence saying which.
  bool parse(int argc, const char* const* argv);
  // The names given on the command line (without "--"), in order: for "was it given?" questions.
  const std::vector<std::string>& given() const { return given_; }
  bool was_given(const std::string& name) const;
  std::string help() const;
  void set_epilog(std::string text) { epilog_ = std::move(text); }

 private:
  const FlagSpec* find(const std::string& name) const;
  std::string program_, summary_, epilog_;
  std::vector<FlagSpec> specs_;
  std::map<std::string, std::pair<bool, std::string>> ignored_;  // name -> (takes value, why)
  std::vector<std::string> given_;
};

// Value parsers used by the flag table; they throw sd::Error("expected ...") on bad text.
int64_t parse_int(const std::string& v);
double parse_double(const std::string& v);
bool parse_bool(const std::string& v);  // true/false/1/0/yes/no
std::vector<std::string> split_list(const std::string& v, char sep = ',');

}  // namespace sd::train
