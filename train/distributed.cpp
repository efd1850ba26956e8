#include "train/distributed.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "ops/elementwise.h"
#include "runtime/cuda_api.h"
#include "runtime/error.h"
#include "runtime/stream.h"
#include "train/collectives.h"

// Only this file and the NCCL transport (train/cuda/nccl_collectives.cpp, in the CUDA backend) see
// mpi.h (CMakeLists.txt gives them SD_WITH_MPI and its include folders), so the rest of the library
// builds the same with or without it.
#if defined(SD_WITH_MPI)
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace sd::train {

bool built_with_mpi() {
#if defined(SD_WITH_MPI)
  return true;
#else
  return false;
#endif
}

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return (end && *end == 0 && x >= 0 && x < INT_MAX) ? int(x) : fallback;
}

}  // namespace

int launcher_world_size() {
  // Open MPI's mpirun, MPICH/Intel MPI's hydra, MVAPICH.
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"}) {
    const int n = env_int(v, 0);
    if (n > 0) return n;
  }
  return 0;
}

// ---- MPI session -----------------------------------------------------------------------------------

MpiSession::MpiSession(int* argc, char*** argv) {
  const int launched = launcher_world_size();
#if defined(SD_WITH_MPI)
  // Without a launcher there is nobody to talk to. Under one (mpirun -np 1 included) the gradients take
  // the MPI/NCCL path, whose sums over one process change nothing: the same numbers as without it.
  if (launched == 0) return;
  int provided = 0;
  // Only the main thread calls MPI (grad-ready hooks run on it too); OpenMP workers never do.
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  active_ = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &info_.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &info_.world_size);
  // The rank among this machine's processes picks the GPU: the launcher's variable, else MPI's own
  // shared-memory split.
  int local = env_int("OMPI_COMM_WORLD_LOCAL_RANK", env_int("MPI_LOCALRANKID", env_int("MV2_COMM_WORLD_LOCAL_RANK", -1)));
  if (local < 0) {
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, info_.rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local);
    MPI_Comm_free(&node);
  }
  info_.local_rank = local;
#else
  SD_CHECK(launched <= 1, "a launcher (mpirun) started ", launched, " processes, but this sd_train was built without "
           "MPI: each process would train alone and overwrite the others' files. Install Open MPI (libopenmpi-dev, "
           "scripts/install_deps.sh) and rebuild");
  (void)argc;
  (void)argv;
#endif
}

MpiSession::~MpiSession() {
#if defined(SD_WITH_MPI)
  if (active_) MPI_Finalize();
#endif
}

void abort_all_processes(int code) {
#if defined(SD_WITH_MPI)
  int initialized = 0, finalized = 0, world = 1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world > 1) MPI_Abort(MPI_COMM_WORLD, code);
#else
  (void)code;
#endif
}

// ---- bucket planning -------------------------------------------------------------------------------

BucketPlan plan_buckets(const std::vector<int64_t>& numels, int64_t cap_elements, int world) {
  SD_CHECK(cap_elements > 0 && world > 0, "plan_buckets: cap ", cap_elements, ", world ", world);
  BucketPlan plan;
  plan.params.resize(numels.size());
  auto close = [&]() {
    BucketPlan::Bucket& b = plan.buckets.back();
    b.padded = (b.numel + world - 1) / world * world;
    b.piece = b.padded / world;
    b.shard_offset = plan.shard_numel;
    plan.shard_numel += b.piece;
  };
  for (size_t k = numels.size(); k-- > 0;) {
    const int64_t n = numels[k];
    SD_CHECK(n >= 0, "plan_buckets: parameter ", k, " has ", n, " elements");
    if (plan.buckets.empty() || (plan.buckets.back().numel > 0 && plan.buckets.back().numel + n > cap_elements)) {
      if (!plan.buckets.empty()) close();
      plan.buckets.emplace_back();
    }
    BucketPlan::Bucket& b = plan.buckets.back();
    plan.params[k] = {int(plan.buckets.size() - 1), b.numel, n};
    b.params.push_back(k);
    b.numel += n;
  }
  if (!plan.buckets.empty()) close();
  return plan;
}

AdamWOptimizer::Range owned_range(const BucketPlan& plan, size_t i, int rank) {
  const BucketPlan::Place& p = plan.params.at(i);
  const BucketPlan::Bucket& b = plan.buckets.at(size_t(p.bucket));
  const int64_t lo = std::max(p.offset, int64_t(rank) * b.piece);
  const int64_t hi = std::min(p.offset + p.numel, int64_t(rank + 1) * b.piece);
  if (hi <= lo) return {0, 0};
  return {lo - p.offset, hi - p.offset};
}

