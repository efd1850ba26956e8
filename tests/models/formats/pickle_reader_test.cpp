// .ckpt reading without Python: the restricted unpickler (values, protocols 2-4, refusal of every
// global off the allowlist, damaged input), the zip reader (ZIP64, deflate, damage), and whole torch.save
// files made by tests/golden/make_checkpoint_fixtures.py (dtypes, views with offsets, shared storages,
// Lightning metadata, protocol 4, the legacy format, a malicious pickle).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

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
using test::float_storage_hook;
using pickle::Kind;
using pickle::ValuePtr;

const std::string kCkpt = std::string(SD_TEST_DATA_DIR) + "/ckpt/";

template <size_t N>
std::string bytes(const char (&s)[N]) {
  return std::string(s, N - 1);
}

ValuePtr load(const std::string& b, const pickle::Hooks& hooks = {}) {
  return pickle::unpickle(b.data(), b.size(), hooks, "test");
}

// pickle.dumps({"a": 1, "b": [1.5, True, False, None], "c": (1, -2, 300, 70000, -(2**40)), "d": "héllo",
//               "e": b"\x00\x01", "big": 2**70, "neg": -1}, protocol=P) by CPython 3.11.
const char kProto2[] =
    "\x80\x02\x7d\x71\x00\x28\x58\x01\x00\x00\x00\x61\x71\x01\x4b\x01\x58\x01\x00\x00\x00\x62\x71\x02\x5d\x71\x03\x28"
    "\x47\x3f\xf8\x00\x00\x00\x00\x00\x00\x88\x89\x4e\x65\x58\x01\x00\x00\x00\x63\x71\x04\x28\x4b\x01\x4a\xfe\xff\xff"
    "\xff\x4d\x2c\x01\x4a\x70\x11\x01\x00\x8a\x06\x00\x00\x00\x00\x00\xff\x74\x71\x05\x58\x01\x00\x00\x00\x64\x71\x06"
    "\x58\x06\x00\x00\x00\x68\xc3\xa9\x6c\x6c\x6f\x71\x07\x58\x01\x00\x00\x00\x65\x71\x08\x63\x5f\x63\x6f\x64\x65\x63"
    "\x73\x0a\x65\x6e\x63\x6f\x64\x65\x0a\x71\x09\x58\x02\x00\x00\x00\x00\x01\x71\x0a\x58\x06\x00\x00\x00\x6c\x61\x74"
    "\x69\x6e\x31\x71\x0b\x86\x71\x0c\x52\x71\x0d\x58\x03\x00\x00\x00\x62\x69\x67\x71\x0e\x8a\x09\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x40\x58\x03\x00\x00\x00\x6e\x65\x67\x71\x0f\x4a\xff\xff\xff\xff\x75\x2e";
const char kProto3[] =
    "\x80\x03\x7d\x71\x00\x28\x58\x01\x00\x00\x00\x61\x71\x01\x4b\x01\x58\x01\x00\x00\x00\x62\x71\x02\x5d\x71\x03\x28"
    "\x47\x3f\xf8\x00\x00\x00\x00\x00\x00\x88\x89\x4e\x65\x58\x01\x00\x00\x00\x63\x71\x04\x28\x4b\x01\x4a\xfe\xff\xff"
    "\xff\x4d\x2c\x01\x4a\x70\x11\x01\x00\x8a\x06\x00\x00\x00\x00\x00\xff\x74\x71\x05\x58\x01\x00\x00\x00\x64\x71\x06"
    "\x58\x06\x00\x00\x00\x68\xc3\xa9\x6c\x6c\x6f\x71\x07\x58\x01\x00\x00\x00\x65\x71\x08\x43\x02\x00\x01\x71\x09\x58"
    "\x03\x00\x00\x00\x62\x69\x67\x71\x0a\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40\x58\x03\x00\x00\x00\x6e\x65\x67"
    "\x71\x0b\x4a\xff\xff\xff\xff\x75\x2e";
