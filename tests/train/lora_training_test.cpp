// Trainable LoRA (train/lora_training.h) on the tiny pipelines tests/data/pipe_tiny_sd1 and
// pipe_tiny_sdxl:
//   unit    target expansion; attach (shapes, PEFT init bounds, B = 0, determinism, errors); the
//           output unchanged after attach and changed once B moves; gradients reaching A and B
//           (against float64 central differences); save -> nn::load_lora round trips in both
//           layouts (SD1 with alpha != rank and rsLoRA, SDXL with both text encoders and sgm kohya
//           names, LoCon convolutions) giving the trained model's outputs; names, dtypes, metadata.
//   golden  (tests/data/lora_training, tests/golden/make_lora_training_fixtures.py) the layers PEFT
//           adapts for the same target_modules on the same diffusers models; files written here with
//           fixed adapter values byte-equal to the committed ones, which diffusers loaded with
//           pipe.load_lora_weights() (both layouts) and ran: our outputs equal the recorded ones.
// SD_LORA_TRAINING_WRITE_FIXTURES=1 makes the golden file test write the committed files instead
// (then rerun the Python script).
#include "train/lora_training.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "autograd/engine.h"
#include "autograd/node.h"
#include "models/adapters/lora.h"
#include "models/clip/clip_text.h"
#include "models/formats/tensor_source.h"
#include "models/unet/unet.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "runtime/rng.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;

const std::string kData = SD_TEST_DATA_DIR;
const std::string kFixtures = kData + "/lora_training";

// ---------------------------------------------------------------- models and inputs

struct Models {
  std::string name;  // "sd1", "sdxl"
  std::shared_ptr<nn::UNet2DConditionModel> unet;
  std::shared_ptr<nn::ClipTextModel> te, te2;
  nn::LoraTargets targets() const { return {unet.get(), te.get(), te2.get()}; }
  nn::Module& component(const std::string& c) const {
    if (c == "unet") return *unet;
    return c == "text_encoder" ? static_cast<nn::Module&>(*te) : static_cast<nn::Module&>(*te2);
  }
};

Models load_models(const std::string& name, DType dtype = DType::F32) {
  const std::string dir = kData + "/pipe_tiny_" + name;
  Models m;
  m.name = name;
  m.unet = nn::UNet2DConditionModel::from_pretrained(dir + "/unet", dtype);
  m.te = nn::ClipTextModel::from_pretrained(dir + "/text_encoder", dtype);
  if (name == "sdxl") m.te2 = nn::ClipTextModel::from_pretrained(dir + "/text_encoder_2", dtype);
  return m;
}

// Fixed inputs: from the golden io file when there is one, else seeded here.
struct Inputs {
  Tensor sample, timestep, ehs, text_embeds, time_ids, ids, ids2;
};

Inputs make_inputs(const Models& m, DType dtype = DType::F32) {
  Inputs in;
  const bool xl = m.name == "sdxl";
  in.sample = test::random_tensor({2, 4, 8, 8}, dtype, 101);
  in.timestep = from_vector({901, 37}, {2}, DType::F32);
  in.ehs = test::random_tensor({2, 7, 32}, dtype, 102);
  if (xl) {
    in.text_embeds = test::random_tensor({2, 16}, dtype, 103);
    in.time_ids = from_vector({64, 64, 0, 0, 64, 64, 48, 32, 4, 8, 48, 32}, {2, 6}, dtype);
  }
  std::vector<double> ids(2 * 77, 999);
  for (int b = 0; b < 2; ++b) {
    ids[b * 77] = 998;
    for (int i = 1; i < 6 + 3 * b; ++i) ids[b * 77 + i] = double((37 * i + 101 * b) % 990 + 3);
  }
  in.ids = from_vector(ids, {2, 77}, DType::I64);
  in.ids2 = in.ids;
  return in;
}

Inputs golden_inputs(const std::string& file) {
  SafetensorsFile f = SafetensorsFile::open(file);
  Inputs in;
  in.sample = f.get("sample");
  in.timestep = f.get("timestep");
  in.ehs = f.get("encoder_hidden_states");
  if (f.contains("text_embeds")) in.text_embeds = f.get("text_embeds");
  if (f.contains("time_ids")) in.time_ids = f.get("time_ids");
  in.ids = f.get("input_ids");
  if (f.contains("input_ids_2")) in.ids2 = f.get("input_ids_2");
  return in;
}

struct Outputs {
  Tensor unet, te, te2, te2_embeds;
};

