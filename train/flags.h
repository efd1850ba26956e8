// The one command-line parser of every tool (sd_infer, sd_train, sd_convert, sd_data, sd_devinfo), in
// the style of Python's argparse, which the diffusers training scripts use: `--name value`,
// `--name=value`, switches without a value, repeatable flags, and --help generated from the same
// table (name, value placeholder, default, help text), so the help can never disagree with what is
// parsed. CLI11 reads the command line; toml++ reads the TOML files given with `--config FILE.toml`
// (keys are the flag names; kohya's section headers such as [training_arguments] are allowed and
// flattened). The command line wins over the file. effective_config() writes the run's flags back as
// such a file.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

namespace sd::train {

// How a flag's text reaches a field and, for effective_config(), how the field's current value reads
// back as a TOML value. `set` receives the value ("" for a switch) and throws sd::Error on a bad one
// (the parser adds the flag's name and where the value came from).
struct FlagBinding {
  std::function<void(const std::string&)> set;
  std::function<std::string()> toml;  // may be empty: then the file shows the text given, if any

  template <class F>
    requires std::is_invocable_v<F, const std::string&>
  FlagBinding(F f) : set(std::move(f)) {}  // NOLINT: a setter alone converts implicitly
  FlagBinding(std::function<void(const std::string&)> s, std::function<std::string()> t)
      : set(std::move(s)), toml(std::move(t)) {}
};

struct FlagSpec {
  std::string name;         // without the leading "--"
  std::string metavar;      // "" for a switch (takes no value)
  std::string default_text; // shown in --help ("" = no default shown)
  std::string help;
  std::string group;        // --help section
  FlagBinding binding;
  // Other accepted names, e.g. "validation_prompts"; a one-letter alias is a short flag ("o" is -o).
  std::vector<std::string> aliases = {};
  bool repeatable = false;  // each value is collected; else the last one given wins (argparse)
};

class FlagParser {
 public:
  FlagParser(std::string program, std::string summary);
  void add(FlagSpec spec);
  // Flags the diffusers scripts take that mean nothing here: accepted with a note on stderr.
  void add_ignored(const std::string& name, bool takes_value, const std::string& why);

  // Parses argv[1..] (after the values of --config files); returns false when --help was given (the
  // help was printed on stdout). An unknown flag or key, a missing value or a bad value throws
  // sd::Error with a sentence saying which flag, and which file for a value read from one.
  bool parse(int argc, const char* const* argv);
  // The names given on the command line or in a --config file (without "--"): "was it given?".
  const std::vector<std::string>& given() const { return given_; }
  bool was_given(const std::string& name) const;
  std::string help() const;
  void set_epilog(std::string text) { epilog_ = std::move(text); }

  // This run's flags as a TOML file that --config reads back: every flag that was given or whose value
  // differs from its declared default (defaults that depend on other flags) as `name = value`, the
  // others as comments with their default, grouped as in --help. `header` opens it as comment lines.
  std::string effective_config(const std::string& header) const;

 private:
  struct Entry {
    FlagSpec spec;
    std::string initial_toml;  // the binding's value before parsing: the default
  };
  const FlagSpec* find(const std::string& name) const;
  // Sets `values` into the flag (one for a plain flag: the last; all for a repeatable one).
  void apply(const FlagSpec& spec, const std::vector<std::string>& values, const std::string& origin);
  void read_config_file(const std::string& path, const std::vector<std::string>& command_line_names);
  std::string did_you_mean(const std::string& name) const;  // the closest flag name, or ""
  std::vector<std::string> groups() const;                   // --help sections, in declaration order
  std::string program_, summary_, epilog_;
  std::vector<Entry> entries_;
  std::map<std::string, std::pair<bool, std::string>> ignored_;  // name -> (takes value, why)
  std::vector<std::string> given_;
  std::map<std::string, std::vector<std::string>> given_text_;  // name -> the values as given
};

// Value parsers used by the flag table; they throw sd::Error("expected ...") on bad text.
int64_t parse_int(const std::string& v);
double parse_double(const std::string& v);
bool parse_bool(const std::string& v);  // true/false/1/0/yes/no
std::vector<std::string> split_list(const std::string& v, char sep = ',');

// TOML values for FlagBinding::toml.
std::string toml_string(const std::string& s);
std::string toml_int(int64_t v);
std::string toml_double(double v);
std::string toml_bool(bool v);
std::string toml_array(const std::vector<std::string>& rendered);

}  // namespace sd::train
