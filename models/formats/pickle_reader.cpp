// The restricted unpickler: a stack machine over the opcodes of Python's pickle module
// (Lib/pickletools.py documents each one), with globals limited to an allowlist and every
// "call" (REDUCE, NEWOBJ, OBJ) interpreted by us instead of executed.
#include "models/formats/pickle_reader.h"

#include <cmath>
#include <cstring>
#include <unordered_map>

#include "runtime/error.h"

namespace sd::pickle {

namespace {

// ---------------------------------------------------------------- the allowlist

enum class GlobalRole {
  Dict,           // collections.OrderedDict, builtins.dict, collections.defaultdict
  Set,            // builtins.set / frozenset -> a list of the items
  Size,           // torch.Size -> a tuple
  RebuildTensor,  // torch._utils._rebuild_tensor_v2 / _rebuild_tensor
  RebuildParam,   // torch._utils._rebuild_parameter(_with_state): the tensor itself
  RebuildFromType,  // torch._tensor._rebuild_from_type_v2(func, type, args, state)
  StorageType,    // torch.FloatStorage, ...: only inside persistent ids
  Opaque,         // inert metadata: applying it gives an Object, nothing else
};

struct AllowedGlobal {
  const char* name;
  GlobalRole role;
};

const AllowedGlobal kAllowed[] = {
    {"collections.OrderedDict", GlobalRole::Dict},
    {"collections.defaultdict", GlobalRole::Dict},
    {"builtins.dict", GlobalRole::Dict},
    {"__builtin__.dict", GlobalRole::Dict},
    {"builtins.set", GlobalRole::Set},
    {"builtins.frozenset", GlobalRole::Set},
    {"__builtin__.set", GlobalRole::Set},
    {"__builtin__.frozenset", GlobalRole::Set},
    {"torch.Size", GlobalRole::Size},
    {"torch._utils._rebuild_tensor_v2", GlobalRole::RebuildTensor},
    {"torch._utils._rebuild_tensor", GlobalRole::RebuildTensor},
    {"torch._utils._rebuild_parameter", GlobalRole::RebuildParam},
    {"torch._utils._rebuild_parameter_with_state", GlobalRole::RebuildParam},
    {"torch._tensor._rebuild_from_type_v2", GlobalRole::RebuildFromType},
    // Inert metadata of Lightning / numpy / argparse / omegaconf in training checkpoints.
    {"pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint", GlobalRole::Opaque},
    {"pytorch_lightning.callbacks.model_checkpoint", GlobalRole::Opaque},
    {"pytorch_lightning.callbacks.early_stopping.EarlyStopping", GlobalRole::Opaque},
    {"lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint", GlobalRole::Opaque},
    {"numpy.core.multiarray.scalar", GlobalRole::Opaque},
    {"numpy.core.multiarray._reconstruct", GlobalRole::Opaque},
    {"numpy._core.multiarray.scalar", GlobalRole::Opaque},
    {"numpy._core.multiarray._reconstruct", GlobalRole::Opaque},
    {"numpy.dtype", GlobalRole::Opaque},
    {"numpy.ndarray", GlobalRole::Opaque},
    {"_codecs.encode", GlobalRole::Opaque},
    {"argparse.Namespace", GlobalRole::Opaque},
    {"torch.device", GlobalRole::Opaque},
    {"torch.Tensor", GlobalRole::Opaque},
    {"torch.nn.parameter.Parameter", GlobalRole::Opaque},
    {"torch.nn.modules.container.ParameterDict", GlobalRole::Opaque},
};

// Whole families of inert names: numpy dtype classes, omegaconf containers and nodes, torch
// dtype objects (torch.float16 ...).
const char* const kOpaquePrefixes[] = {"numpy.dtypes.", "omegaconf.dictconfig.", "omegaconf.listconfig.",
                                       "omegaconf.base.", "omegaconf.nodes."};

struct StorageName {
  const char* name;
  std::optional<DType> dtype;  // nullopt: a real torch storage type sd has no dtype for
  const char* torch_dtype;
};
const StorageName kStorages[] = {
    {"torch.FloatStorage", DType::F32, "float32"},      {"torch.HalfStorage", DType::F16, "float16"},
    {"torch.BFloat16Storage", DType::BF16, "bfloat16"}, {"torch.DoubleStorage", DType::F64, "float64"},
    {"torch.IntStorage", DType::I32, "int32"},          {"torch.LongStorage", DType::I64, "int64"},
    {"torch.ByteStorage", DType::U8, "uint8"},          {"torch.BoolStorage", DType::Bool, "bool"},
    {"torch.CharStorage", std::nullopt, "int8"},        {"torch.ShortStorage", std::nullopt, "int16"},
    {"torch.ComplexFloatStorage", std::nullopt, "complex64"},
    {"torch.ComplexDoubleStorage", std::nullopt, "complex128"},
    {"torch.UntypedStorage", std::nullopt, "untyped bytes"},
};

const char* const kTorchDtypes[] = {"float32", "float16", "bfloat16", "float64", "int64", "int32",
                                    "uint8",   "bool",    "float",    "half",    "double", "long"};

std::optional<GlobalRole> classify(const std::string& name) {
  for (const AllowedGlobal& g : kAllowed)
    if (name == g.name) return g.role;
  for (const StorageName& s : kStorages)
    if (name == s.name) return GlobalRole::StorageType;
  for (const char* p : kOpaquePrefixes)
    if (name.rfind(p, 0) == 0) return GlobalRole::Opaque;
  for (const char* d : kTorchDtypes)
    if (name == std::string("torch.") + d) return GlobalRole::Opaque;
  return std::nullopt;
}

// Moves the children of `v` (items, dict entries) to `out`.
void take_children(Value& v, std::vector<ValuePtr>& out) {
  for (ValuePtr& c : v.items) out.push_back(std::move(c));
  for (auto& [k, c] : v.dict) {
    out.push_back(std::move(k));
    out.push_back(std::move(c));
  }
  v.items.clear();
  v.dict.clear();
}

// ---------------------------------------------------------------- opcodes

enum Op : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F', INT = 'I', BININT = 'J',
  BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N', PERSID = 'P', BINPERSID = 'Q', REDUCE = 'R',
  STRING = 'S', BINSTRING = 'T', SHORT_BINSTRING = 'U', UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a',
  BUILD = 'b', GLOBAL = 'c', DICT = 'd', EMPTY_DICT = '}', APPENDS = 'e', GET = 'g', BINGET = 'h', INST = 'i',
  LONG_BINGET = 'j', LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q', LONG_BINPUT = 'r',
  SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
  PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84, TUPLE1 = 0x85, TUPLE2 = 0x86,
  TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b,
  BINBYTES = 'B', SHORT_BINBYTES = 'C',
  SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, EMPTY_SET = 0x8f, ADDITEMS = 0x90,
  FROZENSET = 0x91, NEWOBJ_EX = 0x92, STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95,
  BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97, READONLY_BUFFER = 0x98,
};

class Machine {
 public:
  Machine(const char* data, size_t size, const Hooks& hooks, const std::string& where)
      : p_(data), end_(data + size), hooks_(hooks), where_(where) {}
  // After a failure the values may hold cycles (a dict put into itself): empty every container
  // so that all of them are released.
  ~Machine() {
    if (done_) return;
    std::vector<ValuePtr> drop;
    for (const ValuePtr& c : containers_) take_children(*c, drop);
  }

