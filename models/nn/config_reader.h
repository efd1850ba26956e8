// Reads the keys of one diffusers config.json object with errors that name the model kind, the
// file, the key and its value. Every key looked at is remembered: the rest are the "ignored"
// keys a config reports (diffusers ignores keys its class does not take). JSON null is Python's
// None, which for most keys is not the default value.
#pragma once
#include <cmath>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace sd::nn {

class ConfigReader {
 public:
  using json = nlohmann::json;
  // kind: "UNet config", "VAE config" ...; source: the file (or "<string>").
  ConfigReader(const json& j, std::string kind, std::string source)
      : j_(j), kind_(std::move(kind)), src_(std::move(source)) {}

  bool present(const std::string& k) { used_.insert(k); return j_.contains(k); }
  bool is_null(const std::string& k) { return present(k) && j_[k].is_null(); }
  bool has_value(const std::string& k) { return present(k) && !j_[k].is_null(); }
  const json& at(const std::string& k) { used_.insert(k); return j_.at(k); }
  const std::string& source() const { return src_; }

  template <class... Args>
  [[noreturn]] void fail(const std::string& k, const Args&... msg) {
    std::ostringstream os;
    ((os << msg), ...);
    SD_FAIL(kind_, " ", src_, ": key \"", k, "\" ", os.str(), " (value ",
            j_.contains(k) ? j_[k].dump() : std::string("absent"), ")");
  }

  // Every integer of a config is a size, count or id far below 2^31: larger values (and floats
  // such as 1e30, whose conversion would be undefined) are refused before anything is allocated.
  static constexpr int64_t kIntLimit = int64_t(1) << 31;
  int64_t as_int(const std::string& k, const json& v) {
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(kIntLimit)) fail(k, "is out of range");
    if (v.is_number_integer()) {
      const int64_t i = v.get<int64_t>();
      if (i > kIntLimit || i < -kIntLimit) fail(k, "is out of range");
      return i;
    }
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) {
      const double d = v.get<double>();
      if (!(std::fabs(d) <= double(kIntLimit))) fail(k, "is out of range");
      return int64_t(d);
    }
    fail(k, "must be an integer");
  }
  // Range checks with the key in the message; they run right after a value is read, before the
  // model is built from it (a layer count of 1e9 would otherwise allocate gigabytes first).
  int64_t in_range(const std::string& k, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) fail(k, "must be between ", lo, " and ", hi);
    return v;
  }
  const std::vector<int64_t>& in_range(const std::string& k, const std::vector<int64_t>& v, int64_t lo, int64_t hi) {
    for (int64_t x : v)
      if (x < lo || x > hi) fail(k, "must hold values between ", lo, " and ", hi, " (", x, " is not)");
    return v;
  }
  // A finite number in [lo, hi]; with open_low, lo itself is excluded (for eps and scales).
  double in_range(const std::string& k, double v, double lo, double hi, bool open_low = false) {
    if (!std::isfinite(v) || v < lo || v > hi || (open_low && v == lo))
      fail(k, "must be a finite number ", open_low ? "above " : "from ", lo, open_low ? " up to " : " to ", hi);
    return v;
  }
  int64_t integer(const std::string& k, int64_t def) {
    if (!present(k)) return def;
    if (is_null(k)) fail(k, "must not be null");
    return as_int(k, at(k));
  }
  // null and absent both mean "not set" (0), for optional widths.
  int64_t optional_integer(const std::string& k) { return has_value(k) ? as_int(k, at(k)) : 0; }
  double number(const std::string& k, double def) {
    if (!present(k)) return def;
    if (!at(k).is_number()) fail(k, "must be a number");
    return at(k).get<double>();
  }
  std::optional<double> optional_number(const std::string& k) {
    if (!has_value(k)) return std::nullopt;
    if (!at(k).is_number()) fail(k, "must be a number or null");
    return at(k).get<double>();
  }
  // A boolean; with null_is_false, null counts as false (Python's falsy None), else it is an error.
  bool flag(const std::string& k, bool def, bool null_is_false = true) {
    if (!present(k)) return def;
    if (is_null(k) && null_is_false) return false;
    if (!at(k).is_boolean()) fail(k, "must be true or false");
    return at(k).get<bool>();
  }
  std::string string_or_empty(const std::string& k, const std::string& def) {
    if (!present(k)) return def;
    if (is_null(k)) return "";
    if (!at(k).is_string()) fail(k, "must be a string");
    return at(k).get<std::string>();
  }
  std::vector<std::string> strings(const std::string& k, std::vector<std::string> def) {
    if (!present(k)) return def;
    if (!at(k).is_array()) fail(k, "must be a list of strings");
    std::vector<std::string> out;
    for (const json& v : at(k)) {
      if (!v.is_string()) fail(k, "must be a list of strings");
      out.push_back(v.get<std::string>());
    }
    return out;
  }
  std::vector<int64_t> ints(const std::string& k, std::vector<int64_t> def) {
    if (!present(k)) return def;
    if (!at(k).is_array()) fail(k, "must be a list of integers");
    std::vector<int64_t> out;
    for (const json& v : at(k)) out.push_back(as_int(k, v));
    return out;
  }
  // null -> empty.
  std::vector<double> numbers_or_null(const std::string& k) {
    if (!has_value(k)) return {};
    if (!at(k).is_array()) fail(k, "must be a list of numbers or null");
    std::vector<double> out;
    for (const json& v : at(k)) {
      if (!v.is_number()) fail(k, "must be a list of numbers or null");
      out.push_back(v.get<double>());
    }
    return out;
  }

  std::vector<std::string> unused_keys() const {
    std::vector<std::string> out;
    for (auto it = j_.begin(); it != j_.end(); ++it)
      if (!used_.count(it.key())) out.push_back(it.key());
    return out;
  }

 private:
  const json& j_;
  std::string kind_, src_;
  std::set<std::string> used_;
};

}  // namespace sd::nn
