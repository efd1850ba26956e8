// torch.save's zip layout: <archive>/data.pkl (the pickle), <archive>/data/<key> (one entry per
// storage, raw little-endian elements), <archive>/byteorder ("little", torch >= 1.10),
// <archive>/version, .data/serialization_id. <archive> is "archive" in current torch and the file
// stem in older versions, so it is found from the data.pkl entry.
#include "models/formats/torch_checkpoint.h"

#include <cstring>
#include <fstream>
#include <map>

#include "models/formats/zip_archive.h"
#include "runtime/error.h"

namespace sd {

namespace {

// The first bytes of a pre-1.6 torch file: a pickled magic number (protocol 2, LONG1 of 10 bytes).
bool looks_like_legacy_torch(const std::string& path) {
  static const unsigned char magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
  std::ifstream in(path, std::ios::binary);
  char buf[sizeof(magic)] = {};
  in.read(buf, sizeof(buf));
  return in.gcount() == std::streamsize(sizeof(buf)) && std::memcmp(buf, magic, sizeof(magic)) == 0;
}

}  // namespace

TorchCheckpoint load_torch_checkpoint(const std::string& path) {
  if (!ZipArchive::looks_like_zip(path)) {
    SD_CHECK(!looks_like_legacy_torch(path), "torch checkpoint '", path,
             "' uses the legacy (pre-1.6, non-zip) torch format, which is not supported: re-save it with a current "
             "torch.save, or convert it to safetensors");
    SD_FAIL("'", path, "' is not a PyTorch checkpoint (no zip archive)");
  }
  const ZipArchive zip = ZipArchive::open(path);

  const ZipArchive::Entry* pkl = nullptr;
  for (const ZipArchive::Entry& e : zip.entries()) {
    const size_t slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      SD_CHECK(!pkl, "torch checkpoint '", path, "' holds more than one data.pkl ('", pkl ? pkl->name : "", "', '",
               e.name, "')");
      pkl = &e;
    }
  }
  SD_CHECK(pkl, "torch checkpoint '", path, "' has no <archive>/data.pkl entry");
  const std::string prefix = pkl->name.substr(0, pkl->name.size() - std::strlen("data.pkl"));  // "archive/"
  if (const ZipArchive::Entry* bo = zip.find(prefix + "byteorder")) {
    ZipArchive::Bytes b = zip.read(*bo);
    const std::string order(b.data, b.size);
    SD_CHECK(order == "little", "torch checkpoint '", path, "' stores its tensors ", order,
             "-endian; only little-endian files are supported");
  }

  // One Storage per key, so tensors sharing a storage in Python share it here too.
  std::map<std::string, pickle::ValuePtr> storages;
  pickle::Hooks hooks;
  hooks.persistent_load = [&](const pickle::Value& pid) -> pickle::ValuePtr {
    // ('storage', StorageType, key, location, numel)
    SD_CHECK(pid.is(pickle::Kind::Tuple) && pid.items.size() == 5 && pid.items[0]->is(pickle::Kind::String) &&
                 pid.items[0]->s == "storage" && pid.items[1]->is(pickle::Kind::Global) &&
                 pid.items[2]->is(pickle::Kind::String) && pid.items[4]->is(pickle::Kind::Int) &&
                 !pid.items[4]->big,
             "torch checkpoint '", path, "': unexpected persistent id ", pid.describe());
    const std::string& key = pid.items[2]->s;
    auto cached = storages.find(key);
    if (cached != storages.end()) return cached->second;
    const std::optional<DType> dtype = pickle::storage_dtype(pid.items[1]->s);
    SD_CHECK(dtype, "torch checkpoint '", path, "': ", pid.items[1]->s, " is not a storage type");
    const int64_t numel = pid.items[4]->i;
    SD_CHECK(numel >= 0, "torch checkpoint '", path, "': storage '", key, "' has negative size ", numel);
    const ZipArchive::Entry* e = zip.find(prefix + "data/" + key);
    SD_CHECK(e, "torch checkpoint '", path, "': storage '", key, "' has no entry ", prefix, "data/", key);
    const size_t esize = dtype_size(*dtype);
    SD_CHECK(uint64_t(numel) <= e->size / esize, "torch checkpoint '", path, "': storage '", key, "' holds ", e->size,
             " bytes, too few for ", numel, " elements of ", dtype_name(*dtype));
    ZipArchive::Bytes bytes = zip.read(*e);
    const size_t nbytes = size_t(numel) * esize;
    std::shared_ptr<Storage> st;
    if (reinterpret_cast<uintptr_t>(bytes.data) % esize == 0) {
      // A view of the mapping (or of the inflated copy), which it keeps alive.
      auto owner = bytes.owner;
      st = std::make_shared<Storage>(bytes.data, nbytes, Device::cpu(), [owner]() {});
    } else {
      st = Storage::allocate(nbytes, Device::cpu());
      if (nbytes) std::memcpy(st->data(), bytes.data, nbytes);
    }
    auto v = std::make_shared<pickle::Value>();
    v->kind = pickle::Kind::Storage;
    v->storage = st;
    v->dtype = *dtype;
    v->numel = numel;
    storages[key] = v;
    return v;
  };

  // A real checkpoint's pickle is well under a megabyte; refuse a giant one before inflating it.
  constexpr uint64_t kMaxPickleBytes = 256ull << 20;
  SD_CHECK(pkl->size <= kMaxPickleBytes, "torch checkpoint '", path, "': ", pkl->name, " is ", pkl->size,
           " bytes, more than the ", kMaxPickleBytes, " bytes sd reads of a checkpoint's pickle");
  ZipArchive::Bytes pickle_bytes = zip.read(*pkl);
  TorchCheckpoint ck;
  ck.path = path;
  ck.root = pickle::unpickle(pickle_bytes.data, pickle_bytes.size, hooks, path);
  SD_CHECK(ck.root->is(pickle::Kind::Dict), "torch checkpoint '", path, "' holds ", ck.root->describe(),
           ", not a dict of tensors");
  pickle::ValuePtr sd = ck.root;
  if (pickle::ValuePtr inner = ck.root->get("state_dict"); inner && inner->is(pickle::Kind::Dict)) sd = inner;
  if (pickle::ValuePtr step = ck.root->get("global_step"); step && step->is(pickle::Kind::Int) && !step->big) ck.global_step = step->i;
  for (const auto& [k, v] : sd->dict) {
    if (!k->is(pickle::Kind::String)) {
      ck.skipped.push_back(k->describe());
      continue;
    }
    if (v->is(pickle::Kind::Tensor)) ck.tensors.emplace_back(k->s, v->tensor);
    else ck.skipped.push_back(k->s);
  }
  return ck;
}

}  // namespace sd