  ValuePtr run();

 private:
  template <class... Args>
  [[noreturn]] void fail(const Args&... args) const {
    SD_FAIL("pickle: ", where_, ": ", args..., " (at byte ", pos(), ")");
  }
  size_t pos() const { return size_t(p_ - start_); }

  // ---- input
  const char* take(uint64_t n) {
    if (uint64_t(end_ - p_) < n) fail("truncated: needs ", n, " more bytes, ", end_ - p_, " left");
    const char* at = p_;
    p_ += n;
    return at;
  }
  uint64_t le(int n) {
    const char* b = take(uint64_t(n));
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | uint8_t(b[i]);
    return v;
  }
  std::string line() {
    const char* nl = static_cast<const char*>(std::memchr(p_, '\n', size_t(end_ - p_)));
    if (!nl) fail("truncated: a text argument lacks its newline");
    std::string s(p_, size_t(nl - p_));
    p_ = nl + 1;
    return s;
  }
  // A protocol-0 integer line; nullopt when it is a valid integer beyond 64 bits.
  std::optional<int64_t> parse_int_line(const std::string& text) {
    std::string t = text;
    if (!t.empty() && t.back() == 'L') t.pop_back();  // protocol-0 LONG
    if (t == "00") return 0;                          // INT spellings of False/True
    if (t == "01") return 1;
    if (t.empty()) fail("empty integer");
    size_t i = (t[0] == '-' || t[0] == '+') ? 1 : 0;
    if (i == t.size()) fail("bad integer '", text, "'");
    unsigned __int128 v = 0;
    for (; i < t.size(); ++i) {
      if (t[i] < '0' || t[i] > '9') fail("bad integer '", text, "'");
      if (v <= (unsigned __int128)INT64_MAX + 1) v = v * 10 + unsigned(t[i] - '0');
    }
    if (v > (unsigned __int128)INT64_MAX + (t[0] == '-' ? 1 : 0)) return std::nullopt;
    if (t[0] == '-') return v == (unsigned __int128)INT64_MAX + 1 ? INT64_MIN : -int64_t(v);
    return int64_t(v);
  }
  uint64_t memo_index(const std::string& text) {
    const std::optional<int64_t> v = parse_int_line(text);
    if (!v || *v < 0) fail("bad memo index '", text, "'");
    return uint64_t(*v);
  }