const char kProto4[] =
    "\x80\x04\x95\x6f\x00\x00\x00\x00\x00\x00\x00\x7d\x94\x28\x8c\x01\x61\x94\x4b\x01\x8c\x01\x62\x94\x5d\x94\x28\x47"
    "\x3f\xf8\x00\x00\x00\x00\x00\x00\x88\x89\x4e\x65\x8c\x01\x63\x94\x28\x4b\x01\x4a\xfe\xff\xff\xff\x4d\x2c\x01\x4a"
    "\x70\x11\x01\x00\x8a\x06\x00\x00\x00\x00\x00\xff\x74\x94\x8c\x01\x64\x94\x8c\x06\x68\xc3\xa9\x6c\x6c\x6f\x94\x8c"
    "\x01\x65\x94\x43\x02\x00\x01\x94\x8c\x03\x62\x69\x67\x94\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40\x8c\x03\x6e"
    "\x65\x67\x94\x4a\xff\xff\xff\xff\x75\x2e";

TEST(CheckpointPickle, PlainValuesInProtocols2To4) {
  for (const std::string& b : {bytes(kProto2), bytes(kProto3), bytes(kProto4)}) {
    const ValuePtr v = load(b);
    ASSERT_TRUE(v->is(Kind::Dict));
    ASSERT_EQ(v->dict.size(), 7u);
    EXPECT_EQ(v->get("a")->i, 1);
    const ValuePtr list = v->get("b");
    ASSERT_TRUE(list->is(Kind::List));
    ASSERT_EQ(list->items.size(), 4u);
    EXPECT_EQ(list->items[0]->f, 1.5);
    EXPECT_TRUE(list->items[1]->is(Kind::Bool) && list->items[1]->b);
    EXPECT_TRUE(list->items[2]->is(Kind::Bool) && !list->items[2]->b);
    EXPECT_TRUE(list->items[3]->is(Kind::None));
    const ValuePtr t = v->get("c");
    ASSERT_TRUE(t->is(Kind::Tuple));
    std::vector<int64_t> ints;
    for (auto& x : t->items) ints.push_back(x->i);
    EXPECT_EQ(ints, (std::vector<int64_t>{1, -2, 300, 70000, -(int64_t(1) << 40)}));
    EXPECT_EQ(v->get("d")->s, "h\xc3\xa9llo");
    const ValuePtr e = v->get("e");  // protocol 2 spells bytes as _codecs.encode(str, "latin1"): opaque
    EXPECT_TRUE(e->is(Kind::Bytes) ? e->s == std::string("\0\1", 2) : e->is(Kind::Object) && e->s == "_codecs.encode");
    EXPECT_TRUE(v->get("big")->is(Kind::Int) && v->get("big")->big);
    EXPECT_EQ(v->get("neg")->i, -1);
    EXPECT_EQ(v->get("missing"), nullptr);
  }
}

TEST(CheckpointPickle, MemoSharesObjectsAndLaterKeysReplaceEarlierOnes) {
  // x = [1]; pickle.dumps({"p": x, "q": x}, 2)
  const ValuePtr v = load(bytes("\x80\x02\x7d\x71\x00\x28\x58\x01\x00\x00\x00\x70\x71\x01\x5d\x71\x02\x4b\x01\x61\x58\x01"
                                "\x00\x00\x00\x71\x71\x03\x68\x02\x75\x2e"));
  EXPECT_EQ(v->get("p").get(), v->get("q").get());
  // {"k": 1, "k": 2} spelled with two SETITEMs: one entry, the last value.
  const ValuePtr d = load(bytes("\x80\x02}X\x01\x00\x00\x00kK\x01sX\x01\x00\x00\x00kK\x02s."));
  ASSERT_EQ(d->dict.size(), 1u);
  EXPECT_EQ(d->get("k")->i, 2);
}