int64_t shard_position(const BucketPlan& plan, size_t i, int rank) {
  const BucketPlan::Place& p = plan.params.at(i);
  const BucketPlan::Bucket& b = plan.buckets.at(size_t(p.bucket));
  const AdamWOptimizer::Range r = owned_range(plan, i, rank);
  return b.shard_offset + (p.offset + r.begin - int64_t(rank) * b.piece);
}

namespace {

// ---- collectives on f32 buffers (train/collectives.h): MPI here, NCCL in the CUDA backend ----------

#if defined(SD_WITH_MPI)

int mpi_count(int64_t n) {
  SD_CHECK(n >= 0 && n <= INT_MAX, "MPI: a buffer of ", n, " elements is more than one call takes; lower --bucket_mb");
  return int(n);
}

// MPI on host buffers. CUDA buffers (a build without NCCL) go through host copies: correct, slow.
class MpiCollectives final : public Collectives {
 public:
  MpiCollectives(int world, int slots) : world_(world), ops_(size_t(slots)) {}

  void start_allreduce(int slot, const Tensor& buf) override {
    Op& op = ops_.at(size_t(slot));
    op.host = host_of(buf);
    op.result = buf;
    op.result_host = op.host;
    MPI_Iallreduce(MPI_IN_PLACE, op.host.data_ptr(), mpi_count(buf.numel()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &op.req);
  }
  void start_reduce_scatter(int slot, const Tensor& buf, const Tensor& out) override {
    SD_CHECK(buf.numel() == out.numel() * world_, "reduce_scatter: ", buf.numel(), " elements into pieces of ", out.numel());
    Op& op = ops_.at(size_t(slot));
    op.host = host_of(buf);
    op.result = out;
    op.result_host = out.is_cpu() ? out : empty(out.shape(), DType::F32, Device::cpu());
    MPI_Ireduce_scatter_block(op.host.data_ptr(), op.result_host.data_ptr(), mpi_count(out.numel()), MPI_FLOAT, MPI_SUM,
                              MPI_COMM_WORLD, &op.req);
  }
  void wait(int slot) override {
    Op& op = ops_.at(size_t(slot));
    MPI_Wait(&op.req, MPI_STATUS_IGNORE);
    if (op.result.defined() && !op.result.same(op.result_host)) copy_(op.result, op.result_host);
    op = Op();
  }
  void poll() override {
    for (Op& op : ops_) {
      if (op.req == MPI_REQUEST_NULL) continue;
      int done = 0;
      MPI_Test(&op.req, &done, MPI_STATUS_IGNORE);  // a finished request becomes MPI_REQUEST_NULL
    }
  }
  void allgather(const Tensor& buf) override {
    const Tensor h = host_of(buf);
    MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, h.data_ptr(), mpi_count(buf.numel() / world_), MPI_FLOAT,
                  MPI_COMM_WORLD);
    if (!h.same(buf)) copy_(buf, h);
  }
  void broadcast(const Tensor& buf) override {
    const Tensor h = host_of(buf);
    MPI_Bcast(h.data_ptr(), mpi_count(buf.numel()), MPI_FLOAT, 0, MPI_COMM_WORLD);
    if (!h.same(buf)) copy_(buf, h);
  }
  std::string name() const override { return "MPI"; }

 private:
  struct Op {
    MPI_Request req = MPI_REQUEST_NULL;
    Tensor host, result, result_host;  // held until the operation completes
  };
  static Tensor host_of(const Tensor& t) {
    SD_CHECK(t.dtype() == DType::F32 && t.is_contiguous(), "MPI collectives take contiguous f32 buffers, got ", t.str());
    return t.is_cpu() ? t : copy_to(t, DType::F32, Device::cpu());
  }
  int world_;
  std::vector<Op> ops_;
};

#endif  // SD_WITH_MPI


// ---- the gradient sync -----------------------------------------------------------------------------

#if defined(SD_WITH_MPI)

class MpiGradientSync final : public GradientSync {
 public:
  MpiGradientSync(ProcessInfo info, DataParallelOptions o) : info_(info), o_(o) {
    SD_CHECK(o.zero_stage == 0 || o.zero_stage == 1, "--zero_stage ", o.zero_stage, ": 0 or 1");
  }