  // ---- budget: a hostile pickle could otherwise make millions of values from a few bytes of input
  void count_reference(uint64_t n = 1) {
    references_ += n;
    if (references_ > kMaxReferences)
      fail("more than ", kMaxReferences, " references to pickle values (stack, memo, container items): not a "
           "checkpoint sd reads");
  }
  ValuePtr make(Kind k) {
    if (++values_ > kMaxValues) fail("more than ", kMaxValues, " pickle values: not a checkpoint sd reads");
    auto v = std::make_shared<Value>();
    v->kind = k;
    if (k == Kind::List || k == Kind::Tuple || k == Kind::Dict) containers_.push_back(v);
    return v;
  }
  // Refuses cycles (they would leak) and nesting deeper than kMaxDepth, by an iterative walk.
  void check_tree(const ValuePtr& root);

  // ---- stack
  void push(ValuePtr v) {
    count_reference();
    stack_.push_back(std::move(v));
  }
  ValuePtr pop() {
    if (stack_.size() <= floor()) fail("stack underflow");
    ValuePtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  ValuePtr& top() {
    if (stack_.size() <= floor()) fail("stack underflow");
    return stack_.back();
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  // Items pushed since the last MARK, which is removed.
  std::vector<ValuePtr> pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> out(std::make_move_iterator(stack_.begin() + ptrdiff_t(m)),
                              std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return out;
  }

  // ---- values
  // `parent` now holds `child` (depth and cycles are checked once, at the end: see check_tree).
  void adopt(Value&, const ValuePtr&) { count_reference(); }
  ValuePtr str(Kind k, const char* data, uint64_t n) {
    string_bytes_ += n;
    if (string_bytes_ > kMaxStringBytes)
      fail("more than ", kMaxStringBytes, " bytes of strings: not a checkpoint sd reads");
    auto v = make(k);
    v->s.assign(data, size_t(n));
    return v;
  }
  ValuePtr integer(int64_t i) {
    auto v = make(Kind::Int);
    v->i = i;
    return v;
  }
  ValuePtr tuple(std::vector<ValuePtr> items) {
    auto v = make(Kind::Tuple);
    for (const ValuePtr& i : items) adopt(*v, i);
    v->items = std::move(items);
    return v;
  }
  ValuePtr list(std::vector<ValuePtr> items) {
    auto v = make(Kind::List);
    for (const ValuePtr& i : items) adopt(*v, i);
    v->items = std::move(items);
    return v;
  }
  ValuePtr global(const std::string& module, const std::string& name) {
    const std::string full = module + "." + name;
    if (!classify(full))
      fail("refusing global '", full, "': not on the allowlist of tensor-checkpoint globals (nothing was executed)");
    auto v = make(Kind::Global);
    v->s = full;
    return v;
  }
  void memo_put(uint64_t idx) {
    count_reference();
    memo_[idx] = top();
  }
  ValuePtr memo_get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) fail("memo entry ", idx, " was never stored");
    return it->second;
  }
  ValuePtr big_integer(std::string digits) {
    auto v = make(Kind::Int);
    v->big = true;
    v->s = std::move(digits);
    return v;
  }
  ValuePtr long_bytes(const char* b, uint64_t n) {
    // Little-endian two's complement of n bytes; wider than 64 bits only by sign extension, or big.
    if (n == 0) return integer(0);
    const bool neg = uint8_t(b[n - 1]) & 0x80;
    for (uint64_t i = 8; i < n; ++i)
      if (uint8_t(b[i]) != (neg ? 0xFF : 0x00)) return big_integer(std::string(b, size_t(n)));
    uint64_t v = neg ? ~uint64_t(0) : 0;
    for (uint64_t i = std::min<uint64_t>(n, 8); i-- > 0;) v = (v << 8) | uint8_t(b[i]);
    if (n < 8 && neg) v |= ~uint64_t(0) << (8 * n);
    if (n >= 8 && ((v >> 63) != 0) != neg) return big_integer(std::string(b, size_t(n)));
    return integer(int64_t(v));
  }

