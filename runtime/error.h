// One exception type for the whole project, with the context a user needs to act on it:
// which op, which tensor shapes/dtypes/devices, which file or key.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace sd {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
template <class... Args>
[[noreturn]] void fail(const char* file, int line, const Args&... args) {
  std::ostringstream os;
  append(os, args...);
  os << " [" << file << ":" << line << "]";
  throw Error(os.str());
}
}  // namespace detail

}  // namespace sd

// SD_CHECK(cond, "matmul: ", shape_str(a), " vs ", shape_str(b)) throws sd::Error with the message.
#define SD_CHECK(cond, ...)                                   \
  do {                                                        \
    if (!(cond)) ::sd::detail::fail(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)
#define SD_FAIL(...) ::sd::detail::fail(__FILE__, __LINE__, __VA_ARGS__)
