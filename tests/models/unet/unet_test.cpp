// UNet2DConditionModel: config interpretation, parameter names/shapes of the released models,
// outputs of tiny diffusers models (goldens), the VAE-side block paths, and gradients.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "autograd/engine.h"
#include "autograd/node.h"
#include "models/unet/unet.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/upsample.h"
#include "ops/view.h"
#include "tests/models/unet/unet_golden.h"
#include "tests/models/key_lists.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---- config ---------------------------------------------------------------------------------

TEST(UNetConfig, HeadCountsComeFromAttentionHeadDimLikeDiffusers) {
  // SD1.5: attention_head_dim 8 means 8 heads everywhere (head widths 40, 80, 160).
  UNet2DConditionModel sd15(UNetConfig::sd15());
  auto attn = [](UNet2DConditionModel& m, const std::string& path) {
    for (auto& [name, mod] : m.named_modules())
      if (name == path) return dynamic_cast<Attention*>(mod);
    return static_cast<Attention*>(nullptr);
  };
  Attention* a = attn(sd15, "down_blocks.0.attentions.0.transformer_blocks.0.attn1");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->opt.heads, 8);
  EXPECT_EQ(a->opt.dim_head, 40);
  a = attn(sd15, "mid_block.attentions.0.transformer_blocks.0.attn2");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->opt.heads, 8);
  EXPECT_EQ(a->opt.dim_head, 160);
  EXPECT_EQ(a->opt.cross_attention_dim, 768);
  // SD2.1: [5, 10, 20, 20] are head COUNTS: every head is 64 wide; the up path mirrors them.
  UNet2DConditionModel sd21(UNetConfig::sd21());
  for (const char* p : {"down_blocks.0.attentions.1.transformer_blocks.0.attn1",
                        "down_blocks.2.attentions.0.transformer_blocks.0.attn2", "mid_block.attentions.0.transformer_blocks.0.attn1",
                        "up_blocks.1.attentions.2.transformer_blocks.0.attn1",
                        "up_blocks.3.attentions.0.transformer_blocks.0.attn2"}) {
    a = attn(sd21, p);
    ASSERT_NE(a, nullptr) << p;
    EXPECT_EQ(a->opt.dim_head, 64) << p;
    EXPECT_TRUE(a->opt.upcast_attention) << p;
  }
  EXPECT_EQ(attn(sd21, "up_blocks.3.attentions.0.transformer_blocks.0.attn1")->opt.heads, 5);
  EXPECT_FALSE(UNetConfig::sd21_base().upcast_attention);
}

TEST(UNetConfig, TransformerDepthForms) {
  const UNetConfig xl = UNetConfig::sdxl_base();
  EXPECT_EQ(xl.transformer_layers_per_block, (std::vector<std::vector<int64_t>>{{1, 1}, {2, 2}, {10, 10}}));
  EXPECT_EQ(xl.reverse_transformer_layers_per_block,
            (std::vector<std::vector<int64_t>>{{10, 10, 10}, {2, 2, 2}, {1, 1, 1}}));
  const UNetConfig ssd = UNetConfig::ssd1b();
  EXPECT_EQ(ssd.reverse_transformer_layers_per_block,
            (std::vector<std::vector<int64_t>>{{4, 4, 10}, {2, 1, 1}, {1, 1, 1}}));
  EXPECT_EQ(ssd.mid_block_type, "UNetMidBlock2D");
  UNet2DConditionModel m(ssd);
  auto* up0 = dynamic_cast<CrossAttnUpBlock2D*>(m.up_blocks[0].get());
  ASSERT_NE(up0, nullptr);
  EXPECT_EQ(up0->attentions[0]->transformer_blocks.size(), 4u);
  EXPECT_EQ(up0->attentions[2]->transformer_blocks.size(), 10u);
  EXPECT_EQ(m.mid_block->resnets.size(), 1u);
  // An int in a per-block list repeats over the block's layers; a per-layer list is taken as is.
  const UNetConfig c = UNetConfig::from_json_string(R"({"block_out_channels": [32, 64], "layers_per_block": [1, 2],
      "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "norm_num_groups": 8,
      "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "transformer_layers_per_block": [3, [1, 2]],
      "reverse_transformer_layers_per_block": [[5, 6, 7], 4]})");
  EXPECT_EQ(c.transformer_layers_per_block, (std::vector<std::vector<int64_t>>{{3}, {1, 2}}));
  EXPECT_EQ(c.reverse_transformer_layers_per_block, (std::vector<std::vector<int64_t>>{{5, 6, 7}, {4, 4}}));
  EXPECT_EQ(c.num_up_layers(0), 3);
  EXPECT_EQ(c.num_up_layers(1), 2);
}

