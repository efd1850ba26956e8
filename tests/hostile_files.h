// Builders of malformed and hostile files, made at test time from a description instead of being
// committed as blobs: the reproducers of the untrusted-files report (deep pickles, pickle floods,
// zip bombs, broadcast views, self-containing dicts) and small valid containers to damage.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/formats/pickle_reader.h"

namespace sd::test {

// ---- zip (what torch.save writes: archive/data.pkl, archive/data/<key>, ...)
struct ZipItem {
  std::string name;
  std::string data;
  bool deflate = false;
  // When set, the directory claims this uncompressed size instead of the real one.
  int64_t declared_size = -1;
};
std::string zip_file(const std::vector<ZipItem>& items);
// A torch.save-style archive: archive/data.pkl = pickle, archive/data/<i> = storages[i].
std::string torch_zip(const std::string& pickle, const std::vector<std::string>& storages = {},
                      bool deflate_pickle = false);

// ---- pickles (protocol 2)
// A chain of `depth` lists, each appended into the previous one after that one is already inside
// its parent (so nesting grows below values that were adopted earlier).
std::string pickle_nested_chain(int depth);
// `count` empty lists appended to one list: many values out of one byte each.
std::string pickle_list_flood(int64_t count);
// A dict that holds itself under the key "self".
std::string pickle_self_dict();
// {"w": _rebuild_tensor_v2(<storage '0' of `storage_numel` floats>, 0, size, stride, False, {})}.
std::string pickle_tensor_view(int64_t storage_numel, const std::vector<int64_t>& size,
                               const std::vector<int64_t>& stride);

// Unpickler hooks resolving every persistent id to a fresh float32 storage of `numel` elements
// (what a .ckpt's archive/data/<key> entry would give), for unpickling tensor views in memory.
pickle::Hooks float_storage_hook(int64_t numel);

// ---- safetensors: a file with one tensor entry whose header is written as given.
std::string safetensors_with_header(const std::string& header_json, const std::string& data);

}  // namespace sd::test
