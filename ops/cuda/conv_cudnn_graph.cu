// conv2d through cuDNN's graph API (backend descriptors): the engines PyTorch's cuDNN v9 path
// reaches, which the legacy cudnnConvolution* API does not offer. One operation graph per
// problem (forward with the bias add fused where an engine takes it, data gradient, filter
// gradient), engine configurations from heuristics mode A (then the fallback list), and in
// benchmark mode each candidate timed on the real buffers once per shape; the winning
// execution plan is cached per problem. Tensors are described with int64 dimensions and
// strides, so shapes past the legacy API's 32-bit range reach the engines that take them.
// Chosen by ConvBackend::CudnnGraph (SD_CONV_GRAPH=1); anything it cannot build or run
// returns false and the caller takes the legacy cuDNN path, then im2col.
#include <atomic>
#include <cstdio>

#include "ops/cuda/conv_impl.h"

#ifndef SD_WITH_CUDNN

namespace sd::cuda::conv_detail {

bool graph_forward(const Problem&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool&) { return false; }
bool graph_grad_input(const Problem&, const Tensor&, const Tensor&, const Tensor&) { return false; }
bool graph_grad_weight(const Problem&, const Tensor&, const Tensor&, const Tensor&) { return false; }
void graph_clear_cache() {}
int64_t graph_runs() { return 0; }

}  // namespace sd::cuda::conv_detail

#else

#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/conv_cudnn_shared.h"
#include "ops/cuda/gemm.h"
#include "runtime/image_layout.h"
#include "runtime/cuda/current_stream.cuh"

namespace sd::cuda::conv_detail {

namespace {

constexpr int kMaxCandidates = 12;  // engine configurations tried per problem
// The handle attributes of operation graphs and plans: required by the cuDNN 9 releases PyTorch
// wheels ship, marked deprecated (still accepted) in later ones; named by value so that the
// deprecation does not warn.
constexpr auto kOpGraphHandle = cudnnBackendAttributeName_t(800);
constexpr auto kPlanHandle = cudnnBackendAttributeName_t(400);

enum class Dir { Forward, ForwardBias, Data, Filter };

// Tensor unique ids in the variant pack.
enum : int64_t { kX = 1, kW = 2, kY = 3, kBias = 4, kConvOut = 5 };

std::atomic<int64_t> g_runs{0};

// A backend descriptor owned here.
struct Desc {
  cudnnBackendDescriptor_t d = nullptr;
  bool ok = true;  // every attribute set and finalize so far succeeded
  explicit Desc(cudnnBackendDescriptorType_t t) { ok = cudnnBackendCreateDescriptor(t, &d) == CUDNN_STATUS_SUCCESS; }
  ~Desc() {
    if (d) cudnnBackendDestroyDescriptor(d);
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  template <class V>
  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count, const V* v) {
    if (ok) ok = cudnnBackendSetAttribute(d, name, type, count, v) == CUDNN_STATUS_SUCCESS;
    return *this;
  }
  Desc& set_desc(cudnnBackendAttributeName_t name, const Desc& other) {
    ok = ok && other.ok;
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &other.d);
  }
  bool finalize() {
    if (ok) ok = cudnnBackendFinalize(d) == CUDNN_STATUS_SUCCESS;
    return ok;
  }
};
using DescPtr = std::shared_ptr<Desc>;

DescPtr make(cudnnBackendDescriptorType_t t) { return std::make_shared<Desc>(t); }

cudnnDataType_t data_type(DType t) {
  switch (t) {
    case DType::F32: return CUDNN_DATA_FLOAT;
    case DType::F16: return CUDNN_DATA_HALF;
    default: return CUDNN_DATA_BFLOAT16;
  }
}

DescPtr tensor(int64_t uid, cudnnDataType_t dt, const std::array<int64_t, 4>& dims,
               const std::array<int64_t, 4>& strides, bool is_virtual = false) {
  DescPtr t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  const int64_t align = 16;
  t->set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt)
      .set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data())
      .set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data())
      .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid)
      .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
  if (is_virtual) {
    const bool v = true;
    t->set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v);
  }
  t->finalize();
  return t;
}

std::array<int64_t, 4> to4(const Shape& s) { return {s[0], s[1], s[2], s[3]}; }

// Strides of the problem's images, in its layout.
std::array<int64_t, 4> image_strides(const Problem& p, int64_t n, int64_t c, int64_t h, int64_t w) {
  return to4(p.channels_last ? channels_last_strides({n, c, h, w}) : contiguous_strides({n, c, h, w}));
}

