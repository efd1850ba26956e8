// A restricted reader of Python pickles, enough for PyTorch checkpoints (.ckpt, .pt, .bin) and
// nothing more. It never executes anything: it interprets the opcode stream itself and builds
// plain values (None, bools, ints, floats, strings, bytes, lists, tuples, dicts) and tensors.
//
// Globals (GLOBAL / STACK_GLOBAL) are checked against an allowlist when they are read:
//  * callables whose effect we reproduce ourselves when a REDUCE / NEWOBJ applies them:
//    collections.OrderedDict / defaultdict, builtins.dict / set / frozenset (and their Python 2
//    __builtin__ spellings), torch.Size, torch._utils._rebuild_tensor(_v2),
//    torch._utils._rebuild_parameter(_with_state), torch._tensor._rebuild_from_type_v2;
//  * storage types (torch.FloatStorage, HalfStorage, BFloat16Storage, DoubleStorage, IntStorage,
//    LongStorage, ByteStorage, BoolStorage), only meaningful inside persistent ids;
//  * inert training metadata found in real SD checkpoints (the top-level dict of a PyTorch
//    Lightning checkpoint): pytorch_lightning callbacks (ModelCheckpoint used as a dict key),
//    numpy scalars/arrays/dtypes (numpy.core.multiarray.scalar, numpy.dtype, numpy.dtypes.*,
//    _codecs.encode), argparse.Namespace, omegaconf containers, torch.device / dtypes,
//    torch.nn.Parameter / torch.Tensor as types. Applying one of these yields an opaque Object that
//    remembers only its class name: nothing is constructed, no argument is looked at.
// Any other global (os.system, builtins.eval, subprocess.Popen, ...) raises sd::Error naming it,
// at the moment it is read -- before anything could apply it.
//
// Supported opcodes: protocols 0-4 except the text string forms (STRING, UNICODE), INST, PERSID,
// the extension registry (EXT1/2/4) and protocol 5's out-of-band buffers, which tensor checkpoints
// never use; those raise sd::Error naming the opcode.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/dtype.h"
#include "runtime/storage.h"
#include "runtime/tensor.h"

namespace sd::pickle {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

enum class Kind { None, Bool, Int, Float, String, Bytes, List, Tuple, Dict, Global, Object, Storage, Tensor };
const char* kind_name(Kind k);

struct Value {
  Kind kind = Kind::None;
  bool b = false;
  int64_t i = 0;
  // An int beyond 64 bits (Python ints are unbounded): `i` is 0 and `s` holds its digits as the
  // pickle gave them (little-endian two's complement bytes, or decimal text). Never a size.
  bool big = false;
  double f = 0;
  std::string s;                                     // String / Bytes; Global and Object: "module.name"
  std::vector<ValuePtr> items;                       // List, Tuple
  std::vector<std::pair<ValuePtr, ValuePtr>> dict;   // Dict, insertion order
  // Storage: the bytes of one torch storage and its element type.
  std::shared_ptr<Storage> storage;
  DType dtype = DType::U8;
  int64_t numel = 0;
  Tensor tensor;                                     // Tensor

  Value() = default;
  Value(const Value&) = delete;
  Value& operator=(const Value&) = delete;
  // Releases nested containers with a loop, not recursion: a hostile pickle may nest far deeper
  // than the stack would survive, and the tree is released before the depth is even measured.
  ~Value();

  bool is(Kind k) const { return kind == k; }
  // Dict lookup by string key; nullptr when absent (or not a dict).
  ValuePtr get(const std::string& key) const;
  std::string describe() const;  // short, for error messages: "dict(3)", "str 'abc'", "global os.system"
};

struct Hooks {
  // BINPERSID: the persistent id (for torch: ('storage', StorageType, key, location, numel))
  // -> a value, normally a Storage. Required when the pickle holds persistent ids.
  std::function<ValuePtr(const Value& pid)> persistent_load;
};

// Interprets one pickle (up to its STOP); `where` names the source in error messages.
//
// Limits, each an sd::Error naming it (a checkpoint's pickle is a few hundred kilobytes of a few
// ten thousand values; these are far above that and far below what would exhaust memory):
//  * containers nested deeper than kMaxDepth, or containing themselves (a cycle would leak);
//  * more than kMaxValues values created, kMaxReferences references held (stack slots, memo
//    entries, container items), or kMaxStringBytes bytes of str/bytes data.
inline constexpr uint32_t kMaxDepth = 1000;
inline constexpr uint64_t kMaxValues = 1'000'000;
inline constexpr uint64_t kMaxReferences = 8'000'000;
inline constexpr uint64_t kMaxStringBytes = 256ull << 20;
ValuePtr unpickle(const char* data, size_t size, const Hooks& hooks, const std::string& where);

// The element type of a torch storage class name ("torch.HalfStorage" -> F16); nullopt for a name
// that is not an allowlisted storage type, sd::Error for a storage type sd has no dtype for.
std::optional<DType> storage_dtype(const std::string& global_name);

}  // namespace sd::pickle