Outputs run(const Models& m, const Inputs& in) {
  Outputs o;
  nn::UNetAddedCond added{in.text_embeds, in.time_ids};
  o.unet = m.unet->forward(in.sample, in.timestep, in.ehs, added);
  o.te = m.te->forward(in.ids);
  if (m.te2) {
    nn::ClipTextRequest req;
    req.text_embeds = true;
    nn::ClipTextOutput out = m.te2->forward(in.ids2, req);
    o.te2 = out.last_hidden_state;
    o.te2_embeds = out.text_embeds;
  }
  return o;
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const Tensor ca = contiguous_raw(a), cb = contiguous_raw(b);
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

struct TempDir {
  fs::path dir;
  TempDir() {
    static int counter = 0;
    dir = fs::temp_directory_path() /
          ("sd_lora_training_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
};

// B (and optionally A) set to seeded values, every one representable in `round_to`: the trained
// state of the tests.
void randomise(const TrainableLora& l, uint64_t seed, double gain, DType round_to = DType::F32) {
  autograd::NoGrad no_grad;
  int64_t i = 0;
  for (const TrainableLora::Layer& layer : l.layers()) {
    fill_uniform_(layer.up, seed, uint64_t(i++) << 32, -gain, gain);
    for (const Tensor& t : {layer.down, layer.up}) copy_(t, copy_to(t, round_to, Device::cpu()));
  }
}

LoraTrainConfig cfg(int64_t rank, double alpha, bool rslora, std::vector<std::string> targets) {
  LoraTrainConfig c;
  c.rank = rank;
  c.alpha = alpha;
  c.use_rslora = rslora;
  c.targets = std::move(targets);
  return c;
}

const std::vector<std::string> kTeAll = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"};

// ---------------------------------------------------------------- targets

TEST(LoraTraining, UnetTargetWordsExpand) {
  using V = std::vector<std::string>;
  EXPECT_EQ(unet_lora_targets({}), (V{"to_q", "to_k", "to_v", "to_out.0"}));
  EXPECT_EQ(unet_lora_targets({"attn"}), (V{"to_q", "to_k", "to_v", "to_out.0"}));
  EXPECT_EQ(unet_lora_targets({"ff, proj", "conv"}),
            (V{"ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1", "conv2", "downsamplers.0.conv",
               "upsamplers.0.conv"}));
  EXPECT_EQ(unet_lora_targets({"to_q", "attn", "time_emb_proj", "to_q"}),
            (V{"to_q", "to_k", "to_v", "to_out.0", "time_emb_proj"}));
  EXPECT_EQ(text_encoder_lora_targets(), (V{"q_proj", "k_proj", "v_proj", "out_proj"}));
}

// ---------------------------------------------------------------- attach

TEST(LoraTraining, AttachShapesInitAndNames) {
  Models m = load_models("sd1");
  TrainableLora l = TrainableLora::attach(*m.unet, "unet", cfg(3, 0, false, unet_lora_targets({"attn", "conv"})), 5,
                                          DType::F32, Device::cpu());
  int64_t linears = 0, convs = 0;
  for (const nn::AdapterTarget& t : m.unet->adapter_targets()) {
    const bool attn = t.name.find(".attn") != std::string::npos &&
                      (t.name.ends_with("to_q") || t.name.ends_with("to_k") || t.name.ends_with("to_v") ||
                       t.name.ends_with("to_out.0"));
    const bool conv = t.name.ends_with(".conv1") || t.name.ends_with(".conv2") ||
                      t.name.ends_with("samplers.0.conv");
    linears += attn;
    convs += conv;
    EXPECT_EQ((t.linear ? t.linear->loras : t.conv->loras).size(), size_t(attn || conv)) << t.name;
  }
  EXPECT_GT(convs, 0);
  EXPECT_EQ(l.num_layers(), linears + convs);
  EXPECT_EQ(l.scale(), 1.0);
  const std::vector<TrainableParam> ps = l.params();
  ASSERT_EQ(ps.size(), size_t(2 * l.num_layers()));
  int64_t n = 0;
  for (size_t i = 0; i < l.layers().size(); ++i) {
    const TrainableLora::Layer& layer = l.layers()[i];
    EXPECT_EQ(ps[2 * i].name, "unet." + layer.path + ".lora_A.weight");
    EXPECT_EQ(ps[2 * i + 1].name, "unet." + layer.path + ".lora_B.weight");
    EXPECT_TRUE(ps[2 * i].tensor.same(layer.down) && ps[2 * i + 1].tensor.same(layer.up));
    EXPECT_TRUE(layer.down.requires_grad() && layer.up.requires_grad() && layer.down.is_leaf());
    const auto& list = layer.linear ? layer.linear->loras : layer.conv->loras;
    ASSERT_EQ(list.size(), 1u);
    EXPECT_TRUE(list[0].down.same(layer.down) && list[0].up.same(layer.up));
    int64_t fan_in;
    if (layer.linear) {
      EXPECT_EQ(layer.down.shape(), (Shape{3, layer.linear->in_features})) << layer.path;
      EXPECT_EQ(layer.up.shape(), (Shape{layer.linear->out_features, 3})) << layer.path;
      fan_in = layer.linear->in_features;
    } else {
      const int64_t k = layer.conv->kernel;
      EXPECT_EQ(k, 3) << layer.path;
      EXPECT_EQ(layer.down.shape(), (Shape{3, layer.conv->in_channels, k, k})) << layer.path;
      EXPECT_EQ(layer.up.shape(), (Shape{layer.conv->out_channels, 3, 1, 1})) << layer.path;
      fan_in = layer.conv->in_channels * k * k;
    }
    // PEFT: kaiming_uniform_(a = sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)); B = 0.
    const double bound = 1.0 / std::sqrt(double(fan_in));
    double lo = 1, hi = -1, sum = 0;
    for (double v : layer.down.to_vector()) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      sum += v;
    }
    EXPECT_GE(lo, -bound) << layer.path;
    EXPECT_LT(hi, bound) << layer.path;
    // Uses most of the range (a draw of >= 48 values reaching 80 % of the bound on both sides).
    EXPECT_LT(lo, -0.8 * bound) << layer.path;
    EXPECT_GT(hi, 0.8 * bound) << layer.path;
    EXPECT_LT(std::abs(sum / double(layer.down.numel())), 0.25 * bound) << layer.path;
    for (double v : layer.up.to_vector()) ASSERT_EQ(v, 0.0) << layer.path;
    n += layer.down.numel() + layer.up.numel();
  }
  EXPECT_EQ(l.num_parameters(), n);
  // Paths in model order.
  std::vector<std::string> order;
  for (const nn::AdapterTarget& t : m.unet->adapter_targets())
    if ((t.linear ? t.linear->loras : t.conv->loras).size()) order.push_back(t.name);
  ASSERT_EQ(order.size(), l.layers().size());
  for (size_t i = 0; i < order.size(); ++i) EXPECT_EQ(order[i], l.layers()[i].path);

  l.remove();
  EXPECT_FALSE(l.attached());
  for (const nn::AdapterTarget& t : m.unet->adapter_targets())
    EXPECT_TRUE((t.linear ? t.linear->loras : t.conv->loras).empty()) << t.name;
  l.remove();  // twice: nothing
}

TEST(LoraTraining, InitIsDeterministicPerSeedLayerAndComponent) {
  Models a = load_models("sdxl"), b = load_models("sdxl");
  const LoraTrainConfig c = cfg(4, 0, false, text_encoder_lora_targets());
  TrainableLora la = TrainableLora::attach(*a.te, "text_encoder", c, 42, DType::F32, Device::cpu());
  TrainableLora lb = TrainableLora::attach(*b.te, "text_encoder", c, 42, DType::F32, Device::cpu());
  TrainableLora lc = TrainableLora::attach(*a.te2, "text_encoder", c, 43, DType::F32, Device::cpu());
  TrainableLora ld = TrainableLora::attach(*b.te2, "text_encoder_2", c, 42, DType::F32, Device::cpu());
  ASSERT_EQ(la.num_layers(), 8);
  for (int64_t i = 0; i < la.num_layers(); ++i) {
    EXPECT_TRUE(bit_equal(la.layers()[i].down, lb.layers()[i].down));  // same seed: same values
    EXPECT_FALSE(bit_equal(la.layers()[i].down, lc.layers()[i].down));  // another seed
    EXPECT_FALSE(bit_equal(la.layers()[i].down, ld.layers()[i].down));  // another component
    if (i > 0) EXPECT_FALSE(bit_equal(la.layers()[i].down, la.layers()[i - 1].down));  // another layer
  }
  // A half-precision attach draws the same numbers, rounded.
  Models h = load_models("sdxl");
  TrainableLora lh = TrainableLora::attach(*h.te, "text_encoder", c, 42, DType::BF16, Device::cpu());
  EXPECT_EQ(lh.layers()[0].down.dtype(), DType::BF16);
  EXPECT_LE(test::relative_error(lh.layers()[0].down, la.layers()[0].down), 1e-2);
}

TEST(LoraTraining, AttachErrors) {
  Models m = load_models("sd1");
  auto attach = [&](const std::string& comp, const LoraTrainConfig& c) {
    return TrainableLora::attach(comp == "unet" ? static_cast<nn::Module&>(*m.unet) : *m.te, comp, c, 1, DType::F32,
                                 Device::cpu());
  };
  EXPECT_THROW(attach("vae", cfg(4, 0, false, {"to_q"})), Error);
  EXPECT_THROW(attach("unet", cfg(0, 0, false, {"to_q"})), Error);
  EXPECT_THROW(attach("unet", cfg(4, -1, false, {"to_q"})), Error);
  EXPECT_THROW(attach("unet", cfg(4, 0, false, {})), Error);
  // Whole components only: "q" is not a suffix of "to_q"; "to_out" is the ModuleList, not a layer.
  for (const char* bad : {"to_qq", "q", "o_q", "to_out", "attn"}) {
    try {
      attach("unet", cfg(4, 0, false, {"to_q", bad}));
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos) << e.what();
      if (std::string(bad) == "to_qq") std::printf("[ LoraTraining ] %s\n", e.what());
    }
  }
  EXPECT_THROW(attach("text_encoder", cfg(4, 0, false, {"to_q"})), Error);
  // Nothing was attached by the failed calls.
  for (const nn::AdapterTarget& t : m.unet->adapter_targets())
    EXPECT_TRUE((t.linear ? t.linear->loras : t.conv->loras).empty()) << t.name;
}

TEST(LoraTraining, OutputUnchangedAtInitChangedWhenBMoves) {
  Models m = load_models("sdxl");
  const Inputs in = make_inputs(m);
  const Outputs base = run(m, in);
  const LoraTrainConfig unet_cfg = cfg(4, 8, true, unet_lora_targets({"attn", "ff", "proj", "conv"}));
  TrainableLora u = TrainableLora::attach(*m.unet, "unet", unet_cfg, 1, DType::F32, Device::cpu());
  TrainableLora t =
      TrainableLora::attach(*m.te, "text_encoder", cfg(2, 0, false, kTeAll), 1, DType::F32, Device::cpu());
  TrainableLora t2 = TrainableLora::attach(*m.te2, "text_encoder_2", cfg(4, 0, false, kTeAll), 1, DType::F32,
                                           Device::cpu());
  Outputs at_init = run(m, in);
  // B = 0: s * B(A x) adds exact zeros.
  EXPECT_TRUE(bit_equal(at_init.unet, base.unet));
  EXPECT_TRUE(bit_equal(at_init.te, base.te));
  EXPECT_TRUE(bit_equal(at_init.te2, base.te2));
  EXPECT_TRUE(bit_equal(at_init.te2_embeds, base.te2_embeds));
  randomise(u, 9, 0.05);
  randomise(t, 10, 0.1);
  randomise(t2, 11, 0.1);
  const Outputs moved = run(m, in);
  EXPECT_GT(test::relative_error(moved.unet, base.unet), 1e-2);
  EXPECT_GT(test::relative_error(moved.te, base.te), 1e-2);
  EXPECT_GT(test::relative_error(moved.te2, base.te2), 1e-2);
  EXPECT_GT(test::relative_error(moved.te2_embeds, base.te2_embeds), 1e-2);
  for (TrainableLora* l : {&u, &t, &t2}) l->remove();
  const Outputs removed = run(m, in);
  EXPECT_TRUE(bit_equal(removed.unet, base.unet));
  EXPECT_TRUE(bit_equal(removed.te2_embeds, base.te2_embeds));
}

// d loss / d A and d loss / d B through the whole model against float64 central differences, for a
// few elements of several layers (a Linear in a transformer block, a 3x3 LoCon conv with stride 2,
// the text encoder's fc2 under rsLoRA).
TEST(LoraTraining, GradientsReachAAndB) {
  Models m = load_models("sd1", DType::F64);
  m.unet->set_requires_grad(false);
  m.te->set_requires_grad(false);
  const Inputs in = make_inputs(m, DType::F64);
  TrainableLora u = TrainableLora::attach(*m.unet, "unet", cfg(2, 3, false, unet_lora_targets({"attn", "conv"})), 3,
                                          DType::F64, Device::cpu());
  TrainableLora t = TrainableLora::attach(*m.te, "text_encoder", cfg(4, 2, true, kTeAll), 3, DType::F64, Device::cpu());
  const Tensor wu = test::random_tensor({2, 4, 8, 8}, DType::F64, 201);
  const Tensor wt = test::random_tensor({2, 77, 32}, DType::F64, 202);
  auto loss = [&]() {
    const Outputs o = run(m, in);
    return add(sum_all(mul(o.unet, wu)), sum_all(mul(o.te, wt)));
  };
  // At init (B = 0) only B gets a gradient signal: dL/dA = s B^T (...) = 0.
  autograd::backward(loss());
  for (const TrainableParam& p : u.params()) ASSERT_TRUE(p.tensor.grad().defined()) << p.name;
  int64_t nonzero_b = 0;
  for (const TrainableLora* l : {&u, &t})
    for (const TrainableLora::Layer& layer : l->layers()) {
      double gb = 0, ga = 0;
      for (double v : layer.up.grad().to_vector()) gb += std::abs(v);
      for (double v : layer.down.grad().to_vector()) ga += std::abs(v);
      nonzero_b += gb > 0;
      EXPECT_EQ(ga, 0.0) << layer.path;
    }
  EXPECT_EQ(nonzero_b, u.num_layers() + t.num_layers());

  randomise(u, 4, 0.1);
  randomise(t, 5, 0.2);
  for (const TrainableLora* l : {&u, &t})
    for (TrainableParam p : l->params()) p.tensor.zero_grad();
  autograd::backward(loss());
  for (const TrainableLora* l : {&u, &t})
    for (const TrainableLora::Layer& layer : l->layers()) {
      double ga = 0;
      for (double v : layer.down.grad().to_vector()) ga += std::abs(v);
      EXPECT_GT(ga, 0.0) << layer.path;
    }

  auto find = [](const TrainableLora& l, const std::string& suffix) -> const TrainableLora::Layer& {
    for (const TrainableLora::Layer& layer : l.layers())
      if (layer.path.ends_with(suffix)) return layer;
    throw Error("no layer " + suffix);
  };
  const TrainableLora::Layer* picks[] = {&find(u, "attentions.0.transformer_blocks.0.attn2.to_k"),
                                         &find(u, "downsamplers.0.conv"), &find(u, "up_blocks.1.resnets.0.conv1"),
                                         &find(t, "layers.1.mlp.fc2")};
  for (const TrainableLora::Layer* layer : picks) {
    for (const Tensor& param : {layer->down, layer->up}) {
      const Tensor grad = copy_to(param.grad(), DType::F64, Device::cpu());
      double* p = param.data<double>();
      for (int64_t e : {int64_t(0), param.numel() / 2 + 1, param.numel() - 1}) {
        const double keep = p[e], eps = 1e-6;
        autograd::NoGrad ng;
        p[e] = keep + eps;
        const double lp = loss().item();
        p[e] = keep - eps;
        const double lm = loss().item();
        p[e] = keep;
        const double fd = (lp - lm) / (2 * eps), g = grad.to_vector()[size_t(e)];
        EXPECT_NEAR(g, fd, 1e-6 + 1e-5 * std::abs(fd)) << layer->path << " element " << e;
      }
    }
  }
}

// ---------------------------------------------------------------- files

// Trained adapters for every component of a model.
struct Trained {
  Models m;
  std::vector<TrainableLora> loras;
  std::vector<const TrainableLora*> ptrs() const {
    std::vector<const TrainableLora*> p;
    for (const TrainableLora& l : loras) p.push_back(&l);
    return p;
  }
};

struct Spec {
  std::string component;
  LoraTrainConfig cfg;
};

Trained train_fake(const std::string& model, const std::vector<Spec>& specs, uint64_t seed, DType round_to) {
  Trained t;
  t.m = load_models(model);
  int i = 0;
  for (const Spec& s : specs) {
    t.loras.push_back(TrainableLora::attach(t.m.component(s.component), s.component, s.cfg, seed, DType::F32,
                                            Device::cpu()));
    randomise(t.loras.back(), seed + 100 + i++, 0.1, round_to);
  }
  return t;
}

std::vector<Spec> sd1_specs() {
  return {{"unet", cfg(4, 2, false, unet_lora_targets({"attn", "ff", "proj", "conv"}))},
          {"text_encoder", cfg(4, 3, true, kTeAll)}};
}
std::vector<Spec> sdxl_specs() {
  return {{"unet", cfg(2, 0, false, unet_lora_targets({"attn", "conv"}))},
          {"text_encoder", cfg(2, 4, false, text_encoder_lora_targets())},
          {"text_encoder_2", cfg(4, 8, true, kTeAll)}};
}

void expect_outputs_equal(const Outputs& got, const Outputs& want, double tol, const std::string& what) {
  EXPECT_LE(test::relative_error(got.unet, want.unet), tol) << what << " unet";
  EXPECT_LE(test::relative_error(got.te, want.te), tol) << what << " text_encoder";
  if (want.te2.defined()) {
    EXPECT_LE(test::relative_error(got.te2, want.te2), tol) << what << " text_encoder_2";
    EXPECT_LE(test::relative_error(got.te2_embeds, want.te2_embeds), tol) << what << " text_encoder_2 embeds";
  }
}

// Saves in `layout`, loads the file with nn::load_lora on fresh models: same outputs as the trained ones.
void round_trip(const std::string& model, const std::vector<Spec>& specs, const std::string& layout) {
  Trained t = train_fake(model, specs, 77, DType::F32);
  const Inputs in = make_inputs(t.m);
  const Outputs trained = run(t.m, in);
  TempDir dir;
  const std::string file = dir / "lora.safetensors";
  if (layout == "diffusers") save_lora_diffusers(file, t.ptrs());
  else save_lora_kohya(file, t.ptrs(), model == "sdxl");

  Models fresh = load_models(model);
  const Outputs base = run(fresh, in);
  nn::LoraOptions opt;
  opt.strict = true;
  nn::LoadedLora loaded = nn::load_lora(file, fresh.targets(), opt);
  const nn::LoraReport& r = loaded.report();
  EXPECT_EQ(r.format, layout == "kohya" ? nn::LoraFormat::Kohya : nn::LoraFormat::Diffusers);
  for (const TrainableLora& l : t.loras) EXPECT_EQ(r.applied.at(l.component()), l.num_layers()) << r.str();
  const Outputs got = run(fresh, in);
  std::printf("[ LoraTraining ] %s %s round trip: unet rel err %.2e (LoRA effect %.3f)\n", model.c_str(),
              layout.c_str(), test::relative_error(got.unet, trained.unet),
              test::relative_error(trained.unet, base.unet));
  expect_outputs_equal(got, trained, 1e-6, model + " " + layout);
  EXPECT_GT(test::relative_error(trained.unet, base.unet), 1e-2);
  EXPECT_GT(test::relative_error(trained.te, base.te), 1e-2);
}

TEST(LoraTraining, RoundTripSd1DiffusersAlphaRsloraLocon) { round_trip("sd1", sd1_specs(), "diffusers"); }
TEST(LoraTraining, RoundTripSd1KohyaAlphaRsloraLocon) { round_trip("sd1", sd1_specs(), "kohya"); }
TEST(LoraTraining, RoundTripSdxlDiffusersBothTextEncoders) { round_trip("sdxl", sdxl_specs(), "diffusers"); }
TEST(LoraTraining, RoundTripSdxlKohyaSgmNames) { round_trip("sdxl", sdxl_specs(), "kohya"); }

TEST(LoraTraining, DiffusersFileKeysDtypesAndMetadata) {
  Trained t = train_fake("sdxl", sdxl_specs(), 5, DType::F32);
  TempDir dir;
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    const std::string file = dir / (std::string(dtype_name(dt)) + ".safetensors");
    save_lora_diffusers(file, t.ptrs(), dt, {{"sd_train.steps", "100"}});
    SafetensorsFile f = SafetensorsFile::open(file);
    std::set<std::string> want;
    for (const TrainableLora& l : t.loras)
      for (const TrainableParam& p : l.params()) {
        want.insert(p.name);
        ASSERT_TRUE(f.contains(p.name)) << p.name;
        EXPECT_EQ(f.info(p.name).dtype, dt);
        EXPECT_TRUE(bit_equal(f.get(p.name), copy_to(p.tensor, dt, Device::cpu()))) << p.name;
      }
    const std::vector<std::string> keys = f.keys();
    EXPECT_EQ(std::set<std::string>(keys.begin(), keys.end()), want);
    EXPECT_TRUE(f.contains("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"));
    EXPECT_TRUE(f.contains("text_encoder_2.text_model.encoder.layers.1.mlp.fc2.lora_B.weight"));
    EXPECT_TRUE(f.contains("unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_out.0.lora_A.weight"));
    EXPECT_TRUE(f.contains("unet.up_blocks.0.upsamplers.0.conv.lora_A.weight"));
    const auto& md = f.metadata();
    EXPECT_EQ(md.at("format"), "pt");
    EXPECT_EQ(md.at("sd_train.steps"), "100");
    const nlohmann::json j = nlohmann::json::parse(md.at("lora_adapter_metadata"));
    EXPECT_EQ(j.at("unet.r"), 2);
    EXPECT_EQ(j.at("unet.lora_alpha"), 2.0);
    EXPECT_EQ(j.at("unet.use_rslora"), false);
    EXPECT_EQ(j.at("text_encoder.r"), 2);
    EXPECT_EQ(j.at("text_encoder.lora_alpha"), 4.0);
    EXPECT_EQ(j.at("text_encoder_2.lora_alpha"), 8.0);
    EXPECT_EQ(j.at("text_encoder_2.use_rslora"), true);
    EXPECT_EQ(j.at("unet.target_modules").size(), size_t(t.loras[0].num_layers()));
    EXPECT_EQ(j.at("text_encoder.target_modules")[0], "encoder.layers.0.self_attn.k_proj");
    EXPECT_EQ(md.at("lora_adapter_metadata").substr(0, 4), "{\n  ");  // diffusers: indent 2
  }
  // Default scales (alpha = rank, no rsLoRA): no config, as diffusers' scripts write it.
  Trained d = train_fake("sd1", {{"unet", cfg(4, 0, false, {"to_q"})}, {"text_encoder", cfg(8, 8, false, {"q_proj"})}},
                         5, DType::F32);
  const std::string plain = dir / "plain.safetensors";
  save_lora_diffusers(plain, d.ptrs());
  const auto md = SafetensorsFile::open(plain).metadata();
  EXPECT_EQ(md, (std::map<std::string, std::string>{{"format", "pt"}}));

  EXPECT_THROW(save_lora_diffusers(dir / "x.safetensors", {}), Error);
  EXPECT_THROW(save_lora_diffusers(dir / "x.safetensors", {&d.loras[0], &d.loras[0]}), Error);
  EXPECT_THROW(save_lora_diffusers(dir / "x.safetensors", d.ptrs(), DType::F64), Error);
  EXPECT_THROW(save_lora_diffusers(dir / "x.safetensors", d.ptrs(), DType::F32, {{"lora_adapter_metadata", "{}"}}),
               Error);
  EXPECT_FALSE(fs::exists(dir / "x.safetensors"));
}