  void set_items(const ValuePtr& target, std::vector<ValuePtr> kv) {
    if (kv.size() % 2) fail("SETITEMS with an odd number of items");
    if (target->is(Kind::Object)) return;  // an opaque object's __setitem__: never run
    if (!target->is(Kind::Dict)) fail("SETITEM(S) on ", target->describe());
    // Later assignments to a str/int key replace earlier ones, as in a Python dict (an index per
    // dict keeps this linear for state dicts of thousands of entries).
    auto& index = dict_index_[target.get()];
    for (size_t i = 0; i < kv.size(); i += 2) {
      const ValuePtr& k = kv[i];
      adopt(*target, k);
      adopt(*target, kv[i + 1]);
      if (k->is(Kind::String) || k->is(Kind::Int)) {
        std::string id(1, k->is(Kind::String) ? 's' : k->big ? 'b' : 'i');
        id.append(k->is(Kind::Int) && !k->big ? std::to_string(k->i) : k->s);
        auto [it, inserted] = index.emplace(std::move(id), target->dict.size());
        if (!inserted) {
          target->dict[it->second].second = kv[i + 1];
          continue;
        }
      }
      target->dict.emplace_back(k, kv[i + 1]);
    }
  }
  void append_items(const ValuePtr& target, std::vector<ValuePtr> items) {
    if (target->is(Kind::Object)) return;
    if (!target->is(Kind::List)) fail("APPEND(S)/ADDITEMS on ", target->describe());
    for (auto& v : items) {
      adopt(*target, v);
      target->items.push_back(std::move(v));
    }
  }

  // REDUCE / NEWOBJ / OBJ: apply an allowlisted global to arguments, by our own rules.
  ValuePtr apply(const ValuePtr& callable, const ValuePtr& args);
  ValuePtr rebuild_tensor(const std::vector<ValuePtr>& a);

