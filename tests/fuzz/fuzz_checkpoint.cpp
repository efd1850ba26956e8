// .ckpt: the zip container, the restricted unpickler and the tensor views, through the loader
// sd_convert and sd_infer use.
#include "models/formats/torch_checkpoint.h"
#include "ops/view.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = sd::fuzz::scratch_file(data, size, ".ckpt");
  sd::fuzz::expect_ok_or_sd_error([&] {
    const sd::TorchCheckpoint ck = sd::load_torch_checkpoint(path);
    for (const auto& [name, t] : ck.tensors)
      if (t.numel() > 0) (void)sd::contiguous(t);
  });
  return 0;
}