TEST(LoraTraining, KohyaFileNamesAlphasAndMetadata) {
  for (const std::string model : {"sd1", "sdxl"}) {
    const bool xl = model == "sdxl";
    Trained t = train_fake(model, xl ? sdxl_specs() : sd1_specs(), 6, DType::F32);
    TempDir dir;
    const std::string file = dir / "k.safetensors";
    save_lora_kohya(file, t.ptrs(), xl, DType::F16, {{"ss_output_name", "tiny"}});
    SafetensorsFile f = SafetensorsFile::open(file);
    size_t expected_keys = 0;
    for (const TrainableLora& l : t.loras) {
      const std::string prefix = l.component() == "unet" ? "lora_unet_"
                                 : l.component() == "text_encoder_2" ? "lora_te2_"
                                 : xl ? "lora_te1_" : "lora_te_";
      for (const TrainableLora::Layer& layer : l.layers()) {
        std::string name;
        if (l.component() == "unet") {
          // kohya_unet_names: {diffusers path, original path}; SD1 trainers use the first, SDXL the second.
          const auto names = nn::kohya_unet_names(*t.m.unet, layer.path);
          ASSERT_EQ(names.size(), 2u) << layer.path;
          name = names[xl ? 1 : 0];
        } else {
          std::string p = layer.path;
          std::replace(p.begin(), p.end(), '.', '_');
          name = prefix + p;
        }
        ASSERT_TRUE(f.contains(name + ".lora_down.weight")) << name;
        EXPECT_EQ(f.info(name + ".lora_down.weight").dtype, DType::F16);
        EXPECT_TRUE(bit_equal(f.get(name + ".lora_up.weight"), copy_to(layer.up, DType::F16, Device::cpu())));
        const Tensor a = f.get(name + ".alpha");
        EXPECT_EQ(a.dtype(), DType::F32);
        EXPECT_EQ(a.dim(), 0);
        EXPECT_DOUBLE_EQ(a.item(), l.scale() * double(l.config().rank)) << name;
        expected_keys += 3;
      }
    }
    EXPECT_EQ(f.size(), expected_keys);
    if (xl) {
      EXPECT_TRUE(f.contains("lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_out_0.alpha"));
      EXPECT_TRUE(f.contains("lora_unet_middle_block_0_in_layers_2.alpha"));
      EXPECT_TRUE(f.contains("lora_unet_input_blocks_2_0_op.alpha"));
      EXPECT_TRUE(f.contains("lora_unet_output_blocks_1_2_conv.lora_down.weight"));
      EXPECT_TRUE(f.contains("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha"));
      EXPECT_TRUE(f.contains("lora_te2_text_model_encoder_layers_1_mlp_fc2.alpha"));
      EXPECT_DOUBLE_EQ(f.get("lora_te2_text_model_encoder_layers_1_mlp_fc2.alpha").item(), 16.0);  // 8 / sqrt(4) * 4
    } else {
      EXPECT_TRUE(f.contains("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"));
      EXPECT_TRUE(f.contains("lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight"));
      EXPECT_TRUE(f.contains("lora_te_text_model_encoder_layers_1_mlp_fc1.lora_up.weight"));
    }
    const auto& md = f.metadata();
    EXPECT_EQ(md.at("ss_network_module"), "networks.lora");
    EXPECT_EQ(md.at("ss_network_dim"), xl ? "2" : "4");
    EXPECT_EQ(md.at("ss_network_alpha"), "2.0");
    EXPECT_EQ(md.at("ss_base_model_version"), xl ? "sdxl_base_v1-0" : "sd_v1");
    EXPECT_EQ(md.at("ss_v2"), "False");
    EXPECT_EQ(nlohmann::json::parse(md.at("ss_network_args")),
              nlohmann::json({{"conv_dim", xl ? "2" : "4"}, {"conv_alpha", "2.0"}}));
    EXPECT_EQ(md.at("ss_output_name"), "tiny");
    EXPECT_EQ(md.at("format"), "pt");
  }
  Trained t = train_fake("sdxl", sdxl_specs(), 6, DType::F32);
  TempDir dir;
  EXPECT_THROW(save_lora_kohya(dir / "k.safetensors", t.ptrs(), /*sdxl=*/false), Error);  // text_encoder_2
  EXPECT_FALSE(fs::exists(dir / "k.safetensors"));
}

