// SHA-256 of weight files, remembered between runs as A1111 does (its cache.json): a multi-GB model
// takes seconds to hash, and on a small CPU that hashing competes with the first generation. The entry
// is keyed by each file's absolute path, size and modification time, so a changed file is hashed again.
// The cache lives in $SD_CACHE_DIR, else $XDG_CACHE_HOME/sd, else ~/.cache/sd (model_hashes.json);
// SD_CACHE_DIR=off disables it. A cache that cannot be read or written is ignored (never an error).
#pragma once
#include <string>
#include <vector>

namespace sd::infer {

// sha256_files_hex(paths), from the cache when every file is unchanged.
std::string cached_sha256_files_hex(const std::vector<std::string>& paths);

// The cache file in use ("" when disabled or no home folder is known).
std::string hash_cache_path();

}  // namespace sd::infer
