// Error messages end with "[file:line]". The file is named relative to the repository (the build
// passes -fmacro-prefix-map), so a message a user pastes into an issue does not carry the absolute
// path of the machine that built the binary.
#include <gtest/gtest.h>

#include <string>

#include "runtime/error.h"
#include "ops/view.h"
#include "runtime/tensor.h"
#include "tests/test_util.h"

namespace sd {
namespace {

TEST(ErrorLocation, TestFilesAreNamedFromTheRepositoryRoot) {
  const std::string m = test::error_of([] { SD_FAIL("boom"); });
  EXPECT_NE(m.find("boom [tests/runtime/error_location_test.cpp:"), std::string::npos) << m;
}

TEST(ErrorLocation, LibraryFilesAreNamedFromTheRepositoryRoot) {
  // A reshape to the wrong element count fails inside the ops library.
  const std::string m = test::error_of([] { (void)reshape(zeros({2, 3}), {7}); });
  ASSERT_FALSE(m.empty());
  const size_t open = m.rfind(" [");
  ASSERT_NE(open, std::string::npos) << m;
  const std::string where = m.substr(open + 2);
  EXPECT_EQ(where.rfind("ops/", 0), 0u) << m;
  EXPECT_EQ(where.find(SD_SOURCE_DIR), std::string::npos) << m;
}

}  // namespace
}  // namespace sd
