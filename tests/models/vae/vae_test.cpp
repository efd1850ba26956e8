// AutoencoderKL: config interpretation, parameter names/shapes of the released VAEs (and of the
// SDXL-Turbo / LCM-SDXL UNets), outputs of a tiny diffusers VAE (goldens, plain and tiled), legacy
// attention names, the f16 upcast, posterior sampling, tiling memory, and gradients.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "autograd/node.h"
#include "models/unet/unet.h"
#include "models/vae/vae.h"
#include "ops/elementwise.h"
#include "ops/view.h"
#include "runtime/allocator.h"
#include "tests/models/vae/vae_golden.h"
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

TEST(VaeConfig, ReadsTheGoldenFileAndPresets) {
  const VaeConfig c = VaeConfig::from_file(test::vae_golden_dir() + "/config.json");
  EXPECT_EQ(c.block_out_channels, (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(c.layers_per_block, 1);
  EXPECT_EQ(c.norm_num_groups, 8);
  EXPECT_EQ(c.sample_size, 32);
  EXPECT_EQ(c.downscale(), 2);
  EXPECT_TRUE(c.force_upcast);
  EXPECT_FALSE(c.shift_factor.has_value());
  EXPECT_TRUE(c.latents_mean.empty());
  auto has = [&](const VaeConfig& cfg, const char* k) {
    return std::find(cfg.ignored_keys.begin(), cfg.ignored_keys.end(), k) != cfg.ignored_keys.end();
  };
  EXPECT_TRUE(has(c, "_diffusers_version"));
  EXPECT_FALSE(has(c, "scaling_factor"));

  const VaeConfig sd = VaeConfig::sd(), xl = VaeConfig::sdxl();
  EXPECT_DOUBLE_EQ(sd.scaling_factor, 0.18215);
  EXPECT_DOUBLE_EQ(xl.scaling_factor, 0.13025);
  EXPECT_TRUE(xl.force_upcast);
  EXPECT_TRUE(sd.force_upcast);  // absent in the file: diffusers' default
  EXPECT_EQ(sd.downscale(), 8);
  EXPECT_EQ(sd.sample_size, 256);
  EXPECT_EQ(VaeConfig::sd15().sample_size, 512);
  EXPECT_EQ(xl.sample_size, 1024);
  // SD2.x files have no scaling_factor: diffusers' default 0.18215.
  const VaeConfig sd2 = VaeConfig::from_json_string(R"({"block_out_channels": [32, 64], "norm_num_groups": 8,
      "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
      "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "sample_size": [64, 48], "shift_factor": 0.5,
      "latents_mean": [1, 2], "latents_std": [3, 4], "use_quant_conv": false, "some_future_key": 1})");
  EXPECT_DOUBLE_EQ(sd2.scaling_factor, 0.18215);
  EXPECT_EQ(sd2.sample_size, 64);
  EXPECT_DOUBLE_EQ(sd2.shift_factor.value(), 0.5);
  EXPECT_EQ(sd2.latents_std, (std::vector<double>{3, 4}));
  EXPECT_FALSE(sd2.use_quant_conv);
  EXPECT_TRUE(has(sd2, "some_future_key"));
  AutoencoderKL m(sd2);
  EXPECT_EQ(m.quant_conv, nullptr);
  EXPECT_NE(m.post_quant_conv, nullptr);
  // diffusers' defaults when a key is absent: one block of 64 channels.
  EXPECT_EQ(VaeConfig::from_json_string("{}").block_out_channels, (std::vector<int64_t>{64}));
}

TEST(VaeConfig, UnsupportedValuesNameTheKey) {
  const std::string base = R"("block_out_channels": [32, 64], "norm_num_groups": 8,
      "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
      "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"])";
  const std::pair<std::string, std::string> bad[] = {
      {R"("act_fn": "gelu")", "act_fn"},
      {R"("_class_name": "AutoencoderTiny")", "_class_name"},
      {R"("layers_per_block": [1, 2])", "layers_per_block"},
      {R"("layers_per_block": null)", "layers_per_block"},
      {R"("scaling_factor": null)", "scaling_factor"},
      {R"("shift_factor": "x")", "shift_factor"},
      {R"("latents_mean": [0, 0, 0, 0])", "latents_std"},
      {R"("force_upcast": 1)", "force_upcast"},
      {R"("mid_block_add_attention": "yes")", "mid_block_add_attention"},
      {R"("in_channels": 3.5)", "in_channels"},
  };
  for (const auto& [extra, key] : bad) {
    const std::string json = "{" + base + ", " + extra + "}";
    const std::string msg = error_of([&] { VaeConfig::from_json_string(json); });
    EXPECT_NE(msg.find("\"" + key + "\""), std::string::npos) << extra << " -> '" << msg << "'";
  }
  // Structural keys checked before the others: other block types, mismatched list lengths.
  EXPECT_NE(error_of([] {
              VaeConfig::from_json_string(R"({"down_block_types": ["DownBlock2D"], "block_out_channels": [64]})");
            }).find("down_block_types"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              VaeConfig::from_json_string(R"({"up_block_types": ["AttnUpDecoderBlock2D"], "block_out_channels": [64]})");
            }).find("up_block_types"),
            std::string::npos);
  EXPECT_NE(error_of([] { VaeConfig::from_json_string(R"({"block_out_channels": [64, 128]})"); })
                .find("down_block_types"),
            std::string::npos);
  EXPECT_NE(error_of([] { VaeConfig::from_json_string(R"({"block_out_channels": [48], "norm_num_groups": 32})"); })
                .find("norm_num_groups"),
            std::string::npos);
  EXPECT_THROW(VaeConfig::from_json_string("{not json"), Error);
  EXPECT_THROW(VaeConfig::from_file("/nonexistent/config.json"), Error);
}

