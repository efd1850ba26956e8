#include "infer/hash_cache.h"

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "infer/sha256.h"
#include "runtime/error.h"
#include "runtime/file_io.h"

namespace sd::infer {

namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxCacheBytes = 4u << 20;  // a hand-edited or damaged cache is not read past this
constexpr size_t kMaxEntries = 1000;         // oldest entries go first beyond this

std::mutex g_mu;  // one process may hash a model and its refiner at once

// "path|size|mtime_ns" for each file, joined by newlines: the entry's key.
std::string key_of(const std::vector<std::string>& paths) {
  std::string key;
  for (const std::string& p : paths) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return "";
    const long long mtime = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    std::error_code ec;
    const fs::path abs = fs::absolute(p, ec);
    key += (ec ? p : abs.lexically_normal().string()) + "|" + std::to_string((long long)st.st_size) + "|" +
           std::to_string(mtime) + "\n";
  }
  return key;
}

nlohmann::json read_cache(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec) || fs::file_size(path, ec) > kMaxCacheBytes) return nlohmann::json::object();
  std::ifstream in(path, std::ios::binary);
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  return j.is_object() && j.contains("entries") && j["entries"].is_array() ? j : nlohmann::json::object();
}

// A cache that cannot be written is left as it is: the hash was computed anyway.
void write_cache(const std::string& path, const nlohmann::json& j) {
  try {
    write_file_atomic(path, j.dump(1) + "\n");
  } catch (const Error&) {
  }
}

}  // namespace

std::string hash_cache_path() {
  const char* dir = std::getenv("SD_CACHE_DIR");
  if (dir && std::string(dir) == "off") return "";
  if (dir && *dir) return (fs::path(dir) / "model_hashes.json").string();
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg)
    return (fs::path(xdg) / "sd" / "model_hashes.json").string();
  if (const char* home = std::getenv("HOME"); home && *home)
    return (fs::path(home) / ".cache" / "sd" / "model_hashes.json").string();
  return "";
}

std::string cached_sha256_files_hex(const std::vector<std::string>& paths) {
  const std::string cache = hash_cache_path();
  const std::string key = cache.empty() ? "" : key_of(paths);
  if (key.empty()) return sha256_files_hex(paths);
  {
    std::lock_guard<std::mutex> lock(g_mu);
    const nlohmann::json j = read_cache(cache);
    if (j.contains("entries"))
      for (const nlohmann::json& e : j["entries"])
        if (e.is_object() && e.value("key", "") == key && e.contains("sha256") && e["sha256"].is_string() &&
            e["sha256"].get<std::string>().size() == 64)
          return e["sha256"].get<std::string>();
  }
  const std::string hash = sha256_files_hex(paths);
  std::lock_guard<std::mutex> lock(g_mu);
  nlohmann::json j = read_cache(cache);  // again: another process may have written meanwhile
  if (!j.contains("entries")) j = {{"entries", nlohmann::json::array()}};
  nlohmann::json& entries = j["entries"];
  entries.push_back({{"key", key}, {"sha256", hash}});
  while (entries.size() > kMaxEntries) entries.erase(entries.begin());
  write_cache(cache, j);
  return hash;
}

}  // namespace sd::infer