TEST(CheckpointPickle, GlobalsOffTheAllowlistAreRefusedByName) {
  struct Case {
    const char* what;
    std::string pickle;
    const char* global;
  } cases[] = {
      // GLOBAL os.system + REDUCE("echo pwned")
      {"os.system", bytes("\x80\x02""cos\nsystem\nq\x00X\x0a\x00\x00\x00""echo pwnedq\x01\x85R."), "'os.system'"},
      // pickle.dumps(os.system): the reference alone is refused
      {"posix.system", bytes("\x80\x02\x63\x70\x6f\x73\x69\x78\x0a\x73\x79\x73\x74\x65\x6d\x0a\x71\x00\x2e"), "'posix.system'"},
      // protocol 4: STACK_GLOBAL builtins.eval + REDUCE
      {"builtins.eval", bytes("\x80\x04\x8c\x08""builtins\x94\x8c\x04""eval\x94\x93\x94\x8c\x04""1+1\x94\x85\x94R\x94."),
       "'builtins.eval'"},
      // hidden after legitimate content: {"a": OrderedDict(), "b": subprocess.Popen("x")}
      {"subprocess.Popen",
       bytes("\x80\x02}(X\x01\x00\x00\x00""accollections\nOrderedDict\n)RX\x01\x00\x00\x00""bcsubprocess\nPopen\n"
             "X\x01\x00\x00\x00x\x85Ru."),
       "'subprocess.Popen'"},
      // a torch-looking name that is not on the list
      {"torch.load", bytes("\x80\x02""ctorch\nload\n."), "'torch.load'"},
  };
  for (const Case& c : cases) {
    const std::string msg = error_of([&] { load(c.pickle); });
    EXPECT_NE(msg.find(c.global), std::string::npos) << c.what << ": " << msg;
    EXPECT_NE(msg.find("refusing global"), std::string::npos) << msg;
  }
  // Allowlisted names that are not callables of ours are not callable either.
  EXPECT_NE(error_of([&] { load(bytes("\x80\x02""ctorch\nFloatStorage\n)R.")); }).find("persistent id"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load(bytes("\x80\x02""ctorch._utils\n_rebuild_tensor_v2\nK\x01K\x02\x86R.")); })
                .find("_rebuild_tensor"),
            std::string::npos);
}

