// sd_train under mpirun (ctest label `mpi`): data parallelism on the CPU through MPI, checked from the
// outside on the tiny SD1 pipeline and dataset at 32 px. Each run's weights are compared with one
// process training the same global batch:
//   - 2 ranks x batch 2 and 4 ranks x batch 1 = 1 rank x batch 4, with gradient accumulation 2, for
//     --method full and lora (f32: reduction-order differences only; bounds below);
//   - the all-reduce overlapped with backward = after backward (bit for bit);
//   - --zero_stage 1 = plain data parallelism (bit for bit at 2 and 4 ranks), optimizer state per
//     process divided by the world size;
//   - a non-finite gradient on one rank skips the step on all;
//   - resume after a SIGKILL of one rank = the straight run (bit for bit), and a 2-rank checkpoint
//     resumed on 1 and on 4 processes continues the same run;
//   - one rank raising mid-step ends the job non-zero within seconds, naming the rank.
// Open MPI from Debian runs as root with OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM); --oversubscribe lets 4
// ranks share 2 cores; OMP_NUM_THREADS=1 and OMP_WAIT_POLICY=PASSIVE keep them from fighting.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "runtime/cuda_api.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"
#include "train/distributed.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;
using test::read_jsonl;
using test::read_text;

const std::string kData = SD_TEST_DATA_DIR;
const std::string kTrain = std::string(SD_BINARY_DIR) + "/tools/sd_train";
const std::string kSd1 = kData + "/pipe_tiny_sd1";
const std::string kImages = kData + "/train_tiny";

std::string find_mpirun() {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "");
  std::string dir;
  while (std::getline(ss, dir, ':'))
    if (!dir.empty() && ::access((fs::path(dir) / "mpirun").c_str(), X_OK) == 0) return (fs::path(dir) / "mpirun").string();
  return "";
}

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

struct Difference {
  double max_abs = 0;   // largest |a - b| over every element
  double rel_norm = 0;  // ||a - b|| / ||a|| over all tensors together
  bool bit_equal = true;
  size_t tensors = 0;
};

// Two safetensors files with the same keys, compared in double.
Difference compare_files(const fs::path& a, const fs::path& b) {
  const SafetensorsFile fa = SafetensorsFile::open(a.string()), fb = SafetensorsFile::open(b.string());
  EXPECT_EQ(fa.keys(), fb.keys()) << a << " vs " << b;
  Difference d;
  double num = 0, den = 0;
  for (const std::string& k : fa.keys()) {
    const std::vector<double> x = fa.get(k).to_vector(), y = fb.get(k).to_vector();
    if (x.size() != y.size()) {
      ADD_FAILURE() << k << ": " << x.size() << " vs " << y.size() << " elements";
      continue;
    }
    for (size_t i = 0; i < x.size(); ++i) {
      const double e = std::abs(x[i] - y[i]);
      d.max_abs = std::max(d.max_abs, e);
      d.bit_equal = d.bit_equal && x[i] == y[i];
      num += e * e;
      den += x[i] * x[i];
    }
    ++d.tensors;
  }
  d.rel_norm = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return d;
}

std::string str(const Difference& d) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "max |dw| %.3g, relative L2 %.3g over %zu tensors%s", d.max_abs, d.rel_norm, d.tensors,
                d.bit_equal ? " (bit for bit)" : "");
  return buf;
}

// The number after `prefix` in a line of `text` (-1 when absent).
int64_t number_after(const std::string& text, const std::string& prefix) {
  const size_t at = text.find(prefix);
  if (at == std::string::npos) return -1;
  return std::atoll(text.c_str() + at + prefix.size());
}

struct RunResult {
  int code = -1;  // exit status, or -signal
  std::string out, err;
  double seconds = 0;
};

