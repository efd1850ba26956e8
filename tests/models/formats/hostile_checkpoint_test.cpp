// The hostile .ckpt and safetensors files of the untrusted-files report, made again from its
// description (tests/hostile_files.h): each must end in an sd::Error that says what is wrong,
// quickly and in bounded memory -- never a crash, a leak, a wrapped size or gigabytes of memory.
#include <gtest/gtest.h>

#include <filesystem>

#include "models/formats/pickle_reader.h"
#include "models/formats/torch_checkpoint.h"
#include "models/formats/zip_archive.h"
#include "runtime/safetensors.h"
#include "tests/hostile_files.h"
#include "tests/test_util.h"

namespace sd {
namespace {

namespace fs = std::filesystem;
using test::error_of;
using test::peak_rss_mib;
using test::float_storage_hook;
using pickle::Kind;

fs::path write_temp(const std::string& name, const std::string& bytes) {
  const fs::path p = fs::temp_directory_path() / ("sd_hostile_" + std::to_string(::getpid()) + "_" + name);
  test::write_text(p, bytes);
  return p;
}

pickle::ValuePtr unpickle(const std::string& p, const pickle::Hooks& h = {}) {
  return pickle::unpickle(p.data(), p.size(), h, "hostile");
}

TEST(HostileCheckpoint, DeepChainBuiltBelowAdoptedListsIsRefusedWithoutStackOverflow) {
  // 200,000 lists, each appended into the previous after that one already sits in its parent:
  // the report's 2.6 MB .ckpt, which crashed sd_convert --info in the recursive release.
  const std::string p = test::pickle_nested_chain(200000);
  EXPECT_NE(error_of([&] { unpickle(p); }).find("nested deeper than 1000"), std::string::npos);
  const fs::path f = write_temp("deep.ckpt", test::torch_zip(p));
  EXPECT_NE(error_of([&] { load_torch_checkpoint(f.string()); }).find("nested deeper"), std::string::npos);
  fs::remove(f);
  // Within the limit it loads, and its release does not recurse either.
  EXPECT_TRUE(unpickle(test::pickle_nested_chain(900))->is(Kind::List));
}

TEST(HostileCheckpoint, ReleasingAMillionDeepValueTreeDoesNotRecurse) {
  // Built directly (no unpickler in between): the destructor alone must cope.
  auto root = std::make_shared<pickle::Value>();
  root->kind = Kind::List;
  pickle::Value* at = root.get();
  for (int i = 0; i < 1000000; ++i) {
    auto child = std::make_shared<pickle::Value>();
    child->kind = Kind::List;
    at->items.push_back(child);
    at = child.get();
  }
  root.reset();  // a recursive release would overflow the stack here
  SUCCEED();
}

TEST(HostileCheckpoint, PickleValueFloodIsCappedEarly) {
  // The report's 20 KB .ckpt: 20 MB of one-byte list opcodes (deflated ~1000:1) took 4.4 GB.
  const std::string p = test::pickle_list_flood(20'000'000);
  const fs::path f = write_temp("flood.ckpt", test::torch_zip(p, {}, /*deflate_pickle=*/true));
  EXPECT_LT(fs::file_size(f), 100'000u);
  const double before = peak_rss_mib();
  const std::string msg = error_of([&] { load_torch_checkpoint(f.string()); });
  EXPECT_NE(msg.find("more than 1000000 pickle values"), std::string::npos) << msg;
  EXPECT_NE(msg.find(f.string()), std::string::npos) << msg;
  // The test's own 20 MB pickle string is part of `before`; the refusal adds at most ~0.5 GB.
  EXPECT_LT(peak_rss_mib() - before, 600.0);
  fs::remove(f);
  // References are capped too: DUP of one value, nine million times.
  std::string dups = std::string("\x80\x02N", 3);
  dups.append(9'000'000, '2');
  EXPECT_NE(error_of([&] { unpickle(dups); }).find("references"), std::string::npos);
}

TEST(HostileCheckpoint, ZipEntryInflationStopsAtTheBudget) {
  // The report's bomb: a small deflated data.pkl claiming (and really inflating to) a huge size
  // within deflate's ratio. Here 200 MB of zeros deflate to ~200 KB: past the budget of
  // 64 MiB + 16 x file size, refused before any of it is inflated.
  const std::string zeros(200u << 20, '\0');
  const fs::path f = write_temp("bomb.ckpt", test::torch_zip(zeros, {}, /*deflate_pickle=*/true));
  ASSERT_LT(fs::file_size(f), 1'000'000u);
  const double before = peak_rss_mib();
  const std::string msg = error_of([&] {
    const ZipArchive z = ZipArchive::open(f.string());
    z.read(*z.find("archive/data.pkl"));
  });
  EXPECT_NE(msg.find("decompression bomb"), std::string::npos) << msg;
  EXPECT_LT(peak_rss_mib() - before, 50.0);
  // Through the checkpoint loader the pickle cap speaks first, naming the entry.
  EXPECT_NE(error_of([&] { load_torch_checkpoint(f.string()); }).find("archive/data.pkl"), std::string::npos);
  fs::remove(f);
  // An entry that inflates past its declared size stops there ("inflates to" ... "says").
  const std::string text(100000, 'x');
  const fs::path g = write_temp("liar.ckpt", test::zip_file({{"archive/data.pkl", text, true, 1000}}));
  const ZipArchive z = ZipArchive::open(g.string());
  EXPECT_NE(error_of([&] { z.read(*z.find("archive/data.pkl")); }).find("more than the 1000 bytes the directory says"), std::string::npos);
  fs::remove(g);
  // The budget is shared by all entries of an archive: many entries below it each, not together.
  std::vector<test::ZipItem> many;
  for (int i = 0; i < 10; ++i) many.push_back({"e" + std::to_string(i), std::string(10u << 20, 'a'), true});
  const fs::path h = write_temp("many.zip", test::zip_file(many));
  const ZipArchive zm = ZipArchive::open(h.string());
  std::string last;
  for (int i = 0; i < 10 && last.empty(); ++i) last = error_of([&] { zm.read(*zm.find("e" + std::to_string(i))); });
  EXPECT_NE(last.find("already inflated"), std::string::npos) << last;
  fs::remove(h);
}

TEST(HostileCheckpoint, BroadcastAndOverflowingViewsAreRefused) {
  // The report's 639-byte file: a (100000, 100000) f32 tensor with strides (0, 0) over one element.
  std::string msg = error_of([&] { unpickle(test::pickle_tensor_view(1, {100000, 100000}, {0, 0}), float_storage_hook(1)); });
  EXPECT_NE(msg.find("overlapping view"), std::string::npos) << msg;
  // (2^32, 2^32): the element count overflows 64 bits and must not wrap to a small number.
  msg = error_of([&] {
    unpickle(test::pickle_tensor_view(1, {int64_t(1) << 32, int64_t(1) << 32}, {0, 0}), float_storage_hook(1));
  });
  EXPECT_NE(msg.find("overflows"), std::string::npos) << msg;
  // The same through a whole file, with the storage in the archive.
  const fs::path f = write_temp("view.ckpt", test::torch_zip(test::pickle_tensor_view(1, {100000, 100000}, {0, 0}),
                                                              {std::string(4, '\0')}));
  msg = error_of([&] { load_torch_checkpoint(f.string()); });
  EXPECT_NE(msg.find("overlapping view"), std::string::npos) << msg;
  EXPECT_NE(msg.find(f.string()), std::string::npos) << msg;
  fs::remove(f);
  // A proper view still loads: [2, 3] transposed over 6 elements.
  const pickle::ValuePtr ok = unpickle(test::pickle_tensor_view(6, {3, 2}, {1, 3}), float_storage_hook(6));
  EXPECT_EQ(ok->get("w")->tensor.shape(), (Shape{3, 2}));
}

TEST(HostileCheckpoint, ADictContainingItselfIsRefused) {
  // A shared_ptr cycle would leak (AddressSanitizer's leak check sees it in the sanitizer build).
  EXPECT_NE(error_of([&] { unpickle(test::pickle_self_dict()); }).find("contains itself"), std::string::npos);
  // A value shared twice (not a cycle) is fine: [x, x].
  const pickle::ValuePtr v = unpickle(std::string("\x80\x02(]q\x00h\x00l.", 10));
  ASSERT_EQ(v->items.size(), 2u);
  EXPECT_EQ(v->items[0].get(), v->items[1].get());
}

TEST(HostileSafetensors, ZeroElementTensorWithHugeDimensionsIsRefusedWithoutOverflow) {
  // Shape [0, 2^62, 4]: no elements (valid), but its strides overflow a signed 64-bit size.
  const std::string header = R"({"t":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})";
  const fs::path f = write_temp("huge_dims.safetensors", test::safetensors_with_header(header, ""));
  const std::string msg = error_of([&] { SafetensorsFile::open(f.string()); });
  EXPECT_NE(msg.find("strides of its shape overflow"), std::string::npos) << msg;
  fs::remove(f);
  // Shapes made in code get the same check, and an element count that would wrap is refused.
  EXPECT_NE(error_of([&] { contiguous_strides({0, int64_t(1) << 62, 4}); }).find("overflow"), std::string::npos);
  EXPECT_NE(error_of([&] { shape_numel({int64_t(1) << 32, int64_t(1) << 32}); }).find("overflow"), std::string::npos);
  // [0, 2^40, 4] is fine: zero elements, strides that fit.
  const std::string ok = R"({"t":{"dtype":"F32","shape":[0,1099511627776,4],"data_offsets":[0,0]}})";
  const fs::path g = write_temp("zero_ok.safetensors", test::safetensors_with_header(ok, ""));
  EXPECT_EQ(SafetensorsFile::open(g.string()).get("t").numel(), 0);
  fs::remove(g);
}

}  // namespace
}  // namespace sd
