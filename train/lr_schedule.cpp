// diffusers.optimization's schedule lambdas, transcribed operation for operation (see lr_schedule.h).
// Python evaluates `a * b + c` as two rounded operations; `rounded` keeps the compiler from fusing
// them into one FMA (this file is built with -march=native), so the results stay bit-identical.
#include "train/lr_schedule.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <numbers>
#include <string_view>

#include "runtime/error.h"

namespace sd::train {
namespace {

double rounded(double x) {
  volatile double v = x;
  return v;
}

// Python's float `x % y` for y > 0: the result takes the sign of y.
double py_mod(double x, double y) {
  double m = std::fmod(x, y);
  if (m != 0) {
    if ((y < 0) != (m < 0)) m += y;
  } else {
    m = std::copysign(0.0, y);
  }
  return m;
}

std::string_view trim(std::string_view s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// Python's float(s) for decimal text (surrounding whitespace, optional sign, inf/nan).
bool parse_double(std::string_view s, double& out) {
  s = trim(s);
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  if (s.empty()) return false;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out, std::chars_format::general);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

// Python's int(s) for decimal text (surrounding whitespace, optional sign).
bool parse_int(std::string_view s, int64_t& out) {
  s = trim(s);
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  if (s.empty()) return false;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

struct PiecewiseRules {
  std::map<int64_t, double> rules;  // step bound -> multiplier below it; a repeated bound keeps the last
  double last = 1.0;
};

// get_piecewise_constant_schedule: "m1:s1,m2:s2,...,m_last".
PiecewiseRules parse_step_rules(const std::string& text) {
  SD_CHECK(!text.empty(), "lr scheduler piecewise_constant: needs step_rules such as \"1:10,0.1:20,0.01\"");
  PiecewiseRules out;
  std::vector<std::string_view> parts;
  std::string_view rest(text);
  for (;;) {
    const size_t comma = rest.find(',');
    parts.push_back(rest.substr(0, comma));
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const std::string_view rule = parts[i];
    const size_t colon = rule.find(':');
    double value = 0;
    int64_t steps = 0;
    SD_CHECK(colon != std::string_view::npos && rule.find(':', colon + 1) == std::string_view::npos &&
                 parse_double(rule.substr(0, colon), value) && parse_int(rule.substr(colon + 1), steps),
             "lr scheduler piecewise_constant: step_rules \"", text, "\": rule \"", rule,
             "\" is not multiplier:steps");
    out.rules[steps] = value;
  }
  SD_CHECK(parse_double(parts.back(), out.last), "lr scheduler piecewise_constant: step_rules \"", text,
           "\": the last entry \"", parts.back(), "\" is not a multiplier");
  return out;
}

// The linear warmup every schedule with warmup shares: float(k) / float(max(1, W)).
double warmup_factor(int64_t step, int64_t warmup) {
  return double(step) / double(std::max<int64_t>(1, warmup));
}

}  // namespace

const std::vector<std::string>& lr_scheduler_names() {
  static const std::vector<std::string> names = {"linear",   "cosine",   "cosine_with_restarts", "polynomial",
                                                 "constant", "constant_with_warmup", "piecewise_constant"};
  return names;
}

void validate(const LrScheduleConfig& cfg) {
  const auto& names = lr_scheduler_names();
  if (std::find(names.begin(), names.end(), cfg.name) == names.end()) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    SD_FAIL("unknown lr scheduler \"", cfg.name, "\"; valid names: ", list);
  }
  const char* op = "lr scheduler ";
  SD_CHECK(std::isfinite(cfg.base_lr) && cfg.base_lr >= 0, op, cfg.name,
           ": learning rate must be finite and >= 0, got ", cfg.base_lr);
  SD_CHECK(cfg.warmup_steps >= 0, op, cfg.name, ": warmup steps must be >= 0, got ", cfg.warmup_steps);
  SD_CHECK(cfg.total_steps >= 0, op, cfg.name, ": total steps must be >= 0, got ", cfg.total_steps);
  SD_CHECK(std::isfinite(cfg.num_cycles), op, cfg.name, ": num_cycles must be finite, got ", cfg.num_cycles);
  SD_CHECK(std::isfinite(cfg.power), op, cfg.name, ": power must be finite, got ", cfg.power);
  SD_CHECK(std::isfinite(cfg.lr_end), op, cfg.name, ": lr_end must be finite, got ", cfg.lr_end);
  if (cfg.name == "polynomial") {
    // diffusers raises the first; the others would fail (ZeroDivisionError) at step total_steps.
    SD_CHECK(cfg.base_lr > cfg.lr_end, op, "polynomial: lr_end (", cfg.lr_end,
             ") must be smaller than the learning rate (", cfg.base_lr, ")");
    SD_CHECK(cfg.base_lr > 0, op, "polynomial: the learning rate must be > 0 (the schedule divides by it)");
    SD_CHECK(cfg.total_steps != cfg.warmup_steps, op,
             "polynomial: total steps must differ from warmup steps (the decay would divide by zero), both are ",
             cfg.total_steps);
    SD_CHECK(cfg.power >= 0, op, "polynomial: power must be >= 0, got ", cfg.power);
  }
  if (cfg.name == "piecewise_constant") parse_step_rules(cfg.step_rules);
}

double lr_at(const LrScheduleConfig& cfg, int64_t step) {
  validate(cfg);
  SD_CHECK(step >= 0, "lr scheduler ", cfg.name, ": step must be >= 0, got ", step);
  const std::string& name = cfg.name;
  const int64_t k = step, w = cfg.warmup_steps, t = cfg.total_steps;
  const double lr = cfg.base_lr;
  if (name == "constant") return lr * 1;
  if (name == "piecewise_constant") {
    const PiecewiseRules r = parse_step_rules(cfg.step_rules);
    const auto it = r.rules.upper_bound(k);  // the first bound with k < bound
    return lr * (it != r.rules.end() ? it->second : r.last);
  }
  if (k < w) return lr * warmup_factor(k, w);
  if (name == "constant_with_warmup") return lr * 1.0;
  if (name == "linear") {
    const double progress = double(t - k) / double(std::max<int64_t>(1, t - w));
    // f_min + (f_max - f_min) * max(0.0, progress) with f_min = 0, f_max = 1: exactly max(0, progress).
    return lr * std::max(0.0, progress);
  }
  const double progress = double(k - w) / double(std::max<int64_t>(1, t - w));
  if (name == "cosine") {
    const double num_cycles = 0.5;  // get_scheduler never passes its num_cycles to this schedule
    return lr * std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * num_cycles * 2.0 * progress)));
  }
  if (name == "cosine_with_restarts") {
    if (progress >= 1.0) return lr * 0.0;
    return lr * std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * py_mod(cfg.num_cycles * progress, 1.0))));
  }
  // polynomial (validate leaves no other name)
  if (k > t) return lr * (cfg.lr_end / lr);
  const double lr_range = lr - cfg.lr_end;
  const int64_t decay_steps = t - w;
  const double pct_remaining = 1 - double(k - w) / double(decay_steps);
  const double decay = rounded(lr_range * std::pow(pct_remaining, cfg.power)) + cfg.lr_end;
  return lr * (decay / lr);
}

}  // namespace sd::train
