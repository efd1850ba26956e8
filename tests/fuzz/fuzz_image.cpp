// Image decoding (PNG, JPEG, WebP, GIF, BMP): the header probe dataset listing runs, and both
// decodes (PIL's RGB conversion, and the native channels).
#include "infer/image_decode.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sd::infer::ImageHeader h;
  const std::string problem = sd::infer::probe_image(data, size, &h);
  // Headers may legitimately claim up to PIL's 179 M pixels (gigabytes once decoded, more under
  // ASan): past 16 M pixels only the header readers are fuzzed, so that a run stays within its
  // memory limit (the refusal past the real limit is a unit test: HostileImage.*).
  if (problem.empty() && h.width * h.height > (int64_t(1) << 24)) return 0;
  sd::fuzz::expect_ok_or_sd_error([&] { (void)sd::infer::decode_image_rgb(data, size, "fuzz"); });
  sd::fuzz::expect_ok_or_sd_error([&] { (void)sd::infer::decode_image_native(data, size, "fuzz"); });
  return 0;
}