  const char* p_;
  const char* start_ = p_;
  const char* end_;
  const Hooks& hooks_;
  const std::string& where_;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, ValuePtr> memo_;
  std::unordered_map<const Value*, std::unordered_map<std::string, size_t>> dict_index_;
  std::vector<ValuePtr> containers_;  // every list, tuple and dict made: checked for cycles, emptied on failure
  struct TreeInfo {
    uint8_t state = 0;
    uint32_t depth = 0;
  };
  std::unordered_map<const Value*, TreeInfo> tree_info_;
  uint64_t values_ = 0, references_ = 0, string_bytes_ = 0;
  bool done_ = false;
};

void Machine::check_tree(const ValuePtr& root) {
  // Post-order walk with an explicit stack. state: 1 = on the current path, 2 = finished (its
  // depth known, kept across calls so each value is walked once). Meeting a value on the
  // current path again is a cycle.
  auto& info = tree_info_;
  if (info[root.get()].state == 2) return;
  struct Frame {
    const Value* v;
    size_t next;  // next child index: items first, then dict keys and values
  };
  auto child = [](const Value* v, size_t i) -> const Value* {
    if (i < v->items.size()) return v->items[i].get();
    i -= v->items.size();
    if (i / 2 < v->dict.size()) return (i % 2 ? v->dict[i / 2].second : v->dict[i / 2].first).get();
    return nullptr;
  };
  std::vector<Frame> path{{root.get(), 0}};
  info[root.get()].state = 1;
  while (!path.empty()) {
    Frame& f = path.back();
    const Value* c = child(f.v, f.next++);
    if (!c) {
      TreeInfo& done = info[f.v];
      done.state = 2;
      const uint32_t d = done.depth;
      path.pop_back();
      if (!path.empty()) {
        TreeInfo& parent = info[path.back().v];
        parent.depth = std::max(parent.depth, d + 1);
      }
      continue;
    }
    if (c->items.empty() && c->dict.empty()) continue;  // a leaf: depth 0, no cycle through it
    TreeInfo& ci = info[c];
    if (ci.state == 1) fail("a container contains itself (", c->describe(), "): not a checkpoint sd reads");
    if (ci.state == 2) {
      TreeInfo& parent = info[f.v];
      parent.depth = std::max(parent.depth, ci.depth + 1);
      continue;
    }
    ci.state = 1;
    if (path.size() > kMaxDepth) fail("containers nested deeper than ", kMaxDepth);
    path.push_back({c, 0});
  }
}

int64_t as_int(const ValuePtr& v, const char* what, const std::string& where) {
  SD_CHECK(v && v->is(Kind::Int) && !v->big, "pickle: ", where, ": ", what, " must be an int, got ", v ? v->describe() : "null");
  return v->i;
}

ValuePtr Machine::rebuild_tensor(const std::vector<ValuePtr>& a) {
  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  if (a.size() < 4) fail("_rebuild_tensor needs (storage, offset, size, stride), got ", a.size(), " arguments");
  const ValuePtr& st = a[0];
  if (!st->is(Kind::Storage)) fail("_rebuild_tensor: first argument is ", st->describe(), ", not a storage");
  const int64_t offset = as_int(a[1], "storage offset", where_);
  if (!a[2]->is(Kind::Tuple) || !a[3]->is(Kind::Tuple) || a[2]->items.size() != a[3]->items.size())
    fail("_rebuild_tensor: size and stride must be tuples of the same length");
  Shape shape, strides;
  for (size_t i = 0; i < a[2]->items.size(); ++i) {
    shape.push_back(as_int(a[2]->items[i], "size", where_));
    strides.push_back(as_int(a[3]->items[i], "stride", where_));
  }
  // The view must lie inside the storage; computed with overflow checks since the numbers are
  // the file's.
  if (offset < 0) fail("_rebuild_tensor: negative storage offset ", offset);
  bool empty = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0 || strides[i] < 0) fail("_rebuild_tensor: negative size or stride in ", shape_str(shape), " / ", shape_str(strides));
    if (shape[i] == 0) empty = true;
  }
  if (!empty) {
    // A checkpoint's tensors never overlap themselves: more elements than the storage holds past
    // the offset would be a broadcast view (stride 0) that makes a huge tensor out of a few bytes.
    int64_t numel = 1;
    for (int64_t d : shape)
      if (__builtin_mul_overflow(numel, d, &numel))
        fail("_rebuild_tensor: the element count of ", shape_str(shape), " overflows");
    if (offset > st->numel || numel > st->numel - offset)
      fail("_rebuild_tensor: view ", shape_str(shape), " strides ", shape_str(strides), " offset ", offset, " has ",
           numel, " elements, more than the storage of ", st->numel, " holds past the offset (an overlapping view)");
    int64_t last = offset;
    for (size_t i = 0; i < shape.size(); ++i) {
      int64_t span = 0;
      if (__builtin_mul_overflow(shape[i] - 1, strides[i], &span) || __builtin_add_overflow(last, span, &last))
        fail("_rebuild_tensor: view ", shape_str(shape), " strides ", shape_str(strides), " overflows");
    }
    if (last >= st->numel)
      fail("_rebuild_tensor: view ", shape_str(shape), " strides ", shape_str(strides), " offset ", offset,
           " reaches element ", last, " of a storage of ", st->numel);
  }
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = st->storage;
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = st->dtype;
  auto v = make(Kind::Tensor);
  v->tensor = Tensor(std::move(impl));
  return v;
}

