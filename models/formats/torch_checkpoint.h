// PyTorch checkpoint files (.ckpt, .pt, pytorch_model.bin) read without Python and without
// executing their pickle: the zip archive torch.save writes (models/formats/zip_archive.h), its
// data.pkl read by the restricted unpickler (models/formats/pickle_reader.h), and every storage
// (<archive>/data/<key>) viewed in place in the memory-mapped file.
//
// Tensors keep the file's dtype, shape, strides and storage offset, and tensors that shared a
// storage in Python share it here. The pre-1.6 (non-zip) torch format is refused with a message.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "models/formats/pickle_reader.h"
#include "runtime/tensor.h"

namespace sd {

struct TorchCheckpoint {
  std::string path;
  pickle::ValuePtr root;  // the whole unpickled object
  // The state dict: root["state_dict"] when the root is a dict holding one (Lightning / ldm
  // checkpoints), else the root dict itself. Tensor entries in file order.
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::vector<std::string> skipped;       // state-dict entries that are not tensors
  std::optional<int64_t> global_step;     // root["global_step"] when it is an int
};

TorchCheckpoint load_torch_checkpoint(const std::string& path);

}  // namespace sd