TEST(CheckpointPickle, InertMetadataBecomesOpaqueObjects) {
  // {ModelCheckpoint: numpy.dtype("f8", False, True) with BUILD state, "ns": argparse.Namespace()}
  const ValuePtr v = load(bytes("\x80\x02}(cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\n"
                                "cnumpy\ndtype\nX\x02\x00\x00\x00""f8\x89\x88\x87R(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff"
                                "\xff\xffJ\xff\xff\xff\xffK\x00tbX\x02\x00\x00\x00nscargparse\nNamespace\n)\x81}b"
                                "u."));
  ASSERT_EQ(v->dict.size(), 2u);
  EXPECT_TRUE(v->dict[0].first->is(Kind::Global));
  EXPECT_EQ(v->dict[0].first->s, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint");
  EXPECT_TRUE(v->dict[0].second->is(Kind::Object));
  EXPECT_EQ(v->dict[0].second->s, "numpy.dtype");
  EXPECT_TRUE(v->get("ns")->is(Kind::Object));
}

TEST(CheckpointPickle, DamagedAndUnsupportedInputIsAnError) {
  const std::string good = bytes(kProto2);
  for (size_t cut : {size_t(0), size_t(1), size_t(5), size_t(40), good.size() - 1})
    EXPECT_NE(error_of([&] { load(good.substr(0, cut)); }), "") << "cut at " << cut;
  struct Case {
    std::string pickle;
    const char* message;
  } cases[] = {
      {bytes("\x80\x02K\x01K\x02."), "STOP with 2 values"},
      {bytes("\x80\x02."), "STOP with 0 values"},
      {bytes("\x80\x02h\x05."), "memo entry 5"},
      {bytes("\x80\x02s."), "stack underflow"},
      {bytes("\x80\x02(K\x01."), "open MARK"},
      {bytes("\x80\x02K\x00K\x01K\x02s."), "SETITEM(S) on int"},
      {bytes("\x80\x02Q."), "stack underflow"},
      {bytes("\x80\x02K\x01Q."), "no persistent loader"},
      {bytes("\x80\x02\x82\x01."), "EXT1"},
      {bytes("\x80\x02(cos\nsystem\ni."), "refusing global"},
      {bytes("(S'abc'\np0\n."), "STRING"},
      {bytes("(dp0\nVa\np1\nVx\np2\ns."), "UNICODE"},  // pickle.dumps({"a": "x"}, 0)
      {bytes("\x80\x06."), "protocol 6"},
      {bytes("\x80\x02\xff."), "unknown opcode 0xff"},
      {bytes("\x80\x02X\xff\xff\xff\x7f""abc."), "truncated"},
  };
  for (const Case& c : cases) {
    const std::string msg = error_of([&] { load(c.pickle); });
    EXPECT_NE(msg.find(c.message), std::string::npos) << "expected '" << c.message << "', got '" << msg << "'";
  }
  // 100000 nested lists (built innermost-last, then APPENDed): refused, not a stack overflow.
  std::string deep = bytes("\x80\x02");
  for (int i = 0; i < 100000; ++i) deep += ']';
  for (int i = 0; i < 99999; ++i) deep += 'a';
  deep += '.';
  EXPECT_NE(error_of([&] { load(deep); }).find("nested deeper"), std::string::npos);
  // A list holding itself (through the memo) would never be released: refused.
  EXPECT_NE(error_of([&] { load(bytes("\x80\x02]q\x00h\x00""a.")); }).find("contains itself"), std::string::npos);
  // Protocol-0 ints, floats and memo work.
  const ValuePtr v = load(bytes("(I42\nI01\nL-7L\nF2.5\nI123456789012345678901234567890\np0\ng0\nl."));
  ASSERT_EQ(v->items.size(), 6u);
  EXPECT_EQ(v->items[0]->i, 42);
  EXPECT_TRUE(v->items[1]->is(Kind::Bool));
  EXPECT_EQ(v->items[2]->i, -7);
  EXPECT_EQ(v->items[3]->f, 2.5);
  EXPECT_TRUE(v->items[4]->big);
  EXPECT_EQ(v->items[5].get(), v->items[4].get());
}

TEST(CheckpointPickle, TensorViewsMustStayInsideTheirStorage) {
  // _rebuild_tensor_v2(storage of 6 floats, offset, size, stride, False, OrderedDict())
  auto rebuild = [](const std::string& offset, const std::string& size, const std::string& stride) {
    return bytes("\x80\x02""ctorch._utils\n_rebuild_tensor_v2\n(X\x01\x00\x00\x00sQ") + offset + size + stride +
           bytes("\x89""ccollections\nOrderedDict\n)RtR.");
  };
  const std::string k2 = bytes("K\x02"), k3 = bytes("K\x03"), k1 = bytes("K\x01"), k0 = bytes("K\x00");
  // [2, 3] contiguous at offset 0: fits exactly.
  const ValuePtr ok = load(rebuild(k0, k2 + k3 + bytes("\x86"), k3 + k1 + bytes("\x86")), float_storage_hook(6));
  ASSERT_TRUE(ok->is(Kind::Tensor));
  EXPECT_EQ(ok->tensor.shape(), (Shape{2, 3}));
  // One element too far, negative strides, overflowing sizes: refused.
  EXPECT_NE(error_of([&] { load(rebuild(k1, k2 + k3 + bytes("\x86"), k3 + k1 + bytes("\x86")), float_storage_hook(6)); })
                .find("more than the storage of 6 holds"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              load(rebuild(k0, k2 + bytes("\x85"), bytes("J\xff\xff\xff\xff\x85")), float_storage_hook(6));
            }).find("negative"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              load(rebuild(k0, bytes("\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40") + k2 + bytes("\x86"),
                           bytes("\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40") + k1 + bytes("\x86")),
                   float_storage_hook(6));
            }).find("overflows"),
            std::string::npos);
  // An empty view may sit anywhere.
  EXPECT_TRUE(load(rebuild(bytes("K\x09"), k0 + k3 + bytes("\x86"), k3 + k1 + bytes("\x86")), float_storage_hook(6))
                  ->is(Kind::Tensor));
}

// ---------------------------------------------------------------- zip