ValuePtr Machine::apply(const ValuePtr& callable, const ValuePtr& args) {
  if (!callable->is(Kind::Global)) fail("cannot call ", callable->describe());
  const GlobalRole role = *classify(callable->s);
  static const std::vector<ValuePtr> kNoArgs;
  const std::vector<ValuePtr>& a = args && args->is(Kind::Tuple) ? args->items : kNoArgs;
  if (args && !args->is(Kind::Tuple)) fail("arguments of ", callable->s, " are ", args->describe(), ", not a tuple");
  switch (role) {
    case GlobalRole::Dict: {
      auto d = make(Kind::Dict);
      // OrderedDict([(k, v), ...]) (protocol 0/1 style); defaultdict(factory) has no items.
      if (callable->s != "collections.defaultdict" && !a.empty() && a[0]->is(Kind::List)) {
        std::vector<ValuePtr> kv;
        for (const ValuePtr& pair : a[0]->items) {
          if (!pair->is(Kind::Tuple) || pair->items.size() != 2) fail(callable->s, ": items must be pairs");
          kv.push_back(pair->items[0]);
          kv.push_back(pair->items[1]);
        }
        set_items(d, std::move(kv));
      }
      return d;
    }
    case GlobalRole::Set:
      return list(!a.empty() && (a[0]->is(Kind::List) || a[0]->is(Kind::Tuple)) ? a[0]->items
                                                                                : std::vector<ValuePtr>{});
    case GlobalRole::Size: {
      if (a.size() != 1 || !(a[0]->is(Kind::Tuple) || a[0]->is(Kind::List))) fail("torch.Size needs one tuple");
      return tuple(a[0]->items);
    }
    case GlobalRole::RebuildTensor:
      return rebuild_tensor(a);
    case GlobalRole::RebuildParam:
      if (a.empty() || !a[0]->is(Kind::Tensor)) fail(callable->s, ": first argument is not a tensor");
      return a[0];
    case GlobalRole::RebuildFromType: {
      // (func, type, args, state): a tensor subclass; rebuild the plain tensor with func(*args).
      if (a.size() < 3) fail(callable->s, " needs (func, type, args, state)");
      // func must rebuild a plain tensor itself (no nesting of this wrapper).
      if (!a[0]->is(Kind::Global) || (*classify(a[0]->s) != GlobalRole::RebuildTensor &&
                                      *classify(a[0]->s) != GlobalRole::RebuildParam))
        fail(callable->s, ": the rebuild function is ", a[0]->describe());
      ValuePtr t = apply(a[0], a[2]);
      if (!t->is(Kind::Tensor)) fail(callable->s, " did not produce a tensor");
      return t;
    }
    case GlobalRole::StorageType:
      fail("storage type ", callable->s, " may only appear in a persistent id");
    case GlobalRole::Opaque: {
      auto o = make(Kind::Object);
      o->s = callable->s;
      return o;
    }
  }
  fail("unreachable");
}