// The released UNet configs (modules only, no weights needed to attach and save): layer counts of
// diffusers' default attention targets, kohya names as the real SD1 / SDXL LoRAs spell them, and
// ss_base_model_version from the UNet (SD2: 1024-wide cross attention).
TEST(LoraTraining, FullSizeUnetConfigs) {
  struct Case {
    const char* name;
    nn::UNetConfig config;
    int64_t attn_layers;
    bool sdxl;
    const char* kohya_key;
    const char* version;
  };
  const Case cases[] = {
      {"sd15", nn::UNetConfig::sd15(), 128, false,
       "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0", "sd_v1"},
      {"sd21", nn::UNetConfig::sd21(), 128, false, "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_v",
       "sd_v2"},
      {"sdxl", nn::UNetConfig::sdxl_base(), 560, true, "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_k",
       "sdxl_base_v1-0"},
  };
  for (const Case& c : cases) {
    nn::UNet2DConditionModel unet(c.config);
    TrainableLora l = TrainableLora::attach(unet, "unet", cfg(4, 1, false, unet_lora_targets({"attn"})), 1, DType::F32,
                                            Device::cpu());
    EXPECT_EQ(l.num_layers(), c.attn_layers) << c.name;
    TempDir dir;
    save_lora_kohya(dir / "k.safetensors", {&l}, c.sdxl, DType::F16);
    SafetensorsFile f = SafetensorsFile::open(dir / "k.safetensors");
    EXPECT_EQ(f.size(), size_t(3 * c.attn_layers)) << c.name;
    EXPECT_TRUE(f.contains(std::string(c.kohya_key) + ".lora_down.weight")) << c.name;
    EXPECT_EQ(f.metadata().at("ss_base_model_version"), c.version) << c.name;
    EXPECT_EQ(f.metadata().at("ss_v2"), std::string(c.name) == "sd21" ? "True" : "False") << c.name;
    EXPECT_DOUBLE_EQ(f.get(std::string(c.kohya_key) + ".alpha").item(), 1.0);
    if (c.sdxl) EXPECT_TRUE(f.contains("lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.alpha"));
  }
}