void write_bytes(const std::string& path, const std::string& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(b.data(), std::streamsize(b.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void le(std::string& s, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) s += char((v >> (8 * i)) & 0xFF);
}

// A ZIP64 archive written field by field (APPNOTE 4.3.7, 4.3.12, 4.3.14-16, 4.5.3): one stored entry
// whose sizes and offset live only in the ZIP64 extra fields, and ZIP64 end records.
std::string zip64_archive(const std::string& name, const std::string& data) {
  std::string z;
  le(z, 0x04034b50, 4);
  le(z, 45, 2);
  le(z, 0, 2);
  le(z, 0, 2);  // stored
  le(z, 0, 4);  // time, date
  le(z, 0, 4);  // crc (not checked)
  le(z, 0xFFFFFFFF, 4);
  le(z, 0xFFFFFFFF, 4);
  le(z, name.size(), 2);
  le(z, 20, 2);
  z += name;
  le(z, 1, 2);
  le(z, 16, 2);
  le(z, data.size(), 8);
  le(z, data.size(), 8);
  z += data;
  const uint64_t cd = z.size();
  le(z, 0x02014b50, 4);
  le(z, 45, 2);
  le(z, 45, 2);
  le(z, 0, 2);
  le(z, 0, 2);
  le(z, 0, 4);
  le(z, 0, 4);
  le(z, 0xFFFFFFFF, 4);
  le(z, 0xFFFFFFFF, 4);
  le(z, name.size(), 2);
  le(z, 28, 2);
  le(z, 0, 2);  // comment
  le(z, 0, 2);  // disk
  le(z, 0, 2);
  le(z, 0, 4);
  le(z, 0xFFFFFFFF, 4);  // local header offset -> extra
  z += name;
  le(z, 1, 2);
  le(z, 24, 2);
  le(z, data.size(), 8);
  le(z, data.size(), 8);
  le(z, 0, 8);
  const uint64_t cd_size = z.size() - cd, e64 = z.size();
  le(z, 0x06064b50, 4);
  le(z, 44, 8);
  le(z, 45, 2);
  le(z, 45, 2);
  le(z, 0, 4);
  le(z, 0, 4);
  le(z, 1, 8);
  le(z, 1, 8);
  le(z, cd_size, 8);
  le(z, cd, 8);
  le(z, 0x07064b50, 4);
  le(z, 0, 4);
  le(z, e64, 8);
  le(z, 1, 4);
  le(z, 0x06054b50, 4);
  le(z, 0, 4);
  le(z, 0xFFFF, 2);
  le(z, 0xFFFF, 2);
  le(z, 0xFFFFFFFF, 4);
  le(z, 0xFFFFFFFF, 4);
  le(z, 0, 2);
  return z;
}

TEST(CheckpointZip, Zip64RecordsAndExtraFields) {
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "sd_zip64.ckpt";
  // An archive holding one pickle: {"x": 1}.
  write_bytes(path, zip64_archive("archive/data.pkl", bytes("\x80\x02}X\x01\x00\x00\x00xK\x01s.")));
  const ZipArchive z = ZipArchive::open(path);
  ASSERT_EQ(z.entries().size(), 1u);
  EXPECT_EQ(z.entries()[0].name, "archive/data.pkl");
  EXPECT_EQ(z.entries()[0].size, 13u);
  const TorchCheckpoint ck = load_torch_checkpoint(path);
  EXPECT_EQ(ck.root->get("x")->i, 1);
  EXPECT_TRUE(ck.tensors.empty());
  EXPECT_EQ(ck.skipped, std::vector<std::string>{"x"});
  fs::remove(path);
}

TEST(CheckpointZip, DamagedArchivesAreErrorsNotCrashes) {
  const std::string good = read_bytes(kCkpt + "state.ckpt");
  const std::string path = ::testing::TempDir() + "sd_damaged.ckpt";
  // Truncations anywhere (the end record is gone or points outside the file).
  for (size_t cut : {good.size() / 2, good.size() - 1, size_t(30), size_t(4)}) {
    write_bytes(path, good.substr(0, cut));
    EXPECT_THROW(load_torch_checkpoint(path), Error) << cut;
  }
  // A central directory offset pointing into the data.
  std::string bad = good;
  const size_t eocd = bad.rfind(std::string("PK\x05\x06", 4));
  ASSERT_NE(eocd, std::string::npos);
  bad[eocd + 16] = char(bad[eocd + 16] + 1);
  write_bytes(path, bad);
  EXPECT_THROW(load_torch_checkpoint(path), Error);
  // Not a zip at all.
  write_bytes(path, "hello");
  EXPECT_NE(error_of([&] { load_torch_checkpoint(path); }).find("not a PyTorch checkpoint"), std::string::npos);
  // A deflated entry whose directory size lies.
  std::string deflated = read_bytes(kCkpt + "state_deflated.ckpt");
  const size_t cd = deflated.find(std::string("PK\x01\x02", 4));
  ASSERT_NE(cd, std::string::npos);
  deflated[cd + 24] = char(deflated[cd + 24] + 1);  // uncompressed size of the first entry (data.pkl)
  write_bytes(path, deflated);
  EXPECT_NE(error_of([&] { load_torch_checkpoint(path); }).find("inflates to"), std::string::npos);
  fs::remove(path);
}

// ---------------------------------------------------------------- torch.save files

::testing::AssertionResult bit_equal(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape())
    return ::testing::AssertionFailure() << a.str() << " vs " << b.str();
  const Tensor ca = contiguous_raw(a), cb = contiguous_raw(b);
  if (std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) != 0) return ::testing::AssertionFailure() << "values differ";
  return ::testing::AssertionSuccess();
}