TEST(UNetConfig, UnsupportedValuesNameTheKey) {
  const std::string base = R"("block_out_channels": [32, 64],
      "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"])";
  const std::pair<std::string, std::string> bad[] = {
      {R"("class_embed_type": "timestep")", "class_embed_type"},
      {R"("num_class_embeds": 10)", "num_class_embeds"},
      {R"("num_attention_heads": 8)", "num_attention_heads"},
      {R"("resnet_time_scale_shift": "scale_shift")", "resnet_time_scale_shift"},
      {R"("time_embedding_type": "fourier")", "time_embedding_type"},
      {R"("addition_embed_type": "text")", "addition_embed_type"},
      {R"("addition_embed_type": "text_time")", "addition_time_embed_dim"},
      {R"("encoder_hid_dim": 512)", "encoder_hid_dim"},
      {R"("dropout": 0.1)", "dropout"},
      {R"("only_cross_attention": [false, true])", "only_cross_attention"},
      {R"("dual_cross_attention": true)", "dual_cross_attention"},
      {R"("act_fn": "gelu")", "act_fn"},
      {R"("attention_type": "gated")", "attention_type"},
      {R"("time_embedding_act_fn": "silu")", "time_embedding_act_fn"},
      {R"("class_embeddings_concat": true)", "class_embeddings_concat"},
      {R"("norm_num_groups": null)", "norm_num_groups"},
      {R"("mid_block_type": "UNetMidBlock2DSimpleCrossAttn")", "mid_block_type"},
      {R"("attention_head_dim": [8, 8, 8])", "attention_head_dim"},
      {R"("transformer_layers_per_block": [[1], [1]])", "reverse_transformer_layers_per_block"},
      {R"("downsample_padding": 2)", "downsample_padding"},
      {R"("conv_in_kernel": 4)", "conv_in_kernel"},
      {R"("_class_name": "UNet2DModel")", "_class_name"},
  };
  for (const auto& [extra, key] : bad) {
    const std::string json = "{" + base + ", " + extra + "}";
    const std::string msg = error_of([&] { UNetConfig::from_json_string(json); });
    EXPECT_NE(msg.find(key), std::string::npos) << extra << " -> '" << msg << "'";
  }
  EXPECT_THROW(UNetConfig::from_json_string("{not json"), Error);
  EXPECT_THROW(UNetConfig::from_file("/nonexistent/config.json"), Error);
  // Channels that GroupNorm cannot split.
  EXPECT_THROW(UNetConfig::from_json_string(R"({"block_out_channels": [36, 64], "norm_num_groups": 8,
      "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]})"),
               Error);
}

TEST(UNetConfig, KeysWithoutEffectAreListed) {
  const UNetConfig c = UNetConfig::from_file(test::unet_golden_dir("sdxl") + "/config.json");
  auto has = [&](const char* k) {
    return std::find(c.ignored_keys.begin(), c.ignored_keys.end(), k) != c.ignored_keys.end();
  };
  EXPECT_TRUE(has("_diffusers_version"));
  EXPECT_TRUE(has("resnet_skip_time_act"));
  EXPECT_TRUE(has("addition_embed_type_num_heads"));
  EXPECT_FALSE(has("transformer_layers_per_block"));
  EXPECT_EQ(c.addition_time_embed_dim, 8);
  EXPECT_EQ(c.projection_class_embeddings_input_dim, 64);
  const UNetConfig u = UNetConfig::from_json_string(R"({"block_out_channels": [32], "norm_num_groups": 8,
      "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"], "some_future_key": 1})");
  EXPECT_NE(std::find(u.ignored_keys.begin(), u.ignored_keys.end(), "some_future_key"), u.ignored_keys.end());
}

// ---- parameter names and shapes of the released models -------------------------------------