ValuePtr Machine::run() {
  start_ = p_;
  while (true) {
    const uint8_t op = uint8_t(*take(1));
    switch (op) {
      case PROTO: {
        const uint64_t proto = le(1);
        if (proto > 5) fail("unsupported pickle protocol ", proto);
        break;
      }
      case FRAME: le(8); break;  // a framing hint only: the data is contiguous anyway
      case STOP: {
        if (!marks_.empty()) fail("STOP with an open MARK");
        if (stack_.size() != 1) fail("STOP with ", stack_.size(), " values on the stack (expected 1)");
        // Every container made, kept or dropped, must be free of cycles to be released.
        for (const ValuePtr& c : containers_) check_tree(c);
        done_ = true;
        return stack_.back();
      }
      case MARK:
        count_reference();
        marks_.push_back(stack_.size());
        break;
      case POP:
        if (!marks_.empty() && stack_.size() == marks_.back()) marks_.pop_back();  // POP of a MARK
        else pop();
        break;
      case POP_MARK: pop_mark(); break;
      case DUP: push(top()); break;

      case NONE: push(make(Kind::None)); break;
      case NEWTRUE:
      case NEWFALSE: {
        auto v = make(Kind::Bool);
        v->b = op == NEWTRUE;
        push(v);
        break;
      }
      case BININT: push(integer(int32_t(uint32_t(le(4))))); break;
      case BININT1: push(integer(int64_t(le(1)))); break;
      case BININT2: push(integer(int64_t(le(2)))); break;
      case INT:
      case LONG: {
        const std::string t = line();
        const std::optional<int64_t> v = parse_int_line(t);
        if (op == INT && (t == "00" || t == "01")) {
          auto b = make(Kind::Bool);
          b->b = t == "01";
          push(b);
        } else {
          push(v ? integer(*v) : big_integer(t));
        }
        break;
      }
      case LONG1: {
        const uint64_t n = le(1);
        push(long_bytes(take(n), n));
        break;
      }
      case LONG4: {
        const int32_t n = int32_t(uint32_t(le(4)));
        if (n < 0) fail("negative LONG4 length");
        push(long_bytes(take(uint64_t(n)), uint64_t(n)));
        break;
      }
      case BINFLOAT: {
        uint64_t bits = 0;
        const char* b = take(8);
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | uint8_t(b[i]);  // big-endian
        auto v = make(Kind::Float);
        std::memcpy(&v->f, &bits, 8);
        push(v);
        break;
      }
      case FLOAT: {
        const std::string t = line();
        char* endp = nullptr;
        auto v = make(Kind::Float);
        v->f = std::strtod(t.c_str(), &endp);
        if (t.empty() || endp != t.c_str() + t.size()) fail("bad float '", t, "'");
        push(v);
        break;
      }

      case BINUNICODE: {
        const uint64_t n = le(4);
        push(str(Kind::String, take(n), n));
        break;
      }
      case SHORT_BINUNICODE: {
        const uint64_t n = le(1);
        push(str(Kind::String, take(n), n));
        break;
      }
      case BINUNICODE8: {
        const uint64_t n = le(8);
        push(str(Kind::String, take(n), n));
        break;
      }
      case BINSTRING: {  // Python 2 str: bytes that Python 3 decodes (ASCII in practice)
        const int32_t n = int32_t(uint32_t(le(4)));
        if (n < 0) fail("negative BINSTRING length");
        push(str(Kind::String, take(uint64_t(n)), uint64_t(n)));
        break;
      }
      case SHORT_BINSTRING: {
        const uint64_t n = le(1);
        push(str(Kind::String, take(n), n));
        break;
      }
      case BINBYTES: {
        const uint64_t n = le(4);
        push(str(Kind::Bytes, take(n), n));
        break;
      }
      case SHORT_BINBYTES: {
        const uint64_t n = le(1);
        push(str(Kind::Bytes, take(n), n));
        break;
      }
      case BINBYTES8: {
        const uint64_t n = le(8);
        push(str(Kind::Bytes, take(n), n));
        break;
      }

      case EMPTY_TUPLE: push(tuple({})); break;
      case TUPLE: push(tuple(pop_mark())); break;
      case TUPLE1: {
        auto a = pop();
        push(tuple({a}));
        break;
      }
      case TUPLE2: {
        auto b = pop(), a = pop();
        push(tuple({a, b}));
        break;
      }
      case TUPLE3: {
        auto c = pop(), b = pop(), a = pop();
        push(tuple({a, b, c}));
        break;
      }
      case EMPTY_LIST: push(make(Kind::List)); break;
      case LIST: push(list(pop_mark())); break;
      case APPEND: {
        auto v = pop();
        append_items(top(), {v});
        break;
      }
      case APPENDS: {
        auto items = pop_mark();
        append_items(top(), std::move(items));
        break;
      }
      case EMPTY_SET: push(make(Kind::List)); break;
      case ADDITEMS: {
        auto items = pop_mark();
        append_items(top(), std::move(items));
        break;
      }
      case FROZENSET: push(list(pop_mark())); break;
      case EMPTY_DICT: push(make(Kind::Dict)); break;
      case DICT: {
        auto d = make(Kind::Dict);
        set_items(d, pop_mark());
        push(d);
        break;
      }
      case SETITEM: {
        auto v = pop(), k = pop();
        set_items(top(), {k, v});
        break;
      }
      case SETITEMS: {
        auto kv = pop_mark();
        set_items(top(), std::move(kv));
        break;
      }

      case PUT: memo_put(memo_index(line())); break;
      case BINPUT: memo_put(le(1)); break;
      case LONG_BINPUT: memo_put(le(4)); break;
      case MEMOIZE: memo_put(memo_.size()); break;
      case GET: push(memo_get(memo_index(line()))); break;
      case BINGET: push(memo_get(le(1))); break;
      case LONG_BINGET: push(memo_get(le(4))); break;

      case GLOBAL: {
        const std::string module = line();
        const std::string name = line();
        push(global(module, name));
        break;
      }
      case STACK_GLOBAL: {
        auto name = pop(), module = pop();
        if (!name->is(Kind::String) || !module->is(Kind::String)) fail("STACK_GLOBAL needs two strings");
        push(global(module->s, name->s));
        break;
      }
      case REDUCE: {
        auto args = pop(), callable = pop();
        push(apply(callable, args));
        break;
      }
      case NEWOBJ: {
        auto args = pop(), cls = pop();
        push(apply(cls, args));
        break;
      }
      case NEWOBJ_EX: {
        pop();  // kwargs: no allowlisted callable takes any
        auto args = pop(), cls = pop();
        push(apply(cls, args));
        break;
      }
      case OBJ: {
        auto items = pop_mark();
        if (items.empty()) fail("OBJ without a class");
        ValuePtr cls = items[0];
        items.erase(items.begin());
        push(apply(cls, tuple(std::move(items))));
        break;
      }
      case BUILD: {
        // obj.__setstate__(state): OrderedDict's _metadata attribute, an opaque object's state...
        // Nothing we keep has state, so the state is dropped (never interpreted).
        pop();
        top();
        break;
      }
      case BINPERSID: {
        auto pid = pop();
        if (!hooks_.persistent_load) fail("persistent id ", pid->describe(), " but no persistent loader");
        ValuePtr v = hooks_.persistent_load(*pid);
        if (!v) fail("persistent id ", pid->describe(), " could not be resolved");
        push(v);
        break;
      }

      case PERSID: fail("opcode PERSID (text persistent ids) is not supported");
      case STRING: fail("opcode STRING (protocol-0 quoted strings) is not supported");
      case UNICODE: fail("opcode UNICODE (protocol-0 strings) is not supported");
      case INST: fail("opcode INST is not supported");
      case EXT1:
      case EXT2:
      case EXT4: fail("extension-registry opcodes (EXT1/2/4) are not supported");
      case BYTEARRAY8:
      case NEXT_BUFFER:
      case READONLY_BUFFER: fail("protocol-5 buffer opcodes are not supported");
      default: fail("unknown opcode 0x", "0123456789abcdef"[op >> 4], "0123456789abcdef"[op & 15]);
    }
  }
}

}  // namespace