// ---------------------------------------------------------------- GPU

// Adapters attached on the GPU: the same initial values as on the CPU (Philox, same seed), the same
// gradients, and a file saved from GPU tensors that loads on the CPU to the trained outputs.
TEST(CudaLoraTraining, AttachGradientsAndSaveMatchTheCpu) {
  SD_REQUIRE_CUDA();
  const Device gpu = Device::cuda();
  Models c = load_models("sd1"), g;
  g.name = "sd1";
  g.unet = nn::UNet2DConditionModel::from_pretrained(kData + "/pipe_tiny_sd1/unet", DType::F32, gpu);
  g.te = nn::ClipTextModel::from_pretrained(kData + "/pipe_tiny_sd1/text_encoder", DType::F32, gpu);
  std::vector<TrainableLora> lc, lg;
  for (const Spec& s : sd1_specs()) {
    lc.push_back(TrainableLora::attach(c.component(s.component), s.component, s.cfg, 8, DType::F32, Device::cpu()));
    lg.push_back(TrainableLora::attach(g.component(s.component), s.component, s.cfg, 8, DType::F32, gpu));
    ASSERT_EQ(lc.back().num_layers(), lg.back().num_layers());
    for (int64_t i = 0; i < lc.back().num_layers(); ++i) {
      const Tensor a = copy_to(lg.back().layers()[i].down, DType::F32, Device::cpu());
      EXPECT_TRUE(lg.back().layers()[i].down.is_cuda());
      EXPECT_LE(test::relative_error(a, lc.back().layers()[i].down), 1e-7) << lc.back().layers()[i].path;
    }
    randomise(lc.back(), 9, 0.1);
    randomise(lg.back(), 9, 0.1);
  }
  const Inputs in = make_inputs(c);
  Inputs ig;
  for (auto [dst, src] : {std::pair{&ig.sample, &in.sample}, {&ig.timestep, &in.timestep}, {&ig.ehs, &in.ehs},
                          {&ig.ids, &in.ids}})
    *dst = copy_to(*src, src->dtype(), gpu);
  const Tensor wu = test::random_tensor({2, 4, 8, 8}, DType::F32, 301);
  auto loss = [&](const Models& m, const Inputs& x, const Device d) {
    const Outputs o = run(m, x);
    return add(sum_all(mul(o.unet, copy_to(wu, DType::F32, d))), sum_all(o.te));
  };
  autograd::backward(loss(c, in, Device::cpu()));
  autograd::backward(loss(g, ig, gpu));
  for (size_t k = 0; k < lc.size(); ++k) {
    const auto pc = lc[k].params(), pg = lg[k].params();
    for (size_t i = 0; i < pc.size(); ++i)
      EXPECT_LE(test::relative_error(copy_to(pg[i].tensor.grad(), DType::F32, Device::cpu()), pc[i].tensor.grad()),
                2e-3)
          << pc[i].name;
  }
  TempDir dir;
  std::vector<const TrainableLora*> ptrs;
  for (const TrainableLora& l : lg) ptrs.push_back(&l);
  save_lora_diffusers(dir / "gpu.safetensors", ptrs, DType::F32);
  const Outputs trained = run(c, in);
  Models fresh = load_models("sd1");
  nn::LoadedLora loaded = nn::load_lora(dir / "gpu.safetensors", fresh.targets());
  expect_outputs_equal(run(fresh, in), trained, 1e-5, "saved from the GPU");
}

