// Module trees: dotted parameter names, loading by name with dtype conversion, and clear
// errors for missing keys and shape mismatches.
#include <gtest/gtest.h>

#include <cstdio>

#include "models/nn/layers.h"
#include "ops/activation.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

class Block : public Module {
 public:
  Block() {
    norm = register_module("norm", std::make_shared<LayerNorm>(8));
    proj = register_module("proj", std::make_shared<Linear>(8, 4));
    conv = register_module("conv", std::make_shared<Conv2d>(4, 2, 3, 1, 1, false));
  }
  std::shared_ptr<LayerNorm> norm;
  std::shared_ptr<Linear> proj;
  std::shared_ptr<Conv2d> conv;
};

class Net : public Module {
 public:
  Net() {
    for (int i = 0; i < 2; ++i) blocks.push_back(register_module("blocks." + std::to_string(i), std::make_shared<Block>()));
  }
  std::vector<std::shared_ptr<Block>> blocks;
};

TEST(Module, NamesAreDottedPaths) {
  Net net;
  std::vector<std::string> names;
  for (auto& [name, p] : net.named_parameters()) names.push_back(name);
  const std::vector<std::string> expected = {"blocks.0.norm.weight", "blocks.0.norm.bias", "blocks.0.proj.weight",
                                             "blocks.0.proj.bias",   "blocks.0.conv.weight", "blocks.1.norm.weight",
                                             "blocks.1.norm.bias",   "blocks.1.proj.weight", "blocks.1.proj.bias",
                                             "blocks.1.conv.weight"};
  EXPECT_EQ(names, expected);
  EXPECT_EQ(net.num_parameters(), 2 * (8 + 8 + 32 + 4 + 72));
}

// Profiler (NVTX) ranges carry each block's dotted path once the root is named; the class until then.
TEST(Module, TraceNamesAreDottedPathsUnderTheRoot) {
  Net net;
  EXPECT_STREQ(net.blocks[1]->proj->trace_name("Linear"), "Linear");
  net.name_for_tracing("net");
  EXPECT_STREQ(net.trace_name("Net"), "net");
  EXPECT_STREQ(net.blocks[1]->proj->trace_name("Linear"), "net.blocks.1.proj");
  for (auto& [name, m] : net.named_modules("net")) EXPECT_STREQ(m->trace_name("?"), name.c_str());
}

TEST(Module, ForwardBeforeLoadingNamesTheProblem) {
  Linear l(3, 2);
  EXPECT_THROW(l.forward(zeros({1, 3})), Error);
}

TEST(Module, SaveLoadRoundTripThroughSafetensorsWithDtypeConversion) {
  Net a;
  a.init_parameters(7);
  const std::string path = std::string(::testing::TempDir()) + "module_roundtrip.safetensors";
  save_safetensors(path, a.state_dict());
  Net b;
  LoadOptions opt;
  opt.dtype = DType::BF16;
  LoadReport r = b.load(*SafetensorsSource::open(path), opt);
  EXPECT_TRUE(r.missing.empty());
  EXPECT_TRUE(r.unexpected.empty());
  auto sa = a.state_dict(), sb = b.state_dict();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sb[i].second.dtype(), DType::BF16);
    EXPECT_TRUE(test::all_close(sb[i].second, sa[i].second, 1e-2, 1e-2)) << sa[i].first;
  }
  std::remove(path.c_str());
}

TEST(Module, MissingUnexpectedAndMismatchedKeys) {
  Net a;
  a.init_parameters(1);
  std::map<std::string, Tensor> tensors;
  for (auto& [k, v] : a.state_dict()) tensors[k] = v;
  tensors.erase("blocks.1.proj.bias");
  tensors["blocks.0.extra.weight"] = zeros({3});
  tensors["text_model.embeddings.position_ids"] = zeros({1, 77}, DType::I64);
  Net b;
  try {
    b.load(MapSource(tensors));
    FAIL() << "strict load must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks.1.proj.bias"), std::string::npos) << e.what();
  }
  LoadOptions lenient;
  lenient.strict = false;
  lenient.ignore_suffixes = {"position_ids"};
  LoadReport r = b.load(MapSource(tensors), lenient);
  EXPECT_EQ(r.missing, std::vector<std::string>{"blocks.1.proj.bias"});
  EXPECT_EQ(r.unexpected, std::vector<std::string>{"blocks.0.extra.weight"});
  tensors["blocks.1.proj.bias"] = zeros({5});
  try {
    b.load(MapSource(tensors, "bad.safetensors"), lenient);
    FAIL() << "shape mismatch must fail";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("blocks.1.proj.bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find("(5)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("(4)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
  }
}

TEST(Module, AFailedLoadChangesNothing) {
  Net a;
  a.init_parameters(1);
  std::map<std::string, Tensor> tensors;
  for (auto& [k, v] : a.state_dict()) tensors[k] = v;
  Net b;
  b.init_parameters(2);
  const std::vector<double> before = b.blocks[0]->proj->weight.to_vector();
  tensors["blocks.1.conv.weight"] = zeros({2, 4, 3, 1});  // the last parameter is wrong
  EXPECT_THROW(b.load(MapSource(tensors)), Error);
  EXPECT_EQ(b.blocks[0]->proj->weight.to_vector(), before) << "an earlier parameter was replaced";
}

TEST(Module, LoraOnLinearAndConvChangesTheOutputByTheLowRankTerm) {
  Linear l(6, 4);
  l.init_parameters(3, DType::F64);
  Tensor x = test::random_tensor({2, 6}, DType::F64, 4);
  Tensor base = l.forward(x);
  LoraAdapter a{test::random_tensor({2, 6}, DType::F64, 5), test::random_tensor({4, 2}, DType::F64, 6), 0.5};
  l.loras.push_back(a);
  std::vector<double> xv = x.to_vector(), d = a.down.to_vector(), u = a.up.to_vector(), b = base.to_vector(), ref;
  for (int n = 0; n < 2; ++n)
    for (int o = 0; o < 4; ++o) {
      double s = 0;
      for (int r = 0; r < 2; ++r) {
        double h = 0;
        for (int i = 0; i < 6; ++i) h += d[r * 6 + i] * xv[n * 6 + i];
        s += u[o * 2 + r] * h;
      }
      ref.push_back(b[n * 4 + o] + 0.5 * s);
    }
  EXPECT_TRUE(test::all_close(l.forward(x), ref, 1e-12, 1e-12));
  Conv2d c(3, 5, 3, 1, 1);
  c.init_parameters(8, DType::F64);
  Tensor img = test::random_tensor({1, 3, 6, 6}, DType::F64, 9);
  Tensor c0 = c.forward(img);
  c.loras.push_back({test::random_tensor({2, 3, 3, 3}, DType::F64, 10), test::random_tensor({5, 2, 1, 1}, DType::F64, 11), 1.0});
  EXPECT_GT(test::relative_error(c.forward(img), c0), 1e-3);
}

}  // namespace
}  // namespace sd::nn