TEST(UNetKeys, NamesAndShapesMatchDiffusers) {
  const std::pair<const char*, UNetConfig (*)()> models[] = {{"sd15", &UNetConfig::sd15},
                                                             {"sd21", &UNetConfig::sd21},
                                                             {"sdxl_base", &UNetConfig::sdxl_base},
                                                             {"sdxl_refiner", &UNetConfig::sdxl_refiner},
                                                             {"ssd1b", &UNetConfig::ssd1b}};
  for (const auto& [name, make] : models) {
    UNet2DConditionModel m(make());
    test::expect_same_keys(m, "unet_" + std::string(name) + ".tsv");
  }
}

TEST(UNetKeys, AdapterTargetsAreEveryLinearAndConv) {
  UNet2DConditionModel m(UNetConfig::sdxl_base());
  const auto targets = m.adapter_targets();
  // Every weight of rank 2 (Linear) or 4 (Conv2d) belongs to one target; norms are rank 1.
  size_t expected = 0;
  for (const auto& [k, shape] : test::read_key_list("unet_sdxl_base.tsv"))
    if (k.size() > 7 && k.compare(k.size() - 7, 7, ".weight") == 0 && std::count(shape.begin(), shape.end(), ',') != 0)
      ++expected;
  EXPECT_EQ(targets.size(), expected);
  std::map<std::string, const AdapterTarget*> by_name;
  for (const auto& t : targets) by_name[t.name] = &t;
  ASSERT_TRUE(by_name.count("down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"));
  EXPECT_NE(by_name["down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"]->linear, nullptr);
  EXPECT_EQ(by_name["down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"]->linear->in_features, 2048);
  ASSERT_TRUE(by_name.count("up_blocks.0.attentions.2.transformer_blocks.9.attn1.to_out.0"));
  ASSERT_TRUE(by_name.count("down_blocks.0.downsamplers.0.conv"));
  EXPECT_NE(by_name["down_blocks.0.downsamplers.0.conv"]->conv, nullptr);
  ASSERT_TRUE(by_name.count("add_embedding.linear_1"));
  ASSERT_TRUE(by_name.count("up_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"));
}

// ---- the VAE-side block paths (ResnetBlock2D without temb, Downsample2D padding 0,
// ---- UNetMidBlock2D with attention), against diffusers' own classes -------------------------

TEST(UNetBlocks, VaeSidePathsMatchDiffusers) {
  auto src = std::shared_ptr<const TensorSource>(SafetensorsSource::open(std::string(SD_TEST_DATA_DIR) +
                                                                         "/unet_blocks.safetensors"));
  SafetensorsFile f = SafetensorsFile::open(std::string(SD_TEST_DATA_DIR) + "/unet_blocks.safetensors");
  LoadOptions opt;
  auto check = [&](Module& m, const std::string& name, const std::function<Tensor(const Tensor&)>& fwd) {
    m.load(PrefixedSource(src, name + "."), opt);
    const double err = test::relative_error(fwd(f.get(name + "_in")), f.get(name + "_out"));
    EXPECT_LT(err, 1e-5) << name;
    std::printf("[ UNetBlocks ] %s f32 relative error %.2e\n", name.c_str(), err);
  };
  ResnetBlock2D::Options r;
  r.in_channels = 8;
  r.out_channels = 16;
  r.groups = 4;
  r.eps = 1e-6;
  ResnetBlock2D resnet(r);
  EXPECT_NE(resnet.conv_shortcut, nullptr);
  EXPECT_EQ(resnet.time_emb_proj, nullptr);
  check(resnet, "resnet", [&](const Tensor& x) { return resnet.forward(x); });
  Downsample2D down(8, 8, /*padding=*/0);
  check(down, "down", [&](const Tensor& x) { return down.forward(x); });
  UNetBlockOptions o;
  o.in_channels = o.out_channels = 16;
  o.resnet_groups = 4;
  o.resnet_eps = 1e-6;
  o.output_scale_factor = 2.0;
  UNetMidBlock2D mid(o, /*add_attention=*/true, /*attention_head_dim=*/8);
  EXPECT_EQ(mid.attentions.at(0)->opt.heads, 2);
  check(mid, "mid", [&](const Tensor& x) { return mid.forward(x, BlockContext{}); });
  // Without attention (the VAE's mid_block_add_attention false) each layer still adds a resnet.
  UNetMidBlock2D plain(o, /*add_attention=*/false);
  EXPECT_EQ(plain.resnets.size(), 2u);
  EXPECT_TRUE(plain.attentions.empty());
  o.num_layers = 0;
  EXPECT_EQ(UNetMidBlock2D(o, false).resnets.size(), 1u);
  // The temb contract of ResnetBlock2D.
  EXPECT_THROW(resnet.forward(f.get("resnet_in"), zeros({2, 4})), Error);
}

