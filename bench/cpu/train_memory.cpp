// Memory of one full-size SD1.5 UNet training step on the CPU (f32, random init): what the
// autograd tape keeps for backward, and where the CPU allocator's peak goes, phase by phase.
// A measurement, not a timing; not run by `make test` or `make bench`.
//
//   sd_bench_train_memory [--latent 32] [--checkpointing] [--no-verify]
//   sd_bench_train_memory --leaf-check   (what the engine holds once a leaf's gradient is done)
//
// The UNet's top-level forward is replayed here block by block (time embedding, conv_in, each
// down block, mid block, each up block, conv_out) so that the allocator and the saved-bytes
// counter can be read between blocks; unless --no-verify, its output is first checked against
// UNet2DConditionModel::forward (run without grad).
//
// Saved tensors are counted two ways: per save (what autograd::saved_bytes() counts: a view's
// own bytes, every time a node saves it) and per storage (each distinct Storage once, at its
// full size, found by walking the nodes reachable from the output's grad_fn through `next`).
// A storage is "weights" when it is a parameter's storage, else "activations".
// Backward is instrumented by wrapping each reachable node's backward function (bench only):
// allocator current/peak around every node, live saved storages, parameter gradients.
#include <malloc.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "autograd/engine.h"
#include "autograd/node.h"
#include "models/unet/unet.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/timestep.h"
#include "ops/view.h"
#include "runtime/allocator.h"
#include "runtime/rng.h"

using namespace sd;

namespace {

double mib(int64_t b) { return double(b) / (1 << 20); }

// VmRSS / VmHWM of this process in bytes (a cross-check of the allocator's counts).
int64_t proc_status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::stoll(line.substr(n + 1));
  return -1;
}
int64_t rss() { return proc_status_kb("VmRSS") * 1024; }
int64_t hwm() { return proc_status_kb("VmHWM") * 1024; }
void reset_hwm() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
}

// glibc heap in use (what the CPU allocator draws from): the same measure the PyTorch script
// samples, for a like-for-like comparison at node boundaries.
int64_t heap() {
  struct mallinfo2 m = mallinfo2();
  return int64_t(m.uordblks + m.hblkhd);
}
int64_t g_heap_peak = 0;
void sample_heap() { g_heap_peak = std::max(g_heap_peak, heap()); }

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

struct Snap {
  std::string what;
  int64_t cur, peak, saved, saved_peak, rss, hwm, heap;
  double t;
};

std::vector<Snap> g_snaps;
double g_t0 = 0;

void snap(const std::string& what) {
  AllocatorStats s = cpu_allocator().stats();
  g_snaps.push_back({what, s.current_bytes, s.peak_bytes, autograd::saved_bytes(), autograd::saved_bytes_peak(), rss(),
                     hwm(), heap(), now_s() - g_t0});
}

void print_snaps(const char* title) {
  std::printf("\n## %s\n", title);
  std::printf("| point | alloc current MiB | alloc peak MiB | saved counter MiB | saved counter peak MiB | RSS MiB | "
              "RSS HWM MiB | heap in use MiB | t s |\n|---|---|---|---|---|---|---|---|---|\n");
  for (const Snap& s : g_snaps)
    std::printf("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", s.what.c_str(), mib(s.cur),
                mib(s.peak), mib(s.saved), mib(s.saved_peak), mib(s.rss), mib(s.hwm), mib(s.heap), s.t);
}

// The nodes reachable from `root` through `next` edges.
std::vector<Node*> reachable(const Tensor& root) {
  std::vector<Node*> out, stack;
  std::unordered_set<Node*> seen;
  if (root.grad_fn()) {
    stack.push_back(root.grad_fn().get());
    seen.insert(stack.back());
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    out.push_back(n);
    for (const Edge& e : n->next)
      if (e.node && seen.insert(e.node.get()).second) stack.push_back(e.node.get());
  }
  std::sort(out.begin(), out.end(), [](Node* a, Node* b) { return a->seq < b->seq; });
  return out;
}