  int rank() const override { return info_.rank; }
  int world_size() const override { return info_.world_size; }
  int local_rank() const override { return info_.local_rank; }
  bool communicates() const override { return true; }

  void attach(AdamWOptimizer& opt) override {
    SD_CHECK(!opt_, "GradientSync: attached twice");
    opt_ = &opt;
    const std::vector<OptimizerParam>& ps = opt.params();
    SD_CHECK(!ps.empty(), "data parallel training needs trainable tensors");
    const Device dev = ps[0].param.device();
    std::vector<int64_t> numels;
    for (const OptimizerParam& p : ps) {
      SD_CHECK(p.param.device() == dev, "data parallel training needs every trainable tensor on one device; '", p.name,
               "' is on ", p.param.device().str(), ", '", ps[0].name, "' on ", dev.str());
      numels.push_back(p.param.numel());
    }
    const int64_t cap = std::max<int64_t>(1, int64_t(o_.bucket_mb * 1024.0 * 1024.0 / 4.0));
    plan_ = plan_buckets(numels, cap, world_size());
    const int nb = int(plan_.buckets.size());
    for (const BucketPlan::Bucket& b : plan_.buckets) bucket_.push_back(zeros({b.padded}, DType::F32, dev));
    // GPU buffers: NCCL where the CUDA backend has it, else MPI through host memory.
    if (dev.is_cuda()) coll_ = make_nccl_collectives(rank(), world_size(), dev.index, nb);
    if (!coll_) coll_ = std::make_unique<MpiCollectives>(world_size(), nb);
    for (int b = 0; b < nb; ++b) order_.push_back(b);

    // Every process starts from rank 0's weights (as DDP does): they load the same files and the
    // adapters' initialisation is seeded, so this only guards against a nondeterministic start.
    for (int b = 0; b < nb; ++b) {
      for (size_t i : plan_.buckets[size_t(b)].params) copy_(view(b, i), opt.master(i));
      coll_->broadcast(bucket_[size_t(b)]);
      for (size_t i : plan_.buckets[size_t(b)].params) copy_(opt.master(i), view(b, i));
    }
    opt.sync_model_copies();

    if (o_.zero_stage == 1) {
      // The buckets hold the complete masters now: they are where master() reads them between steps.
      std::vector<AdamWOptimizer::Range> owned;
      std::vector<Tensor> full;
      for (size_t i = 0; i < ps.size(); ++i) {
        owned.push_back(owned_range(plan_, i, rank()));
        full.push_back(ps[i].master.defined() ? view(plan_.params[i].bucket, i) : Tensor());
      }
      opt.shard(std::move(owned), std::move(full));
      shard_grad_ = zeros({plan_.shard_numel}, DType::F32, dev);
    }
    for (size_t i = 0; i < ps.size(); ++i) {
      Tensor p = ps[i].param;
      p.add_grad_hook([this, i](const Tensor&) { on_grad_ready(i); });
    }
    reset_step();
  }

  void begin_backward(bool last) override {
    armed_ = last && opt_;
    if (armed_ && o_.zero_stage == 1) opt_->set_full_masters_valid(false);  // the buckets take gradients now
  }