// ---------------------------------------------------------------- goldens

std::string normalized(std::string path) { return path.starts_with("text_model.") ? path.substr(11) : path; }

TEST(GoldenLoraTraining, SameLayersAsPeft) {
  std::ifstream f(kFixtures + "/peft_targets.json");
  ASSERT_TRUE(f.good()) << "missing " << kFixtures << "/peft_targets.json";
  const nlohmann::json j = nlohmann::json::parse(f);
  std::map<std::string, Models> models;
  int cases = 0;
  for (const auto& c : j.at("cases")) {
    const std::string model = c.at("model"), comp = c.at("component");
    if (!models.count(model)) models[model] = load_models(model);
    Models& m = models.at(model);
    std::vector<std::string> targets = c.at("targets").get<std::vector<std::string>>();
    if (c.contains("words")) EXPECT_EQ(unet_lora_targets(c.at("words").get<std::vector<std::string>>()), targets);
    TrainableLora l = TrainableLora::attach(m.component(comp), comp, cfg(2, 0, false, targets), 1, DType::F32,
                                            Device::cpu());
    std::vector<std::string> ours;
    for (const TrainableLora::Layer& layer : l.layers()) ours.push_back(normalized(layer.path));
    std::vector<std::string> peft;
    for (const auto& name : c.at("modules")) peft.push_back(normalized(name.get<std::string>()));
    std::sort(ours.begin(), ours.end());
    std::sort(peft.begin(), peft.end());
    EXPECT_EQ(ours, peft) << model << " " << comp << " " << c.at("targets").dump();
    std::printf("[ GoldenLoraTraining ] %-4s %-14s %-60s %3zu layers (PEFT %zu)\n", model.c_str(), comp.c_str(),
                c.at("targets").dump().substr(0, 60).c_str(), ours.size(), peft.size());
    l.remove();
    ++cases;
  }
  EXPECT_GE(cases, 8);
}