class MpiTrain : public ::testing::Test {
 protected:
  void SetUp() override {
    mpirun_ = find_mpirun();
    if (mpirun_.empty()) GTEST_SKIP() << "mpirun not found on PATH (Debian: openmpi-bin, see scripts/install_deps.sh)";
    if (!built_with_mpi()) GTEST_SKIP() << "this build has no MPI (libopenmpi-dev was not found at configure time)";
    ASSERT_TRUE(fs::is_regular_file(kTrain)) << kTrain << " is not built (ninja sd_train)";
    dir_ = fs::temp_directory_path() / ("sd_mpi_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // `np` processes of sd_train under mpirun (np = 0: sd_train alone, without mpirun); `env`: extra
  // NAME=VALUE for every rank. Returns the pid of mpirun (or sd_train).
  pid_t spawn(int np, const std::vector<std::string>& args, const std::string& tag,
              const std::vector<std::string>& env = {}) {
    const std::string so = (dir_ / (tag + ".out")).string(), se = (dir_ / (tag + ".err")).string();
    std::vector<std::string> argv;
    // Open MPI's shared-memory transport copies between processes with ptrace-like calls (CMA), which
    // containers often forbid: plain shared-memory copies work everywhere.
    std::vector<std::string> vars = {"OMP_NUM_THREADS=1", "OMP_WAIT_POLICY=PASSIVE",
                                     "OMPI_MCA_btl_vader_single_copy_mechanism=none"};
    vars.insert(vars.end(), env.begin(), env.end());
    if (np > 0) {
      argv = {mpirun_, "--oversubscribe", "-np", std::to_string(np)};
      for (const std::string& v : vars) argv.insert(argv.end(), {"-x", v.substr(0, v.find('='))});
    }
    argv.push_back(kTrain);
    argv.insert(argv.end(), args.begin(), args.end());
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (std::freopen(so.c_str(), "w", stdout) == nullptr || std::freopen(se.c_str(), "w", stderr) == nullptr) _exit(127);
      ::setpgid(0, 0);  // a group of its own: the test can end every rank if something hangs
      ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
      ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
      for (const std::string& v : vars) ::setenv(v.substr(0, v.find('=')).c_str(), v.substr(v.find('=') + 1).c_str(), 1);
      std::vector<char*> cargv;
      for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
      cargv.push_back(nullptr);
      ::execv(cargv[0], cargv.data());
      _exit(127);
    }
    started_[pid] = std::chrono::steady_clock::now();
    return pid;
  }
  // Waits at most `limit` (then kills the whole process group: a hang is a failure, not a stuck ctest).
  RunResult wait(pid_t pid, const std::string& tag, std::chrono::seconds limit = std::chrono::seconds(240)) {
    int status = 0;
    const auto t0 = started_[pid];
    while (::waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() - t0 > limit) {
        ::kill(-pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        ADD_FAILURE() << tag << " did not end within " << limit.count() << " s (killed)";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    RunResult r;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? -WTERMSIG(status) : -1000;
    r.out = read_text(dir_ / (tag + ".out"));
    r.err = read_text(dir_ / (tag + ".err"));
    return r;
  }
  RunResult run(int np, const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
    const std::string tag = "run" + std::to_string(runs_++);
    return wait(spawn(np, args, tag, env), tag);
  }

  // A quick run on the tiny SD1 pipeline: `global` examples per optimizer step over `np` processes.
  std::vector<std::string> quick(const std::string& method, int np, int global, const fs::path& out) {
    return {"--method", method, "--pretrained_model_name_or_path", kSd1, "--train_data_dir", kImages,
            "--resolution", "32", "--train_batch_size", std::to_string(global / std::max(np, 1)),
            "--lr_warmup_steps", "0", "--output_dir", out.string(), "--quiet", "--report_to", "none",
            "--save_precision", "fp32"};
  }

  // The pid of rank `rank` among mpirun's children (Open MPI starts the local ranks itself).
  static pid_t rank_pid(pid_t mpirun, int rank) {
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string name = e.path().filename().string();
      if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
      const std::string env = read_text(e.path() / "environ");
      if (env.find("OMPI_COMM_WORLD_RANK=" + std::to_string(rank) + std::string(1, '\0')) == std::string::npos) continue;
      std::ifstream st(e.path() / "stat");
      std::string stat;
      std::getline(st, stat);
      const size_t close = stat.rfind(')');
      if (close == std::string::npos) continue;
      std::istringstream rest(stat.substr(close + 2));
      char state = 0;
      pid_t ppid = 0;
      rest >> state >> ppid;
      if (ppid == mpirun) return pid_t(std::stol(name));
    }
    return -1;
  }

  std::string mpirun_;
  fs::path dir_;
  int runs_ = 0;
  std::map<pid_t, std::chrono::steady_clock::time_point> started_;
};

// f32 weights after 3 optimizer steps of 2 micro-batches: the ranks' sums differ from one process's in
// the order of f32 additions only. Measured here (2026-12, OpenBLAS, Open MPI 4.1): full (lr 1e-3)
// max |dw| 5e-7 at 2 and 4 ranks; LoRA (lr 1e-2, two learning-rate groups) 1.5e-5 / 4.8e-5, relative L2
// 2e-6 / 5e-6. Adam divides by sqrt(v), so an element whose gradient is near zero turns a rounding
// difference into a visible one; the bounds: max |dw| <= lr / 10 (a lost or doubled rank's data moves
// weights by about lr per step) and relative L2 <= 1e-4.
void expect_same_training(const Difference& d, double lr, const std::string& what) {
  std::printf("[ MpiTrain ] %s: %s\n", what.c_str(), str(d).c_str());
  EXPECT_GT(d.tensors, 0u) << what;
  EXPECT_LE(d.max_abs, lr / 10) << what << ": " << str(d);
  EXPECT_LE(d.rel_norm, 1e-4) << what << ": " << str(d);
}

TEST_F(MpiTrain, FullFineTuneOnTwoAndFourRanksEqualsOneRankWithAccumulation) {
  const std::vector<std::string> common = {"--gradient_accumulation_steps", "2", "--max_train_steps", "3",
                                           "--learning_rate", "1e-3", "--bucket_mb", "0.1"};
  const fs::path one = dir_ / "one", two = dir_ / "two", four = dir_ / "four", two_sync = dir_ / "two_sync";
  RunResult r = run(0, plus(quick("full", 1, 4, one), common));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(2, plus(quick("full", 2, 4, two), common));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("processes: 2 process(es), gradients through MPI in 9 bucket(s)"), std::string::npos) << r.err;
  const int64_t early = number_after(r.err, "gradient buckets started while backward ran: ");
  EXPECT_GT(early, 0) << "no bucket started during backward: " << r.err;
  std::printf("[ MpiTrain ] overlapped: %lld of 27 bucket reductions started while backward ran\n",
              static_cast<long long>(early));
  r = run(2, plus(quick("full", 2, 4, two_sync), plus(common, {"--sync_grad_reduce"})));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(number_after(r.err, "gradient buckets started while backward ran: "), 0) << r.err;
  r = run(4, plus(quick("full", 4, 4, four), common));
  ASSERT_EQ(r.code, 0) << r.err;

  const std::string unet = "unet/diffusion_pytorch_model.safetensors";
  expect_same_training(compare_files(one / unet, two / unet), 1e-3, "full, 2 ranks x 2 vs 1 x 4");
  expect_same_training(compare_files(one / unet, four / unet), 1e-3, "full, 4 ranks x 1 vs 1 x 4");
  const Difference sync = compare_files(two / unet, two_sync / unet);
  EXPECT_TRUE(sync.bit_equal) << "overlapped vs after-backward all-reduce: " << str(sync);
  // The log: rank 0 writes it, with the loss and examples of all ranks.
  const auto l1 = read_jsonl(one / "logs" / "train.jsonl"), l2 = read_jsonl(two / "logs" / "train.jsonl");
  ASSERT_EQ(l1.size(), 3u);
  ASSERT_EQ(l2.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(l2[i]["examples"], 8) << l2[i];
    EXPECT_NEAR(l1[i]["loss"].get<double>(), l2[i]["loss"].get<double>(), 1e-5) << i;
  }
  EXPECT_FALSE(fs::exists(two / "logs" / "train.jsonl.1"));
}

TEST_F(MpiTrain, LoraOnTwoAndFourRanksEqualsOneRankWithAccumulation) {
  // Text-encoder adapters too: two learning-rate groups, and tensors whose gradients finish in another
  // order; small buckets so that several start while backward runs.
  const std::vector<std::string> common = {"--gradient_accumulation_steps", "2", "--max_train_steps", "3",
                                           "--learning_rate", "1e-2", "--rank", "4", "--lora_target",
                                           "attn,ff,proj,conv", "--train_text_encoder", "--bucket_mb", "0.01"};
  const fs::path one = dir_ / "one", two = dir_ / "two", four = dir_ / "four";
  for (const auto& [np, out] : {std::pair{0, one}, std::pair{2, two}, std::pair{4, four}}) {
    const RunResult r = run(np, plus(quick("lora", np, 4, out), common));
    ASSERT_EQ(r.code, 0) << r.err;
  }
  const std::string lora = "pytorch_lora_weights.safetensors";
  expect_same_training(compare_files(one / lora, two / lora), 1e-2, "lora, 2 ranks x 2 vs 1 x 4");
  expect_same_training(compare_files(one / lora, four / lora), 1e-2, "lora, 4 ranks x 1 vs 1 x 4");
}

TEST_F(MpiTrain, ZeroStage1EqualsDataParallelWithTheStateDividedByTheWorldSize) {
  // fp16 with f32 masters and EMA (the masters ZeRO-1 shards; EMA reads them between steps); rank 1's
  // gradients turn inf at step 2, on rank 1 alone: every rank must skip that step.
  const std::vector<std::string> half = {"--max_train_steps", "3", "--learning_rate", "1e-3", "--bucket_mb", "0.1",
                                         "--mixed_precision", "fp16", "--use_ema"};
  const std::vector<std::string> inf = {"SD_TRAIN_TEST_INF_RANK=1", "SD_TRAIN_TEST_INF_STEP=2"};
  const fs::path dp = dir_ / "dp", zero = dir_ / "zero", dp4 = dir_ / "dp4", zero4 = dir_ / "zero4";
  const RunResult a = run(2, plus(quick("full", 2, 4, dp), half), inf);
  ASSERT_EQ(a.code, 0) << a.err;
  const RunResult b = run(2, plus(quick("full", 2, 4, zero), plus(half, {"--zero_stage", "1"})), inf);
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_NE(b.err.find("ZeRO-1: optimizer state sharded"), std::string::npos) << b.err;
  for (const fs::path& out : {dp, zero}) {
    const auto log = read_jsonl(out / "logs" / "train.jsonl");
    ASSERT_EQ(log.size(), 3u) << out;
    EXPECT_FALSE(log[0]["skipped"].get<bool>());
    EXPECT_TRUE(log[1]["skipped"].get<bool>()) << out << ": rank 0 did not skip the step rank 1 found inf in";
    EXPECT_EQ(log[2]["loss_scale"].get<double>(), log[1]["loss_scale"].get<double>() / 2) << out;
  }
  const std::string unet = "unet/diffusion_pytorch_model.safetensors";
  Difference d = compare_files(dp / unet, zero / unet);
  std::printf("[ MpiTrain ] ZeRO-1 vs data parallel, 2 ranks, fp16 + EMA: %s\n", str(d).c_str());
  EXPECT_TRUE(d.bit_equal) << str(d);

  // f32 LoRA on 4 ranks, with a checkpoint: the gathered optimizer state is the plain one.
  const std::vector<std::string> lora = {"--max_train_steps", "2", "--learning_rate", "1e-2", "--bucket_mb", "0.01",
                                         "--checkpointing_steps", "2", "--lora_target", "attn,ff,proj,conv"};
  const RunResult c = run(4, plus(quick("lora", 4, 4, dp4), lora));
  ASSERT_EQ(c.code, 0) << c.err;
  const RunResult e = run(4, plus(quick("lora", 4, 4, zero4), plus(lora, {"--zero_stage", "1"})));
  ASSERT_EQ(e.code, 0) << e.err;
  // Two processes add two numbers, in either order the same; with four, the reduce-scatter may add in
  // another order than the all-reduce (bit for bit with Open MPI 4.1 here, not promised by MPI).
  d = compare_files(dp4 / "pytorch_lora_weights.safetensors", zero4 / "pytorch_lora_weights.safetensors");
  expect_same_training(d, 1e-2, "ZeRO-1 vs data parallel, 4 ranks, f32 LoRA");
  d = compare_files(dp4 / "checkpoint-2" / "optimizer.safetensors", zero4 / "checkpoint-2" / "optimizer.safetensors");
  expect_same_training(d, 1e-2, "ZeRO-1 vs data parallel, 4 ranks: checkpointed moments");

  // Optimizer state per process: moments (and f32 masters of the fp16 run) over the world size.
  const int64_t s_dp = number_after(a.err, "optimizer state: "), s_zero = number_after(b.err, "optimizer state: ");
  const int64_t s_dp4 = number_after(c.err, "optimizer state: "), s_zero4 = number_after(e.err, "optimizer state: ");
  std::printf("[ MpiTrain ] optimizer state per process (bytes, the largest): fp16 full 2 ranks %lld -> ZeRO-1 %lld; "
              "f32 LoRA 4 ranks %lld -> ZeRO-1 %lld\n",
              static_cast<long long>(s_dp), static_cast<long long>(s_zero), static_cast<long long>(s_dp4),
              static_cast<long long>(s_zero4));
  ASSERT_GT(s_dp, 0);
  ASSERT_GT(s_dp4, 0);
  // Each bucket is padded to a multiple of the world size: at most (world - 1) elements of 12 (or 8)
  // bytes per bucket above the exact share.
  EXPECT_LE(s_zero, s_dp / 2 + 9 * 12) << a.err << b.err;
  EXPECT_LE(s_zero4, s_dp4 / 4 + 64 * 3 * 8) << c.err << e.err;
  EXPECT_GE(s_zero * 2, s_dp - 9 * 12);
}

TEST_F(MpiTrain, ResumeAfterOneRankIsKilledEqualsTheStraightRunOnAnyProcessCount) {
  // ZeRO-1 (the checkpoint gathers the shards), accumulation 2, 8 steps, checkpoints every 3 (the kill
  // comes after checkpoint-3, with 5 steps to spare; the resumes start from checkpoint-3).
  const std::vector<std::string> common = {"--gradient_accumulation_steps", "2", "--max_train_steps", "8",
                                           "--learning_rate", "1e-2", "--checkpointing_steps", "3", "--random_flip",
                                           "--lr_scheduler", "cosine", "--lora_target", "attn,ff,proj,conv",
                                           "--zero_stage", "1", "--bucket_mb", "0.01", "--seed", "5"};
  const fs::path straight = dir_ / "straight", killed = dir_ / "killed", on1 = dir_ / "on1", on4 = dir_ / "on4";
  RunResult r = run(2, plus(quick("lora", 2, 4, straight), common));
  ASSERT_EQ(r.code, 0) << r.err;

  // SIGKILL to rank 1 once checkpoint-3 exists: mpirun ends rank 0 too.
  const pid_t mpirun = spawn(2, plus(quick("lora", 2, 4, killed), common), "killed");
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(killed / "checkpoint-3" / "state.json") && std::chrono::steady_clock::now() - t0 < std::chrono::minutes(2))
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const pid_t rank1 = rank_pid(mpirun, 1);
  ASSERT_GT(rank1, 0) << "rank 1 not found among mpirun's children";
  ::kill(rank1, SIGKILL);
  r = wait(mpirun, "killed", std::chrono::seconds(60));
  ASSERT_NE(r.code, 0) << "the job ended normally before the kill: " << r.err;
  std::printf("[ MpiTrain ] SIGKILL of rank 1: the job ended with status %d, %.1f s after it started\n", r.code, r.seconds);
  ASSERT_TRUE(fs::exists(killed / "checkpoint-3" / "state.json"));
  ASSERT_FALSE(fs::exists(killed / "pytorch_lora_weights.safetensors")) << "the run finished before the kill";
  for (const fs::path& copy : {on1, on4}) {
    fs::create_directories(copy);
    fs::copy(killed / "checkpoint-3", copy / "checkpoint-3", fs::copy_options::recursive);
  }

