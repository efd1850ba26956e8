// LoRA loading rules on the tiny models and the LoRA files of tests/data/lora: merge vs on the fly,
// removal (bit-exact with keep_original, within f32 rounding without), unmatched keys, wrong-family
// errors, every diffusers spelling, kohya / PEFT scale rules, merged values against a float64 loop,
// several LoRAs at once, unsupported adapter types, hostile files (NaN/Inf, integer tensors, empty,
// matching no layer).
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>

#include "ops/view.h"
#include "tests/models/adapters/lora_fixtures.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

std::map<std::string, Tensor> read_all(const std::string& file) {
  SafetensorsFile f = SafetensorsFile::open(test::lora_file(file));
  std::map<std::string, Tensor> out;
  for (const std::string& k : f.keys()) out[k] = f.get(k);
  return out;
}

std::map<std::string, std::string> read_metadata(const std::string& file) {
  return SafetensorsSource::open(test::lora_file(file))->metadata();
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const Tensor ca = contiguous_raw(a), cb = contiguous_raw(b);
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

// Copies of every parameter (the originals get changed in place by merging).
std::vector<std::pair<std::string, Tensor>> snapshot(Module& m) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [n, t] : m.state_dict()) out.emplace_back(n, copy_to(t, t.dtype(), t.device()));
  return out;
}

size_t adapters_attached(const test::LoraModels& m) {
  size_t n = 0;
  for (Module* root : {static_cast<Module*>(m.unet.get()), static_cast<Module*>(m.te.get()),
                       static_cast<Module*>(m.te2.get())}) {
    if (!root) continue;
    for (const AdapterTarget& t : adapter_targets(*root)) n += t.linear ? t.linear->loras.size() : t.conv->loras.size();
  }
  return n;
}

std::vector<LoraAdapter>& loras_of(const AdapterTarget& t) { return t.linear ? t.linear->loras : t.conv->loras; }

std::vector<AdapterTarget> all_targets(const test::LoraModels& m) {
  std::vector<AdapterTarget> out = m.unet->adapter_targets();
  for (ClipTextModel* te : {m.te.get(), m.te2.get()})
    if (te)
      for (const AdapterTarget& t : adapter_targets(*te)) out.push_back(t);
  return out;
}

LoraOptions opts(double m, LoraMode mode = LoraMode::OnTheFly) {
  LoraOptions o;
  o.multiplier = m;
  o.mode = mode;
  return o;
}

// ---------------------------------------------------------------- merge vs on the fly, removal

TEST(Lora, MergeEqualsOnTheFly) {
  for (const char* name : {"sd1", "sdxl"}) {
    test::LoraModels a = test::load_lora_models(name), b = test::load_lora_models(name);
    const std::string file = test::lora_file(std::string(name) + "_kohya.safetensors");
    LoadedLora fly = load_lora(file, a.targets(), opts(0.7));
    LoadedLora merged = load_lora(file, b.targets(), opts(0.7, LoraMode::Merge));
    EXPECT_EQ(adapters_attached(b), 0u);
    const test::LoraOutputs oa = test::run_lora_models(a), ob = test::run_lora_models(b);
    const double eu = test::relative_error(ob.unet, oa.unet), et = test::relative_error(ob.te, oa.te);
    std::printf("[ Lora ] %s merged vs on-the-fly: unet %.2e, text encoder %.2e\n", name, eu, et);
    EXPECT_LE(eu, 1e-5) << name;  // f32 rounding of W + s (B A) vs W x + s B (A x)
    EXPECT_LE(et, 1e-5) << name;
    if (b.te2) EXPECT_LE(test::relative_error(ob.te2_embeds, oa.te2_embeds), 1e-5);
  }
}

TEST(Lora, RemoveOnTheFlyRestoresTheOutputsExactly) {
  test::LoraModels m = test::load_lora_models("sd1");
  const test::LoraOutputs base = test::run_lora_models(m);
  LoadedLora lora = load_lora(test::lora_file("sd1_peft.safetensors"), m.targets(), opts(0.7));
  EXPECT_EQ(adapters_attached(m), size_t(79 + 12));
  EXPECT_TRUE(lora.active());
  lora.remove();
  EXPECT_FALSE(lora.active());
  EXPECT_EQ(adapters_attached(m), 0u);
  lora.remove();  // a second call does nothing
  const test::LoraOutputs after = test::run_lora_models(m);
  EXPECT_TRUE(bit_equal(after.unet, base.unet));
  EXPECT_TRUE(bit_equal(after.te, base.te));
  EXPECT_THROW(lora.set_multiplier(1.0), Error);
}

TEST(Lora, UnmergeWithKeepOriginalIsBitExact) {
  test::LoraModels m = test::load_lora_models("sdxl");
  const auto u0 = snapshot(*m.unet), t0 = snapshot(*m.te), t20 = snapshot(*m.te2);
  LoraOptions o = opts(0.7, LoraMode::Merge);
  o.keep_original = true;
  LoadedLora lora = load_lora(test::lora_file("sdxl_peft.safetensors"), m.targets(), o);
  size_t changed = 0;
  for (auto& [n, t] : m.unet->state_dict()) {
    for (auto& [n0, t0v] : u0)
      if (n0 == n && !bit_equal(t, t0v)) ++changed;
  }
  EXPECT_EQ(changed, 119u);  // every adapted weight, nothing else
  lora.set_multiplier(0.3, 0.5);  // the kept originals survive a multiplier change
  lora.remove();
  for (auto* pair : {&u0, &t0, &t20}) {
    Module& mod = pair == &u0 ? static_cast<Module&>(*m.unet) : pair == &t0 ? static_cast<Module&>(*m.te)
                                                                            : static_cast<Module&>(*m.te2);
    const auto now = mod.state_dict();
    ASSERT_EQ(now.size(), pair->size());
    for (size_t i = 0; i < now.size(); ++i) EXPECT_TRUE(bit_equal(now[i].second, (*pair)[i].second)) << now[i].first;
  }
}