struct GoldenCase {
  std::string name, model;
  DType save_dtype;
  std::vector<Spec> specs;
  std::vector<std::string> files;  // "_peft.safetensors", "_kohya.safetensors"
};

// sd1: alpha != rank on the UNet (attention, 1x1 proj convs, LoCon 3x3 convs), rsLoRA on the text
// encoder; sdxl: default UNet scale (rank 2), both text encoders (rsLoRA on the second), sgm kohya names;
// sd1_plain: diffusers' default training setup (attention / q,k,v,out_proj, alpha = rank), which has
// no lora_adapter_metadata.
std::vector<GoldenCase> golden_cases() {
  const std::vector<std::string> both = {"_peft.safetensors", "_kohya.safetensors"};
  return {{"sd1", "sd1", DType::F16,
           {{"unet", cfg(4, 2, false, unet_lora_targets({"attn", "proj", "conv"}))},
            {"text_encoder", cfg(4, 3, true, kTeAll)}},
           both},
          {"sdxl", "sdxl", DType::BF16, sdxl_specs(), both},
          {"sd1_plain", "sd1", DType::F32,
           {{"unet", cfg(4, 0, false, unet_lora_targets({"attn"}))},
            {"text_encoder", cfg(4, 0, false, text_encoder_lora_targets())}},
           {"_peft.safetensors"}}};
}