// An execution plan with what it needs kept alive, or null where no engine took the graph.
struct Plan {
  std::vector<DescPtr> keep;  // tensors, operations, graph, configuration
  DescPtr plan;
  int64_t workspace = 0;
  std::vector<int64_t> uids;
};
using PlanPtr = std::shared_ptr<Plan>;

using Key = std::array<int64_t, 18>;

Key key_of(const Problem& p, Dir dir, const Tensor& filter) {
  return {int64_t(dir), int64_t(p.dtype), p.channels_last, p.device, strict_fp32(p), p.N, p.C, p.H, p.W,
          p.O, p.kh, p.kw, p.g.stride_h, p.g.stride_w, p.g.pad_h, p.g.pad_w, is_channels_last_dense(filter),
          cudnn_benchmark()};
}

std::mutex g_mu;
std::map<Key, PlanPtr>& cache() {
  static std::map<Key, PlanPtr> m;
  return m;
}

// Whether an engine configuration is acceptable: deterministic (exact resume of training runs
// needs the same bits every run), and for f32 without TF32 no down-converted inputs.
bool acceptable(const Desc& cfg, const Problem& p) {
  Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  int64_t n = 0;
  if (!engine.ok || cudnnBackendGetAttribute(cfg.d, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n,
                                             &engine.d) != CUDNN_STATUS_SUCCESS)
    return false;
  std::array<cudnnBackendNumericalNote_t, CUDNN_NUMERICAL_NOTE_TYPE_COUNT> notes{};
  int64_t count = 0;
  if (cudnnBackendGetAttribute(engine.d, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                               int64_t(notes.size()), &count, notes.data()) != CUDNN_STATUS_SUCCESS)
    return false;
  for (int64_t i = 0; i < count; ++i) {
    if (notes[size_t(i)] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) return false;
    if (strict_fp32(p) && notes[size_t(i)] == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS) return false;
  }
  return true;
}

// Engine configurations for the graph, best first by the heuristics (mode A, then the fallback list).
std::vector<DescPtr> candidates(const Desc& graph, const Problem& p) {
  std::vector<DescPtr> out;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    heur.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph).set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1,
                                                                    &mode);
    if (!heur.finalize()) continue;
    int64_t available = 0;
    if (cudnnBackendGetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &available,
                                 nullptr) != CUDNN_STATUS_SUCCESS)
      continue;
    const int64_t want = std::min<int64_t>(available, kMaxCandidates);
    if (want <= 0) continue;
    std::vector<DescPtr> cfgs;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < want; ++i) {
      cfgs.push_back(make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
      raw.push_back(cfgs.back()->d);
    }
    int64_t got = 0;
    if (cudnnBackendGetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, want, &got,
                                 raw.data()) != CUDNN_STATUS_SUCCESS)
      continue;
    for (int64_t i = 0; i < got; ++i)
      if (acceptable(*cfgs[size_t(i)], p)) out.push_back(cfgs[size_t(i)]);
    if (!out.empty()) break;
  }
  return out;
}

// A finalized execution plan for a configuration, or null.
PlanPtr plan_for(const DescPtr& cfg, cudnnHandle_t h, const std::vector<DescPtr>& keep,
                 const std::vector<int64_t>& uids) {
  auto plan = make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
  plan->set(kPlanHandle, CUDNN_TYPE_HANDLE, 1, &h).set_desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, *cfg);
  if (!plan->finalize()) return nullptr;
  int64_t ws = 0, n = 0;
  if (cudnnBackendGetAttribute(plan->d, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &ws) !=
          CUDNN_STATUS_SUCCESS ||
      ws < 0 || size_t(ws) > kMaxWorkspace)
    return nullptr;
  auto r = std::make_shared<Plan>();
  r->keep = keep;
  r->keep.push_back(cfg);
  r->plan = plan;
  r->workspace = ws;
  r->uids = uids;
  return r;
}

// Runs a plan on the current stream; false when cuDNN declines at execution.
bool execute(const Plan& plan, cudnnHandle_t h, const std::vector<void*>& ptrs, int device) {
  Tensor ws = plan.workspace ? empty({plan.workspace}, DType::U8, Device::cuda(device)) : Tensor();
  void* ws_ptr = ws.defined() ? ws.data_ptr() : nullptr;
  Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, int64_t(plan.uids.size()), plan.uids.data())
      .set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, int64_t(ptrs.size()), ptrs.data())
      .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws_ptr);
  if (!pack.finalize()) return false;
  return cudnnBackendExecute(h, plan.plan->d, pack.d) == CUDNN_STATUS_SUCCESS;
}

