// Shared pieces of the libFuzzer targets (tests/fuzz/README.md): inputs that need a path are
// written to one scratch file per process, and an sd::Error is the expected outcome of bad input
// -- any other exception (std::bad_alloc, a JSON library error, std::out_of_range) escapes and
// libFuzzer reports it as a finding, as it does crashes, leaks and sanitizer reports.
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "runtime/error.h"

namespace sd::fuzz {

// The scratch file for this process, with `suffix` (loaders choose by extension), holding data.
inline std::string scratch_file(const uint8_t* data, size_t size, const std::string& suffix) {
  const char* dir = std::getenv("TMPDIR");
  const std::string path = std::string(dir && *dir ? dir : "/tmp") + "/sd_fuzz_" + std::to_string(::getpid()) + suffix;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

// Runs f; an sd::Error (a clear refusal) is fine, anything else propagates.
template <class F>
void expect_ok_or_sd_error(F f) {
  try {
    f();
  } catch (const sd::Error&) {
  }
}

}  // namespace sd::fuzz