  // The same 2 processes: bit for bit.
  r = run(2, plus(quick("lora", 2, 4, killed), plus(common, {"--resume_from_checkpoint", (killed / "checkpoint-3").string()})));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resumed from"), std::string::npos) << r.err;
  const std::string lora = "pytorch_lora_weights.safetensors";
  Difference d = compare_files(straight / lora, killed / lora);
  EXPECT_TRUE(d.bit_equal) << "resumed on 2 ranks: " << str(d);
  d = compare_files(straight / "checkpoint-6" / "optimizer.safetensors", killed / "checkpoint-6" / "optimizer.safetensors");
  EXPECT_TRUE(d.bit_equal) << "optimizer state after resuming on 2 ranks: " << str(d);
  const auto ls = read_jsonl(straight / "logs" / "train.jsonl"), lk = read_jsonl(killed / "logs" / "train.jsonl");
  ASSERT_EQ(ls.size(), 8u);
  ASSERT_EQ(lk.size(), 8u);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(ls[i].dump(), lk[i].dump()) << i;

  // One process with the same global batch (4 x 1), plain AdamW state: each element of it from the shard
  // that held it. Then four, re-sharded.
  r = run(0, plus(quick("lora", 1, 4, on1), plus(common, {"--resume_from_checkpoint", (on1 / "checkpoint-3").string()})));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resumed from"), std::string::npos) << r.err;
  expect_same_training(compare_files(straight / lora, on1 / lora), 1e-2, "2-rank checkpoint resumed on 1 rank");
  r = run(4, plus(quick("lora", 4, 4, on4), plus(common, {"--resume_from_checkpoint", (on4 / "checkpoint-3").string()})));
  ASSERT_EQ(r.code, 0) << r.err;
  expect_same_training(compare_files(straight / lora, on4 / lora), 1e-2, "2-rank checkpoint resumed on 4 ranks");

