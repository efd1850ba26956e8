#include "tests/hostile_files.h"

#include <zlib.h>

#include <stdexcept>

namespace sd::test {

namespace {

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += char((v >> (8 * i)) & 0xFF);
}

std::string raw_deflate(const std::string& in) {
  z_stream zs{};
  if (deflateInit2(&zs, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw std::runtime_error("deflateInit2 failed");
  std::string out(deflateBound(&zs, uLong(in.size())), '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = uInt(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = uInt(out.size());
  const int rc = deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) throw std::runtime_error("deflate failed");
  return out;
}

// Protocol-2 pickle pieces.
std::string pk_str(const std::string& s) {
  std::string out = "X";
  put_le(out, s.size(), 4);
  return out + s;
}
std::string pk_int(int64_t v) {  // LONG1 with 8 bytes: any int64
  std::string out = "\x8a\x08";
  put_le(out, uint64_t(v), 8);
  return out;
}

}  // namespace

std::string zip_file(const std::vector<ZipItem>& items) {
  std::string out, central;
  for (const ZipItem& it : items) {
    const std::string body = it.deflate ? raw_deflate(it.data) : it.data;
    const uint32_t crc = uint32_t(crc32(0, reinterpret_cast<const Bytef*>(it.data.data()), uInt(it.data.size())));
    const uint64_t size = it.declared_size >= 0 ? uint64_t(it.declared_size) : it.data.size();
    const uint64_t local = out.size();
    auto common = [&](std::string& h) {
      put_le(h, 20, 2);                       // version needed
      put_le(h, 0, 2);                        // flags
      put_le(h, it.deflate ? 8 : 0, 2);       // method
      put_le(h, 0, 4);                        // time, date
      put_le(h, crc, 4);
      put_le(h, body.size(), 4);
      put_le(h, size, 4);
      put_le(h, it.name.size(), 2);
      put_le(h, 0, 2);                        // extra length
    };
    put_le(out, 0x04034b50, 4);
    common(out);
    out += it.name + body;
    put_le(central, 0x02014b50, 4);
    put_le(central, 20, 2);                   // version made by
    common(central);
    put_le(central, 0, 2);                    // comment length
    put_le(central, 0, 2);                    // disk
    put_le(central, 0, 2);                    // internal attributes
    put_le(central, 0, 4);                    // external attributes
    put_le(central, local, 4);
    central += it.name;
  }
  const uint64_t cd_offset = out.size();
  out += central;
  put_le(out, 0x06054b50, 4);
  put_le(out, 0, 4);                          // disk numbers
  put_le(out, items.size(), 2);
  put_le(out, items.size(), 2);
  put_le(out, central.size(), 4);
  put_le(out, cd_offset, 4);
  put_le(out, 0, 2);                          // comment length
  return out;
}

std::string torch_zip(const std::string& pickle, const std::vector<std::string>& storages, bool deflate_pickle) {
  std::vector<ZipItem> items{{"archive/data.pkl", pickle, deflate_pickle}};
  for (size_t i = 0; i < storages.size(); ++i) items.push_back({"archive/data/" + std::to_string(i), storages[i]});
  items.push_back({"archive/version", "3\n"});
  return zip_file(items);
}

std::string pickle_nested_chain(int depth) {
  std::string p("\x80\x02]q\x00", 5);  // the root list, memo 0
  // new list; memo 1 = it; APPEND it to the previous one; POP the previous; GET the new one.
  for (int i = 0; i < depth; ++i) p += "]q\x01" "a0h\x01";
  return p + std::string("0h\x00.", 4);
}

std::string pickle_list_flood(int64_t count) {
  std::string p = "\x80\x02](";
  p.append(size_t(count), ']');
  return p + "e.";
}

std::string pickle_self_dict() { return std::string("\x80\x02}q\x00", 5) + pk_str("self") + std::string("h\x00s.", 4); }

std::string pickle_tensor_view(int64_t storage_numel, const std::vector<int64_t>& size,
                               const std::vector<int64_t>& stride) {
  std::string p = "\x80\x02}" + pk_str("w") + "ctorch._utils\n_rebuild_tensor_v2\n(";
  p += "(" + pk_str("storage") + "ctorch\nFloatStorage\n" + pk_str("0") + pk_str("cpu") + pk_int(storage_numel) + "tQ";
  p += pk_int(0);
  p += "(";
  for (int64_t s : size) p += pk_int(s);
  p += "t(";
  for (int64_t s : stride) p += pk_int(s);
  p += "t\x89" "ccollections\nOrderedDict\n)R";
  return p + "tRs.";
}

pickle::Hooks float_storage_hook(int64_t numel) {
  pickle::Hooks h;
  h.persistent_load = [numel](const pickle::Value&) {
    auto v = std::make_shared<pickle::Value>();
    v->kind = pickle::Kind::Storage;
    v->dtype = DType::F32;
    v->numel = numel;
    v->storage = Storage::allocate(size_t(numel) * 4, Device::cpu());
    return v;
  };
  return h;
}

std::string safetensors_with_header(const std::string& header_json, const std::string& data) {
  std::string out;
  put_le(out, header_json.size(), 8);
  return out + header_json + data;
}

}  // namespace sd::test
