// The restricted unpickler alone, in memory (faster than through a zip): persistent ids resolve to
// small float storages whose size the pickle chooses (capped here like the zip entries cap it).
#include "models/formats/pickle_reader.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sd::pickle::Hooks hooks;
  hooks.persistent_load = [](const sd::pickle::Value& pid) {
    SD_CHECK(pid.is(sd::pickle::Kind::Tuple) && pid.items.size() == 5 && pid.items[4]->is(sd::pickle::Kind::Int) &&
                 !pid.items[4]->big && pid.items[4]->i >= 0 && pid.items[4]->i <= (1 << 16),
             "fuzz: unexpected persistent id");
    auto v = std::make_shared<sd::pickle::Value>();
    v->kind = sd::pickle::Kind::Storage;
    v->dtype = sd::DType::F32;
    v->numel = pid.items[4]->i;
    v->storage = sd::Storage::allocate(size_t(v->numel) * 4, sd::Device::cpu());
    return v;
  };
  sd::fuzz::expect_ok_or_sd_error([&] {
    const sd::pickle::ValuePtr v = sd::pickle::unpickle(reinterpret_cast<const char*>(data), size, hooks, "fuzz");
    (void)v->describe();
  });
  return 0;
}