// ---- parameter names and shapes of the released models --------------------------------------

TEST(VaeKeys, NamesAndShapesMatchDiffusers) {
  AutoencoderKL sd(VaeConfig::sd());
  test::expect_same_keys(sd, "vae_sd.tsv");
  AutoencoderKL xl(VaeConfig::sdxl());
  test::expect_same_keys(xl, "vae_sdxl.tsv");
  // 83,653,863 parameters: 34,163,664 in encoder + quant_conv, 49,490,199 in decoder + post_quant_conv.
  EXPECT_EQ(sd.num_parameters(), 83653863);
  EXPECT_EQ(sd.encoder->num_parameters() + sd.quant_conv->num_parameters(), 34163664);
  EXPECT_EQ(sd.decoder->num_parameters() + sd.post_quant_conv->num_parameters(), 49490199);
  // One single-head attention of 512 channels in each mid block.
  ASSERT_EQ(sd.decoder->mid_block->attentions.size(), 1u);
  EXPECT_EQ(sd.decoder->mid_block->attentions[0]->opt.heads, 1);
  EXPECT_EQ(sd.decoder->mid_block->attentions[0]->opt.dim_head, 512);
  EXPECT_EQ(sd.decoder->up_blocks[3]->resnets.size(), 3u);
  // mid_block_add_attention false: two resnets, no attention.
  VaeConfig plain = VaeConfig::sd();
  plain.mid_block_add_attention = false;
  AutoencoderKL p(plain);
  EXPECT_TRUE(p.encoder->mid_block->attentions.empty());
  EXPECT_EQ(p.encoder->mid_block->resnets.size(), 2u);
}

TEST(UNetKeys, SdxlTurboAndLcmSdxlMatchDiffusers) {
  UNet2DConditionModel turbo(UNetConfig::sdxl_base());  // SDXL-Turbo: the SDXL base architecture
  test::expect_same_keys(turbo, "unet_sdxl_turbo.tsv");
  UNet2DConditionModel lcm(UNetConfig::lcm_sdxl());
  test::expect_same_keys(lcm, "unet_lcm_sdxl.tsv");
  EXPECT_EQ(turbo.num_parameters(), 2567463684);
  EXPECT_EQ(lcm.num_parameters(), 2567545604);  // + time_embedding.cond_proj.weight [320, 256]
}

// ---- goldens: the tiny diffusers VAE ---------------------------------------------------------