TEST(UNetBlocks, UpsampleCutsToTheSkipSize) {
  Upsample2D up(4);
  up.init_parameters(3, DType::F64);
  Tensor x = test::random_tensor({1, 4, 3, 2}, DType::F64, 5);
  // Cutting the 2x result to 5x3 must equal convolving nearest(x) indexed with floor(i * 3 / 5).
  Tensor full = upsample_nearest2d(x, 2);
  Tensor want = up.conv->forward(contiguous(narrow(narrow(full, 2, 0, 5), 3, 0, 3)));
  EXPECT_TRUE(test::all_close(up.forward(x, {5, 3}), want, 0, 0));
  EXPECT_EQ(up.forward(x).shape(), (Shape{1, 4, 6, 4}));
  EXPECT_THROW(up.forward(x, {7, 4}), Error);
  EXPECT_THROW(up.forward(x, {4, 4}), Error);
}

// ---- goldens: tiny random-weight diffusers UNets ---------------------------------------------

void run_golden(const test::UNetGoldenCase& c) {
  const auto io = test::unet_golden_io(c.name);
  auto m32 = UNet2DConditionModel::from_pretrained(test::unet_golden_dir(c.name), DType::F32, Device::cpu(), c.variant);
  Tensor out = test::run_unet_golden(*m32, io);
  EXPECT_EQ(out.dtype(), DType::F32);
  EXPECT_EQ(out.shape(), io.at("out").shape());
  const double err32 = test::relative_error(out, io.at("out"));
  EXPECT_LE(err32, 1e-4) << c.name;
  // Same weights in float64. The time sinusoids stay f32 (as in diffusers), and libm's and
  // torch's f32 sin/cos/exp differ in the last bits for arguments up to 1000 rad (~1e-6
  // absolute); perturbing diffusers' sinusoid by one f32 ulp moves its f64 output by ~2e-9, the
  // size of the differences seen here. Everything else must agree to f64 rounding.
  auto m64 = UNet2DConditionModel::from_pretrained(test::unet_golden_dir(c.name), DType::F64, Device::cpu(), c.variant);
  const double err64 = test::relative_error(test::run_unet_golden(*m64, io), io.at("out_f64"));
  EXPECT_LE(err64, 2e-8) << c.name;
  std::printf("[ GoldenUNet ] %s: f32 relative error %.2e, f64 %.2e\n", c.name.c_str(), err32, err64);
}

TEST(GoldenUNet, Sd1LikeFp16Variant) { run_golden(test::unet_golden_cases()[0]); }
TEST(GoldenUNet, Sd2LikeLinearProjectionHeadCounts) { run_golden(test::unet_golden_cases()[1]); }
TEST(GoldenUNet, SdxlLikeTextTimeShardedWeights) { run_golden(test::unet_golden_cases()[2]); }
TEST(GoldenUNet, LcmLikeTimestepCond) { run_golden(test::unet_golden_cases()[3]); }
TEST(GoldenUNet, MiscAsymmetricOddSizeScalarTimestep) { run_golden(test::unet_golden_cases()[4]); }

// Gradient of sum(out * w) with respect to the sample, the text context and four parameters,
// against diffusers' autograd in float64 (tests/golden/make_unet_goldens.py, gradients()).
TEST(GoldenUNet, GradientsMatchDiffusers) {
  for (const auto& c : test::unet_golden_cases()) {
    auto model = UNet2DConditionModel::from_pretrained(test::unet_golden_dir(c.name), DType::F32, Device::cpu(), c.variant);
    model->set_requires_grad(true);
    std::map<std::string, Tensor> io = test::unet_golden_io(c.name);
    const test::UNetGoldenGradRun run = test::run_unet_golden_for_grad(*model, io);
    autograd::backward(run.out, io.at("grad_weight"));
    EXPECT_LT(test::relative_error(run.sample.grad(), io.at("grad_sample")), 1e-4) << c.name << " d/d sample";
    EXPECT_LT(test::relative_error(run.context.grad(), io.at("grad_encoder_hidden_states")), 1e-4)
        << c.name << " d/d context";
    int checked = 0;
    for (auto& [name, p] : model->named_parameters()) {
      auto it = io.find("grad_param/" + name);
      if (it == io.end()) continue;
      ASSERT_TRUE(p->slot->grad().defined()) << c.name << " " << name;
      EXPECT_LT(test::relative_error(p->slot->grad(), it->second), 1e-4) << c.name << " d/d " << name;
      ++checked;
    }
    EXPECT_EQ(checked, 4) << c.name;
  }
}

