#include "runtime/op_profile.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace sd {

namespace {

using Clock = std::chrono::steady_clock;

struct Totals {
  double inclusive = 0, exclusive = 0;
  long calls = 0;
};

struct Open {
  std::string name;
  Clock::time_point start;
  double children = 0;  // seconds spent in ranges opened inside this one
};

std::mutex g_mutex;
std::map<std::string, Totals>& totals() {
  static auto* t = new std::map<std::string, Totals>();  // never destroyed: the exit report reads it
  return *t;
}
thread_local std::vector<Open> t_stack;

void report() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<std::pair<std::string, Totals>> rows(totals().begin(), totals().end());
  if (rows.empty()) return;
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.exclusive > b.second.exclusive; });
  double all = 0;
  for (const auto& r : rows) all += r.second.exclusive;
  std::fprintf(stderr, "\nSD_PROFILE: %zu ranges, %.3f s in all (exclusive times add up to it)\n", rows.size(), all);
  std::fprintf(stderr, "%10s %7s %10s %8s  %s\n", "excl s", "excl %", "incl s", "calls", "range");
  const size_t shown = std::min<size_t>(rows.size(), 40);
  for (size_t i = 0; i < shown; ++i) {
    const Totals& t = rows[i].second;
    std::fprintf(stderr, "%10.3f %6.1f%% %10.3f %8ld  %s\n", t.exclusive, all > 0 ? 100.0 * t.exclusive / all : 0.0,
                 t.inclusive, t.calls, rows[i].first.c_str());
  }
  if (shown < rows.size()) std::fprintf(stderr, "(%zu more ranges)\n", rows.size() - shown);
}

}  // namespace

// A block's row names its kind, not one instance of it.
std::string profile_row_name(const char* name) {
  std::string out;
  for (const char* p = name; *p;) {
    const char* e = p;
    while (*e >= '0' && *e <= '9') ++e;
    const bool segment_start = p == name || p[-1] == '.';
    if (e > p && segment_start && (*e == '.' || *e == '\0')) {
      out += '#';
      p = e;
    } else {
      out += *p++;
    }
  }
  return out;
}

bool op_profile_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("SD_PROFILE");
    const bool enabled = v && *v && std::string(v) != "0";
    if (enabled) std::atexit(report);
    return enabled;
  }();
  return on;
}

void ProfileRange::push(const char* name) {
  t_stack.push_back({profile_row_name(name), Clock::now(), 0});
  active_ = true;
}

void ProfileRange::pop() {
  Open top = std::move(t_stack.back());
  t_stack.pop_back();
  const double elapsed = std::chrono::duration<double>(Clock::now() - top.start).count();
  if (!t_stack.empty()) t_stack.back().children += elapsed;
  std::lock_guard<std::mutex> lock(g_mutex);
  Totals& t = totals()[top.name];
  t.inclusive += elapsed;
  t.exclusive += elapsed - top.children;
  ++t.calls;
}

}  // namespace sd
