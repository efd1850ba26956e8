// An on/off setting of the CUDA backend that starts from an environment variable ("1": on) and
// can be changed at run time (tests, benchmarks): the switches that keep paths not yet measured on
// a GPU off by default. Plain C++.
#pragma once
#include <atomic>
#include <cstdlib>
#include <cstring>

namespace sd::cuda {

// Whether the environment sets `name` to exactly "1".
inline bool env_flag_on(const char* name) {
  const char* v = std::getenv(name);
  return v && std::strcmp(v, "1") == 0;
}

class EnvSwitch {
 public:
  explicit EnvSwitch(const char* env) : on_(env_flag_on(env)) {}
  bool on() const { return on_.load(); }
  void set(bool on) { on_.store(on); }

 private:
  std::atomic<bool> on_;
};

}  // namespace sd::cuda
