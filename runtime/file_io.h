// Whole-file reads and writes. A write goes to a temporary name beside the file and is renamed into
// place, so an interrupted run never leaves half a file (the project's rule for everything it saves).
#pragma once
#include <filesystem>
#include <string>

namespace sd {

// The file's bytes; sd::Error naming the file when it cannot be opened or read.
std::string read_file(const std::filesystem::path& p);
// Creates the parent folders, writes <p>.tmp.<pid> and renames it to p; sd::Error naming the file on
// failure (the temporary file is removed).
void write_file_atomic(const std::filesystem::path& p, const std::string& bytes);

}  // namespace sd