TEST(Lora, UnmergeBySubtractionIsWithinF32Rounding) {
  test::LoraModels m = test::load_lora_models("sd1");
  const auto u0 = snapshot(*m.unet);
  LoadedLora lora = load_lora(test::lora_file("sd1_kohya.safetensors"), m.targets(), opts(0.7, LoraMode::Merge));
  lora.remove();
  const auto now = m.unet->state_dict();
  size_t exact = 0, total = 0;
  double worst = 0;
  for (size_t i = 0; i < now.size(); ++i) {
    ++total;
    if (bit_equal(now[i].second, u0[i].second)) {
      ++exact;
      continue;
    }
    // Per element: |w' - w| <= a few ulp of the merged value's magnitude.
    const auto a = now[i].second.to_vector(), b = u0[i].second.to_vector();
    for (size_t j = 0; j < a.size(); ++j) worst = std::max(worst, std::abs(a[j] - b[j]) / (std::abs(b[j]) + 1e-3));
  }
  std::printf("[ Lora ] unmerge by subtraction: %zu of %zu tensors bit-exact, worst relative change %.2e\n", exact,
              total, worst);
  EXPECT_LE(worst, 1e-5);
}

TEST(Lora, NonLastMergedLoraFallsBackToSubtraction) {
  // keep_original restores bits only while nothing merged later sits on the weight; removing in another
  // order still removes the right delta (within rounding).
  test::LoraModels m = test::load_lora_models("sd1");
  const auto u0 = snapshot(*m.unet);
  LoraOptions o = opts(0.7, LoraMode::Merge);
  o.keep_original = true;
  LoadedLora first = load_lora(test::lora_file("sd1_kohya.safetensors"), m.targets(), o);
  LoadedLora second = load_lora(test::lora_file("sd1_peft.safetensors"), m.targets(), o);
  first.remove();   // the weights hold first + second: subtraction
  second.remove();  // now the weights hold original + rounding: subtraction again
  const auto now = m.unet->state_dict();
  for (size_t i = 0; i < now.size(); ++i) EXPECT_LE(test::relative_error(now[i].second, u0[i].second), 1e-6);
}

// ---------------------------------------------------------------- names

TEST(Lora, UnmatchedKeysAreReportedByName) {
  auto tensors = read_all("sd1_peft.safetensors");
  const auto meta = read_metadata("sd1_peft.safetensors");
  const Tensor a = test::random_tensor({4, 32}, DType::F32, 1), b = test::random_tensor({32, 4}, DType::F32, 2);
  const std::vector<std::string> extra = {
      "unet.down_blocks.9.attentions.0.proj_in.lora_A.weight",  // no such layer
      "unet.down_blocks.9.attentions.0.proj_in.lora_B.weight",
      "lora_unet_not_a_layer.lora_down.weight",  // kohya name of nothing
      "lora_unet_not_a_layer.lora_up.weight",
      "lora_unet_not_a_layer.alpha",
      "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",  // no text_encoder_2 given
      "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight",
      "diffusion_model.input_blocks.1.1.proj_in.weight",  // not a LoRA key at all
  };
  for (const std::string& k : extra)
    tensors[k] = k.find("alpha") != std::string::npos ? scalar_tensor(4.0)
                 : (k.find("lora_A") != std::string::npos || k.find("down") != std::string::npos) ? a : b;
  const MapSource src(tensors, "sd1_peft + extras");
  test::LoraModels m = test::load_lora_models("sd1");
  LoadedLora lora = load_lora(src, m.targets(), {}, &meta);
  std::vector<std::string> expected = extra;
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(lora.report().unmatched, expected);
  EXPECT_EQ(lora.report().applied.at("unet"), 79);
  EXPECT_EQ(lora.report().applied.at("text_encoder"), 12);
  EXPECT_NE(lora.report().str().find("8 keys unmatched"), std::string::npos) << lora.report().str();
  lora.remove();

  LoraOptions strict;
  strict.strict = true;
  try {
    load_lora(src, m.targets(), strict, &meta);
    ADD_FAILURE() << "strict load accepted unmatched keys";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(expected.front()), std::string::npos) << e.what();
  }
  EXPECT_EQ(adapters_attached(m), 0u);

  // Only the UNet given: every text-encoder key is listed.
  LoraTargets unet_only;
  unet_only.unet = m.unet.get();
  LoadedLora u = load_lora(test::lora_file("sd1_kohya.safetensors"), unet_only);
  EXPECT_EQ(u.report().unmatched.size(), size_t(12 * 3));  // lora_down, lora_up, alpha
  for (const std::string& k : u.report().unmatched) EXPECT_EQ(k.rfind("lora_te_", 0), 0u) << k;
  EXPECT_EQ(u.report().applied.count("text_encoder"), 0u);
}