struct StorageInfo {
  int64_t bytes = 0;        // the storage's full size
  bool weight = false;
  uint64_t min_seq = ~0ull;  // the earliest node saving it: freed once that node's backward has run
  std::string first_saver;
  std::set<std::string> savers;
  int saves = 0;
  Shape shape;  // shape of the first saved view of it
};

struct Phase {
  std::string name;
  uint64_t first_seq, last_seq;  // node seqs recorded during this phase
};

struct BwdRec {
  uint64_t seq;
  std::string name;
  int64_t cur_before, peak_since_prev, local_peak, cur_after, grads_before;
};

std::string shape_s(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

uint64_t seq_of(const Tensor& t) { return t.grad_fn() ? t.grad_fn()->seq : 0; }

// A leaf w of 256 MiB and a small leaf u: out = sum(2 w) + sum(3 u). u's node runs after w's
// gradient is finished (lower seq); its wrapped backward reads the allocator there. Expected
// if only w, u and w.grad are alive: 512 MiB plus small.
int leaf_check() {
  const int64_t n = int64_t(64) << 20;  // 64 Mi floats
  Tensor u = randn_seeded({16}, 1).set_requires_grad(true);
  Tensor v = mul_scalar(u, 3.0);
  Tensor w = randn_seeded({n}, 2).set_requires_grad(true);
  Tensor out = add(sum_all(mul_scalar(w, 2.0)), sum_all(v));
  int64_t at_u = 0;
  auto orig = v.grad_fn()->backward;
  v.grad_fn()->backward = [orig, &at_u](Node& self, const std::vector<Tensor>& go) {
    at_u = cpu_allocator().stats().current_bytes;
    return orig(self, go);
  };
  const int64_t before = cpu_allocator().stats().current_bytes;
  autograd::backward(out, Tensor());
  const int64_t after = cpu_allocator().stats().current_bytes;
  std::printf("leaf check: w %.1f MiB; allocator before backward %.1f MiB, in a later node after w's gradient is "
              "done %.1f MiB, after backward %.1f MiB (w.grad %.1f MiB)\n",
              mib(int64_t(w.nbytes())), mib(before), mib(at_u), mib(after), mib(int64_t(w.grad().nbytes())));
  std::printf("=> held during backward beyond w + w.grad: %.1f MiB\n", mib(at_u - before - int64_t(w.nbytes())));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t latent = 32;
  bool ckpt = false, verify = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--latent" && i + 1 < argc) latent = std::stoll(argv[++i]);
    else if (a == "--checkpointing") ckpt = true;
    else if (a == "--no-verify") verify = false;
    else if (a == "--leaf-check") return leaf_check();
    else {
      std::printf("usage: sd_bench_train_memory [--latent 32] [--checkpointing] [--no-verify] | --leaf-check\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  g_t0 = now_s();
  std::printf("# SD1.5 UNet training step memory (CPU, f32): latents [1,4,%lld,%lld], context [1,77,768], t=500, "
              "gradient_checkpointing=%s\n",
              (long long)latent, (long long)latent, ckpt ? "on" : "off");

  snap("start");
  const nn::UNetConfig cfg = nn::UNetConfig::sd15();
  auto model = std::make_shared<nn::UNet2DConditionModel>(cfg);
  model->init_parameters(1, DType::F32, Device::cpu());
  model->set_requires_grad(true);
  model->gradient_checkpointing = ckpt;
  std::vector<Tensor*> params;
  std::unordered_set<const Storage*> param_storages;
  int64_t weight_bytes = 0;
  for (auto& [name, p] : model->named_parameters()) {
    params.push_back(p->slot);
    param_storages.insert(p->slot->storage().get());
    weight_bytes += int64_t(p->slot->nbytes());
  }
  auto grad_bytes = [&] {
    int64_t b = 0;
    for (Tensor* p : params) {
      Tensor g = p->grad();
      if (g.defined()) b += int64_t(g.nbytes());
    }
    return b;
  };
  Tensor x = randn_seeded({1, 4, latent, latent}, 100);
  Tensor ctx_in = randn_seeded({1, 77, 768}, 101);
  Tensor gout = randn_seeded({1, 4, latent, latent}, 102);
  std::printf("parameters: %zu tensors, %lld elements, %.1f MiB (f32)\n", params.size(),
              (long long)(weight_bytes / 4), mib(weight_bytes));
  snap("after weights (+ inputs)");

  // The reference output, without grad.
  Tensor ref;
  if (verify) {
    autograd::NoGrad ng;
    cpu_allocator().reset_peak();
    reset_hwm();
    ref = model->forward(x, 500.0, ctx_in);
    snap("after no-grad forward (reference; peak = inference peak)");
  }

  // ---- forward under autograd, block by block ----
  cpu_allocator().reset_peak();
  autograd::reset_saved_bytes_peak();
  reset_hwm();
  std::vector<Phase> phases;
  uint64_t last = 0;
  auto end_phase = [&](const std::string& name, const Tensor& h) {
    const uint64_t s = seq_of(h);
    phases.push_back({name, last + 1, s});
    last = s;
    snap("fwd: after " + name);
  };
  Tensor out;
  {
    nn::BlockContext bc;
    {
      Tensor t = reshape(contiguous(scalar_tensor(500.0, DType::F64)), {-1});
      Tensor e = copy_to(timestep_embedding(detach(t), cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift),
                         DType::F32, Device::cpu());
      bc.temb = model->time_embedding->forward(e, Tensor());
    }
    bc.context = ctx_in;
    bc.checkpoint = ckpt;
    end_phase("time_embedding", bc.temb);
    Tensor h = model->conv_in->forward(x);
    end_phase("conv_in", h);
    std::vector<Tensor> skips{h};
    for (size_t i = 0; i < model->down_blocks.size(); ++i) {
      h = model->down_blocks[i]->forward(h, bc, skips);
      end_phase("down_blocks." + std::to_string(i), h);
    }
    h = model->mid_block->forward(h, bc);
    end_phase("mid_block", h);
    for (size_t i = 0; i < model->up_blocks.size(); ++i) {
      const auto& b = model->up_blocks[i];
      std::array<int64_t, 2> size{0, 0};
      if (b->upsampler) {
        const Tensor& next = skips[skips.size() - b->resnets.size() - 1];
        size = {next.size(2), next.size(3)};
      }
      h = b->forward(h, bc, skips, size);
      end_phase("up_blocks." + std::to_string(i), h);
    }
    out = model->conv_out->forward(model->conv_norm_out->forward(h, /*fuse_silu=*/true));
  }
  end_phase("conv_norm_out+conv_out", out);
  const AllocatorStats after_fwd = cpu_allocator().stats();
  const int64_t saved_after = autograd::saved_bytes(), saved_peak = autograd::saved_bytes_peak();
  const int64_t fwd_hwm = hwm();

  if (verify) {
    autograd::NoGrad ng;
    const std::vector<float> a = out.to_float_vector(), b = ref.to_float_vector();
    double m = 0, r = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      m = std::max(m, double(std::fabs(a[i] - b[i])));
      r = std::max(r, double(std::fabs(b[i])));
    }
    std::printf("replayed forward vs UNet2DConditionModel::forward: max |diff| %.3g (max |ref| %.3g)\n", m, r);
    ref = Tensor();
  }

  // ---- the tape after forward ----
  std::vector<Node*> nodes = reachable(out);
  std::unordered_map<const Storage*, StorageInfo> st;
  struct NameAgg {
    int nodes = 0;
    int64_t per_save_act = 0, per_save_w = 0, excl_act = 0;
  };
  std::map<std::string, NameAgg> by_name;
  int64_t per_save_total = 0, per_save_w = 0;
  for (Node* n : nodes) {
    by_name[n->name].nodes++;
    for (const Tensor& t : n->saved) {
      if (!t.defined()) continue;
      const Storage* s = t.storage().get();
      StorageInfo& si = st[s];
      if (si.saves == 0) {
        si.bytes = int64_t(s->nbytes());
        si.weight = param_storages.count(s) > 0;
        si.shape = t.shape();
      }
      si.saves++;
      si.savers.insert(n->name);
      if (n->seq < si.min_seq) {
        si.min_seq = n->seq;
        si.first_saver = n->name;
      }
      per_save_total += int64_t(t.nbytes());
      if (si.weight) {
        per_save_w += int64_t(t.nbytes());
        by_name[n->name].per_save_w += int64_t(t.nbytes());
      } else {
        by_name[n->name].per_save_act += int64_t(t.nbytes());
      }
    }
  }
  int64_t uniq_w = 0, uniq_a = 0;
  std::map<std::string, std::pair<int, int64_t>> by_saver_set;
  std::map<std::string, int64_t> act_by_phase;
  for (auto& [s, si] : st) {
    if (si.weight) {
      uniq_w += si.bytes;
      continue;
    }
    uniq_a += si.bytes;
    by_name[si.first_saver].excl_act += si.bytes;
    std::string key;
    for (const std::string& n : si.savers) key += (key.empty() ? "" : " + ") + n;
    by_saver_set[key].first++;
    by_saver_set[key].second += si.bytes;
    for (const Phase& p : phases)
      if (si.min_seq >= p.first_seq && si.min_seq <= p.last_seq) act_by_phase[p.name] += si.bytes;
  }

  std::printf("\n## Saved for backward after forward\n");
  std::printf("| quantity | MiB |\n|---|---|\n");
  std::printf("| weights (all parameters) | %.1f |\n", mib(weight_bytes));
  std::printf("| autograd::saved_bytes() after forward (per save) | %.1f |\n", mib(saved_after));
  std::printf("| autograd::saved_bytes_peak() during forward | %.1f |\n", mib(saved_peak));
  std::printf("| walk, per save: total / weights / activations | %.1f / %.1f / %.1f |\n", mib(per_save_total),
              mib(per_save_w), mib(per_save_total - per_save_w));
  std::printf("| walk, per storage: weights (%zu storages) | %.1f |\n",
              size_t(std::count_if(st.begin(), st.end(), [](auto& kv) { return kv.second.weight; })), mib(uniq_w));
  std::printf("| walk, per storage: activations (%zu storages) | %.1f |\n",
              size_t(std::count_if(st.begin(), st.end(), [](auto& kv) { return !kv.second.weight; })), mib(uniq_a));
  std::printf("| allocator current after forward | %.1f |\n", mib(after_fwd.current_bytes));
  std::printf("| allocator current after forward - weights - inputs - saved activation storages | %.1f |\n",
              mib(after_fwd.current_bytes - weight_bytes - int64_t(x.nbytes() + ctx_in.nbytes() + gout.nbytes()) -
                  uniq_a));
  std::printf("| allocator peak during forward | %.1f |\n", mib(after_fwd.peak_bytes));
  std::printf("| RSS HWM during forward | %.1f |\n", mib(fwd_hwm));
  std::printf("| reachable nodes | %zu |\n", nodes.size());

  std::printf("\n### By node type (activations: per save, and per storage attributed to the earliest saver)\n");
  std::printf("| node | nodes | per-save activations MiB | per-save weights MiB | unique activation storage MiB "
              "|\n|---|---|---|---|---|\n");
  std::vector<std::pair<std::string, NameAgg>> names(by_name.begin(), by_name.end());
  std::sort(names.begin(), names.end(), [](auto& a, auto& b) { return a.second.excl_act > b.second.excl_act; });
  for (auto& [n, a] : names)
    std::printf("| %s | %d | %.1f | %.1f | %.1f |\n", n.c_str(), a.nodes, mib(a.per_save_act), mib(a.per_save_w),
                mib(a.excl_act));

  std::printf("\n### Activation storages by the set of node types saving them\n");
  std::printf("| saved by | storages | MiB |\n|---|---|---|\n");
  std::vector<std::pair<std::string, std::pair<int, int64_t>>> sets(by_saver_set.begin(), by_saver_set.end());
  std::sort(sets.begin(), sets.end(), [](auto& a, auto& b) { return a.second.second > b.second.second; });
  for (auto& [k, v] : sets) std::printf("| %s | %d | %.1f |\n", k.c_str(), v.first, mib(v.second));

  std::printf("\n### Saved activation storages by forward phase (earliest saver)\n");
  std::printf("| phase | MiB |\n|---|---|\n");
  for (const Phase& p : phases) std::printf("| %s | %.1f |\n", p.name.c_str(), mib(act_by_phase[p.name]));

  // ---- backward, every node wrapped ----
  // Live saved activation storage before the node with seq s: storages whose earliest saver
  // has seq <= s (nodes run in decreasing seq; a node's saved tensors are freed after it runs).
  std::vector<std::pair<uint64_t, int64_t>> release;  // (min_seq, bytes), activations only
  for (auto& [s, si] : st)
    if (!si.weight) release.push_back({si.min_seq, si.bytes});
  std::sort(release.begin(), release.end());
  auto live_saved = [&](uint64_t seq) {
    int64_t b = 0;
    for (auto& [m, bytes] : release)
      if (m <= seq) b += bytes;
    return b;
  };
  std::vector<BwdRec> recs;
  recs.reserve(nodes.size());
  for (Node* n : nodes) {
    auto orig = n->backward;
    if (!orig) continue;
    n->backward = [orig, &recs, &grad_bytes](Node& self, const std::vector<Tensor>& go) {
      sample_heap();
      const AllocatorStats s0 = cpu_allocator().stats();
      const int64_t gb = grad_bytes();
      cpu_allocator().reset_peak();
      std::vector<Tensor> r = orig(self, go);
      const AllocatorStats s1 = cpu_allocator().stats();
      sample_heap();
      recs.push_back({self.seq, self.name, s0.current_bytes, s0.peak_bytes, s1.peak_bytes, s1.current_bytes, gb});
      cpu_allocator().reset_peak();
      return r;
    };
  }
  snap("before backward");
  cpu_allocator().reset_peak();
  reset_hwm();
  g_heap_peak = 0;
  sample_heap();
  autograd::backward(out, gout);
  sample_heap();
  const AllocatorStats end_bwd = cpu_allocator().stats();
  int64_t bwd_peak = end_bwd.peak_bytes;
  for (const BwdRec& r : recs) bwd_peak = std::max({bwd_peak, r.peak_since_prev, r.local_peak});
  const int64_t bwd_hwm = hwm();
  snap("after backward (gradients alive)");
  const int64_t grads_total = grad_bytes();
  out = Tensor();
  nodes.clear();
  snap("after dropping the graph");

  // Where the backward peak is.
  size_t ipk = 0;
  for (size_t i = 0; i < recs.size(); ++i)
    if (recs[i].local_peak > recs[ipk].local_peak) ipk = i;
  std::printf("\n## Backward\n");
  std::printf("| quantity | MiB |\n|---|---|\n");
  std::printf("| allocator peak during backward (max over nodes and between them) | %.1f |\n", mib(bwd_peak));
  std::printf("| allocator current after backward | %.1f |\n", mib(end_bwd.current_bytes));
  std::printf("| parameter gradients after backward | %.1f |\n", mib(grads_total));
  std::printf("| heap peak during backward (glibc mallinfo2, sampled before and after every node) | %.1f |\n",
              mib(g_heap_peak));
  std::printf("| RSS HWM during backward | %.1f |\n", mib(bwd_hwm));
  std::printf("| peak over the step (allocator: max of forward peak, backward peak) | %.1f |\n",
              mib(std::max(after_fwd.peak_bytes, bwd_peak)));
  if (!recs.empty()) {
    const BwdRec& r = recs[ipk];
    const int64_t ls = live_saved(r.seq);
    std::printf("\nPeak inside node #%llu '%s': local peak %.1f MiB; at its start: current %.1f = weights %.1f + "
                "param grads %.1f + live saved activations %.1f + other (pending activation grads, inputs) %.1f; "
                "the node's own transient: %.1f\n",
                (unsigned long long)r.seq, r.name.c_str(), mib(r.local_peak), mib(r.cur_before), mib(weight_bytes),
                mib(r.grads_before), mib(ls), mib(r.cur_before - weight_bytes - r.grads_before - ls),
                mib(r.local_peak - r.cur_before));
  }
  // The engine keeps each finished leaf gradient a second time until backward returns (see
  // --leaf-check): without checkpointing that copy is as large as the gradients done so far.
  int64_t no_dup = 0;
  for (const BwdRec& r : recs) no_dup = std::max(no_dup, r.local_peak - r.grads_before);
  if (!ckpt)
    std::printf("\nEstimated backward peak if finished parameter gradients were held once (max over nodes of local "
                "peak - parameter gradients at its start): %.1f MiB\n",
                mib(std::max(no_dup, end_bwd.current_bytes)));
  std::printf("\n### Backward by phase (reverse order)\n");
  std::printf("| phase | nodes | current at start MiB | param grads at start | live saved act at start | other at start "
              "| other - param grads | max local peak MiB | at node |\n|---|---|---|---|---|---|---|---|---|\n");
  for (auto it = phases.rbegin(); it != phases.rend(); ++it) {
    const BwdRec* first = nullptr;
    const BwdRec* pk = nullptr;
    int count = 0;
    for (const BwdRec& r : recs) {
      if (r.seq < it->first_seq || r.seq > it->last_seq) continue;
      count++;
      if (!first) first = &r;
      if (!pk || r.local_peak > pk->local_peak) pk = &r;
    }
    if (!first) continue;
    const int64_t ls = live_saved(first->seq);
    const int64_t other = first->cur_before - weight_bytes - first->grads_before - ls;
    // With checkpointing only the gradients of parameters outside checkpointed blocks are held
    // twice (nested backwards free theirs), so "other - param grads" means nothing there.
    char minus[32] = "n/a";
    if (!ckpt) std::snprintf(minus, sizeof minus, "%.1f", mib(other - first->grads_before));
    std::printf("| %s | %d | %.1f | %.1f | %.1f | %.1f | %s | %.1f | %s #%llu |\n", it->name.c_str(), count,
                mib(first->cur_before), mib(first->grads_before), mib(ls), mib(other), minus,
                mib(pk->local_peak),
                pk->name.c_str(), (unsigned long long)pk->seq);
  }
  std::printf("\n### Top 10 node backwards by transient (local peak - current at start)\n");
  std::printf("| node | seq | transient MiB | current at start MiB |\n|---|---|---|---|\n");
  std::vector<const BwdRec*> tr;
  for (const BwdRec& r : recs) tr.push_back(&r);
  std::sort(tr.begin(), tr.end(),
            [](auto* a, auto* b) { return a->local_peak - a->cur_before > b->local_peak - b->cur_before; });
  for (size_t i = 0; i < tr.size() && i < 10; ++i)
    std::printf("| %s | %llu | %.1f | %.1f |\n", tr[i]->name.c_str(), (unsigned long long)tr[i]->seq,
                mib(tr[i]->local_peak - tr[i]->cur_before), mib(tr[i]->cur_before));

  print_snaps("Allocator and RSS at each point");
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  std::printf("\nmax RSS of the process (getrusage): %.1f MiB; wall %.1f s\n", double(ru.ru_maxrss) / 1024,
              now_s() - g_t0);
  return 0;
}
