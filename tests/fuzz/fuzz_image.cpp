// Image decoding (PNG, JPEG, WebP, GIF, BMP): the header probe dataset listing runs, and both
// decodes (PIL's RGB conversion, and the native channels).
#include "infer/image_decode.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sd::infer::ImageHeader h;
  (void)sd::infer::probe_image(data, size, &h);
  sd::fuzz::expect_ok_or_sd_error([&] { (void)sd::infer::decode_image_rgb(data, size, "fuzz"); });
  sd::fuzz::expect_ok_or_sd_error([&] { (void)sd::infer::decode_image_native(data, size, "fuzz"); });
  return 0;
}