TEST(Lora, SdxlLoraOnSd1IsAClearError) {
  test::LoraModels m = test::load_lora_models("sd1");
  const auto t0 = snapshot(*m.te);
  for (const char* file : {"sdxl_kohya.safetensors", "sdxl_peft.safetensors"}) {
    for (LoraMode mode : {LoraMode::OnTheFly, LoraMode::Merge}) {
      try {
        load_lora(test::lora_file(file), m.targets(), opts(1.0, mode));
        ADD_FAILURE() << file << " loaded onto the SD1 models";
      } catch (const Error& e) {
        const std::string msg = e.what();
        // The first misfit: SDXL's Linear proj_in LoRA against SD1's 1x1-conv proj_in.
        const std::string key = std::string(file) == "sdxl_kohya.safetensors"
                                    ? "lora_unet_middle_block_1_proj_in.lora_down.weight"
                                    : "unet.mid_block.attentions.0.proj_in.lora_A.weight";
        EXPECT_NE(msg.find("'" + key + "' (4, 32) does not fit unet layer 'mid_block.attentions.0.proj_in' "
                           "(Conv2d, weight (32, 32, 1, 1))"),
                  std::string::npos)
            << msg;
        EXPECT_NE(msg.find("another model family"), std::string::npos) << msg;
        EXPECT_NE(msg.find(file), std::string::npos) << msg;
      }
    }
  }
  // Nothing was attached or merged before the error.
  EXPECT_EQ(adapters_attached(m), 0u);
  const auto now = m.te->state_dict();
  for (size_t i = 0; i < now.size(); ++i) EXPECT_TRUE(bit_equal(now[i].second, t0[i].second));
}

// Renames every key of a LoRA file with `f` (empty result: key dropped).
template <class F>
std::map<std::string, Tensor> renamed(const std::map<std::string, Tensor>& in, F f) {
  std::map<std::string, Tensor> out;
  for (auto& [k, v] : in) {
    const std::string n = f(k);
    if (!n.empty()) out[n] = v;
  }
  return out;
}

