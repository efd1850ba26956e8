// The pieces of multi-process training that need no mpirun (label unit): bucket planning, the ZeRO-1
// ranges (every element of every parameter owned by exactly one process), a sharded AdamW step equal
// to the full step on each range, re-sharding a complete checkpoint on load for any world size, and
// the resume rule for another process count. tests/train/mpi_train_test.cpp runs the real thing.
#include <gtest/gtest.h>

#include <vector>

#include "runtime/error.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/distributed.h"

namespace sd::train {
namespace {

TEST(DataParallelPlan, BucketsTakeParametersInReverseOrderUpToTheCap) {
  // Backward finishes the last parameters first: they fill the first bucket.
  const BucketPlan p = plan_buckets({10, 20, 5, 100, 7}, 30, 4);
  ASSERT_EQ(p.buckets.size(), 4u);
  EXPECT_EQ(p.buckets[0].params, (std::vector<size_t>{4}));
  EXPECT_EQ(p.buckets[1].params, (std::vector<size_t>{3}));  // larger than the cap: alone
  EXPECT_EQ(p.buckets[2].params, (std::vector<size_t>{2, 1}));
  EXPECT_EQ(p.buckets[3].params, (std::vector<size_t>{0}));
  const int64_t numel[] = {7, 100, 25, 10}, padded[] = {8, 100, 28, 12};
  int64_t shard = 0;
  for (size_t b = 0; b < 4; ++b) {
    EXPECT_EQ(p.buckets[b].numel, numel[b]) << b;
    EXPECT_EQ(p.buckets[b].padded, padded[b]) << b;
    EXPECT_EQ(p.buckets[b].piece, padded[b] / 4) << b;
    EXPECT_EQ(p.buckets[b].shard_offset, shard) << b;
    shard += padded[b] / 4;
  }
  EXPECT_EQ(p.shard_numel, shard);
  EXPECT_EQ(p.params[1].bucket, 2);
  EXPECT_EQ(p.params[1].offset, 5);
  EXPECT_EQ(p.params[2].offset, 0);
  EXPECT_EQ(p.params[0].numel, 10);
  // One bucket for everything when it fits; one process pads nothing.
  const BucketPlan q = plan_buckets({3, 4}, 1 << 20, 1);
  ASSERT_EQ(q.buckets.size(), 1u);
  EXPECT_EQ(q.buckets[0].padded, 7);
  EXPECT_EQ(q.shard_numel, 7);
}

TEST(DataParallelPlan, OwnedRangesPartitionEveryParameterAcrossProcesses) {
  const std::vector<int64_t> numels = {1, 17, 300, 2, 64, 999, 5, 0, 33};
  for (int world : {1, 2, 3, 4, 8}) {
    const BucketPlan p = plan_buckets(numels, 128, world);
    for (size_t i = 0; i < numels.size(); ++i) {
      int64_t next = 0;  // the ranges of ranks 0, 1, ... follow each other and cover the parameter
      for (int r = 0; r < world; ++r) {
        const AdamWOptimizer::Range o = owned_range(p, i, r);
        if (o.size() == 0) continue;
        EXPECT_EQ(o.begin, next) << "world " << world << ", param " << i << ", rank " << r;
        next = o.end;
        const int64_t at = shard_position(p, i, r);
        EXPECT_GE(at, 0);
        EXPECT_LE(at + o.size(), p.shard_numel);
        // The place in the shard is the place in the bucket's piece of this rank.
        const BucketPlan::Bucket& b = p.buckets[size_t(p.params[i].bucket)];
        EXPECT_EQ(at - b.shard_offset, p.params[i].offset + o.begin - r * b.piece);
      }
      EXPECT_EQ(next, numels[i]) << "world " << world << ", param " << i;
    }
    // No two parameters share a place in a rank's shard.
    for (int r = 0; r < world; ++r) {
      std::vector<int> used(size_t(p.shard_numel), 0);
      for (size_t i = 0; i < numels.size(); ++i) {
        const AdamWOptimizer::Range o = owned_range(p, i, r);
        for (int64_t k = 0; k < o.size(); ++k) EXPECT_EQ(used[size_t(shard_position(p, i, r) + k)]++, 0);
      }
    }
  }
}

// Three trainable tensors: an f32 one (its own master), an f16 one with an f32 master in another
// learning-rate group, and an f32 one again; the same values for every call.
std::vector<OptimizerParam> make_params() {
  std::vector<OptimizerParam> ps;
  const Shape shapes[] = {{5, 7}, {3, 11}, {13}};
  for (int k = 0; k < 3; ++k) {
    OptimizerParam p;
    p.name = "p" + std::to_string(k);
    const Tensor v = test::random_tensor(shapes[k], DType::F32, 40 + uint64_t(k));
    if (k == 1) {
      p.master = copy_to(v, DType::F32, Device::cpu());
      p.param = copy_to(v, DType::F16, Device::cpu());
      p.group = 1;
    } else {
      p.param = copy_to(v, DType::F32, Device::cpu());
    }
    p.param.set_requires_grad(true);
    ps.push_back(p);
  }
  return ps;
}

// Gradients as the model would leave them (the f16 tensor's in f16), then collected.
void give_grads(AdamWOptimizer& opt, uint64_t seed) {
  for (size_t i = 0; i < opt.params().size(); ++i) {
    Tensor p = opt.params()[i].param;
    p.set_grad(copy_to(test::random_tensor(p.shape(), DType::F32, seed + i, -0.1, 0.1), p.dtype(), Device::cpu()));
  }
  opt.collect_grads();
}

Tensor slice(const Tensor& t, const AdamWOptimizer::Range& r) {
  const Tensor c = contiguous_raw(t);
  return as_strided(c, {r.size()}, {1}, c.offset() + r.begin);
}

// An optimizer restricted to rank r's ranges of a plan over `world` processes; `full` receives the
// complete f32 masters of 16-bit tensors (the sync's bucket views in a real run).
std::unique_ptr<AdamWOptimizer> sharded(const BucketPlan& plan, int r, AdamWConfig cfg, std::vector<Tensor>& full) {
  auto opt = std::make_unique<AdamWOptimizer>(make_params(), cfg);
  std::vector<AdamWOptimizer::Range> owned;
  full.clear();
  for (size_t i = 0; i < opt->params().size(); ++i) {
    owned.push_back(owned_range(plan, i, r));
    const OptimizerParam& p = opt->params()[i];
    full.push_back(p.master.defined() ? copy_to(p.master, DType::F32, Device::cpu()) : Tensor());
  }
  opt->shard(owned, full);
  return opt;
}

// The sync's part, done by hand: each rank's step gradients are its ranges of the averaged ones.
void give_shard_grads(AdamWOptimizer& shard, const AdamWOptimizer& reference) {
  std::vector<Tensor> g;
  for (size_t i = 0; i < shard.params().size(); ++i) {
    const AdamWOptimizer::Range r = shard.owned(i);
    g.push_back(r.size() > 0 ? copy_to(slice(reference.grad(i), r), DType::F32, Device::cpu()) : Tensor());
  }
  shard.set_shard_grads(g);
}

TEST(DataParallelOptimizer, ShardedStepsEqualTheFullStepOnEachRangeBitForBit) {
  AdamWConfig cfg;
  cfg.lr = 1e-2;
  AdamWOptimizer full(make_params(), cfg);
  const int world = 3;
  const BucketPlan plan = plan_buckets({35, 33, 13}, 40, world);
  std::vector<std::vector<Tensor>> masters(world);
  std::vector<std::unique_ptr<AdamWOptimizer>> ranks;
  for (int r = 0; r < world; ++r) ranks.push_back(sharded(plan, r, cfg, masters[size_t(r)]));
  for (int step = 0; step < 3; ++step) {
    give_grads(full, 100 + uint64_t(step) * 10);
    for (auto& o : ranks) give_shard_grads(*o, full);
    full.step({1e-2, 3e-3}, 0.5);
    for (auto& o : ranks) o->step({1e-2, 3e-3}, 0.5);
    const auto state = full.state_tensors();  // name, exp_avg, exp_avg_sq per parameter
    for (int r = 0; r < world; ++r)
      for (size_t i = 0; i < 3; ++i) {
        const AdamWOptimizer::Range o = ranks[size_t(r)]->owned(i);
        for (int which = 0; which < 3; ++which)
          EXPECT_TRUE(test::all_close(ranks[size_t(r)]->owned_state(i, which), slice(state[3 * i + size_t(which)].second, o), 0, 0))
              << "step " << step << ", rank " << r << ", param " << i << ", state " << which;
      }
    full.zero_grad();
    for (auto& o : ranks) o->zero_grad();
  }
  // Together the shards hold exactly the full state (ranges only; the buckets' padding holds no state).
  int64_t bytes = 0;
  for (auto& o : ranks) bytes += o->state_bytes();
  EXPECT_EQ(bytes, full.state_bytes());
  EXPECT_EQ(full.state_bytes(), int64_t((35 + 33 + 13) * 8 + 33 * 4));
  // The state of a sharded optimizer is assembled by the sync, never read as if complete.
  EXPECT_THROW(ranks[0]->state_tensors(), Error);
  ranks[0]->set_full_masters_valid(false);
  EXPECT_THROW(ranks[0]->master(1), Error);
  EXPECT_NO_THROW(ranks[0]->master(0));  // an f32 parameter is its own master
}

TEST(DataParallelOptimizer, ACompleteCheckpointLoadsIntoAnyNumberOfShards) {
  AdamWConfig cfg;
  cfg.lr = 1e-2;
  AdamWOptimizer full(make_params(), cfg);
  for (int step = 0; step < 2; ++step) {
    give_grads(full, 7 + uint64_t(step));
    full.step({1e-2, 1e-3}, 1.0);
    full.zero_grad();
  }
  const auto saved = full.state_tensors();
  for (int world : {1, 2, 3, 5}) {
    const BucketPlan plan = plan_buckets({35, 33, 13}, 1 << 20, world);
    for (int r = 0; r < world; ++r) {
      std::vector<Tensor> masters;
      auto o = sharded(plan, r, cfg, masters);
      o->load_state_tensors(saved, full.step_count());
      EXPECT_EQ(o->step_count(), 2);
      for (size_t i = 0; i < 3; ++i) {
        for (int which = 0; which < 3; ++which)
          EXPECT_TRUE(test::all_close(o->owned_state(i, which), slice(saved[3 * i + size_t(which)].second, o->owned(i)), 0, 0))
              << "world " << world << ", rank " << r << ", param " << i << ", state " << which;
        // The complete masters and the model's (16-bit) copies are everywhere.
        EXPECT_TRUE(test::all_close(o->master(i), full.master(i), 0, 0)) << "world " << world << ", param " << i;
        EXPECT_TRUE(test::all_close(o->params()[i].param, full.params()[i].param, 0, 0));
      }
      // And a step from there equals the full optimizer's next one on these ranges.
      AdamWOptimizer next(make_params(), cfg);
      next.load_state_tensors(saved, full.step_count());
      give_grads(next, 99);
      give_shard_grads(*o, next);
      next.step({1e-2, 1e-3}, 1.0);
      o->step({1e-2, 1e-3}, 1.0);
      const auto after = next.state_tensors();
      for (size_t i = 0; i < 3; ++i)
        EXPECT_TRUE(test::all_close(o->owned_state(i, 0), slice(after[3 * i].second, o->owned(i)), 0, 0))
            << "world " << world << ", rank " << r << ", param " << i;
    }
  }
}

TEST(DataParallelCheckpoint, AnotherProcessCountResumesWhenTheGlobalBatchStays) {
  const nlohmann::json two = {{"method", "lora"}, {"train_batch_size", 2}, {"world_size", 2}};
  const nlohmann::json one = {{"method", "lora"}, {"train_batch_size", 4}, {"world_size", 1}};
  const nlohmann::json four = {{"method", "lora"}, {"train_batch_size", 1}, {"world_size", 4}};
  EXPECT_NO_THROW(check_fingerprint(two, one, "ck"));
  EXPECT_NO_THROW(check_fingerprint(two, four, "ck"));
  const nlohmann::json smaller = {{"method", "lora"}, {"train_batch_size", 2}, {"world_size", 1}};
  try {
    check_fingerprint(two, smaller, "ck");
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("2 per process x 2 process(es)"), std::string::npos) << m;
    EXPECT_NE(m.find("keep --train_batch_size x processes the same"), std::string::npos) << m;
  }
  // Checkpoints written before multi-process runs hold no world_size: one process.
  const nlohmann::json old = {{"method", "lora"}, {"train_batch_size", 4}};
  EXPECT_NO_THROW(check_fingerprint(old, one, "ck"));
}

TEST(DataParallelSync, WithoutMpiRunningTheSingleProcessSyncIsUsed) {
  const std::shared_ptr<GradientSync> s = make_gradient_sync(ProcessInfo{}, DataParallelOptions{});
  EXPECT_FALSE(s->communicates());
  EXPECT_EQ(s->world_size(), 1);
  EXPECT_EQ(s->sum(2.5), 2.5);
  EXPECT_TRUE(s->any(true));
  ProcessInfo two;
  two.world_size = 2;
  EXPECT_THROW(make_gradient_sync(two, DataParallelOptions{}), Error);
  std::printf("[ DataParallelSync ] this build: MPI %s, NCCL %s\n", built_with_mpi() ? "yes" : "no",
              built_with_nccl() ? "yes" : "no");
}

}  // namespace
}  // namespace sd::train