Outputs golden_outputs(const std::map<std::string, Tensor>& io, const std::string& suffix) {
  Outputs o;
  o.unet = io.at("unet_" + suffix);
  o.te = io.at("te_" + suffix);
  if (io.count("te2_" + suffix)) {
    o.te2 = io.at("te2_" + suffix);
    o.te2_embeds = io.at("te2_embeds_" + suffix);
  }
  return o;
}

// The files written here (fixed adapter values, stored exactly in the file's dtype) are the
// committed ones; diffusers loaded those with pipe.load_lora_weights() and recorded its outputs.
TEST(GoldenLoraTraining, FilesMatchCommittedAndDiffusersOutputs) {
  const bool write = std::getenv("SD_LORA_TRAINING_WRITE_FIXTURES") != nullptr;
  for (const GoldenCase& gc : golden_cases()) {
    Trained t = train_fake(gc.model, gc.specs, 2024, gc.save_dtype);
    TempDir dir;
    const std::string base = write ? kFixtures + "/" + gc.name : dir / gc.name;
    if (write) fs::create_directories(kFixtures);
    for (const std::string& kind : gc.files) {
      if (kind == "_peft.safetensors") save_lora_diffusers(base + kind, t.ptrs(), gc.save_dtype);
      else save_lora_kohya(base + kind, t.ptrs(), gc.model == "sdxl", gc.save_dtype);
      if (write) std::printf("[ GoldenLoraTraining ] wrote %s%s\n", base.c_str(), kind.c_str());
    }
    if (write) continue;
    for (const std::string& kind : gc.files) {
      const std::string committed = kFixtures + "/" + gc.name + kind;
      ASSERT_TRUE(fs::exists(committed)) << committed;
      EXPECT_TRUE(read_bytes(base + kind) == read_bytes(committed))
          << gc.name << kind << " differs from the committed file";
    }
    const std::string io_file = kFixtures + "/" + gc.name + "_io.safetensors";
    SafetensorsFile f = SafetensorsFile::open(io_file);
    std::map<std::string, Tensor> io;
    for (const std::string& k : f.keys()) io[k] = f.get(k);
    const Inputs in = golden_inputs(io_file);
    const Outputs want = golden_outputs(io, "lora"), base_out = golden_outputs(io, "base");

    // The trained adapters themselves, and each committed file loaded by nn::load_lora.
    const Outputs trained = run(t.m, in);
    auto report = [&](const char* what, const Outputs& got) {
      char te2[64] = "";
      if (want.te2.defined())
        std::snprintf(te2, sizeof(te2), "  te2 %.2e  te2 embeds %.2e", test::relative_error(got.te2, want.te2),
                      test::relative_error(got.te2_embeds, want.te2_embeds));
      std::printf("[ GoldenLoraTraining ] %-9s %-17s unet %.2e  te %.2e%s (LoRA effect unet %.3f, te %.3f)\n",
                  gc.name.c_str(), what, test::relative_error(got.unet, want.unet),
                  test::relative_error(got.te, want.te), te2, test::relative_error(want.unet, base_out.unet),
                  test::relative_error(want.te, base_out.te));
      expect_outputs_equal(got, want, 1e-4, gc.name + " " + what);
    };
    report("trained", trained);
    EXPECT_GT(test::relative_error(want.unet, base_out.unet), 1e-2);
    EXPECT_GT(test::relative_error(want.te, base_out.te), 1e-2);
    expect_outputs_equal(run(load_models(gc.model), in), base_out, 1e-4, gc.name + " base");
    for (const std::string& kind : gc.files) {
      Models fresh = load_models(gc.model);
      nn::LoraOptions opt;
      opt.strict = true;
      nn::LoadedLora l = nn::load_lora(kFixtures + "/" + gc.name + kind, fresh.targets(), opt);
      report(kind.substr(1).c_str(), run(fresh, in));
    }
  }
  if (write) GTEST_SKIP() << "fixtures written: now run tests/golden/make_lora_training_fixtures.py";
}

}  // namespace
}  // namespace sd::train