std::string replace_suffix(const std::string& k, const std::string& from, const std::string& to) {
  return k.substr(0, k.size() - from.size()) + to;
}
bool ends(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// Loads `variant` on top of `reference` (both on the fly) and checks that every adapted layer got two
// identical adapters (same values, same scale).
void expect_same_adapters(const test::LoraModels& m, const TensorSource& reference, const TensorSource& variant,
                          const std::map<std::string, std::string>* reference_meta,
                          const std::map<std::string, std::string>* variant_meta, int64_t expected_layers) {
  LoadedLora a = load_lora(reference, m.targets(), opts(0.7), reference_meta);
  LoadedLora b = load_lora(variant, m.targets(), opts(0.7), variant_meta);
  EXPECT_TRUE(b.report().unmatched.empty()) << b.report().str();
  EXPECT_EQ(b.report().total_applied(), expected_layers) << b.report().str();
  int64_t pairs = 0;
  for (const AdapterTarget& t : all_targets(m)) {
    const auto& l = loras_of(t);
    if (l.empty()) continue;
    ASSERT_EQ(l.size(), 2u) << t.name << ": only one of the two spellings reached it";
    EXPECT_TRUE(bit_equal(l[0].down, l[1].down)) << t.name;
    EXPECT_TRUE(bit_equal(l[0].up, l[1].up)) << t.name;
    EXPECT_DOUBLE_EQ(l[0].scale, l[1].scale) << t.name;
    ++pairs;
  }
  EXPECT_EQ(pairs, expected_layers);
  b.remove();
  a.remove();
}

TEST(Lora, EveryDiffusersSpellingGivesTheSameAdapters) {
  const auto peft = read_all("sd1_peft.safetensors");
  const auto meta = read_metadata("sd1_peft.safetensors");
  const MapSource reference(peft, "sd1_peft");
  test::LoraModels m = test::load_lora_models("sd1");
  const std::vector<std::string> attn = {".to_q", ".to_k", ".to_v", ".to_out.0"};
  const std::vector<std::string> te_attn = {".q_proj", ".k_proj", ".v_proj", ".out_proj"};
  auto module_of = [](const std::string& k) {
    for (const char* s : {".lora_A.weight", ".lora_B.weight"})
      if (ends(k, s)) return k.substr(0, k.size() - std::string(s).size());
    return std::string();
  };
  auto is_down = [](const std::string& k) { return ends(k, ".lora_A.weight"); };

  // diffusers' own save format (convert_state_dict_to_diffusers): lora.down/up on the UNet's attention
  // projections, lora_linear_layer on the text encoder's, lora_A/B elsewhere.
  auto diffusers = renamed(peft, [&](const std::string& k) {
    const std::string mod = module_of(k);
    for (const std::string& s : attn)
      if (ends(mod, s) && k.rfind("unet.", 0) == 0) return mod + (is_down(k) ? ".lora.down.weight" : ".lora.up.weight");
    for (const std::string& s : te_attn)
      if (ends(mod, s) && k.rfind("text_encoder.", 0) == 0)
        return mod + (is_down(k) ? ".lora_linear_layer.down.weight" : ".lora_linear_layer.up.weight");
    return k;
  });
  expect_same_adapters(m, reference, MapSource(diffusers, "diffusers"), &meta, &meta, 91);

  // Attention processors (old diffusers): <attn>.processor.to_q_lora.down.weight, text encoders
  // <self_attn>.to_q_lora.down.weight with "text_model." paths; very old UNet files without "unet.".
  auto processors = renamed(peft, [&](const std::string& k) {
    const std::string mod = module_of(k);
    const std::string dir = is_down(k) ? "down" : "up";
    if (k.rfind("unet.", 0) == 0) {
      for (const std::string& s : attn)
        if (ends(mod, s)) {
          const std::string proc = s == ".to_out.0" ? "to_out" : s.substr(1);
          return mod.substr(5, mod.size() - 5 - s.size()) + ".processor." + proc + "_lora." + dir + ".weight";
        }
      return k.substr(5);
    }
    for (size_t i = 0; i < te_attn.size(); ++i)
      if (ends(mod, te_attn[i])) {
        const std::string base = mod.substr(0, mod.size() - te_attn[i].size());
        const char* proc[] = {"to_q", "to_k", "to_v", "to_out"};
        return "text_encoder.text_model." + base.substr(13) + "." + proc[i] + "_lora." + dir + ".weight";
      }
    return k;
  });
  expect_same_adapters(m, reference, MapSource(processors, "processors"), &meta, &meta, 91);

  // Converted-kohya diffusers files: per-module ".alpha" entries instead of metadata.
  std::map<std::string, Tensor> with_alphas = peft;
  // The alphas the metadata implies (lora_alpha 8 / proj_out 3 for the UNet, 6 for the text encoder).
  for (auto& [k, v] : peft) {
    if (!is_down(k)) continue;
    const std::string mod = module_of(k);
    const bool te = k.rfind("text_encoder.", 0) == 0;
    const double alpha = te ? 6.0 : ends(mod, ".proj_out") ? 3.0 : 8.0;
    with_alphas[mod + ".alpha"] = scalar_tensor(alpha, DType::F16);
  }
  expect_same_adapters(m, reference, MapSource(with_alphas, "alphas"), &meta, nullptr, 91);
}

TEST(Lora, KohyaUnetNamesInBothSpellings) {
  test::LoraModels sd1 = test::load_lora_models("sd1"), sdxl = test::load_lora_models("sdxl");
  using V = std::vector<std::string>;
  EXPECT_EQ(kohya_unet_names(*sd1.unet, "down_blocks.0.attentions.0.proj_in"),
            (V{"lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_input_blocks_1_1_proj_in"}));
  EXPECT_EQ(kohya_unet_names(*sd1.unet, "down_blocks.0.resnets.0.conv1"),
            (V{"lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_input_blocks_1_0_in_layers_2"}));
  EXPECT_EQ(kohya_unet_names(*sd1.unet, "down_blocks.0.downsamplers.0.conv"),
            (V{"lora_unet_down_blocks_0_downsamplers_0_conv", "lora_unet_input_blocks_2_0_op"}));
  // Up block 0 of the tiny SD1 UNet has no attention (upsampler at .1), SDXL's has (.2).
  EXPECT_EQ(kohya_unet_names(*sd1.unet, "up_blocks.0.upsamplers.0.conv"),
            (V{"lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_output_blocks_1_1_conv"}));
  EXPECT_EQ(kohya_unet_names(*sdxl.unet, "up_blocks.0.upsamplers.0.conv"),
            (V{"lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_output_blocks_1_2_conv"}));
  EXPECT_EQ(kohya_unet_names(*sdxl.unet, "mid_block.resnets.1.time_emb_proj"),
            (V{"lora_unet_mid_block_resnets_1_time_emb_proj", "lora_unet_middle_block_2_emb_layers_1"}));
  EXPECT_EQ(kohya_unet_names(*sdxl.unet, "add_embedding.linear_1"),
            (V{"lora_unet_add_embedding_linear_1", "lora_unet_label_emb_0_0"}));

  // The SDXL kohya file renamed to diffusers module paths (as SD1 trainers write them) reaches the
  // same layers with the same adapters.
  const auto kohya = read_all("sdxl_kohya.safetensors");
  std::map<std::string, std::string> to_diffusers;
  for (const AdapterTarget& t : sdxl.unet->adapter_targets()) {
    const V names = kohya_unet_names(*sdxl.unet, t.name);
    if (names.size() == 2) to_diffusers[names[1]] = names[0];
  }
  auto diffusers_named = renamed(kohya, [&](const std::string& k) {
    const size_t dot = k.find('.');
    auto it = to_diffusers.find(k.substr(0, dot));
    return it == to_diffusers.end() ? k : it->second + k.substr(dot);
  });
  EXPECT_NE(diffusers_named.count("lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k.lora_down.weight"),
            0u);
  expect_same_adapters(sdxl, MapSource(kohya, "sgm names"), MapSource(diffusers_named, "diffusers names"), nullptr,
                       nullptr, 119 + 24);
}

// ---------------------------------------------------------------- scales

// One adapter on text_model.encoder.layers.0.self_attn.q_proj (and k_proj) of the tiny CLIP-L.
struct ScaleCase {
  std::shared_ptr<ClipTextModel> te = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l");
  Tensor down = test::random_tensor({4, 32}, DType::F32, 3), up = test::random_tensor({32, 4}, DType::F32, 4);
  double scale_of(const std::map<std::string, Tensor>& t, const std::map<std::string, std::string>* meta = nullptr,
                  const std::string& layer = "q_proj", double mult = 1.0) {
    LoraTargets tg;
    tg.text_encoder = te.get();
    LoraOptions o;
    o.multiplier = 0.5;
    o.text_encoder_multiplier = mult;
    LoadedLora l = load_lora(MapSource(t, "scale case"), tg, o, meta);
    EXPECT_TRUE(l.report().unmatched.empty()) << l.report().str();
    Linear* lin = layer == "q_proj" ? te->text_model->layers[0]->self_attn->q_proj.get()
                                    : te->text_model->layers[0]->self_attn->k_proj.get();
    EXPECT_EQ(lin->loras.size(), 1u);
    const double s = lin->loras.empty() ? -1 : lin->loras[0].scale;
    l.remove();
    return s;
  }
};

TEST(Lora, KohyaScaleIsAlphaOverRank) {
  ScaleCase c;
  const std::string n = "lora_te_text_model_encoder_layers_0_self_attn_q_proj";
  std::map<std::string, Tensor> t = {{n + ".lora_down.weight", c.down}, {n + ".lora_up.weight", c.up}};
  EXPECT_DOUBLE_EQ(c.scale_of(t), 1.0);  // no alpha: alpha = r
  t[n + ".alpha"] = scalar_tensor(0.0);
  EXPECT_DOUBLE_EQ(c.scale_of(t), 1.0);  // alpha 0: alpha = r
  t[n + ".alpha"] = scalar_tensor(2.0, DType::F16);
  EXPECT_DOUBLE_EQ(c.scale_of(t), 0.5);
  EXPECT_DOUBLE_EQ(c.scale_of(t, nullptr, "q_proj", 3.0), 1.5);  // text_encoder_multiplier
  t[n + ".alpha"] = from_vector({2.0}, {1}, DType::BF16);          // a 1-element alpha is accepted too
  EXPECT_DOUBLE_EQ(c.scale_of(t), 0.5);
  t[n + ".alpha"] = from_vector({2.0, 2.0}, {2});
  EXPECT_THROW(c.scale_of(t), Error);
  // The flat transformers >= 5.6 spelling (no text_model_) and lora_te1_ reach the same layer.
  const std::string flat = "lora_te1_encoder_layers_0_self_attn_q_proj";
  EXPECT_DOUBLE_EQ(c.scale_of({{flat + ".lora_down.weight", c.down}, {flat + ".lora_up.weight", c.up},
                               {flat + ".alpha", scalar_tensor(8.0)}}),
                   2.0);
}

TEST(Lora, PeftScaleComesFromMetadataPatternsAndRsLora) {
  ScaleCase c;
  const std::string q = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj";
  const std::string k = "text_encoder.encoder.layers.0.self_attn.k_proj";
  const std::map<std::string, Tensor> t = {{q + ".lora_A.weight", c.down}, {q + ".lora_B.weight", c.up},
                                           {k + ".lora_A.weight", c.down}, {k + ".lora_B.weight", c.up}};
  EXPECT_DOUBLE_EQ(c.scale_of(t), 1.0);  // no metadata: alpha = r
  std::map<std::string, std::string> meta = {{"lora_adapter_metadata", R"({"text_encoder.lora_alpha": 8, "text_encoder.r": 4,
      "unet.lora_alpha": 100})"}};
  EXPECT_DOUBLE_EQ(c.scale_of(t, &meta), 2.0);
  EXPECT_DOUBLE_EQ(c.scale_of(t, &meta, "k_proj"), 2.0);
  meta["lora_adapter_metadata"] =
      R"({"text_encoder.lora_alpha": 8, "text_encoder.alpha_pattern": {"q_proj": 2, "layers.1.self_attn.k_proj": 3}})";
  EXPECT_DOUBLE_EQ(c.scale_of(t, &meta), 0.5);          // the pattern matches "...self_attn.q_proj"
  EXPECT_DOUBLE_EQ(c.scale_of(t, &meta, "k_proj"), 2.0);  // layer 1 only: lora_alpha
  meta["lora_adapter_metadata"] = R"({"text_encoder.lora_alpha": 8, "text_encoder.use_rslora": true})";
  EXPECT_DOUBLE_EQ(c.scale_of(t, &meta), 4.0);  // alpha / sqrt(r)
  meta["lora_adapter_metadata"] = "{not json";
  EXPECT_THROW(c.scale_of(t, &meta), Error);
  // A per-module .alpha wins over the metadata.
  std::map<std::string, Tensor> with_alpha = t;
  with_alpha[q + ".alpha"] = scalar_tensor(1.0);
  meta["lora_adapter_metadata"] = R"({"text_encoder.lora_alpha": 8})";
  EXPECT_DOUBLE_EQ(c.scale_of(with_alpha, &meta), 0.25);
}

// ---------------------------------------------------------------- merged values

TEST(Lora, MergedWeightsMatchAFloat64Reference) {
  test::LoraModels m = test::load_lora_models("sd1");
  const auto file = read_all("sd1_kohya.safetensors");
  struct Case {
    std::string layer, kohya;
  };
  const Case cases[] = {
      {"down_blocks.0.resnets.0.conv1", "lora_unet_down_blocks_0_resnets_0_conv1"},  // 3x3 conv
      {"mid_block.attentions.0.proj_in", "lora_unet_mid_block_attentions_0_proj_in"},  // 1x1 conv
      {"up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
       "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"},  // Linear [16, 32]
  };
  std::map<std::string, Tensor> before;
  for (const AdapterTarget& t : m.unet->adapter_targets()) {
    const Tensor& w = t.linear ? t.linear->weight : t.conv->weight;
    before[t.name] = copy_to(w, w.dtype(), w.device());
  }
  LoadedLora lora = load_lora(test::lora_file("sd1_kohya.safetensors"), m.targets(), opts(0.7, LoraMode::Merge));
  for (const AdapterTarget& t : m.unet->adapter_targets()) {
    for (const Case& c : cases) {
      if (t.name != c.layer) continue;
      const Tensor& w = t.linear ? t.linear->weight : t.conv->weight;
      const auto w0 = before[t.name].to_vector();
      const auto down = file.at(c.kohya + ".lora_down.weight").to_vector();
      const auto up = file.at(c.kohya + ".lora_up.weight").to_vector();
      const double alpha = file.at(c.kohya + ".alpha").item();
      const int64_t out = w.size(0), r = file.at(c.kohya + ".lora_down.weight").size(0);
      const int64_t per_out = w.numel() / out;  // in * kh * kw
      std::vector<double> expected(w0.size());
      for (int64_t o = 0; o < out; ++o)
        for (int64_t j = 0; j < per_out; ++j) {
          double d = 0;
          for (int64_t q = 0; q < r; ++q) d += up[size_t(o * r + q)] * down[size_t(q * per_out + j)];
          expected[size_t(o * per_out + j)] = w0[size_t(o * per_out + j)] + 0.7 * alpha / double(r) * d;
        }
      EXPECT_TRUE(test::all_close(w, expected, 1e-6, 1e-7)) << c.layer;
    }
  }
}

TEST(Lora, MergingKeepsTheWeightDtype) {
  // f16 weights: the merge runs in f32 and rounds once; the result stays f16 and equals the f32 merge
  // rounded to f16 (within one f16 ulp).
  auto te16 = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l", DType::F16);
  auto te32 = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l", DType::F32);
  // The f32 model starts from the same (f16-rounded) values.
  for (auto& named : te32->state_dict()) copy_(named.second, copy_to(named.second, DType::F16, Device::cpu()));
  LoraTargets t16, t32;
  t16.text_encoder = te16.get();
  t32.text_encoder = te32.get();
  load_lora(test::lora_file("sd1_kohya.safetensors"), t16, opts(1.0, LoraMode::Merge));
  load_lora(test::lora_file("sd1_kohya.safetensors"), t32, opts(1.0, LoraMode::Merge));
  const Linear& a = *te16->text_model->layers[1]->mlp->fc1;
  const Linear& b = *te32->text_model->layers[1]->mlp->fc1;
  EXPECT_EQ(a.weight.dtype(), DType::F16);
  EXPECT_TRUE(test::all_close(a.weight, copy_to(b.weight, DType::F16, Device::cpu()), 1e-3, 1e-4));
  // On the fly, the adapters take the weight's dtype.
  auto te16b = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l", DType::F16);
  LoraTargets t16b;
  t16b.text_encoder = te16b.get();
  LoadedLora l = load_lora(test::lora_file("sd1_peft.safetensors"), t16b);
  EXPECT_EQ(te16b->text_model->layers[0]->mlp->fc2->loras.at(0).down.dtype(), DType::F16);
}

// ---------------------------------------------------------------- several LoRAs

TEST(Lora, SeveralLorasStackAndChangeMultipliers) {
  test::LoraModels m = test::load_lora_models("sd1"), ref = test::load_lora_models("sd1");
  LoadedLora one = load_lora(test::lora_file("sd1_kohya.safetensors"), ref.targets(), opts(0.7));
  const test::LoraOutputs expected = test::run_lora_models(ref);

  // The same LoRA twice, 0.5 + 0.2: two adapters per layer, the sum of the deltas.
  LoadedLora a = load_lora(test::lora_file("sd1_kohya.safetensors"), m.targets(), opts(0.5));
  LoadedLora b = load_lora(test::lora_file("sd1_peft.safetensors"), m.targets(), opts(0.2));
  auto count = [&](size_t per_layer) {
    int64_t n = 0;
    for (const AdapterTarget& t : all_targets(m)) {
      if (loras_of(t).empty()) continue;
      EXPECT_EQ(loras_of(t).size(), per_layer) << t.name;
      ++n;
    }
    return n;
  };
  EXPECT_EQ(count(2), 79 + 12);
  test::LoraOutputs got = test::run_lora_models(m);
  EXPECT_LE(test::relative_error(got.unet, expected.unet), 1e-5);
  EXPECT_LE(test::relative_error(got.te, expected.te), 1e-5);

  // Removing one leaves the other; its multiplier can be changed.
  a.remove();
  EXPECT_EQ(count(1), 79 + 12);
  b.set_multiplier(0.7);
  got = test::run_lora_models(m);
  EXPECT_LE(test::relative_error(got.unet, expected.unet), 1e-6);
  EXPECT_LE(test::relative_error(got.te, expected.te), 1e-6);
  b.remove();

  // Merged: 0.2 then set to 0.7, on top of nothing else.
  LoadedLora c = load_lora(test::lora_file("sd1_peft.safetensors"), m.targets(), opts(0.2, LoraMode::Merge));
  c.set_multiplier(0.7, 1.0);
  EXPECT_EQ(c.mode(), LoraMode::Merge);
  got = test::run_lora_models(m);
  EXPECT_LE(test::relative_error(got.unet, expected.unet), 1e-5);
  // The text encoder was at 0.7 in `expected` (multiplier applies to both unless split).
  EXPECT_GT(test::relative_error(got.te, expected.te), 1e-3);
  c.set_multiplier(0.7, 0.7);
  EXPECT_LE(test::relative_error(test::run_lora_models(m).te, expected.te), 1e-5);
}

// ---------------------------------------------------------------- malformed and unsupported files

TEST(Lora, UnsupportedAdapterTypesAndMalformedFilesAreErrors) {
  ScaleCase c;
  LoraTargets tg;
  tg.text_encoder = c.te.get();
  const std::string n = "lora_te_text_model_encoder_layers_0_self_attn_q_proj";
  const std::string p = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj";
  auto load = [&](std::map<std::string, Tensor> t) { return load_lora(MapSource(t, "bad"), tg); };
  auto expect_error = [&](std::map<std::string, Tensor> t, const std::string& needle) {
    try {
      load(t);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const Tensor v = test::random_tensor({32}, DType::F32, 5);
  expect_error({{n + ".lora_down.weight", c.down}, {n + ".lora_up.weight", c.up}, {n + ".dora_scale", v}}, "DoRA");
  expect_error({{n + ".hada_w1_a", c.down}, {n + ".hada_w1_b", c.up}}, "LoHa");
  expect_error({{n + ".lokr_w1", c.down}}, "LoKr");
  expect_error({{n + ".lora_down.weight", c.down}, {n + ".lora_mid.weight", c.up}}, "lora_mid");
  expect_error({{n + ".diff", c.down}}, "full weight difference");
  expect_error({{n + ".something", c.down}}, "is not a LoRA tensor");
  expect_error({{p + ".lora_A.weight", c.down}, {p + ".lora_B.weight", c.up}, {p + ".lora_magnitude_vector", v}},
               "DoRA");
  expect_error({{p + ".lora_A.weight", c.down}, {p + ".lora_B.weight", c.up}, {p + ".lora_B.bias", v}}, "LoRA bias");
  expect_error({{p + ".lora_A.weight", c.down}}, "no up");
  expect_error({{n + ".lora_up.weight", c.up}}, "no down");
  expect_error({{p + ".lora_A.weight", c.down}, {p + ".lora.down.weight", c.down}, {p + ".lora_B.weight", c.up}},
               "are the same tensor");
  // Rank mismatch between down and up.
  expect_error({{p + ".lora_A.weight", c.down}, {p + ".lora_B.weight", test::random_tensor({32, 3}, DType::F32, 6)}},
               "does not fit");
  EXPECT_EQ(c.te->text_model->layers[0]->self_attn->q_proj->loras.size(), 0u);
  // "diffusion_model" is a module name, not a LoRA "diff": not rejected as a full difference, but, as
  // the file's only key, it adapts nothing, which is an error naming it.
  expect_error({{"diffusion_model.x.lora_A.weight", c.down}}, "none of its 1 keys addresses a layer");
  expect_error({{"diffusion_model.x.lora_A.weight", c.down}}, "'diffusion_model.x.lora_A.weight'");
  // A model without weights cannot take a LoRA.
  ClipTextModel empty(c.te->config());
  LoraTargets te;
  te.text_encoder = &empty;
  EXPECT_THROW(load_lora(MapSource({{p + ".lora_A.weight", c.down}, {p + ".lora_B.weight", c.up}}), te), Error);
  EXPECT_THROW(load_lora(test::lora_file("missing.safetensors"), tg), Error);
}

// ---------------------------------------------------------------- hostile files

// Writes `tensors` as a .safetensors file in a fresh temporary folder (removed with the object): the
// hostile fixtures are made here, with the project's own writer, instead of being committed.
struct TempLora {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("sd_lora_hostile_" + std::to_string(::getpid()) + "_" +
                               ::testing::UnitTest::GetInstance()->current_test_info()->name());
  TempLora() {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  ~TempLora() { std::filesystem::remove_all(dir); }
  std::string write(const std::string& name, const std::map<std::string, Tensor>& tensors) {
    const std::string path = (dir / name).string();
    save_safetensors(path, std::vector<std::pair<std::string, Tensor>>(tensors.begin(), tensors.end()));
    return path;
  }
};

// `t` with element `i` replaced by v (a copy; the original is shared by other cases).
Tensor with_value(const Tensor& t, int64_t i, double v) {
  std::vector<double> x = t.to_vector();
  x[size_t(i)] = v;
  return from_vector(x, t.shape(), t.dtype(), Device::cpu());
}

std::string load_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const char* kQ = "lora_te_text_model_encoder_layers_0_self_attn_q_proj";
const char* kK = "lora_te_text_model_encoder_layers_0_self_attn_k_proj";

TEST(Lora, NanOrInfInWeightsOrAlphaIsRefusedNamingFileAndKey) {
  ScaleCase c;
  LoraTargets tg;
  tg.text_encoder = c.te.get();
  const auto w0 = snapshot(*c.te);
  TempLora tmp;
  const std::string q = kQ, k = kK;
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  struct Case {
    std::string file, bad_key;
    std::map<std::string, Tensor> tensors;
    std::string needle;
  };
  // k_proj sorts before q_proj: every bad value sits in the module read last, so the first one had
  // been read (and, before this check, would have been attached) when the bad one is found.
  const std::map<std::string, Tensor> good_k = {{k + ".lora_down.weight", c.down}, {k + ".lora_up.weight", c.up}};
  auto plus = [&](std::map<std::string, Tensor> t) {
    t.insert(good_k.begin(), good_k.end());
    return t;
  };
  const std::vector<Case> cases = {
      {"nan_down.safetensors", q + ".lora_down.weight",
       plus({{q + ".lora_down.weight", with_value(c.down, 5, nan)}, {q + ".lora_up.weight", c.up}}), "NaN or Inf"},
      {"inf_up.safetensors", q + ".lora_up.weight",
       plus({{q + ".lora_down.weight", c.down}, {q + ".lora_up.weight", with_value(c.up, 7, -inf)}}), "NaN or Inf"},
      {"nan_alpha.safetensors", q + ".alpha",
       plus({{q + ".lora_down.weight", c.down}, {q + ".lora_up.weight", c.up}, {q + ".alpha", scalar_tensor(nan)}}),
       "is nan"},
      {"inf_alpha.safetensors", q + ".alpha",
       plus({{q + ".lora_down.weight", c.down}, {q + ".lora_up.weight", c.up}, {q + ".alpha", scalar_tensor(inf)}}),
       "is inf"},
  };
  for (const LoraMode mode : {LoraMode::OnTheFly, LoraMode::Merge}) {
    for (const Case& cs : cases) {
      const std::string path = tmp.write(cs.file, cs.tensors);
      const std::string err = load_error([&] { load_lora(path, tg, opts(1.0, mode)); });
      ASSERT_FALSE(err.empty()) << cs.file << " was accepted";
      for (const std::string& needle : {path, cs.bad_key, cs.needle})
        EXPECT_NE(err.find(needle), std::string::npos) << cs.file << ": " << err;
    }
  }
  EXPECT_NE(load_error([&] { load_lora(tmp.write("x.safetensors", cases[0].tensors), tg); }).find("1 of 128 values"),
            std::string::npos);
  // Nothing was attached or merged.
  EXPECT_EQ(c.te->text_model->layers[0]->self_attn->k_proj->loras.size(), 0u);
  EXPECT_EQ(c.te->text_model->layers[0]->self_attn->q_proj->loras.size(), 0u);
  const auto w1 = snapshot(*c.te);
  for (size_t i = 0; i < w0.size(); ++i) EXPECT_TRUE(bit_equal(w1[i].second, w0[i].second)) << w0[i].first;
}

TEST(Lora, FiniteValuesThatOverflowTheModelDtypeAreNamedAsSuch) {
  // 1e6 is a fine f32 but Inf in f16: the message blames the conversion, not the file.
  auto te16 = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l", DType::F16);
  LoraTargets tg;
  tg.text_encoder = te16.get();
  const std::string q = kQ;
  const Tensor down = with_value(test::random_tensor({4, 32}, DType::F32, 3), 0, 1e6);
  const std::string err = load_error([&] {
    load_lora(MapSource({{q + ".lora_down.weight", down}, {q + ".lora_up.weight", test::random_tensor({32, 4}, DType::F32, 4)}},
                        "big.safetensors"),
              tg);
  });
  EXPECT_NE(err.find("too large for f16"), std::string::npos) << err;
  EXPECT_NE(err.find(q + ".lora_down.weight"), std::string::npos) << err;
  EXPECT_EQ(te16->text_model->layers[0]->self_attn->q_proj->loras.size(), 0u);
  // Merged (computed in f32) the same file loads.
  LoadedLora l = load_lora(MapSource({{q + ".lora_down.weight", down}, {q + ".lora_up.weight", test::random_tensor({32, 4}, DType::F32, 4)}},
                                     "big.safetensors"),
                           tg, opts(1e-9, LoraMode::Merge));
  EXPECT_EQ(l.report().total_applied(), 1);
}

TEST(Lora, IntegerAndBoolTensorsAreRefusedNamingFileKeyAndDtype) {
  ScaleCase c;
  LoraTargets tg;
  tg.text_encoder = c.te.get();
  TempLora tmp;
  const std::string q = kQ;
  for (const DType dt : {DType::Bool, DType::U8, DType::I32, DType::I64}) {
    for (const char* role : {".lora_down.weight", ".lora_up.weight"}) {
      std::map<std::string, Tensor> t = {{q + ".lora_down.weight", c.down}, {q + ".lora_up.weight", c.up}};
      t[q + role] = to(t[q + role], dt);
      const std::string path = tmp.write(std::string("int_") + dtype_name(dt) + ".safetensors", t);
      const std::string err = load_error([&] { load_lora(path, tg); });
      for (const std::string& needle : {path, q + role, std::string("stored as ") + dtype_name(dt), std::string("must be floating")})
        EXPECT_NE(err.find(needle), std::string::npos) << dtype_name(dt) << role << ": " << err;
    }
  }
  // alpha: an integer count is a number (converters write torch.tensor(8)); a bool is not.
  const std::map<std::string, Tensor> base = {{q + ".lora_down.weight", c.down}, {q + ".lora_up.weight", c.up}};
  std::map<std::string, Tensor> t = base;
  t[q + ".alpha"] = to(scalar_tensor(8.0), DType::Bool);
  const std::string err = load_error([&] { load_lora(tmp.write("bool_alpha.safetensors", t), tg); });
  EXPECT_NE(err.find("alpha '" + q + ".alpha' is stored as bool"), std::string::npos) << err;
  t[q + ".alpha"] = to(scalar_tensor(8.0), DType::I64);
  EXPECT_DOUBLE_EQ(c.scale_of(t), 8.0 / 4.0);  // alpha / r, text-encoder multiplier 1
  EXPECT_EQ(c.te->text_model->layers[0]->self_attn->q_proj->loras.size(), 0u);
}

TEST(Lora, FileWithoutTensorsIsRefused) {
  ScaleCase c;
  LoraTargets tg;
  tg.text_encoder = c.te.get();
  TempLora tmp;
  const std::string path = tmp.write("empty.safetensors", {});
  const std::string err = load_error([&] { load_lora(path, tg); });
  EXPECT_NE(err.find(path), std::string::npos) << err;
  EXPECT_NE(err.find("holds no tensors"), std::string::npos) << err;
}

TEST(Lora, FileMatchingNoLayerIsAnErrorShowingKeysAndExpectedNames) {
  test::LoraModels m = test::load_lora_models("sd1");
  // Keys in a layout no layer answers to (here: a UNet LoRA named after another model's modules).
  std::map<std::string, Tensor> t;
  for (int i = 0; i < 6; ++i) {
    const std::string n = "model.blocks." + std::to_string(i) + ".attn.qkv";
    t[n + ".lora_A.weight"] = test::random_tensor({4, 32}, DType::F32, 1);
    t[n + ".lora_B.weight"] = test::random_tensor({32, 4}, DType::F32, 2);
  }
  const std::string err = load_error([&] { load_lora(MapSource(t, "other_model.safetensors"), m.targets()); });
  for (const std::string needle :
       {"'other_model.safetensors'", "none of its 12 keys addresses a layer", "'model.blocks.0.attn.qkv.lora_A.weight'",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight' (kohya)",
        "'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight' (diffusers/PEFT)",
        "'lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight'",
        "'text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight'"})
    EXPECT_NE(err.find(needle), std::string::npos) << needle << "\n" << err;
  EXPECT_EQ(adapters_attached(m), 0u);
  // A text-encoder-only LoRA given only a UNet adapts nothing either.
  LoraTargets unet_only;
  unet_only.unet = m.unet.get();
  ScaleCase c;
  const std::string q = kQ;
  const std::string e2 = load_error([&] {
    load_lora(MapSource({{q + ".lora_down.weight", c.down}, {q + ".lora_up.weight", c.up}}, "te_only"), unet_only);
  });
  EXPECT_NE(e2.find("none of its 2 keys"), std::string::npos) << e2;
  EXPECT_EQ(e2.find("lora_te_", e2.find("expects keys like")), std::string::npos) << "only the UNet's names: " << e2;
  // SDXL naming: two text encoders are lora_te1_ / lora_te2_.
  test::LoraModels xl = test::load_lora_models("sdxl");
  const std::string e3 = load_error([&] { load_lora(MapSource(t, "other_model.safetensors"), xl.targets()); });
  EXPECT_NE(e3.find("'lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight'"), std::string::npos) << e3;
  EXPECT_NE(e3.find("'lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight'"), std::string::npos) << e3;
}

}  // namespace
}  // namespace sd::nn