TEST(GoldenUNet, WrongInputsAreClearErrors) {
  auto m = UNet2DConditionModel::from_pretrained(test::unet_golden_dir("sdxl"));
  auto io = test::unet_golden_io("sdxl");
  const Tensor s = io.at("sample"), t = io.at("timestep"), e = io.at("encoder_hidden_states");
  const UNetAddedCond added{io.at("text_embeds"), io.at("time_ids")};
  EXPECT_NE(error_of([&] { m->forward(s, t, e); }).find("text_embeds"), std::string::npos);
  EXPECT_NE(error_of([&] { m->forward(s, t, e, {io.at("text_embeds"), narrow(io.at("time_ids"), 1, 0, 5)}); })
                .find("projection_class_embeddings_input_dim"),
            std::string::npos);
  EXPECT_THROW(m->forward(narrow(s, 1, 0, 3), t, e, added), Error);             // 3 channels
  EXPECT_THROW(m->forward(s, zeros({3}), e, added), Error);                     // 3 timesteps for 2 samples
  EXPECT_THROW(m->forward(s, t, narrow(e, 2, 0, 16), added), Error);            // context width
  EXPECT_THROW(m->forward(s, t, e, added, zeros({2, 16})), Error);              // no cond_proj
  // The fp16 variant is the only file of sd1: asking for the plain name lists what was looked for.
  const std::string msg = error_of([] { UNet2DConditionModel::from_pretrained(test::unet_golden_dir("sd1")); });
  EXPECT_NE(msg.find("diffusion_pytorch_model.safetensors"), std::string::npos) << msg;
  // A weight file with a tensor the config does not build is rejected, naming the tensor.
  {
    const std::string dir = std::string(::testing::TempDir()) + "unet_extra_key";
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(test::unet_golden_dir("lcm") + "/config.json", dir + "/config.json",
                               std::filesystem::copy_options::overwrite_existing);
    auto lcm = UNet2DConditionModel::from_pretrained(test::unet_golden_dir("lcm"));
    auto tensors = lcm->state_dict();
    tensors.emplace_back("class_embedding.linear_1.weight", zeros({4, 4}));
    save_safetensors(dir + "/diffusion_pytorch_model.safetensors", tensors);
    EXPECT_NE(error_of([&] { UNet2DConditionModel::from_pretrained(dir); }).find("class_embedding.linear_1.weight"),
              std::string::npos);
    std::filesystem::remove_all(dir);
  }
  // A [1] timestep broadcasts over the batch like a scalar.
  Tensor one = m->forward(s, slice(t, 0, 0, 1), e, added);
  Tensor both = m->forward(s, full({2}, t.to_vector()[0]), e, added);
  EXPECT_TRUE(test::all_close(one, both, 0, 0));
}

// ---- gradients --------------------------------------------------------------------------------

// Two levels of 4 and 8 channels with every conditioning path (text_time and timestep_cond).
UNetConfig minuscule_config() {
  return UNetConfig::from_json_string(R"({"block_out_channels": [4, 8], "layers_per_block": 1, "norm_num_groups": 2,
      "cross_attention_dim": 4, "attention_head_dim": 2,
      "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
      "addition_embed_type": "text_time", "addition_time_embed_dim": 2, "projection_class_embeddings_input_dim": 7,
      "time_cond_proj_dim": 2})");
}

struct MinusculeInputs {
  Tensor sample = test::random_tensor({1, 4, 3, 3}, DType::F64, 31);  // odd: exercises the skip-size cut
  Tensor context = test::random_tensor({1, 3, 4}, DType::F64, 32);
  Tensor text_embeds = test::random_tensor({1, 3}, DType::F64, 33);
  Tensor time_ids = from_vector({32.0, 24.0}, {1, 2}, DType::F64);
  Tensor cond = test::random_tensor({1, 2}, DType::F64, 34);
  Tensor timestep = from_vector({421.0}, {1}, DType::F64);
};