  void reduce(AdamWOptimizer& opt) override {
    SD_CHECK(&opt == opt_, "GradientSync: reduce() of an optimizer it is not attached to");
    armed_ = false;
    if (o_.zero_stage == 1) opt.set_full_masters_valid(false);
    const size_t n = opt.params().size(), nb = plan_.buckets.size();
    for (; next_ < order_.size(); ++next_) start(order_[next_]);
    for (int b : order_) coll_->wait(b);

    // Which tensors have a gradient anywhere, and which buckets changed after they started.
    std::vector<int> flags(n + nb, 0);
    for (size_t i = 0; i < n; ++i) flags[i] = opt.grad(i).defined() ? 1 : 0;
    for (size_t b = 0; b < nb; ++b) flags[n + b] = dirty_[b];
    MPI_Allreduce(MPI_IN_PLACE, flags.data(), int(flags.size()), MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    for (size_t b = 0; b < nb; ++b) {
      if (!flags[n + b]) continue;
      start(int(b));
      coll_->wait(int(b));
    }
    if (learn_order_) agree_order();

    const double inv_world = 1.0 / double(world_size());
    if (o_.zero_stage == 0) {
      for (size_t b = 0; b < nb; ++b) {
        mul_scalar_(bucket_[b], inv_world);
        for (size_t i : plan_.buckets[b].params)
          if (flags[i]) copy_(opt.ensure_grad(i), view(int(b), i));
      }
    } else {
      mul_scalar_(shard_grad_, inv_world);
      std::vector<Tensor> g(n);
      for (size_t i = 0; i < n; ++i) {
        const AdamWOptimizer::Range r = opt.owned(i);
        if (flags[i] && r.size() > 0)
          g[i] = as_strided(shard_grad_, {r.size()}, {1}, shard_position(plan_, i, rank()));
      }
      opt.set_shard_grads(std::move(g));
    }
    reset_step();
  }

  double grad_norm(const std::vector<Tensor>& grads) override {
    const double local = global_grad_norm(grads);
    if (o_.zero_stage == 0) return local;  // the same averaged gradients on every process
    return std::sqrt(sum(local * local));
  }

  void after_step(AdamWOptimizer& opt) override {
    if (o_.zero_stage != 1) return;
    // Each process's updated range goes into its piece of the buckets; the all-gather fills the rest.
    for (size_t b = 0; b < plan_.buckets.size(); ++b) {
      stage(int(b), opt, 0);
      coll_->allgather(bucket_[b]);
      for (size_t i : plan_.buckets[b].params) copy_(opt.params()[i].param, view(int(b), i));
    }
    opt.set_full_masters_valid(true);
  }

  std::vector<std::pair<std::string, Tensor>> gather_state(AdamWOptimizer& opt) override {
    if (o_.zero_stage == 0) return rank() == 0 ? opt.state_tensors() : std::vector<std::pair<std::string, Tensor>>{};
    const size_t n = opt.params().size();
    std::vector<std::vector<Tensor>> full(3, std::vector<Tensor>(n));
    // The masters last, so that the buckets hold them again afterwards (master() reads them there).
    for (int which : {1, 2, 0}) {
      for (size_t b = 0; b < plan_.buckets.size(); ++b) {
        stage(int(b), opt, which);
        coll_->allgather(bucket_[b]);
        if (rank() == 0)
          for (size_t i : plan_.buckets[b].params) full[which][i] = copy_to(view(int(b), i), DType::F32, Device::cpu());
      }
    }
    opt.set_full_masters_valid(true);
    std::vector<std::pair<std::string, Tensor>> out;
    if (rank() != 0) return out;
    for (size_t i = 0; i < n; ++i) {
      const std::string& name = opt.params()[i].name;
      out.emplace_back(name, full[0][i]);
      out.emplace_back("exp_avg." + name, full[1][i]);
      out.emplace_back("exp_avg_sq." + name, full[2][i]);
    }
    return out;
  }

  bool any(bool flag) override {
    int v = flag ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return v != 0;
  }
  double sum(double v) override { return reduce_double(v, MPI_SUM); }
  double mean(double v) override { return reduce_double(v, MPI_SUM) / double(world_size()); }
  double max(double v) override { return reduce_double(v, MPI_MAX); }

  std::string describe() const override {
    std::string s = std::to_string(world_size()) + " process(es), gradients through " +
                    (coll_ ? coll_->name() : std::string("MPI")) + " in " + std::to_string(plan_.buckets.size()) +
                    " bucket(s) of <= " + format_mb(o_.bucket_mb) + " MB, " +
                    (o_.overlap ? "overlapped with backward" : "after backward");
    if (o_.zero_stage == 1) s += "; ZeRO-1: optimizer state sharded (reduce-scatter, all-gather)";
    return s;
  }
  std::string report() const override {
    return "gradient buckets started while backward ran: " + std::to_string(started_early_) + " of " +
           std::to_string(started_all_);
  }

 private:
  static std::string format_mb(double mb) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", mb);
    return buf;
  }
  double reduce_double(double v, MPI_Op op) {
    MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, op, MPI_COMM_WORLD);
    return v;
  }

  // Parameter i's place in bucket b, shaped like the parameter.
  Tensor view(int b, size_t i) const {
    const Shape& shape = opt_->params()[i].param.shape();
    Shape strides(shape.size(), 1);
    for (size_t d = shape.size(); d-- > 1;) strides[d - 1] = strides[d] * shape[d];
    return as_strided(bucket_[size_t(b)], shape, strides, plan_.params[i].offset);
  }

  // Copies one kind of owned state (AdamWOptimizer::owned_state) into this process's piece of bucket b.
  void stage(int b, const AdamWOptimizer& opt, int which) {
    const Tensor& buf = bucket_[size_t(b)];
    for (size_t i : plan_.buckets[size_t(b)].params) {
      const AdamWOptimizer::Range r = opt.owned(i);
      if (r.size() == 0) continue;
      copy_(as_strided(buf, {r.size()}, {1}, plan_.params[i].offset + r.begin), opt.owned_state(i, which));
    }
  }