  // Another global batch is refused with the reason.
  r = run(0, plus(quick("lora", 1, 2, dir_ / "bad"), plus(common, {"--resume_from_checkpoint", (on1 / "checkpoint-3").string()})));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("keep --train_batch_size x processes the same"), std::string::npos) << r.err;
}

TEST_F(MpiTrain, ARankThatRaisesMidStepEndsTheJobNamingTheRank) {
  // Rank 1 raises at step 2 after its backward, while rank 0 waits for its gradients: no hang.
  const std::string message = "sd_train: rank 1: error: failing on purpose at step 2";
  const pid_t pid = spawn(2, plus(quick("lora", 2, 4, dir_ / "fail"), {"--max_train_steps", "50", "--learning_rate", "1e-3"}),
                          "fail", {"SD_TRAIN_TEST_FAIL_RANK=1", "SD_TRAIN_TEST_FAIL_STEP=2"});
  // When the message appears, and when the job has ended after it.
  std::optional<std::chrono::steady_clock::time_point> said;
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    siginfo_t info{};
    // Has it ended? (WNOWAIT: wait() below collects the status.)
    if (::waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid) break;
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(60)) break;  // wait() reports the hang
    if (!said && read_text(dir_ / "fail.err").find(message) != std::string::npos) said = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const auto ended = std::chrono::steady_clock::now();
  const RunResult r = wait(pid, "fail", std::chrono::seconds(70));
  if (!said && r.err.find(message) != std::string::npos) said = ended;  // printed just before the end
  ASSERT_TRUE(said.has_value()) << r.err;
  const double after = std::chrono::duration<double>(ended - *said).count();
  std::printf("[ MpiTrain ] a rank raising at step 2: the job ended with status %d, %.2f s after the message "
              "(%.2f s in all, start-up included)\n",
              r.code, after, std::chrono::duration<double>(ended - t0).count());
  EXPECT_NE(r.code, 0) << r.err;
  EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
  EXPECT_LT(after, 10.0);
  EXPECT_FALSE(fs::exists(dir_ / "fail" / "pytorch_lora_weights.safetensors"));
}