TEST(GoldenVae, MatchesDiffusersInF32AndF64) {
  const auto io = test::vae_golden_io();
  auto m32 = AutoencoderKL::from_pretrained(test::vae_golden_dir(), DType::F32);
  EXPECT_EQ(m32->dtype(), DType::F32);
  const auto out32 = test::run_vae_golden(*m32, io);
  auto m64 = AutoencoderKL::from_pretrained(test::vae_golden_dir(), DType::F64);
  const auto out64 = test::run_vae_golden(*m64, io, Device::cpu(), DType::F64);
  for (const auto& [name, got] : out32) {
    ASSERT_EQ(got.shape(), io.at(name).shape()) << name;
    const double e32 = test::relative_error(got, io.at(name));
    const double e64 = test::relative_error(out64.at(name), io.at(name + "_f64"));
    EXPECT_LE(e32, 1e-4) << name;
    EXPECT_LE(e64, 1e-10) << name;
    std::printf("[ GoldenVae ] %-12s f32 relative error %.2e, f64 %.2e\n", name.c_str(), e32, e64);
  }
}

TEST(GoldenVae, LegacyAttentionNamesLoadTheSameWeights) {
  const auto io = test::vae_golden_io();
  auto m = AutoencoderKL::from_pretrained(test::vae_golden_dir("vae_tiny_legacy"), DType::F64);
  auto ref = AutoencoderKL::from_pretrained(test::vae_golden_dir(), DType::F64);
  auto ps = m->state_dict(), rs = ref->state_dict();
  ASSERT_EQ(ps.size(), rs.size());
  for (size_t i = 0; i < ps.size(); ++i) EXPECT_TRUE(test::all_close(ps[i].second, rs[i].second, 0, 0)) << ps[i].first;
  EXPECT_LE(test::relative_error(m->decode(io.at("latents")), io.at("dec_f64")), 1e-10);

  // The source serves the four renamed tensors of each mid attention under the current names.
  LegacyAttentionNames src(SafetensorsSource::open(test::vae_golden_dir("vae_tiny_legacy") +
                                                   "/diffusion_pytorch_model.safetensors"));
  EXPECT_EQ(src.renamed(), 16u);
  EXPECT_TRUE(src.contains("decoder.mid_block.attentions.0.to_out.0.weight"));
  EXPECT_EQ(src.shape("encoder.mid_block.attentions.0.to_q.bias"), (Shape{32}));
  EXPECT_FALSE(src.contains("decoder.mid_block.attentions.0.to_out.weight"));
  const auto keys = src.keys();
  EXPECT_EQ(std::count(keys.begin(), keys.end(), "encoder.mid_block.attentions.0.to_k.weight"), 1);
  EXPECT_EQ(std::count(keys.begin(), keys.end(), "encoder.mid_block.attentions.0.key.weight"), 0);
  // Both names present: the legacy copy is not used and stays visible (an unexpected key).
  std::map<std::string, Tensor> both{{"mid_block.attentions.0.to_q.weight", zeros({2, 2})},
                                     {"mid_block.attentions.0.query.weight", ones({2, 2})},
                                     {"mid_block.attentions.10.proj_attn.bias", ones({2})},
                                     {"down_blocks.0.attentions.0.query.weight", ones({2, 2})}};
  LegacyAttentionNames mixed(std::make_shared<MapSource>(both));
  EXPECT_EQ(mixed.renamed(), 1u);
  EXPECT_EQ(mixed.get("mid_block.attentions.0.to_q.weight", DType::F32, Device::cpu()).to_vector()[0], 0.0);
  EXPECT_TRUE(mixed.contains("mid_block.attentions.10.to_out.0.bias"));
  EXPECT_FALSE(mixed.contains("down_blocks.0.attentions.0.to_q.weight"));  // only mid blocks are renamed
}