TEST(GradUNet, MatchesFiniteDifferences) {
  UNet2DConditionModel m(minuscule_config());
  m.init_parameters(5, DType::F64);
  MinusculeInputs in;
  std::map<std::string, Module::Param*> params;
  for (auto& [k, p] : m.named_parameters()) params[k] = p;
  const std::vector<std::string> names = {
      "conv_in.bias",
      "time_embedding.cond_proj.weight",
      "add_embedding.linear_1.bias",
      "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
      "down_blocks.0.attentions.0.norm.weight",
      "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.bias",
      "up_blocks.0.resnets.0.conv_shortcut.bias",
      "up_blocks.1.resnets.1.norm1.weight",
      "up_blocks.1.attentions.0.proj_in.weight",
      "up_blocks.1.attentions.0.transformer_blocks.0.norm2.bias",
      "mid_block.resnets.1.time_emb_proj.bias",
      "down_blocks.0.downsamplers.0.conv.bias",
      "up_blocks.0.upsamplers.0.conv.bias",
      "conv_norm_out.weight",
  };
  std::vector<Tensor> inputs = {in.sample, in.context, in.text_embeds, in.cond};
  for (const auto& n : names) {
    ASSERT_TRUE(params.count(n)) << n;
    inputs.push_back(*params[n]->slot);
  }
  auto f = [&](const std::vector<Tensor>& x) {
    for (size_t i = 0; i < names.size(); ++i) *params[names[i]]->slot = x[4 + i];
    return m.forward(x[0], in.timestep, x[1], {x[2], in.time_ids}, x[3]);
  };
  EXPECT_TRUE(test::gradcheck(f, inputs));
}

TEST(GradUNet, CheckpointingGivesTheSameGradients) {
  UNet2DConditionModel m(minuscule_config());
  m.init_parameters(6, DType::F64);
  m.set_requires_grad(true);
  MinusculeInputs in;
  Tensor weights = test::random_tensor({1, 4, 3, 3}, DType::F64, 40);
  int checkpoint_nodes = 0;
  // inputs_grad false is the training case: only the parameters want gradients.
  auto grads = [&](bool ckpt, bool inputs_grad) {
    m.gradient_checkpointing = ckpt;
    for (auto& [k, p] : m.named_parameters()) p->slot->zero_grad();
    Tensor x = detach(in.sample);
    x.set_requires_grad(inputs_grad);
    Tensor ctx = detach(in.context);
    ctx.set_requires_grad(inputs_grad);
    Tensor out = m.forward(x, in.timestep, ctx, {in.text_embeds, in.time_ids}, in.cond);
    // Count the recomputation nodes on the tape.
    checkpoint_nodes = 0;
    std::set<Node*> seen;
    std::vector<std::shared_ptr<Node>> todo{out.grad_fn()};
    while (!todo.empty()) {
      auto n = todo.back();
      todo.pop_back();
      if (!n || !seen.insert(n.get()).second) continue;
      checkpoint_nodes += n->name == "checkpoint";
      for (const Edge& e : n->next) todo.push_back(e.node);
    }
    autograd::backward(sum_all(out * weights));
    std::vector<Tensor> g;
    if (inputs_grad) g = {x.grad(), ctx.grad()};
    for (auto& [k, p] : m.named_parameters()) g.push_back(p->slot->grad());
    return g;
  };
  for (bool inputs_grad : {true, false}) {
    const auto plain = grads(false, inputs_grad);
    EXPECT_EQ(checkpoint_nodes, 0);
    const auto ckpt = grads(true, inputs_grad);
    EXPECT_EQ(checkpoint_nodes, 8 + 4);  // every resnet (8) and transformer block (4)
    ASSERT_EQ(plain.size(), ckpt.size());
    for (size_t i = 0; i < plain.size(); ++i) {
      ASSERT_TRUE(plain[i].defined() && ckpt[i].defined()) << "gradient " << i << " inputs_grad " << inputs_grad;
      EXPECT_TRUE(test::all_close(ckpt[i], plain[i], 1e-12, 1e-14)) << "gradient " << i << " inputs_grad " << inputs_grad;
    }
  }
}

}  // namespace
}  // namespace sd::nn