TEST_F(MpiTrain, OneRankUnderMpirunEqualsNoMpirunAndBadCommandLinesFailOnce) {
  const std::vector<std::string> common = {"--max_train_steps", "2", "--learning_rate", "1e-3", "--bucket_mb", "0.1"};
  const fs::path plain = dir_ / "plain", np1 = dir_ / "np1";
  RunResult r = run(0, plus(quick("full", 1, 2, plain), common));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(1, plus(quick("full", 1, 2, np1), common));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("processes: 1 process(es), gradients through MPI"), std::string::npos) << r.err;
  const std::string unet = "unet/diffusion_pytorch_model.safetensors";
  const Difference d = compare_files(plain / unet, np1 / unet);
  EXPECT_TRUE(d.bit_equal) << str(d);
  // Every rank parses the same command line; rank 0 alone reports the mistake.
  r = run(2, {"--method", "lora", "--pretrained_model_name_or_path", kSd1, "--train_data_dir", kImages, "--no_such_flag"});
  EXPECT_EQ(r.code, 2) << r.err;
  size_t n = 0;
  for (size_t at = r.err.find("no_such_flag"); at != std::string::npos; at = r.err.find("no_such_flag", at + 1)) ++n;
  EXPECT_EQ(n, 1u) << r.err;
}

