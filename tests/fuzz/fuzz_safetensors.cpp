// safetensors: header parsing, offsets and shapes, then reading every tensor.
#include "ops/view.h"
#include "runtime/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = sd::fuzz::scratch_file(data, size, ".safetensors");
  sd::fuzz::expect_ok_or_sd_error([&] {
    const sd::SafetensorsFile f = sd::SafetensorsFile::open(path);
    for (const std::string& name : f.keys()) {
      const sd::Tensor t = f.get(name);
      if (t.numel() > 0 && t.dtype() != sd::DType::Bool) (void)sd::to(t, sd::DType::F32);
    }
    (void)f.metadata();
  });
  return 0;
}
