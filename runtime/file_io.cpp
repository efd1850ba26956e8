#include "runtime/file_io.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "runtime/error.h"

namespace sd {

namespace fs = std::filesystem;

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  SD_CHECK(f, "cannot open '", p.string(), "': ", std::strerror(errno));
  std::ostringstream os;
  os << f.rdbuf();
  SD_CHECK(!f.bad(), "cannot read '", p.string(), "'");
  return os.str();
}

void write_file_atomic(const fs::path& p, const std::string& bytes) {
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  const fs::path tmp = p.string() + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    SD_CHECK(f.good(), "cannot write '", tmp.string(), "': ", std::strerror(errno));
    f.write(bytes.data(), std::streamsize(bytes.size()));
    f.flush();
    if (!f.good()) {
      const std::string err = std::strerror(errno);
      f.close();
      fs::remove(tmp);
      SD_FAIL("writing '", p.string(), "' failed: ", err);
    }
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
  if (ec) {
    fs::remove(tmp);
    SD_FAIL("cannot move '", tmp.string(), "' to '", p.string(), "': ", ec.message());
  }
}

}  // namespace sd