// The NCCL path on GPUs (label cuda; skipped without a GPU, mpirun or NCCL): one process under mpirun
// moves its gradients through NCCL with one rank (bucket copies, events, the communication stream,
// reduce-scatter and all-gather under ZeRO-1) and must train as sd_train alone does; with two GPUs, 2 x 2
// must equal 1 x 4. GPU kernels need not repeat their last bits run to run, so the bounds of the CPU
// tests apply rather than bit equality.
class CudaMpiTrain : public MpiTrain {};

TEST_F(CudaMpiTrain, NcclOnOneGpuEqualsTheSingleProcessRunAndTwoGpusEqualOne) {
  SD_REQUIRE_CUDA();
  if (!built_with_nccl()) GTEST_SKIP() << "this build has no NCCL (CUDA and MPI found, nccl.h / libnccl not)";
  const std::vector<std::string> common = {"--max_train_steps", "3", "--learning_rate", "1e-3", "--bucket_mb", "0.1",
                                           "--gradient_accumulation_steps", "2", "--device", "cuda"};
  const std::string unet = "unet/diffusion_pytorch_model.safetensors";
  const fs::path plain = dir_ / "plain", np1 = dir_ / "np1", np1z = dir_ / "np1z";
  RunResult r = run(0, plus(quick("full", 1, 4, plain), common));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(1, plus(quick("full", 1, 4, np1), common));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("gradients through NCCL"), std::string::npos) << r.err;
  expect_same_training(compare_files(plain / unet, np1 / unet), 1e-3, "cuda: 1 process through NCCL vs alone");
  r = run(1, plus(quick("full", 1, 4, np1z), plus(common, {"--zero_stage", "1", "--mixed_precision", "bf16"})));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("ZeRO-1"), std::string::npos) << r.err;
  if (cudart::device_count() < 2) {
    std::printf("[ CudaMpiTrain ] one GPU: the 2-GPU comparison needs a machine with two\n");
    return;
  }
  const fs::path two = dir_ / "two", twoz = dir_ / "twoz";
  r = run(2, plus(quick("full", 2, 4, two), common));
  ASSERT_EQ(r.code, 0) << r.err;
  expect_same_training(compare_files(plain / unet, two / unet), 1e-3, "cuda: 2 GPUs x 2 vs 1 x 4");
  r = run(2, plus(quick("full", 2, 4, twoz), plus(common, {"--zero_stage", "1"})));
  ASSERT_EQ(r.code, 0) << r.err;
  expect_same_training(compare_files(two / unet, twoz / unet), 1e-3, "cuda: ZeRO-1 vs data parallel on 2 GPUs");
}

}  // namespace
}  // namespace sd::train
