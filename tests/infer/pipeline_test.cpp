// Unit tests of the pipeline pieces around the denoising loop (the loop itself is checked against
// diffusers in pipeline_golden_test.cpp): SHA-256, A1111 parameters text, prompt encoding (long
// prompts, weights, zero negative conditioning), pipeline loading (families, tokenizers, variants,
// defaults, errors), batching, noise streams, the LCM guidance embedding, and the NaN/Inf stops.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <filesystem>
#include <string>

#include "infer/generate.h"
#include "infer/infotext.h"
#include "infer/hash_cache.h"
#include "infer/sha256.h"
#include "ops/elementwise.h"
#include "ops/view.h"
#include "tests/test_util.h"

namespace sd::infer {
namespace {

namespace fs = std::filesystem;
const std::string kData = SD_TEST_DATA_DIR;

const Pipeline& tiny(const std::string& name) {
  static std::map<std::string, std::shared_ptr<Pipeline>> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, Pipeline::load(kData + "/pipe_tiny_" + name)).first;
  return *it->second;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// ---- SHA-256 (FIPS 180-4 examples) ----

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  Sha256 h;  // one million 'a', fed in uneven pieces
  const std::string piece(997, 'a');
  size_t fed = 0;
  while (fed + piece.size() <= 1000000) h.update(piece), fed += piece.size();
  h.update(std::string(1000000 - fed, 'a'));
  EXPECT_EQ(h.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, FilesAreHashedOneAfterAnother) {
  const fs::path d = fs::temp_directory_path() / ("sd_sha_" + std::to_string(::getpid()));
  fs::create_directories(d);
  std::ofstream(d / "a") << "ab";
  std::ofstream(d / "b") << "c";
  EXPECT_EQ(sha256_files_hex({(d / "a").string(), (d / "b").string()}), sha256_hex("abc"));
  EXPECT_NE(error_of([&] { sha256_files_hex({(d / "missing").string()}); }).find("cannot open"), std::string::npos);
  fs::remove_all(d);
}

// ---- A1111 parameters ----

// Model hashes are remembered between runs (A1111's cache.json habit), keyed by path, size and mtime.
TEST(Sha256, HashCacheRemembersUnchangedFilesOnly) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("sd_hash_cache_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string file = (dir / "weights.bin").string(), cache_dir = (dir / "cache").string();
  test::write_text(file, "some weights");
  ::setenv("SD_CACHE_DIR", cache_dir.c_str(), 1);
  const std::string real = sha256_files_hex({file});
  EXPECT_EQ(cached_sha256_files_hex({file}), real);
  const std::string cache = hash_cache_path();
  ASSERT_EQ(cache, cache_dir + "/model_hashes.json");
  std::string text = test::read_text(cache);
  ASSERT_NE(text.find(real), std::string::npos) << text;
  // It is read: a planted value comes back while the file is unchanged...
  const std::string planted(64, 'a');
  text.replace(text.find(real), real.size(), planted);
  test::write_text(cache, text);
  EXPECT_EQ(cached_sha256_files_hex({file}), planted);
  // ...and not once the file changes (size and mtime).
  test::write_text(file, "other weights, longer");
  EXPECT_EQ(cached_sha256_files_hex({file}), sha256_files_hex({file}));
  // A damaged cache is ignored and rewritten; "off" writes nothing.
  test::write_text(cache, "{not json");
  EXPECT_EQ(cached_sha256_files_hex({file}), sha256_files_hex({file}));
  fs::remove(cache);
  ::setenv("SD_CACHE_DIR", "off", 1);
  EXPECT_EQ(cached_sha256_files_hex({file}), sha256_files_hex({file}));
  EXPECT_FALSE(fs::exists(cache));
  ::unsetenv("SD_CACHE_DIR");
  fs::remove_all(dir);
}

TEST(Infotext, A1111Format) {
  Infotext i;
  i.prompt = "a (red:1.2) cat";
  i.negative_prompt = "blurry";
  i.steps = 30;
  i.sampler = "DPM++ 2M";
  i.schedule_type = "Karras";
  i.cfg_scale = 7;
  i.seed = 1234;
  i.width = 512;
  i.height = 768;
  i.model_hash = "0123456789";
  i.model_name = "v1-5-pruned";
  i.clip_skip = 2;
  i.denoising_strength = 0.35;
  i.batch_size = 2;
  i.batch_pos = 1;
  i.extra = {{"Refiner", "a, b"}};
  EXPECT_EQ(format_a1111_parameters(i),
            "a (red:1.2) cat\nNegative prompt: blurry\n"
            "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
            "Model hash: 0123456789, Model: v1-5-pruned, Batch size: 2, Batch pos: 1, Denoising strength: 0.35, "
            "Clip skip: 2, Refiner: \"a, b\"");
  i.negative_prompt.reset();
  i.batch_size = 1;
  i.clip_skip = 0;
  i.denoising_strength.reset();
  i.extra.clear();
  i.cfg_scale = 7.5;
  EXPECT_EQ(format_a1111_parameters(i),
            "a (red:1.2) cat\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1234, "
            "Size: 512x768, Model hash: 0123456789, Model: v1-5-pruned");
  EXPECT_EQ(format_number(0.1), "0.1");
  EXPECT_EQ(format_number(5), "5");
  EXPECT_EQ(format_number(1.0 / 3), "0.3333333333333333");
}

TEST(Infotext, SamplerNames) {
  const SchedulerConfig sd15 = tiny("sd1").scheduler_config;
  auto name = [&](const std::string& s) {
    auto [n, k] = a1111_sampler_name(s.empty() ? sd15 : scheduler_config_for(s, sd15));
    return k.empty() ? n : n + " / " + k;
  };
  EXPECT_EQ(name(""), "PLMS");
  EXPECT_EQ(name("ddim"), "DDIM");
  EXPECT_EQ(name("euler"), "Euler");
  EXPECT_EQ(name("euler_a"), "Euler a");
  EXPECT_EQ(name("heun"), "Heun");
  EXPECT_EQ(name("dpm++2m"), "DPM++ 2M");
  EXPECT_EQ(name("dpm++2m_karras"), "DPM++ 2M / Karras");
  EXPECT_EQ(name("dpm++2m_sde"), "DPM++ 2M SDE");
  EXPECT_EQ(name("unipc"), "UniPC");
  EXPECT_EQ(name("lcm"), "LCM");
}

// ---- loading ----

TEST(PipelineLoad, FamiliesAndComponents) {
  const Pipeline& sd1 = tiny("sd1");
  EXPECT_EQ(sd1.family, nn::ModelFamily::SD1);
  EXPECT_EQ(sd1.pipeline_class, "StableDiffusionPipeline");
  EXPECT_FALSE(sd1.is_sdxl());
  EXPECT_EQ(sd1.tokenizer->pad_id(), sd1.tokenizer->eos_id());  // CLIP-L pads with <|endoftext|>
  EXPECT_EQ(sd1.scheduler_config.class_name, "PNDMScheduler");
  EXPECT_EQ(sd1.weight_files.size(), 3u);

  const Pipeline& sd2 = tiny("sd2");
  EXPECT_EQ(sd2.family, nn::ModelFamily::SD2);
  EXPECT_EQ(sd2.tokenizer->pad_id(), 0);  // OpenCLIP pads with "!"
  EXPECT_EQ(sd2.scheduler_config.prediction_type, "v_prediction");

  const Pipeline& xl = tiny("sdxl");
  EXPECT_EQ(xl.family, nn::ModelFamily::SDXL);
  EXPECT_TRUE(xl.is_sdxl());
  EXPECT_TRUE(xl.force_zeros_for_empty_prompt);
  EXPECT_FALSE(xl.requires_aesthetics_score);
  EXPECT_EQ(xl.tokenizer->pad_id(), xl.tokenizer->eos_id());
  EXPECT_EQ(xl.tokenizer_2->pad_id(), 0);

  const Pipeline& ref = tiny("sdxl_refiner");
  EXPECT_EQ(ref.family, nn::ModelFamily::SDXLRefiner);
  EXPECT_EQ(ref.text_encoder, nullptr);
  EXPECT_FALSE(ref.force_zeros_for_empty_prompt);
  EXPECT_TRUE(ref.requires_aesthetics_score);

  const Pipeline& lcm = tiny("lcm");
  EXPECT_TRUE(lcm.is_lcm());
  EXPECT_TRUE(lcm.has_guidance_embedding());
  EXPECT_EQ(lcm.describe_family(), "sd1+lcm");
}

// An Nsight Systems timeline reads like the model: every block's range is its path in the pipeline.
TEST(PipelineLoad, BlocksAreNamedForProfilerRanges) {
  const auto p = Pipeline::load(kData + "/pipe_tiny_sdxl");
  auto trace = [](nn::Module& root, const std::string& path) {
    for (auto& [name, m] : root.named_modules())
      if (name == path) return std::string(m->trace_name("?"));
    return std::string("(no module " + path + ")");
  };
  EXPECT_EQ(trace(*p->unet, "down_blocks.1.attentions.0"), "unet.down_blocks.1.attentions.0");
  EXPECT_EQ(trace(*p->unet, "mid_block.resnets.1"), "unet.mid_block.resnets.1");
  EXPECT_EQ(trace(*p->vae, "decoder.up_blocks.0"), "vae.decoder.up_blocks.0");
  EXPECT_EQ(trace(*p->text_encoder, "text_model.encoder.layers.0"), "text_encoder.text_model.encoder.layers.0");
  EXPECT_EQ(trace(*p->text_encoder_2, "text_model.encoder.layers.1.mlp"), "text_encoder_2.text_model.encoder.layers.1.mlp");
}

TEST(PipelineLoad, Defaults) {
  // Size: the UNet's sample_size (16) times the VAE's factor (2); diffusers' call defaults otherwise.
  const PipelineDefaults sd1 = tiny("sd1").defaults();
  EXPECT_EQ(sd1.width, 32);
  EXPECT_EQ(sd1.height, 32);
  EXPECT_EQ(sd1.steps, 50);
  EXPECT_EQ(sd1.guidance_scale, 7.5);
  EXPECT_EQ(tiny("sdxl").defaults().guidance_scale, 5.0);
  EXPECT_EQ(tiny("lcm").defaults().steps, 4);
  EXPECT_EQ(tiny("lcm").defaults().guidance_scale, 8.5);
}

TEST(PipelineLoad, TurboDefaults) {
  // SDXL-Turbo's folder: an SDXL pipeline whose scheduler uses trailing spacing, at 512 px or less.
  const fs::path d = fs::temp_directory_path() / ("sd_turbo_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::copy(kData + "/pipe_tiny_sdxl", d, fs::copy_options::recursive);
  std::ofstream(d / "scheduler" / "scheduler_config.json")
      << R"({"_class_name": "EulerAncestralDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "timestep_spacing": "trailing", "steps_offset": 1})";
  const auto p = Pipeline::load(d.string());
  EXPECT_TRUE(p->turbo);
  EXPECT_EQ(p->describe_family(), "sdxl+turbo");
  EXPECT_EQ(p->defaults().steps, 1);
  EXPECT_EQ(p->defaults().guidance_scale, 0.0);
  GenerateRequest r;
  r.prompt = "a cat";
  PhiloxNoise n(1);
  const GenerateResult res = generate(*p, r, n);
  EXPECT_FALSE(res.cfg);
  EXPECT_EQ(res.steps_run, 1);
  EXPECT_EQ(res.timings.unet_evals, 1);
  EXPECT_FALSE(tiny("sdxl").turbo);
  fs::remove_all(d);
}

TEST(PipelineLoad, PredictionOverride) {
  PipelineOptions o;
  o.prediction = nn::Prediction::VPrediction;
  const auto p = Pipeline::load(kData + "/pipe_tiny_sd1", o);
  EXPECT_EQ(p->scheduler_config.prediction_type, "v_prediction");
  EXPECT_EQ(p->scheduler_config.class_name, "PNDMScheduler");
}

TEST(PipelineLoad, Variant) {
  // A copy whose weights are all <name>.fp16.safetensors (symlinks followed).
  const fs::path d = fs::temp_directory_path() / ("sd_variant_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::copy(kData + "/pipe_tiny_sd1", d, fs::copy_options::recursive);
  for (const char* f : {"unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model"})
    fs::rename(d / (std::string(f) + ".safetensors"), d / (std::string(f) + ".fp16.safetensors"));
  PipelineOptions o;
  o.variant = "fp16";
  const auto p = Pipeline::load(d.string(), o);
  ASSERT_EQ(p->weight_files.size(), 3u);
  for (const std::string& f : p->weight_files) EXPECT_NE(f.find(".fp16.safetensors"), std::string::npos) << f;
  // Without --variant a folder holding only fp16 files is still read.
  EXPECT_EQ(Pipeline::load(d.string())->weight_files, p->weight_files);
  // A variant the folder lacks falls back to the plain files, as diffusers does.
  const auto plain = Pipeline::load(kData + "/pipe_tiny_sd1", o);
  for (const std::string& f : plain->weight_files) EXPECT_EQ(f.find(".fp16."), std::string::npos) << f;
  // Same weights: same image.
  GenerateRequest r;
  r.prompt = "a cat";
  r.steps = 2;
  PhiloxNoise n1(5), n2(5);
  EXPECT_TRUE(test::all_close(generate(*p, r, n1).images, generate(*plain, r, n2).images, 0, 0));
  fs::remove_all(d);
}

TEST(PipelineLoad, Errors) {
  EXPECT_NE(error_of([] { Pipeline::load(kData + "/no_such_model"); }).find("does not exist"), std::string::npos);
  EXPECT_NE(error_of([] { Pipeline::load(kData + "/clip"); }).find("no model_index.json"), std::string::npos);
  const fs::path d = fs::temp_directory_path() / ("sd_nounet_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  fs::copy_file(kData + "/pipe_tiny_sd1/model_index.json", d / "model_index.json");
  EXPECT_NE(error_of([&] { Pipeline::load(d.string()); }).find("has no unet/"), std::string::npos);
  fs::remove_all(d);
  EXPECT_NE(error_of([] { Pipeline::load(""); }).find("no model given"), std::string::npos);
}

// ---- prompts ----

// The hidden states the SD1 pipeline should use for one framed chunk: last_hidden_state.
Tensor chunk_states(const Pipeline& p, const std::vector<int>& framed) {
  std::vector<double> ids(framed.begin(), framed.end());
  return p.text_encoder->forward(from_vector(ids, {1, int64_t(ids.size())}, DType::I64));
}

TEST(PromptEncoder, LongPromptsAreChunkedAndPadded) {
  const Pipeline& p = tiny("sd1");
  const ClipTokenizer& tok = *p.tokenizer;
  std::string prompt;
  for (int i = 0; i < 100; ++i) prompt += "a ";
  const std::vector<int> ids = tok.encode(prompt);
  ASSERT_EQ(ids.size(), 100u);  // "a</w>": one token per word
  const EncodedPrompts e = encode_prompts(p, prompt, std::string(""), true);
  EXPECT_EQ(e.chunks, 2);
  EXPECT_EQ(e.tokens, 100);
  ASSERT_EQ(e.cond.context.shape(), (Shape{1, 154, 32}));
  ASSERT_EQ(e.uncond.context.shape(), (Shape{1, 154, 32}));
  const Tensor first = chunk_states(p, tok.frame(std::vector<int>(ids.begin(), ids.begin() + 75)));
  const Tensor second = chunk_states(p, tok.frame(std::vector<int>(ids.begin() + 75, ids.end())));
  EXPECT_TRUE(test::all_close(narrow(e.cond.context, 1, 0, 77), first, 1e-6, 1e-6));
  EXPECT_TRUE(test::all_close(narrow(e.cond.context, 1, 77, 77), second, 1e-6, 1e-6));
  // The negative prompt "" is padded with an empty chunk.
  const Tensor empty = chunk_states(p, tok.frame({}));
  EXPECT_TRUE(test::all_close(narrow(e.uncond.context, 1, 0, 77), empty, 1e-6, 1e-6));
  EXPECT_TRUE(test::all_close(narrow(e.uncond.context, 1, 77, 77), empty, 1e-6, 1e-6));
  // diffusers' literal mode: one chunk, cut at 75 tokens.
  PromptEncodeOptions lit;
  lit.a1111_syntax = false;
  const EncodedPrompts l = encode_prompts(p, prompt, std::nullopt, false, lit);
  EXPECT_EQ(l.cond.context.shape(), (Shape{1, 77, 32}));
  EXPECT_TRUE(test::all_close(l.cond.context, first, 1e-6, 1e-6));
  EXPECT_FALSE(l.uncond.context.defined());
}

TEST(PromptEncoder, A1111WeightsScaleAndKeepTheMean) {
  const Pipeline& p = tiny("sd1");
  const ClipTokenizer& tok = *p.tokenizer;
  const std::vector<int> red = tok.encode("red"), cat = tok.encode(" cat");
  std::vector<int> ids = red;
  ids.insert(ids.end(), cat.begin(), cat.end());
  const std::vector<double> z = chunk_states(p, tok.frame(ids)).to_vector();  // [77 * 32]
  std::vector<double> w(77, 1.0);
  for (size_t i = 0; i < red.size(); ++i) w[1 + i] = 1.5;
  // Expected, in double: z * w, then scaled back to z's mean.
  double m0 = 0, m1 = 0;
  std::vector<double> zw(z.size());
  for (size_t i = 0; i < z.size(); ++i) {
    zw[i] = z[i] * w[i / 32];
    m0 += z[i];
    m1 += zw[i];
  }
  for (double& v : zw) v *= m0 / m1;
  const EncodedPrompts e = encode_prompts(p, "(red:1.5) cat", std::nullopt, false);
  EXPECT_TRUE(test::all_close(e.cond.context, zw, 1e-5, 1e-6));
  // Without weights: exactly diffusers' encoding.
  const EncodedPrompts plain = encode_prompts(p, "red cat", std::nullopt, false);
  EXPECT_TRUE(test::all_close(plain.cond.context, chunk_states(p, tok.frame(ids)), 0, 0));
}

TEST(PromptEncoder, SdxlZeroNegativeOnlyWithoutANegativePrompt) {
  const Pipeline& xl = tiny("sdxl");
  const EncodedPrompts none = encode_prompts(xl, "a cat", std::nullopt, true);
  EXPECT_EQ(none.cond.context.shape(), (Shape{1, 77, 32}));  // 16 (CLIP-L-like) + 16 (bigG-like)
  EXPECT_EQ(none.cond.pooled.shape(), (Shape{1, 16}));
  for (double v : none.uncond.context.to_vector()) ASSERT_EQ(v, 0.0);
  for (double v : none.uncond.pooled.to_vector()) ASSERT_EQ(v, 0.0);
  const EncodedPrompts given = encode_prompts(xl, "a cat", std::string(""), true);
  double norm = 0;
  for (double v : given.uncond.context.to_vector()) norm += v * v;
  EXPECT_GT(norm, 0.0) << "an explicit empty negative prompt is encoded";
  // The refiner (force_zeros_for_empty_prompt false) encodes "" when no negative is given.
  const EncodedPrompts ref = encode_prompts(tiny("sdxl_refiner"), "a cat", std::nullopt, true);
  EXPECT_EQ(ref.cond.context.shape(), (Shape{1, 77, 16}));
  double rn = 0;
  for (double v : ref.uncond.context.to_vector()) rn += v * v;
  EXPECT_GT(rn, 0.0);
}

// The prompt and the negative prompt share one encoder batch: each must come out as it does
// encoded alone (hidden states of every chunk, and SDXL's pooled embedding), with emphasis on
// one of them only, and with a negative that needs more chunks than the prompt.
TEST(PromptEncoder, PromptAndNegativeTogetherEqualEachAlone) {
  std::string long_negative;
  for (int i = 0; i < 90; ++i) long_negative += "b ";
  for (const char* family : {"sd1", "sdxl"}) {
    const Pipeline& p = tiny(family);
    for (const std::string& negative : {std::string("blurry, (ugly:1.3)"), long_negative}) {
      const EncodedPrompts both = encode_prompts(p, "a (red:1.2) cat", negative, true);
      const EncodedPrompts pos = encode_prompts(p, "a (red:1.2) cat", std::nullopt, false);
      const EncodedPrompts neg = encode_prompts(p, negative, std::nullopt, false);
      const int64_t L = both.cond.context.size(1);
      EXPECT_EQ(L, both.uncond.context.size(1)) << family;
      // The prompt alone has fewer chunks than the padded pair when the negative is long.
      EXPECT_TRUE(test::all_close(narrow(both.cond.context, 1, 0, pos.cond.context.size(1)), pos.cond.context, 1e-6,
                                  1e-6))
          << family;
      EXPECT_TRUE(test::all_close(both.uncond.context, neg.cond.context, 1e-6, 1e-6)) << family;
      if (both.cond.pooled.defined()) {
        EXPECT_TRUE(test::all_close(both.cond.pooled, pos.cond.pooled, 1e-6, 1e-6)) << family;
        EXPECT_TRUE(test::all_close(both.uncond.pooled, neg.cond.pooled, 1e-6, 1e-6)) << family;
      }
    }
  }
}

TEST(PromptEncoder, ClipSkipBeyondTheModelIsAnError) {
  PromptEncodeOptions o;
  o.clip_skip = 3;  // the tiny encoder has 2 layers: hidden_states has 3 entries, [-4] does not exist
  EXPECT_NE(error_of([&] { encode_prompts(tiny("sd1"), "a cat", std::nullopt, false, o); }).find("clip_skip"),
            std::string::npos);
  o.clip_skip = -1;
  EXPECT_NE(error_of([&] { encode_prompts(tiny("sd1"), "a cat", std::nullopt, false, o); }).find("clip_skip"),
            std::string::npos);
}

// ---- generation ----

TEST(Generate, BatchesGiveTheSameImagesAsOneBatch) {
  // Philox draws of [2, ...] equal two consecutive draws of [1, ...] (even element count), so
  // batch size 1 and 2 must give the same images up to the float reassociation of batched GEMMs.
  const Pipeline& p = tiny("sd1");
  GenerateRequest r;
  r.prompt = "a red cartoon cat";
  r.steps = 3;
  r.scheduler = "ddim";
  r.num_images = 2;
  PhiloxNoise a(11), b(11);
  const GenerateResult one = generate(p, r, a);
  r.batch_size = 1;
  const GenerateResult two = generate(p, r, b);
  ASSERT_EQ(one.images.shape(), (Shape{2, 3, 32, 32}));
  EXPECT_LE(test::relative_error(two.images, one.images), 1e-5);
  EXPECT_GT(test::relative_error(narrow(one.images, 0, 0, 1), narrow(one.images, 0, 1, 1)), 1e-2)
      << "the two images of a batch must differ";
}

TEST(Generate, SeedsAndStreams) {
  const Pipeline& p = tiny("sd1");
  GenerateRequest r;
  r.prompt = "a cat";
  r.steps = 2;
  PhiloxNoise a(1), b(1), c(2);
  const Tensor ia = generate(p, r, a).images;
  EXPECT_TRUE(test::all_close(generate(p, r, b).images, ia, 0, 0));
  EXPECT_GT(test::relative_error(generate(p, r, c).images, ia), 1e-2);
  // torch-cuda: the starting latents are TorchCudaGenerator's randn times init_noise_sigma.
  TorchCudaNoise tn(42);
  TorchCudaGenerator g(42);
  EXPECT_TRUE(test::all_close(tn.randn({1, 4, 16, 16}, DType::F32, Device::cpu()), g.randn({1, 4, 16, 16}), 0, 0));
  EXPECT_NE(error_of([] { make_noise_stream("mt19937", 1); }).find("unknown random generator"), std::string::npos);
  TableNoise t({zeros({2})});
  EXPECT_NE(error_of([&] { t.randn({3}, DType::F32, Device::cpu()); }).find("has shape"), std::string::npos);
}

TEST(Generate, GuidanceScaleEmbeddingFormula) {
  const int64_t d = 16;
  const Tensor e = guidance_scale_embedding(7.5, d, 2);
  ASSERT_EQ(e.shape(), (Shape{2, d}));
  const std::vector<double> v = e.to_vector();
  for (int64_t i = 0; i < d / 2; ++i) {
    const double f = std::exp(-std::log(10000.0) * double(i) / double(d / 2 - 1));
    const double a = 7500.0 * f;
    EXPECT_NEAR(v[size_t(i)], std::sin(a), 2e-3) << i;  // sin first (float32 argument rounding up to ~1e-3 at 7500)
    EXPECT_NEAR(v[size_t(d / 2 + i)], std::cos(a), 2e-3) << i;
    EXPECT_EQ(v[size_t(d + i)], v[size_t(i)]);  // every row the same
  }
  // w = 0 (guidance 1): sin 0 = 0, cos 0 = 1.
  const std::vector<double> z = guidance_scale_embedding(0.0, 8, 1).to_vector();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(z[size_t(i)], 0.0);
    EXPECT_EQ(z[size_t(4 + i)], 1.0);
  }
}

TEST(Generate, RequestErrors) {
  const Pipeline& p = tiny("sd1");
  GenerateRequest r;
  r.prompt = "a cat";
  r.width = 36;
  PhiloxNoise n(0);
  EXPECT_NE(error_of([&] { generate(p, r, n); }).find("multiples of 8"), std::string::npos);
  r.width = 32;
  r.init_image = zeros({3, 32, 32});
  r.strength = 0.05;
  r.steps = 10;
  EXPECT_NE(error_of([&] { generate(p, r, n); }).find("leaves no denoising step"), std::string::npos) << error_of([&] { generate(p, r, n); });
  r.strength = 0.5;
  r.width = 48;
  EXPECT_NE(error_of([&] { generate(p, r, n); }).find("differs from the init image"), std::string::npos);
  GenerateRequest q;
  q.prompt = "a cat";
  EXPECT_NE(error_of([&] { generate(tiny("sdxl_refiner"), q, n); }).find("--init_image"), std::string::npos);
  q.latents = zeros({1, 4, 8, 8});
  EXPECT_NE(error_of([&] { generate(p, q, n); }).find("latents must be [1, 4, 16, 16]"), std::string::npos);
}

TEST(Generate, HalfPrecisionAndTiledDecodeRun) {
  // fp16 UNet/text encoders on the CPU: close to the f32 image (latents stay f32); VAE tiling on
  // an image larger than one tile (the tiny VAE's sample_size is 32).
  PipelineOptions o;
  o.dtype = DType::BF16;
  const auto half = Pipeline::load(kData + "/pipe_tiny_sd1", o);
  GenerateRequest r;
  r.prompt = "a red cartoon cat";
  r.steps = 3;
  r.scheduler = "euler";
  PhiloxNoise a(3), b(3);
  const Tensor ref = generate(tiny("sd1"), r, a).images;
  const Tensor got = generate(*half, r, b).images;
  const double err = test::relative_error(got, ref);
  std::printf("[ bf16 ] tiny SD1, 3 Euler steps with CFG: image relative error vs f32 %.2e\n", err);
  EXPECT_LE(err, 5e-2);
  r.width = r.height = 64;
  r.vae_tiling = true;
  PhiloxNoise c(3);
  const Tensor tiled = generate(tiny("sd1"), r, c).images;
  EXPECT_EQ(tiled.shape(), (Shape{1, 3, 64, 64}));
  for (double v : tiled.to_vector()) ASSERT_TRUE(std::isfinite(v));
}

// ---- NaN/Inf: a run that breaks stops with the step, never a black image ----

// Every element of w becomes NaN (in place: the pipeline is a private copy).
void poison(Tensor& w) { copy_(w, w * std::numeric_limits<double>::quiet_NaN()); }

std::optional<NonFiniteError> non_finite_error(const Pipeline& p, const GenerateRequest& r) {
  PhiloxNoise n(5);
  try {
    generate(p, r, n);
  } catch (const NonFiniteError& e) {
    return e;
  }
  return std::nullopt;
}

TEST(Generate, LatentsThatBecomeNanStopAtThatStep) {
  const auto p = Pipeline::load(kData + "/pipe_tiny_sd1");
  GenerateRequest r;
  r.prompt = "a red cartoon cat";
  r.steps = 4;
  r.scheduler = "euler";
  // The UNet breaks after step 2 (its weights turn NaN from the progress callback): step 3 is named.
  r.on_step = [&](const ProgressEvent& e) {
    if (e.step == 2) poison(p->unet->conv_out->weight);
  };
  const std::optional<NonFiniteError> e = non_finite_error(*p, r);
  ASSERT_TRUE(e.has_value()) << "no NonFiniteError";
  EXPECT_EQ(e->stage, NonFiniteError::Stage::Denoise);
  EXPECT_EQ(e->step, 3);
  EXPECT_EQ(e->total, 4);
  EXPECT_EQ(e->dtype, DType::F32);
  EXPECT_NE(std::string(e->what()).find("latents became NaN/Inf at step 3 of 4 (denoise, UNet f32)"), std::string::npos)
      << e->what();
}

TEST(Generate, NonFiniteStartingLatentsAndDecodedImagesStopTheRun) {
  const Pipeline& clean = tiny("sd1");
  GenerateRequest r;
  r.prompt = "a cat";
  r.steps = 2;
  // Given latents with one NaN: stopped before the first step.
  std::vector<double> v(4 * 16 * 16, 0.5);
  v[17] = std::numeric_limits<double>::quiet_NaN();
  r.latents = from_vector(v, {1, 4, 16, 16});
  std::optional<NonFiniteError> e = non_finite_error(clean, r);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->stage, NonFiniteError::Stage::Start);
  EXPECT_NE(std::string(e->what()).find("starting latents hold NaN/Inf"), std::string::npos) << e->what();
  r.latents = Tensor();
  // A VAE decoder whose output is NaN: the latents were fine, the image is not.
  const auto p = Pipeline::load(kData + "/pipe_tiny_sd1");
  poison(p->vae->decoder->conv_out->weight);
  e = non_finite_error(*p, r);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->stage, NonFiniteError::Stage::Decode);
  EXPECT_NE(std::string(e->what()).find("decoded image holds NaN/Inf though its latents are finite (VAE decoder in f32)"),
            std::string::npos)
      << e->what();
  // Switched off, the run hands the NaN image back (what used to be saved as a black PNG).
  r.check_finite = false;
  PhiloxNoise n(5);
  const GenerateResult res = generate(*p, r, n);
  EXPECT_TRUE(std::isnan(res.images.to_vector().front()));
}

}  // namespace
}  // namespace sd::infer