nlohmann::json expected_json() {
  std::ifstream in(kCkpt + "expected.json");
  return nlohmann::json::parse(in);
}

void check_state(const TorchCheckpoint& ck, const std::vector<std::string>& keys) {
  const SafetensorsFile expected = SafetensorsFile::open(kCkpt + "expected.safetensors");
  const nlohmann::json meta = expected_json();
  std::map<std::string, Tensor> got;
  std::vector<std::string> order;
  for (auto& [k, t] : ck.tensors) {
    got[k] = t;
    order.push_back(k);
  }
  EXPECT_EQ(order, keys);  // file order
  for (const std::string& k : keys) {
    ASSERT_TRUE(got.count(k)) << k;
    EXPECT_TRUE(bit_equal(got[k], expected.get(k))) << k;
    EXPECT_EQ(got[k].strides(), meta["strides"][k].get<Shape>()) << k;
    EXPECT_EQ(got[k].offset(), meta["offsets"][k].get<int64_t>()) << k;
  }
  for (auto& pair : meta["shared"]) {
    const std::string a = pair[0], b = pair[1];
    if (got.count(a) && got.count(b)) EXPECT_EQ(got[a].storage().get(), got[b].storage().get()) << a << " / " << b;
  }
}

TEST(CheckpointCkpt, TorchSaveFileLoadsExactly) {
  const nlohmann::json meta = expected_json();
  const TorchCheckpoint ck = load_torch_checkpoint(kCkpt + "state.ckpt");
  check_state(ck, meta["keys"].get<std::vector<std::string>>());
  ASSERT_TRUE(ck.global_step.has_value());
  EXPECT_EQ(*ck.global_step, 5);
  EXPECT_TRUE(ck.skipped.empty());
  // The Lightning metadata is there, inert: the callback class as a dict key, numpy scalars as objects.
  const ValuePtr callbacks = ck.root->get("callbacks");
  ASSERT_TRUE(callbacks && callbacks->is(Kind::Dict));
  EXPECT_EQ(callbacks->dict.at(0).first->s, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint");
  const ValuePtr score = callbacks->dict.at(0).second->get("best_model_score");
  ASSERT_TRUE(score);
  EXPECT_TRUE(score->is(Kind::Object));
  EXPECT_EQ(ck.root->get("hparams")->get("betas")->items.at(1)->f, 0.999);
  EXPECT_TRUE(ck.root->get("hparams")->get("big")->big);

  // Tensors are views of the mapped file: writing one changes only this process's copy.
  Tensor f32 = ck.tensors[0].second;
  const float before = f32.data<float>()[0];
  f32.data<float>()[0] = before + 1;
  EXPECT_EQ(load_torch_checkpoint(kCkpt + "state.ckpt").tensors[0].second.data<float>()[0], before);
}

TEST(CheckpointCkpt, DeflatedAndProtocol4ArchivesLoadTheSame) {
  const nlohmann::json meta = expected_json();
  check_state(load_torch_checkpoint(kCkpt + "state_deflated.ckpt"), meta["keys"].get<std::vector<std::string>>());
  const TorchCheckpoint p4 = load_torch_checkpoint(kCkpt + "state_proto4.ckpt");
  check_state(p4, meta["proto4_keys"].get<std::vector<std::string>>());
  EXPECT_EQ(*p4.global_step, meta["proto4_global_step"].get<int64_t>());
}

TEST(CheckpointCkpt, MaliciousAndLegacyFilesAreRefused) {
  const std::string msg = error_of([] { load_torch_checkpoint(kCkpt + "malicious.ckpt"); });
  EXPECT_NE(msg.find("'os.system'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("nothing was executed"), std::string::npos) << msg;
  const std::string legacy = error_of([] { load_torch_checkpoint(kCkpt + "legacy.ckpt"); });
  EXPECT_NE(legacy.find("legacy"), std::string::npos) << legacy;
}

}  // namespace
}  // namespace sd