TEST(GoldenVae, WrongInputsAndFilesAreClearErrors) {
  auto m = AutoencoderKL::from_pretrained(test::vae_golden_dir());
  EXPECT_THROW(m->encode(zeros({1, 4, 8, 8})), Error);
  EXPECT_THROW(m->encode(zeros({3, 8, 8})), Error);
  EXPECT_THROW(m->decode(zeros({1, 3, 8, 8})), Error);
  EXPECT_THROW(m->decode_tiled(zeros({1, 3, 8, 8})), Error);
  EXPECT_THROW(m->encode_tiled(zeros({1, 4, 8, 8})), Error);
  // Tile sizes that diffusers' arithmetic cannot stitch back to the image size.
  VaeTiling t;
  t.tile_latent = 10;  // 10 * 0.25 is not whole
  t.tile_sample = 20;
  EXPECT_NE(error_of([&] { m->decode_tiled(zeros({1, 4, 24, 24}), t); }).find("whole number"), std::string::npos);
  t.tile_sample = 16;  // not tile_latent * 2
  EXPECT_NE(error_of([&] { m->decode_tiled(zeros({1, 4, 24, 24}), t); }).find("downscale"), std::string::npos);
  t = VaeTiling{16, 8, 1.0};
  EXPECT_THROW(m->decode_tiled(zeros({1, 4, 24, 24}), t), Error);
  // A tensor the config does not build is rejected, naming it.
  const std::string dir = std::string(::testing::TempDir()) + "vae_extra_key";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(test::vae_golden_dir() + "/config.json", dir + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto tensors = m->state_dict();
  tensors.emplace_back("encoder.conv_act.weight", zeros({2}));
  save_safetensors(dir + "/diffusion_pytorch_model.safetensors", tensors);
  EXPECT_NE(error_of([&] { AutoencoderKL::from_pretrained(dir); }).find("encoder.conv_act.weight"), std::string::npos);
  EXPECT_NE(error_of([&] { AutoencoderKL::from_pretrained(dir, DType::F32, Device::cpu(), "fp16"); })
                .find("diffusion_pytorch_model.fp16.safetensors"),
            std::string::npos);
  std::filesystem::remove_all(dir);
}

// ---- precision: force_upcast --------------------------------------------------------------------

TEST(GoldenVae, F16UpcastsUnlessTheCallerSaysOtherwise) {
  const auto io = test::vae_golden_io();
  // force_upcast (true in the file): an f16 model keeps f32 parameters and computes in f32, but
  // takes and returns f16.
  auto up = AutoencoderKL::from_pretrained(test::vae_golden_dir(), DType::F16);
  EXPECT_TRUE(up->upcast());
  EXPECT_EQ(up->dtype(), DType::F16);
  EXPECT_EQ(up->compute_dtype(), DType::F32);
  EXPECT_EQ(up->decoder->conv_out->weight.dtype(), DType::F32);
  Tensor dec = up->decode(io.at("latents"));
  EXPECT_EQ(dec.dtype(), DType::F16);
  const double e_up = test::relative_error(dec, io.at("dec"));
  EXPECT_LE(e_up, 2e-3);  // only the f16 rounding of the input and the output
  auto enc = up->encode(io.at("image"));
  EXPECT_EQ(enc.mean.dtype(), DType::F16);
  // Overridden (an fp16-safe VAE): parameters and computation in f16.
  auto half = AutoencoderKL::from_pretrained(test::vae_golden_dir(), DType::F16, Device::cpu(), "", false);
  EXPECT_EQ(half->compute_dtype(), DType::F16);
  const double e_half = test::relative_error(half->decode(io.at("latents")), io.at("dec"));
  EXPECT_LE(e_half, 2e-2);
  std::printf("[ GoldenVae ] f16 decode relative error: upcast %.2e, f16 compute %.2e\n", e_up, e_half);
  // Switching after loading converts the parameters; bf16 never upcasts.
  half->set_upcast(true);
  EXPECT_EQ(half->compute_dtype(), DType::F32);
  EXPECT_TRUE(test::all_close(half->decode(io.at("latents")), dec, 0, 0));
  half->place(DType::BF16, Device::cpu());
  EXPECT_EQ(half->compute_dtype(), DType::BF16);
  EXPECT_EQ(half->dtype(), DType::BF16);
  // Without from_pretrained/place the caller's dtype is the parameters'.
  AutoencoderKL fresh(VaeConfig::from_file(test::vae_golden_dir() + "/config.json"));
  fresh.init_parameters(1, DType::F64);
  EXPECT_EQ(fresh.dtype(), DType::F64);
  EXPECT_EQ(fresh.decode(io.at("latents")).dtype(), DType::F64);
}

// ---- posterior -------------------------------------------------------------------------------

TEST(Vae, SampleIsMeanPlusStdTimesNoiseFromTheGenerator) {
  Tensor mean = test::random_tensor({2, 4, 3, 5}, DType::F32, 3);
  Tensor logvar = test::random_tensor({2, 4, 3, 5}, DType::F32, 4, -3.0, 1.0);
  Generator g1(77), g2(77);
  Tensor s = AutoencoderKL::sample(mean, logvar, g1);
  Tensor noise = randn(mean.shape(), DType::F32, Device::cpu(), g2);
  const auto m = mean.to_vector(), lv = logvar.to_vector(), n = noise.to_vector();
  std::vector<double> want(m.size());
  for (size_t i = 0; i < m.size(); ++i) want[i] = m[i] + std::exp(0.5 * lv[i]) * n[i];
  EXPECT_TRUE(test::all_close(s, want, 1e-6, 1e-6));
  EXPECT_EQ(g1.offset, g2.offset);  // the stream advanced exactly as randn did
  // The next sample uses fresh noise.
  EXPECT_FALSE(test::all_close(AutoencoderKL::sample(mean, logvar, g1), s, 1e-3, 1e-3));
  DiagonalGaussian d{mean, logvar};
  EXPECT_TRUE(test::all_close(d.std(), exp(logvar * 0.5), 0, 0));
  EXPECT_TRUE(d.mode().same(mean));
  EXPECT_THROW(AutoencoderKL::sample(mean, narrow(logvar, 1, 0, 2), g1), Error);
}

TEST(Vae, LogvarIsClampedLikeDiffusers) {
  AutoencoderKL m(VaeConfig::from_file(test::vae_golden_dir() + "/config.json"));
  m.init_parameters(2, DType::F64);
  Tensor x = test::random_tensor({1, 3, 8, 8}, DType::F64, 5);
  // Push the logvar half of quant_conv's output far out on either side.
  for (double shift : {1e3, -1e3}) {
    Tensor b = m.quant_conv->bias;
    std::vector<double> v = b.to_vector();
    for (size_t i = 4; i < 8; ++i) v[i] = shift;
    m.quant_conv->bias = from_vector(v, b.shape(), DType::F64);
    const auto d = m.encode(x);
    const double want = shift > 0 ? 20.0 : -30.0;
    for (double lv : d.logvar.to_vector()) ASSERT_EQ(lv, want);
    EXPECT_EQ(d.mean.shape(), (Shape{1, 4, 4, 4}));
  }
}

// ---- tiling -------------------------------------------------------------------------------------

TEST(Vae, TiledWithinOneTileIsThePlainPass) {
  auto m = AutoencoderKL::from_pretrained(test::vae_golden_dir());
  const auto io = test::vae_golden_io();
  Tensor z = narrow(narrow(io.at("latents"), 2, 0, 8), 3, 0, 7);
  EXPECT_TRUE(test::all_close(m->decode_tiled(z, test::vae_golden_tiling()), m->decode(z), 0, 0));
  Tensor x = narrow(narrow(io.at("image"), 2, 0, 16), 3, 0, 13);
  const auto a = m->encode_tiled(x, test::vae_golden_tiling()), b = m->encode(x);
  EXPECT_TRUE(test::all_close(a.mean, b.mean, 0, 0));
  // Defaults come from the config: tile_sample = sample_size 32, tile_latent 16. A 20x27 latent is
  // 2 x 3 tiles of 16 starting every 12; the image is stitched back to 40 x 54.
  Tensor big = m->decode_tiled(io.at("latents_big"));
  EXPECT_EQ(big.shape(), (Shape{1, 3, 40, 54}));
  // Tiles span the batch: a batch of two equals the two samples tiled alone.
  Tensor z2 = narrow(narrow(io.at("latents"), 2, 0, 12), 3, 0, 14);  // 2 x 3 tiles
  Tensor both = m->decode_tiled(z2, test::vae_golden_tiling());
  for (int64_t i = 0; i < 2; ++i)
    EXPECT_TRUE(test::all_close(narrow(both, 0, i, 1), m->decode_tiled(narrow(z2, 0, i, 1), test::vae_golden_tiling()),
                                1e-6, 1e-6));
  // Tiling runs without recording a graph, even when the input wants a gradient.
  Tensor zg = detach(io.at("latents_big"));
  zg.set_requires_grad(true);
  EXPECT_FALSE(m->decode_tiled(zg, test::vae_golden_tiling()).requires_grad());
}

// The point of tiling: the activations of one tile at a time. Decoding a 32x40 latent (64x80
// image) in 8x8 tiles must need no more than one tile's decode plus the output and small blend
// strips, and far less than decoding it whole.
TEST(Vae, TiledDecodeHoldsOneTileOfActivations) {
  auto m = AutoencoderKL::from_pretrained(test::vae_golden_dir());
  autograd::NoGrad no_grad;
  Tensor z = randn_seeded({1, 4, 32, 40}, 9);
  Allocator& a = cpu_allocator();
  auto peak_of = [&](const std::function<Tensor()>& f, int64_t* out_bytes) {
    a.reset_peak();
    const int64_t before = a.stats().current_bytes;
    Tensor out = f();
    if (out_bytes) *out_bytes = int64_t(out.nbytes());
    return a.stats().peak_bytes - before;
  };
  const int64_t one = peak_of([&] { return m->decode(narrow(narrow(z, 2, 0, 8), 3, 0, 8)); }, nullptr);
  int64_t out_bytes = 0;
  const int64_t tiled = peak_of([&] { return m->decode_tiled(z, test::vae_golden_tiling()); }, &out_bytes);
  const int64_t whole = peak_of([&] { return m->decode(z); }, nullptr);
  // Strips: per tile column (7) 3 x 4 x 16 floats above and below, plus the left strip and the
  // blend temporaries, bounded by two tile outputs (3 x 16 x 16 floats).
  const int64_t tile_out = 3 * 16 * 16 * 4;
  EXPECT_LE(tiled, one + out_bytes + 7 * 2 * (3 * 4 * 16 * 4) + 2 * tile_out);
  EXPECT_LT(tiled * 4, whole);
  std::printf("[ Vae ] peak bytes: one 8x8 tile %lld, 32x40 tiled %lld (output %lld), 32x40 whole %lld\n",
              (long long)one, (long long)tiled, (long long)out_bytes, (long long)whole);
}

// ---- gradients --------------------------------------------------------------------------------

TEST(GradVae, EncoderAndDecoderMatchFiniteDifferences) {
  // Two levels of 4 and 8 channels, one resnet per encoder block, both mid attentions.
  AutoencoderKL m(VaeConfig::from_json_string(R"({"block_out_channels": [4, 8], "norm_num_groups": 2,
      "layers_per_block": 1, "latent_channels": 2, "sample_size": 4,
      "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
      "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]})"));
  m.init_parameters(8, DType::F64);
  std::map<std::string, Module::Param*> params;
  for (auto& [k, p] : m.named_parameters()) params[k] = p;
  const std::vector<std::string> names = {
      "encoder.mid_block.attentions.0.to_q.weight",
      "encoder.down_blocks.0.downsamplers.0.conv.bias",
      "quant_conv.bias",
      "decoder.up_blocks.1.resnets.0.conv_shortcut.bias",
      "decoder.mid_block.attentions.0.group_norm.weight",
  };
  Tensor x = test::random_tensor({1, 3, 4, 5}, DType::F64, 21);  // odd width: the pad-right path
  std::vector<Tensor> inputs = {x};
  for (const auto& n : names) {
    ASSERT_TRUE(params.count(n)) << n;
    inputs.push_back(*params[n]->slot);
  }
  // decode(mean + std * noise) with the same noise every call: gradients flow through the
  // reparameterised sample into both halves of the posterior and the encoder.
  auto f = [&](const std::vector<Tensor>& in) {
    for (size_t i = 0; i < names.size(); ++i) *params[names[i]]->slot = in[1 + i];
    const auto d = m.encode(in[0]);
    Generator g(5);
    return m.decode(AutoencoderKL::sample(d.mean, d.logvar, g));
  };
  EXPECT_TRUE(test::gradcheck(f, inputs));
}

}  // namespace
}  // namespace sd::nn