Value::~Value() {
  std::vector<ValuePtr> pending;
  take_children(*this, pending);
  while (!pending.empty()) {
    ValuePtr v = std::move(pending.back());
    pending.pop_back();
    // Held only here: empty it first, so that its own destructor has nothing to recurse into.
    if (v && v.use_count() == 1) take_children(*v, pending);
  }
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::List: return "list";
    case Kind::Tuple: return "tuple";
    case Kind::Dict: return "dict";
    case Kind::Global: return "global";
    case Kind::Object: return "object";
    case Kind::Storage: return "storage";
    case Kind::Tensor: return "tensor";
  }
  return "?";
}

ValuePtr Value::get(const std::string& key) const {
  if (kind != Kind::Dict) return nullptr;
  for (const auto& [k, v] : dict)
    if (k->is(Kind::String) && k->s == key) return v;
  return nullptr;
}

std::string Value::describe() const {
  switch (kind) {
    case Kind::String: return "str '" + (s.size() > 40 ? s.substr(0, 40) + "..." : s) + "'";
    case Kind::Int: return big ? "int (beyond 64 bits)" : "int " + std::to_string(i);
    case Kind::List:
    case Kind::Tuple: return std::string(kind_name(kind)) + "(" + std::to_string(items.size()) + ")";
    case Kind::Dict: return "dict(" + std::to_string(dict.size()) + ")";
    case Kind::Global: return "global " + s;
    case Kind::Object: return "object of " + s;
    case Kind::Tensor: return tensor.str();
    default: return kind_name(kind);
  }
}

ValuePtr unpickle(const char* data, size_t size, const Hooks& hooks, const std::string& where) {
  Machine m(data, size, hooks, where);
  return m.run();
}

std::optional<DType> storage_dtype(const std::string& global_name) {
  for (const StorageName& s : kStorages) {
    if (global_name != s.name) continue;
    SD_CHECK(s.dtype.has_value(), "pickle: storage type ", global_name, " (", s.torch_dtype,
             ") has no sd dtype (supported: f32, f16, bf16, f64, i32, i64, u8, bool)");
    return s.dtype;
  }
  return std::nullopt;
}

}  // namespace sd::pickle