// Timing of one candidate: a warm-up run, then the best of three.
float time_plan(const Plan& plan, cudnnHandle_t h, const std::vector<void*>& ptrs, int device) {
  if (!execute(plan, h, ptrs, device)) return -1.0f;
  cudaEvent_t a, b;
  SD_CUDA_CHECK(cudaEventCreate(&a));
  SD_CUDA_CHECK(cudaEventCreate(&b));
  float best = -1.0f;
  for (int i = 0; i < 3; ++i) {
    SD_CUDA_CHECK(cudaEventRecord(a, stream()));
    const bool ok = execute(plan, h, ptrs, device);
    SD_CUDA_CHECK(cudaEventRecord(b, stream()));
    SD_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    SD_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    if (!ok) {
      best = -1.0f;
      break;
    }
    best = best < 0 ? ms : std::min(best, ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return best;
}

// The convolution operation of a direction: its descriptor type and the attributes that take the
// image (x or dx), the filter (w or dw), the output side (y or dy), the convolution and the scales.
struct ConvNode {
  cudnnBackendDescriptorType_t type;
  cudnnBackendAttributeName_t x, w, y, conv, alpha, beta;
};

ConvNode conv_node(Dir dir) {
  switch (dir) {
    case Dir::Forward:
    case Dir::ForwardBias:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA};
    case Dir::Data:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA};
    case Dir::Filter:
      break;
  }
  return {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
          CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
          CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
          CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA};
}

// The operation graph of a problem (null when cuDNN refuses to build it) and its tensor ids.
struct Graph {
  std::vector<DescPtr> keep;
  DescPtr graph;
  std::vector<int64_t> uids;
};

Graph build_graph(const Problem& p, Dir dir, const Tensor& filter, cudnnHandle_t h) {
  Graph g;
  const cudnnDataType_t io = data_type(p.dtype), comp = CUDNN_DATA_FLOAT;
  const auto xs = image_strides(p, p.N, p.C, p.H, p.W);
  const auto ys = image_strides(p, p.N, p.O, p.Ho, p.Wo);
  const auto ws = to4(filter.strides());
  DescPtr x = tensor(kX, io, {p.N, p.C, p.H, p.W}, xs);
  DescPtr w = tensor(kW, io, {p.O, p.C, p.kh, p.kw}, ws);
  DescPtr y = tensor(kY, io, {p.N, p.O, p.Ho, p.Wo}, ys);
  DescPtr conv = make(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
  const int64_t spatial = 2;
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  const std::array<int64_t, 2> pad{p.g.pad_h, p.g.pad_w}, stride{p.g.stride_h, p.g.stride_w}, dil{1, 1};
  conv->set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp)
      .set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode)
      .set(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial)
      .set(CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dil.data())
      .set(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, stride.data())
      .set(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pad.data())
      .set(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pad.data());
  conv->finalize();
  g.keep = {x, w, y, conv};
  g.uids = {kX, kW, kY};
  // One convolution node: the three directions differ only in the descriptor type and attribute
  // names (the image, filter and output tensors play the same roles). With the bias, the forward
  // writes a virtual f32 tensor that a pointwise add turns into y = that + bias[O].
  const ConvNode node = conv_node(dir);
  DescPtr out = dir == Dir::ForwardBias ? tensor(kConvOut, comp, {p.N, p.O, p.Ho, p.Wo}, ys, true) : y;
  const float alpha = 1.0f, beta = 0.0f;
  DescPtr op = make(node.type);
  op->set_desc(node.x, *x)
      .set_desc(node.w, *w)
      .set_desc(node.y, *out)
      .set_desc(node.conv, *conv)
      .set(node.alpha, CUDNN_TYPE_FLOAT, 1, &alpha)
      .set(node.beta, CUDNN_TYPE_FLOAT, 1, &beta);
  op->finalize();
  std::vector<DescPtr> ops{op};
  if (dir == Dir::ForwardBias) {
    DescPtr b = tensor(kBias, io, {1, p.O, 1, 1}, {p.O, 1, 1, 1});
    DescPtr add = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    const cudnnPointwiseMode_t pw = CUDNN_POINTWISE_ADD;
    add->set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &pw)
        .set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    add->finalize();
    DescPtr bop = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    bop->set_desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, *add)
        .set_desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, *out)
        .set_desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b)
        .set_desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, *y);
    bop->finalize();
    ops.push_back(bop);
    g.keep.insert(g.keep.end(), {out, b, add});
    g.uids.push_back(kBias);
  }
  std::vector<cudnnBackendDescriptor_t> raw;
  bool ok = true;
  for (const DescPtr& o : ops) {
    raw.push_back(o->d);
    ok = ok && o->ok;
    g.keep.push_back(o);
  }
  for (const DescPtr& d : g.keep) ok = ok && d->ok;
  if (!ok) return g;
  DescPtr graph = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  graph->set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(raw.size()), raw.data())
      .set(kOpGraphHandle, CUDNN_TYPE_HANDLE, 1, &h);
  if (graph->finalize()) g.graph = graph;
  return g;
}