  // Gradients into bucket b, then its reduction starts.
  void start(int b) {
    const BucketPlan::Bucket& bk = plan_.buckets[size_t(b)];
    const Tensor& buf = bucket_[size_t(b)];
    for (size_t i : bk.params) {
      const Tensor g = opt_->grad(i);
      if (g.defined()) copy_(view(b, i), g);
      else fill_(view(b, i), 0.0);
    }
    if (bk.padded > bk.numel) fill_(as_strided(buf, {bk.padded - bk.numel}, {1}, bk.numel), 0.0);
    if (o_.zero_stage == 0) {
      coll_->start_allreduce(b, buf);
    } else {
      coll_->start_reduce_scatter(b, buf, as_strided(shard_grad_, {bk.piece}, {1}, bk.shard_offset));
    }
    started_[size_t(b)] = 1;
    ++started_all_;
    if (armed_) ++started_early_;
  }

  // A tensor's gradient is complete for this backward (its grad-ready hook).
  void on_grad_ready(size_t i) {
    if (!armed_) return;
    opt_->collect_grad(i);  // a 16-bit gradient into its f32 accumulator now
    const int b = plan_.params[i].bucket;
    if (seen_[i]) {  // a second time in one backward (used in two recomputed regions)
      if (started_[size_t(b)]) dirty_[size_t(b)] = 1;
      return;
    }
    seen_[i] = 1;
    if (--pending_[size_t(b)] == 0) {
      if (learn_order_) filled_.push_back(b);
      // Buckets start in the agreed order: the next one may wait for one that fills later.
      if (o_.overlap)
        while (next_ < order_.size() && pending_[size_t(order_[next_])] == 0) start(order_[next_++]);
    }
    coll_->poll();
  }

  // After the first step: from now on buckets start in the order they filled on rank 0 (the order
  // backward finishes them), which every process then uses.
  void agree_order() {
    std::vector<int> order(plan_.buckets.size());
    if (rank() == 0) {
      std::vector<char> in(order.size(), 0);
      size_t k = 0;
      for (int b : filled_)
        if (!in[size_t(b)]) in[size_t(b)] = 1, order[k++] = b;
      for (size_t b = 0; b < order.size(); ++b)
        if (!in[b]) order[k++] = int(b);
    }
    MPI_Bcast(order.data(), int(order.size()), MPI_INT, 0, MPI_COMM_WORLD);
    order_ = order;
    learn_order_ = false;
    filled_.clear();
  }

  void reset_step() {
    const size_t nb = plan_.buckets.size();
    pending_.assign(nb, 0);
    for (size_t b = 0; b < nb; ++b) pending_[b] = int(plan_.buckets[b].params.size());
    started_.assign(nb, 0);
    dirty_.assign(nb, 0);
    seen_.assign(plan_.params.size(), 0);
    next_ = 0;
  }

  ProcessInfo info_;
  DataParallelOptions o_;
  AdamWOptimizer* opt_ = nullptr;
  BucketPlan plan_;
  std::vector<Tensor> bucket_;  // f32, one per bucket, padded
  Tensor shard_grad_;           // ZeRO-1: the reduced pieces this process owns
  std::unique_ptr<Collectives> coll_;
  std::vector<int> order_;      // the order buckets start in (the same on every process)
  bool learn_order_ = true;
  std::vector<int> filled_;     // first step: the order buckets filled here
  // This step's last backward:
  bool armed_ = false;
  std::vector<int> pending_;        // per bucket: tensors whose gradient is not ready yet
  std::vector<char> started_, dirty_;
  std::vector<char> seen_;          // per tensor: its hook fired
  size_t next_ = 0;                 // position in order_ of the next bucket to start
  int64_t started_early_ = 0, started_all_ = 0;  // bucket reductions started during / after backward
};

#endif  // SD_WITH_MPI

}  // namespace

std::shared_ptr<GradientSync> make_gradient_sync(const ProcessInfo& info, const DataParallelOptions& o) {
#if defined(SD_WITH_MPI)
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return std::make_shared<MpiGradientSync>(info, o);
#endif
  SD_CHECK(info.world_size <= 1, "data parallel training over ", info.world_size, " processes needs MPI running "
           "(MpiSession)");
  (void)o;
  return std::make_shared<GradientSync>();
}

}  // namespace sd::train
