// Committed fixtures must not carry paths of the machine that made them (save_pretrained's
// "_name_or_path", absolute paths in metadata): they would leak that machine's layout and make
// outputs depend on it. tests/golden/fixture_hygiene.py strips them when fixtures are generated.
#include <gtest/gtest.h>

#include <filesystem>
#include <optional>
#include <regex>

#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace sd {
namespace {

namespace fs = std::filesystem;

// An absolute path of a build or home machine inside a JSON string.
const std::regex kMachinePath(R"re("(/work|/home|/root|/tmp|/Users|[A-Z]:\\\\)[^"]*")re");

std::vector<fs::path> fixture_roots() {
  return {fs::path(SD_TEST_DATA_DIR), fs::path(SD_SOURCE_DIR) / "infer" / "default_model"};
}

TEST(FixtureHygiene, JsonFilesCarryNoMachinePaths) {
  int checked = 0;
  for (const fs::path& root : fixture_roots())
    for (const auto& e : fs::recursive_directory_iterator(root)) {
      if (!e.is_regular_file() || e.path().extension() != ".json") continue;
      const std::string text = test::read_text(e.path());
      ++checked;
      EXPECT_EQ(text.find("\"_name_or_path\""), std::string::npos) << e.path();
      std::smatch m;
      EXPECT_FALSE(std::regex_search(text, m, kMachinePath)) << e.path() << ": " << m.str();
    }
  EXPECT_GT(checked, 50);
}

TEST(FixtureHygiene, SafetensorsMetadataCarriesNoMachinePaths) {
  int checked = 0;
  for (const fs::path& root : fixture_roots())
    for (const auto& e : fs::recursive_directory_iterator(root)) {
      if (!e.is_regular_file() || e.path().extension() != ".safetensors") continue;
      std::optional<SafetensorsFile> f;
      try {
        f.emplace(SafetensorsFile::open(e.path().string()));
      } catch (const Error&) {
        continue;  // the deliberately damaged conformance files
      }
      ++checked;
      for (const auto& [k, v] : f->metadata()) {
        std::smatch m;
        const std::string quoted = "\"" + v + "\"";
        EXPECT_FALSE(std::regex_search(v, m, kMachinePath) || std::regex_search(quoted, m, kMachinePath))
            << e.path() << " metadata " << k << ": " << m.str();
      }
    }
  EXPECT_GT(checked, 20);
}

}  // namespace
}  // namespace sd