// The cached plan of a problem, chosen on first use (timed on `ptrs` in benchmark mode); null
// when no engine takes it.
PlanPtr plan_of(const Problem& p, Dir dir, const Tensor& filter, cudnnHandle_t h, const std::vector<void*>& ptrs) {
  const Key k = key_of(p, dir, filter);
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = cache().find(k);
  if (it != cache().end()) return it->second;
  PlanPtr chosen;
  const Graph g = build_graph(p, dir, filter, h);
  if (g.graph) {
    std::vector<DescPtr> keep = g.keep;
    keep.push_back(g.graph);
    float best = -1.0f;
    for (const DescPtr& cfg : candidates(*g.graph, p)) {
      PlanPtr plan = plan_for(cfg, h, keep, g.uids);
      if (!plan) continue;
      if (!cudnn_benchmark()) {  // heuristics order: the first that builds
        chosen = plan;
        break;
      }
      const float ms = time_plan(*plan, h, ptrs, p.device);
      if (ms >= 0 && (best < 0 || ms < best)) {
        best = ms;
        chosen = plan;
      }
    }
  }
  cache()[k] = chosen;
  return chosen;
}

// Runs a direction through the graph path; false (and that problem skips the graph path from
// then on) when cuDNN has no engine for it or declines at execution.
bool run(const Problem& p, Dir dir, const Tensor& filter, const std::vector<void*>& ptrs) {
  if (!(p.dtype == DType::F32 || p.dtype == DType::F16 || p.dtype == DType::BF16)) return false;
  for (void* q : ptrs)
    if (reinterpret_cast<uintptr_t>(q) % 16 != 0) return false;  // the descriptors promise 16-byte alignment
  cudnnHandle_t h = cudnn_handle(p.device);
  if (!h) return false;
  if (cudnnSetStream(h, stream()) != CUDNN_STATUS_SUCCESS) return false;
  PlanPtr plan = plan_of(p, dir, filter, h, ptrs);
  if (!plan) return false;
  if (!execute(*plan, h, ptrs, p.device)) {
    std::lock_guard<std::mutex> lock(g_mu);
    cache()[key_of(p, dir, filter)] = nullptr;
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true))
      std::fprintf(stderr, "sd: cuDNN's graph API declined a convolution at execution; that shape uses the legacy API\n");
    return false;
  }
  g_runs.fetch_add(1);
  return true;
}

}  // namespace

bool graph_forward(const Problem& p, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                   bool& bias_fused) {
  bias_fused = false;
  if (bias.defined() && bias.is_contiguous() &&
      run(p, Dir::ForwardBias, w, {x.data_ptr(), w.data_ptr(), y.data_ptr(), bias.data_ptr()})) {
    bias_fused = true;
    return true;
  }
  return run(p, Dir::Forward, w, {x.data_ptr(), w.data_ptr(), y.data_ptr()});
}

bool graph_grad_input(const Problem& p, const Tensor& dy, const Tensor& w, const Tensor& dx) {
  return run(p, Dir::Data, w, {dx.data_ptr(), w.data_ptr(), dy.data_ptr()});
}

bool graph_grad_weight(const Problem& p, const Tensor& dy, const Tensor& x, const Tensor& dw) {
  return run(p, Dir::Filter, dw, {x.data_ptr(), dw.data_ptr(), dy.data_ptr()});
}

void graph_clear_cache() {
  std::lock_guard<std::mutex> lock(g_mu);
  cache().clear();
}

int64_t graph_runs() { return g_runs.load(); }

}  // namespace sd::cuda::conv_detail

#endif
