// Single-file checkpoints: the diffusers <-> original key mapping against the verified key lists of
// the full-size models (tests/data/checkpoint_keys, checked against diffusers' own converters by
// tests/golden/make_checkpoint_fixtures.py), family detection, folder <-> file round trips with real
// names and tiny tensors, the tensor transforms (q/k/v, 1x1 conv, transpose), EMA selection, the
// tiny models diffusers converted itself, and the derived config.json files.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "models/formats/checkpoint_keys.h"
#include "models/clip/clip_text.h"
#include "models/formats/diffusers_configs.h"
#include "models/formats/single_file.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

namespace fs = std::filesystem;

const std::string kData = SD_TEST_DATA_DIR;

// ---------------------------------------------------------------- key lists

struct Row {
  std::string diffusers;
  Shape shape;
  std::string original;  // "-" when the list has none (refiner)
  KeyTransform transform = KeyTransform::None;
  int part = -1;
  Shape original_shape;
};

Shape parse_shape(const std::string& s) {
  Shape out;
  std::string digits;
  for (char c : s) {
    if (c >= '0' && c <= '9') digits += c;
    else if (!digits.empty()) {
      out.push_back(std::stoll(digits));
      digits.clear();
    }
  }
  return out;
}

std::string read_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw Error("cannot open " + path);
  std::string out;
  char buf[1 << 15];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, size_t(n));
  gzclose(f);
  return out;
}

// One verified list: "name<TAB>[shape]<TAB>original (annotation)".
std::vector<Row> read_list(const std::string& name) {
  std::istringstream in(read_gz(kData + "/checkpoint_keys/" + name + ".tsv.gz"));
  std::vector<Row> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t t1 = line.find('\t'), t2 = line.find('\t', t1 + 1);
    Row r;
    r.diffusers = line.substr(0, t1);
    r.shape = parse_shape(line.substr(t1 + 1, t2 - t1 - 1));
    const std::string orig = line.substr(t2 + 1);
    r.original = orig.substr(0, orig.find(' '));
    r.original_shape = r.shape;
    if (size_t p = orig.find("(rows "); p != std::string::npos) {
      const int a = std::stoi(orig.substr(p + 6));
      const int b = std::stoi(orig.substr(orig.find(':', p) + 1));
      r.transform = KeyTransform::FusedQkv;
      r.part = a / (b - a);
      r.original_shape = parse_shape(orig.substr(orig.find(" of ", p)));
    } else if (size_t q = orig.find("TRANSPOSED"); q != std::string::npos) {
      r.transform = KeyTransform::Transpose;
      r.original_shape = parse_shape(orig.substr(q));
    } else if (size_t c = orig.find("(ldm shape"); c != std::string::npos) {
      r.transform = KeyTransform::ConvToLinear;
      r.original_shape = parse_shape(orig.substr(c));
    }
    rows.push_back(r);
  }
  return rows;
}

struct ListSpec {
  const char* list;
  ModelFamily family;
  const char* component;
  size_t count;  // FORMATS.md §3 tensor counts
};

const ListSpec kLists[] = {
    {"sd15_unet", ModelFamily::SD1, kUnet, 686},
    {"sd21_unet", ModelFamily::SD2, kUnet, 686},
    {"sdxl_unet", ModelFamily::SDXL, kUnet, 1680},
    {"ssd1b_unet", ModelFamily::SSD1B, kUnet, 944},
    {"vae", ModelFamily::SD1, kVae, 248},
    {"vae_legacy_attn_names", ModelFamily::SD1, kVae, 248},
    {"clip_l_sd1_text_encoder", ModelFamily::SD1, kTextEncoder, 196},
    {"clip_l_sdxl_text_encoder", ModelFamily::SDXL, kTextEncoder, 196},
    {"openclip_h_sd2_text_encoder", ModelFamily::SD2, kTextEncoder, 372},
    {"openclip_bigg_sdxl_text_encoder_2", ModelFamily::SDXL, kTextEncoder2, 517},
};

TEST(CheckpointKeys, EveryListedKeyMapsToItsOriginalNameAndBack) {
  size_t total = 0;
  for (const ListSpec& spec : kLists) {
    SCOPED_TRACE(spec.list);
    const std::vector<Row> rows = read_list(spec.list);
    ASSERT_EQ(rows.size(), spec.count);
    const CheckpointLayout layout = CheckpointLayout::preset(spec.family);
    for (const Row& r : rows) {
      const std::optional<OriginalKey> o = to_original_key(layout, spec.component, r.diffusers);
      ASSERT_TRUE(o.has_value()) << r.diffusers;
      EXPECT_EQ(o->key, r.original) << r.diffusers;
      EXPECT_EQ(int(o->transform), int(r.transform)) << r.diffusers;
      EXPECT_EQ(o->part, r.part) << r.diffusers;
      const OriginalKeyInfo back = from_original_key(layout, o->key);
      ASSERT_EQ(int(back.kind), int(KeyKind::Mapped)) << o->key;
      EXPECT_EQ(back.target.component, spec.component) << o->key;
      EXPECT_EQ(int(back.target.transform), int(r.transform)) << o->key;
      const size_t idx = r.transform == KeyTransform::FusedQkv ? size_t(r.part) : 0;
      ASSERT_LT(idx, back.target.keys.size());
      // Legacy VAE names come back in the current spelling.
      EXPECT_EQ(back.target.keys[idx], canonical_diffusers_key(spec.component, r.diffusers)) << o->key;
      ++total;
    }
  }
  EXPECT_EQ(total, 686u * 2 + 1680 + 944 + 248 * 2 + 196 * 2 + 372 + 517);
}

TEST(CheckpointKeys, LayoutsDerivedFromKeysEqualThePresets) {
  for (const ListSpec& spec : kLists) {
    if (std::string(spec.component) != kUnet) continue;
    SCOPED_TRACE(spec.list);
    std::vector<std::string> dnames, onames;
    const std::string prefix = "model.diffusion_model.";
    for (const Row& r : read_list(spec.list)) {
      dnames.push_back(r.diffusers);
      onames.push_back(r.original.substr(prefix.size()));
    }
    const UnetKeyLayout preset = CheckpointLayout::preset(spec.family).unet;
    for (const auto& u : {UnetKeyLayout::from_diffusers_keys(dnames), UnetKeyLayout::from_original_keys(onames)}) {
      ASSERT_TRUE(u.has_value());
      EXPECT_EQ(u->layers_per_block, preset.layers_per_block);
      EXPECT_EQ(u->up_block_has_attention, preset.up_block_has_attention);
    }
  }
}

TEST(CheckpointKeys, RefinerRoundTripsAndPlacesItsUpsamplers) {
  const std::vector<Row> rows = read_list("sdxl_refiner_unet");
  ASSERT_EQ(rows.size(), 1220u);
  const CheckpointLayout layout = CheckpointLayout::preset(ModelFamily::SDXLRefiner);
  std::vector<std::string> names;
  std::set<std::string> originals;
  for (const Row& r : rows) {
    names.push_back(r.diffusers);
    auto o = to_original_key(layout, kUnet, r.diffusers);
    ASSERT_TRUE(o.has_value()) << r.diffusers;
    EXPECT_TRUE(originals.insert(o->key).second) << "two names map to " << o->key;
    const OriginalKeyInfo back = from_original_key(layout, o->key);
    ASSERT_EQ(int(back.kind), int(KeyKind::Mapped));
    EXPECT_EQ(back.target.keys[0], r.diffusers);
  }
  auto u = UnetKeyLayout::from_diffusers_keys(names);
  ASSERT_TRUE(u);
  EXPECT_EQ(u->up_block_has_attention, (std::vector<bool>{false, true, true, false}));
  // up block 0 has no attention -> ".1.conv"; 1 and 2 have -> ".2.conv".
  EXPECT_EQ(to_original_key(layout, kUnet, "up_blocks.0.upsamplers.0.conv.weight")->key,
            "model.diffusion_model.output_blocks.2.1.conv.weight");
  EXPECT_EQ(to_original_key(layout, kUnet, "up_blocks.1.upsamplers.0.conv.bias")->key,
            "model.diffusion_model.output_blocks.5.2.conv.bias");
  EXPECT_EQ(to_original_key(layout, kUnet, "up_blocks.2.upsamplers.0.conv.bias")->key,
            "model.diffusion_model.output_blocks.8.2.conv.bias");
  EXPECT_EQ(to_original_key(layout, kUnet, "add_embedding.linear_2.weight")->key,
            "model.diffusion_model.label_emb.0.2.weight");
}

TEST(CheckpointKeys, OtherLayoutsAndRejects) {
  // layers_per_block 1: input_blocks 1 = level 0 resnet, 2 = its downsampler, 3 = level 1 resnet.
  CheckpointLayout c = CheckpointLayout::preset(ModelFamily::SD1);
  c.unet.layers_per_block = 1;
  c.unet.up_block_has_attention = {false, true};
  EXPECT_EQ(to_original_key(c, kUnet, "down_blocks.0.downsamplers.0.conv.weight")->key,
            "model.diffusion_model.input_blocks.2.0.op.weight");
  EXPECT_EQ(to_original_key(c, kUnet, "down_blocks.1.resnets.0.conv1.weight")->key,
            "model.diffusion_model.input_blocks.3.0.in_layers.2.weight");
  EXPECT_EQ(to_original_key(c, kUnet, "up_blocks.0.upsamplers.0.conv.weight")->key,
            "model.diffusion_model.output_blocks.1.1.conv.weight");
  EXPECT_EQ(from_original_key(c, "model.diffusion_model.output_blocks.3.1.proj_in.weight").target.keys[0],
            "up_blocks.1.attentions.1.proj_in.weight");

  const CheckpointLayout sd1 = CheckpointLayout::preset(ModelFamily::SD1);
  for (const char* bad : {"down_blocks.0.resnets.2.norm1.weight", "down_blocks.0.resnets.0.bogus.weight",
                          "up_blocks.9.upsamplers.0.conv.weight", "mid_block.resnets.0", "conv_in.weight.extra",
                          "down_blocks.x.resnets.0.norm1.weight", "down_blocks.01.resnets.0.norm1.weight", ""})
    EXPECT_FALSE(to_original_key(sd1, kUnet, bad).has_value()) << bad;
  EXPECT_FALSE(to_original_key(sd1, kVae, "encoder.mid_block.attentions.0.to_x.weight").has_value());
  EXPECT_FALSE(to_original_key(sd1, kTextEncoder, "text_model.embeddings.position_ids").has_value());
  EXPECT_FALSE(to_original_key(sd1, kTextEncoder2, "text_model.final_layer_norm.weight").has_value());
  EXPECT_EQ(int(from_original_key(sd1, "model.diffusion_model.input_blocks.1.0.foo.weight").kind), int(KeyKind::Unknown));
  EXPECT_EQ(int(from_original_key(sd1, "something.else").kind), int(KeyKind::Unknown));
  for (const char* ignored : {"alphas_cumprod", "model_ema.decay", "model_ema.diffusion_modelinput_blocks00weight",
                              "cond_stage_model.transformer.text_model.embeddings.position_ids", "denoiser.sigmas"})
    EXPECT_EQ(int(from_original_key(sd1, ignored).kind), int(KeyKind::Ignored)) << ignored;

  // Flat transformers >= 5.6 CLIP names and old SD1 files without "text_model." both map.
  EXPECT_EQ(to_original_key(sd1, kTextEncoder, "encoder.layers.3.mlp.fc1.bias")->key,
            "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.bias");
  EXPECT_EQ(from_original_key(sd1, "cond_stage_model.transformer.final_layer_norm.weight").target.keys[0],
            "text_model.final_layer_norm.weight");
  // SD2 drops OpenCLIP's 24th layer and its projection.
  const CheckpointLayout sd2 = CheckpointLayout::preset(ModelFamily::SD2);
  EXPECT_EQ(int(from_original_key(sd2, "cond_stage_model.model.transformer.resblocks.23.ln_1.weight").kind),
            int(KeyKind::Ignored));
  EXPECT_EQ(int(from_original_key(sd2, "cond_stage_model.model.text_projection").kind), int(KeyKind::Ignored));
  EXPECT_EQ(int(from_original_key(sd2, "cond_stage_model.model.logit_scale").kind), int(KeyKind::Ignored));
  EXPECT_EQ(int(from_original_key(sd2, "cond_stage_model.model.transformer.resblocks.22.ln_1.weight").kind),
            int(KeyKind::Mapped));

  EXPECT_EQ(ema_key("model.diffusion_model.input_blocks.0.0.weight"), "model_ema.diffusion_modelinput_blocks00weight");
  EXPECT_EQ(parse_family("sdxl"), ModelFamily::SDXL);
  EXPECT_THROW(parse_family("sd9"), Error);
  EXPECT_EQ(parse_prediction("v"), Prediction::VPrediction);
  EXPECT_THROW(parse_prediction("x0"), Error);
}

// ---------------------------------------------------------------- detection

KeyShapes original_shapes(std::initializer_list<const char*> lists, const std::string& replace_from = "",
                          const std::string& replace_to = "") {
  KeyShapes out;
  for (const char* l : lists)
    for (const Row& r : read_list(l)) {
      std::string k = r.original;
      if (!replace_from.empty() && k.rfind(replace_from, 0) == 0) k = replace_to + k.substr(replace_from.size());
      out[k] = r.original_shape;
    }
  return out;
}

KeyShapes only_prefix(const KeyShapes& ks, const std::string& prefix, const std::string& strip = "") {
  KeyShapes out;
  for (auto& [k, s] : ks)
    if (k.rfind(prefix, 0) == 0) out[k.substr(strip.size())] = s;
  return out;
}

TEST(CheckpointDetect, FamiliesFromWholeFilesAndFromUNetsAlone) {
  const KeyShapes sd1 = original_shapes({"sd15_unet", "vae", "clip_l_sd1_text_encoder"});
  const KeyShapes sd2 = original_shapes({"sd21_unet", "vae", "openclip_h_sd2_text_encoder"});
  const KeyShapes sdxl = original_shapes({"sdxl_unet", "vae", "clip_l_sdxl_text_encoder", "openclip_bigg_sdxl_text_encoder_2"});
  const KeyShapes ssd = original_shapes({"ssd1b_unet", "vae", "clip_l_sdxl_text_encoder", "openclip_bigg_sdxl_text_encoder_2"});
  KeyShapes refiner = original_shapes({"openclip_bigg_sdxl_text_encoder_2"}, "conditioner.embedders.1.",
                                      "conditioner.embedders.0.");
  const CheckpointLayout rl = CheckpointLayout::preset(ModelFamily::SDXLRefiner);
  for (const Row& r : read_list("sdxl_refiner_unet")) refiner[to_original_key(rl, kUnet, r.diffusers)->key] = r.shape;

  struct Case {
    const char* name;
    const KeyShapes* keys;
    ModelFamily family;
  } cases[] = {{"sd1", &sd1, ModelFamily::SD1},      {"sd2", &sd2, ModelFamily::SD2},
               {"sdxl", &sdxl, ModelFamily::SDXL},   {"ssd1b", &ssd, ModelFamily::SSD1B},
               {"refiner", &refiner, ModelFamily::SDXLRefiner}};
  const std::string unet = "model.diffusion_model.";
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const DetectedCheckpoint d = detect_checkpoint(*c.keys);
    EXPECT_EQ(d.family, c.family);
    EXPECT_TRUE(d.has_unet);
    EXPECT_EQ(d.unet_in_channels, 4);
    EXPECT_FALSE(d.inpainting);
    EXPECT_FALSE(d.has_ema);
    EXPECT_EQ(int(d.prediction), int(Prediction::Unknown));
    // The UNet alone tells the family too (label_emb, number of levels, proj_in rank, mid block).
    EXPECT_EQ(detect_checkpoint(only_prefix(*c.keys, unet)).family, c.family);
  }
  EXPECT_TRUE(detect_checkpoint(sd1).has_vae);
  EXPECT_EQ(detect_checkpoint(sd1).vae_prefix, "first_stage_model.");

  KeyShapes inpaint = sd2;
  inpaint[unet + "input_blocks.0.0.weight"] = {320, 9, 3, 3};
  const DetectedCheckpoint di = detect_checkpoint(inpaint);
  EXPECT_EQ(di.family, ModelFamily::SD2);
  EXPECT_TRUE(di.inpainting);
  EXPECT_EQ(di.unet_in_channels, 9);

  KeyShapes ema = sd1;
  ema["model_ema.diffusion_modelinput_blocks00weight"] = {320, 4, 3, 3};
  EXPECT_TRUE(detect_checkpoint(ema).has_ema);

  // Standalone VAE files use the bare names (vae-ft-mse..., sdxl_vae.safetensors), or "vae.".
  const KeyShapes vae = only_prefix(sd1, "first_stage_model.", "first_stage_model.");
  const DetectedCheckpoint dv = detect_checkpoint(vae);
  EXPECT_EQ(dv.family, ModelFamily::Unknown);
  EXPECT_TRUE(dv.has_vae);
  EXPECT_EQ(dv.vae_prefix, "");
  KeyShapes vae_dot;
  for (auto& [k, s] : vae) vae_dot["vae." + k] = s;
  EXPECT_EQ(detect_checkpoint(vae_dot).vae_prefix, "vae.");
  EXPECT_EQ(detect_checkpoint({}).family, ModelFamily::Unknown);
}

TEST(CheckpointDetect, DiffusersFamilies) {
  auto comp = [](const char* list) {
    KeyShapes ks;
    for (const Row& r : read_list(list)) ks[r.diffusers] = r.shape;
    return ks;
  };
  EXPECT_EQ(detect_diffusers_family({{kUnet, comp("sd15_unet")}, {kTextEncoder, comp("clip_l_sd1_text_encoder")}}),
            ModelFamily::SD1);
  EXPECT_EQ(detect_diffusers_family({{kUnet, comp("sd21_unet")}, {kTextEncoder, comp("openclip_h_sd2_text_encoder")}}),
            ModelFamily::SD2);
  EXPECT_EQ(detect_diffusers_family({{kTextEncoder, comp("clip_l_sdxl_text_encoder")},
                                     {kTextEncoder2, comp("openclip_bigg_sdxl_text_encoder_2")},
                                     {kUnet, comp("sdxl_unet")}}),
            ModelFamily::SDXL);
  EXPECT_EQ(detect_diffusers_family({{kTextEncoder, comp("clip_l_sdxl_text_encoder")},
                                     {kTextEncoder2, comp("openclip_bigg_sdxl_text_encoder_2")},
                                     {kUnet, comp("ssd1b_unet")}}),
            ModelFamily::SSD1B);
  EXPECT_EQ(detect_diffusers_family({{kTextEncoder2, comp("openclip_bigg_sdxl_text_encoder_2")}}),
            ModelFamily::SDXLRefiner);
  EXPECT_EQ(detect_diffusers_family({{kUnet, comp("sdxl_refiner_unet")}}), ModelFamily::SDXLRefiner);
  EXPECT_EQ(detect_diffusers_family({{kUnet, comp("sd21_unet")}}), ModelFamily::SD2);
  EXPECT_EQ(detect_diffusers_family({{kVae, comp("vae")}}), ModelFamily::Unknown);
}

// ---------------------------------------------------------------- tensors

// Same dtype, shape and bytes.
::testing::AssertionResult bit_equal(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape())
    return ::testing::AssertionFailure() << a.str() << " vs " << b.str();
  const Tensor ca = contiguous_raw(a), cb = contiguous_raw(b);
  if (std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) != 0)
    return ::testing::AssertionFailure() << "values differ: " << a.str();
  return ::testing::AssertionSuccess();
}

void expect_same_components(const ComponentTensors& actual, const ComponentTensors& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (auto& [comp, tensors] : expected) {
    ASSERT_TRUE(actual.count(comp)) << comp;
    const TensorMap& got = actual.at(comp);
    // Compare by canonical name (legacy VAE / flat CLIP names are written back canonically).
    TensorMap want;
    for (auto& [k, t] : tensors)
      if (k.find("position_ids") == std::string::npos) want[canonical_diffusers_key(comp, k)] = t;
    ASSERT_EQ(got.size(), want.size()) << comp;
    for (auto& [k, t] : want) {
      auto it = got.find(k);
      ASSERT_NE(it, got.end()) << comp << "/" << k;
      EXPECT_TRUE(bit_equal(it->second, t)) << comp << "/" << k;
    }
  }
}

// Random tensors with the listed names and tiny shapes of the same rank (first dim 3, others 2; the
// unit dims of 1x1 kernels stay 1), so a swapped, transposed or reshaped tensor is noticed.
TensorMap synthetic(const char* list, DType dtype, uint64_t seed, bool flat_clip = false) {
  TensorMap out;
  for (const Row& r : read_list(list)) {
    Shape s;
    for (size_t i = 0; i < r.shape.size(); ++i) s.push_back(r.shape[i] == 1 ? 1 : i == 0 ? 3 : 2);
    if (r.diffusers == "text_projection.weight") s = {5, 3};
    std::string name = r.diffusers;
    if (flat_clip && name.rfind("text_model.", 0) == 0) name = name.substr(11);
    out[name] = copy_to(test::random_tensor(s, DType::F64, seed++, -2, 2), dtype, Device::cpu());
  }
  return out;
}

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::path(::testing::TempDir()) / ("sd_ckpt_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

void write_folder(const fs::path& dir, const ComponentTensors& comps) {
  for (auto& [comp, tensors] : comps) {
    fs::create_directories(dir / comp);
    const bool tf = comp == kTextEncoder || comp == kTextEncoder2;
    save_safetensors((dir / comp / (tf ? "model.safetensors" : "diffusion_pytorch_model.safetensors")).string(),
                     {tensors.begin(), tensors.end()});
  }
}

struct RoundTrip {
  const char* name;
  ModelFamily family;
  std::vector<std::pair<const char*, const char*>> lists;  // component, key list
  bool flat_clip;
};

TEST(CheckpointRoundTrip, FolderToFileToFolderIsBitIdenticalForEveryFamily) {
  const RoundTrip cases[] = {
      {"sd1", ModelFamily::SD1, {{kUnet, "sd15_unet"}, {kVae, "vae"}, {kTextEncoder, "clip_l_sd1_text_encoder"}}, true},
      {"sd2", ModelFamily::SD2,
       {{kUnet, "sd21_unet"}, {kVae, "vae_legacy_attn_names"}, {kTextEncoder, "openclip_h_sd2_text_encoder"}}, false},
      {"sdxl", ModelFamily::SDXL,
       {{kUnet, "sdxl_unet"}, {kVae, "vae"}, {kTextEncoder, "clip_l_sdxl_text_encoder"},
        {kTextEncoder2, "openclip_bigg_sdxl_text_encoder_2"}}, false},
      {"ssd1b", ModelFamily::SSD1B,
       {{kUnet, "ssd1b_unet"}, {kTextEncoder, "clip_l_sdxl_text_encoder"},
        {kTextEncoder2, "openclip_bigg_sdxl_text_encoder_2"}}, true},
      {"refiner", ModelFamily::SDXLRefiner,
       {{kUnet, "sdxl_refiner_unet"}, {kTextEncoder2, "openclip_bigg_sdxl_text_encoder_2"}}, false},
  };
  const DType dtypes[] = {DType::F32, DType::F16, DType::BF16, DType::F32};
  for (const RoundTrip& c : cases) {
    SCOPED_TRACE(c.name);
    ComponentTensors comps;
    std::set<std::string> expected_originals;
    uint64_t seed = 100;
    for (size_t i = 0; i < c.lists.size(); ++i) {
      auto [comp, list] = c.lists[i];
      comps[comp] = synthetic(list, dtypes[i % 4], seed, c.flat_clip);
      seed += 10000;
      for (const Row& r : read_list(list)) expected_originals.insert(r.original);
    }
    const fs::path dir = temp_dir(std::string(c.name) + "_folder");
    write_folder(dir, comps);
    const std::string file = (dir.parent_path() / (std::string("sd_ckpt_") + c.name + ".safetensors")).string();
    diffusers_folder_to_single_file(dir.string(), file);

    // The file holds exactly the original names of the lists (refiner: no list of them).
    const SafetensorsFile raw = SafetensorsFile::open(file);
    if (c.family != ModelFamily::SDXLRefiner) {
      const std::vector<std::string> keys = raw.keys();
      EXPECT_EQ(std::set<std::string>(keys.begin(), keys.end()), expected_originals);
    }
    EXPECT_EQ(raw.metadata().at("format"), "pt");

    const SingleFileCheckpoint ck = load_single_file(file);
    EXPECT_EQ(ck.family, c.family);
    EXPECT_TRUE(ck.unknown.empty()) << ck.unknown.front();
    EXPECT_TRUE(ck.ignored.empty()) << ck.ignored.front();
    expect_same_components(ck.stored_tensors(), comps);

    const fs::path back = temp_dir(std::string(c.name) + "_back");
    FileToFolderOptions opt;
    opt.prediction = Prediction::Epsilon;
    single_file_to_diffusers_folder(file, back.string(), opt);
    const DiffusersFolder again = read_diffusers_folder(back.string());
    EXPECT_EQ(again.family, c.family);
    expect_same_components(again.components, comps);
    EXPECT_TRUE(fs::exists(back / "model_index.json"));
    EXPECT_TRUE(fs::exists(back / "scheduler" / "scheduler_config.json"));
    fs::remove_all(dir);
    fs::remove_all(back);
    fs::remove(file);
  }
}

// ---------------------------------------------------------------- transforms on real-shaped examples

TEST(CheckpointTransforms, FusedQkvTransposedProjectionAndConvAttention) {
  // One OpenCLIP layer with D = 4 (q/k/v rows 0-3, 4-7, 8-11), a projection [D, P] = [4, 6], and a VAE
  // mid attention with C = 4 stored as 1x1 convs.
  const int64_t D = 4, P = 6, C = 4;
  auto seq = [](Shape s, double start) {
    std::vector<double> v(size_t(shape_numel(s)));
    for (size_t i = 0; i < v.size(); ++i) v[i] = start + double(i);
    return from_vector(v, s, DType::F32);
  };
  std::vector<std::pair<std::string, Tensor>> orig = {
      {"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", seq({3 * D, D}, 0)},
      {"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_bias", seq({3 * D}, 1000)},
      {"conditioner.embedders.1.model.text_projection", seq({D, P}, 2000)},
      {"first_stage_model.encoder.mid.attn_1.q.weight", seq({C, C, 1, 1}, 3000)},
      {"first_stage_model.decoder.mid.attn_1.proj_out.weight", seq({C, C, 1, 1}, 4000)},
      {"first_stage_model.decoder.mid.attn_1.proj_out.bias", seq({C}, 5000)},
  };
  const fs::path dir = temp_dir("transforms");
  const std::string file = (dir / "orig.safetensors").string();
  save_safetensors(file, orig);
  SingleFileLoadOptions lo;
  lo.family = ModelFamily::SDXL;
  const SingleFileCheckpoint ck = load_single_file(file, lo);
  const auto& te2 = *ck.components.at(kTextEncoder2);
  const char* names[] = {"q_proj", "k_proj", "v_proj"};
  for (int p = 0; p < 3; ++p) {
    const std::string w = std::string("text_model.encoder.layers.0.self_attn.") + names[p] + ".weight";
    const std::string b = std::string("text_model.encoder.layers.0.self_attn.") + names[p] + ".bias";
    EXPECT_EQ(te2.shape(w), (Shape{D, D}));
    std::vector<double> ew, eb;
    for (int64_t r = 0; r < D; ++r) {
      for (int64_t c = 0; c < D; ++c) ew.push_back(double((p * D + r) * D + c));
      eb.push_back(1000.0 + double(p * D + r));
    }
    EXPECT_TRUE(test::all_close(te2.get(w, DType::F32, Device::cpu()), from_vector(ew, {D, D}), 0, 0)) << w;
    EXPECT_TRUE(test::all_close(te2.get(b, DType::F32, Device::cpu()), from_vector(eb, {D}), 0, 0)) << b;
    // Views of the stored in_proj rows, not copies.
    const char* q0 = static_cast<const char*>(te2.get_stored("text_model.encoder.layers.0.self_attn.q_proj.weight").data_ptr());
    EXPECT_EQ(static_cast<const char*>(te2.get_stored(w).data_ptr()) - q0, int64_t(p) * D * D * 4);
  }
  // text_projection.weight[p][d] = text_projection[d][p]
  std::vector<double> proj;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t d = 0; d < D; ++d) proj.push_back(2000.0 + double(d * P + p));
  EXPECT_EQ(te2.shape("text_projection.weight"), (Shape{P, D}));
  EXPECT_TRUE(test::all_close(te2.get("text_projection.weight", DType::F64, Device::cpu()), from_vector(proj, {P, D}), 0, 0));
  const auto& vae = *ck.components.at(kVae);
  EXPECT_EQ(vae.shape("encoder.mid_block.attentions.0.to_q.weight"), (Shape{C, C}));
  EXPECT_TRUE(test::all_close(vae.get("encoder.mid_block.attentions.0.to_q.weight", DType::F32, Device::cpu()),
                              seq({C, C}, 3000), 0, 0));
  EXPECT_TRUE(test::all_close(vae.get("decoder.mid_block.attentions.0.to_out.0.weight", DType::F32, Device::cpu()),
                              seq({C, C}, 4000), 0, 0));
  EXPECT_EQ(vae.shape("decoder.mid_block.attentions.0.to_out.0.bias"), (Shape{C}));

  // Back to original names: the same bytes, also from non-contiguous diffusers tensors.
  ComponentTensors comps = ck.stored_tensors();
  for (auto& [comp, tensors] : comps)
    for (auto& [k, t] : tensors) t = test::non_contiguous(copy_to(t, DType::F32, Device::cpu()));
  const CheckpointLayout layout = CheckpointLayout::preset(ModelFamily::SDXL);
  std::map<std::string, Tensor> out;
  for (auto& [k, t] : to_original_tensors(comps, layout)) out[k] = t;
  ASSERT_EQ(out.size(), orig.size());
  for (auto& [k, t] : orig) {
    ASSERT_TRUE(out.count(k)) << k;
    EXPECT_TRUE(bit_equal(out[k], t)) << k;
  }
  fs::remove_all(dir);
}

TEST(CheckpointTransforms, BadShapesAndIncompleteInputsAreErrors) {
  const CheckpointLayout sdxl = CheckpointLayout::preset(ModelFamily::SDXL);
  // q and k without v.
  ComponentTensors partial = {{kTextEncoder2,
                               {{"text_model.encoder.layers.0.self_attn.q_proj.weight", zeros({2, 2})},
                                {"text_model.encoder.layers.0.self_attn.k_proj.weight", zeros({2, 2})}}}};
  EXPECT_THROW(to_original_tensors(partial, sdxl), Error);
  // q/k/v of different shapes.
  ComponentTensors mismatched = partial;
  mismatched[kTextEncoder2]["text_model.encoder.layers.0.self_attn.v_proj.weight"] = zeros({3, 2});
  EXPECT_THROW(to_original_tensors(mismatched, sdxl), Error);
  // A name no rule knows is not silently dropped; position_ids is.
  ComponentTensors unknown = {{kUnet, {{"conv_in.weight", zeros({2, 4, 3, 3})}, {"mystery.weight", zeros({1})}}}};
  try {
    to_original_tensors(unknown, sdxl);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unet/mystery.weight"), std::string::npos) << e.what();
  }
  ComponentTensors buffers = {{kTextEncoder, {{"text_model.embeddings.position_ids", zeros({1, 77}, DType::I64)}}}};
  EXPECT_TRUE(to_original_tensors(buffers, sdxl).empty());
  // Legacy and current VAE spellings of the same parameter collide.
  ComponentTensors both = {{kVae, {{"encoder.mid_block.attentions.0.to_q.bias", zeros({2})},
                                   {"encoder.mid_block.attentions.0.query.bias", zeros({2})}}}};
  EXPECT_THROW(to_original_tensors(both, sdxl), Error);

  // A 3x3 "attention" conv and an in_proj whose rows are not 3*D are refused when loading.
  const fs::path dir = temp_dir("bad_shapes");
  const std::string f1 = (dir / "a.safetensors").string(), f2 = (dir / "b.safetensors").string();
  save_safetensors(f1, {{"first_stage_model.encoder.mid.attn_1.q.weight", zeros({4, 4, 3, 3})}});
  EXPECT_THROW(load_single_file(f1), Error);
  save_safetensors(f2, {{"cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", zeros({4, 2})}});
  EXPECT_THROW(load_single_file(f2), Error);
  // strict: an unknown key is an error; otherwise it is listed.
  const std::string f3 = (dir / "c.safetensors").string();
  save_safetensors(f3, {{"model.diffusion_model.conv_in.weight", zeros({2})}, {"first_stage_model.encoder.conv_in.weight", zeros({2})}});
  const SingleFileCheckpoint ck = load_single_file(f3);
  EXPECT_EQ(ck.unknown, std::vector<std::string>{"model.diffusion_model.conv_in.weight"});
  SingleFileLoadOptions strict;
  strict.strict = true;
  EXPECT_THROW(load_single_file(f3, strict), Error);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- EMA

TEST(CheckpointEma, EitherWeightSetByChoice) {
  // An SD1 UNet with ldm's model_ema copies (dots removed), plus model_ema.decay / num_updates.
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, Tensor> normal, ema;
  uint64_t seed = 7;
  for (const Row& r : read_list("sd15_unet")) {
    if (seed > 60) break;  // a slice of the UNet is enough
    const std::string dkey = r.diffusers;
    Tensor a = test::random_tensor({3, 2}, DType::F32, seed++), b = test::random_tensor({3, 2}, DType::F32, seed++);
    tensors.emplace_back(r.original, a);
    tensors.emplace_back(ema_key(r.original), b);
    normal[dkey] = a;
    ema[dkey] = b;
  }
  tensors.emplace_back("model_ema.decay", scalar_tensor(0.9999));
  tensors.emplace_back("model_ema.num_updates", scalar_tensor(1234, DType::I32));
  const fs::path dir = temp_dir("ema");
  const std::string file = (dir / "ema.safetensors").string();
  save_safetensors(file, tensors);

  for (bool use : {false, true}) {
    SingleFileLoadOptions lo;
    lo.use_ema = use;
    const SingleFileCheckpoint ck = load_single_file(file, lo);
    EXPECT_TRUE(ck.detected.has_ema);
    EXPECT_EQ(ck.used_ema, use);
    const auto& unet = *ck.components.at(kUnet);
    ASSERT_EQ(unet.keys().size(), normal.size());
    for (auto& [k, t] : use ? ema : normal) EXPECT_TRUE(bit_equal(unet.get_stored(k), t)) << k;
    // The unused set and the EMA bookkeeping are listed as ignored.
    EXPECT_EQ(ck.ignored.size(), normal.size() + 2);
  }
  // No EMA in the file, or an incomplete EMA copy: errors naming the problem.
  const std::string plain = (dir / "plain.safetensors").string();
  save_safetensors(plain, {tensors[0], tensors[2]});
  SingleFileLoadOptions lo;
  lo.use_ema = true;
  EXPECT_THROW(load_single_file(plain, lo), Error);
  std::vector<std::pair<std::string, Tensor>> partial(tensors.begin(), tensors.end() - 3);
  const std::string part = (dir / "partial.safetensors").string();
  save_safetensors(part, partial);
  try {
    load_single_file(part, lo);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model_ema."), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- diffusers' own conversions

ComponentTensors folder_tensors(const std::string& dir) { return read_diffusers_folder(dir).components; }

TEST(CheckpointDiffusersAgreement, TinySd1FileLoadsAsDiffusersConvertsIt) {
  // sd1_tiny.safetensors (original names) and sd1_tiny_diffusers/ (what diffusers' single-file
  // converters make of it; flat transformers-5 CLIP names) hold the same tiny random models.
  const SingleFileCheckpoint ck = load_single_file(kData + "/single_file/sd1_tiny.safetensors");
  EXPECT_EQ(ck.family, ModelFamily::SD1);
  EXPECT_TRUE(ck.unknown.empty());
  EXPECT_TRUE(ck.ignored.empty());
  const ComponentTensors expected = folder_tensors(kData + "/single_file/sd1_tiny_diffusers");
  EXPECT_EQ(read_diffusers_folder(kData + "/single_file/sd1_tiny_diffusers").family, ModelFamily::SD1);
  expect_same_components(ck.stored_tensors(), expected);
  // Module::load reads through the source: converted on access.
  const auto& vae = *ck.components.at(kVae);
  const std::string k = "decoder.mid_block.attentions.0.to_k.weight";
  EXPECT_TRUE(test::all_close(vae.get(k, DType::F32, Device::cpu()),
                              copy_to(expected.at(kVae).at(k), DType::F32, Device::cpu()), 0, 0));

  // And the other way: the folder converts to the very same file contents.
  const fs::path dir = temp_dir("agree_sd1");
  const std::string out = (dir / "sd1.safetensors").string();
  diffusers_folder_to_single_file(kData + "/single_file/sd1_tiny_diffusers", out);
  const SafetensorsFile a = SafetensorsFile::open(out), b = SafetensorsFile::open(kData + "/single_file/sd1_tiny.safetensors");
  ASSERT_EQ(a.keys(), b.keys());
  for (const std::string& key : a.keys()) EXPECT_TRUE(bit_equal(a.get(key), b.get(key))) << key;
  fs::remove_all(dir);
}

TEST(CheckpointDiffusersAgreement, TinySdxlTextEncodersMatchOpenClipConversion) {
  const SingleFileCheckpoint ck = load_single_file(kData + "/single_file/sdxl_tiny.safetensors");
  EXPECT_EQ(ck.family, ModelFamily::SDXL);
  EXPECT_TRUE(ck.unknown.empty());
  expect_same_components(ck.stored_tensors(), folder_tensors(kData + "/single_file/sdxl_tiny_diffusers"));
  const fs::path dir = temp_dir("agree_sdxl");
  const std::string out = (dir / "sdxl.safetensors").string();
  FolderToFileOptions fo;
  fo.family = ModelFamily::SDXL;
  diffusers_folder_to_single_file(kData + "/single_file/sdxl_tiny_diffusers", out, fo);
  const SafetensorsFile a = SafetensorsFile::open(out), b = SafetensorsFile::open(kData + "/single_file/sdxl_tiny.safetensors");
  ASSERT_EQ(a.keys(), b.keys());
  for (const std::string& key : a.keys()) EXPECT_TRUE(bit_equal(a.get(key), b.get(key))) << key;
  fs::remove_all(dir);
}

TEST(CheckpointDiffusersAgreement, TinySd1CkptMatchesTheSafetensorsFile) {
  SingleFileCheckpoint ck = load_single_file(kData + "/single_file/sd1_tiny.ckpt");
  EXPECT_EQ(ck.family, ModelFamily::SD1);
  ASSERT_TRUE(ck.global_step.has_value());
  EXPECT_EQ(*ck.global_step, 7);
  EXPECT_TRUE(ck.unknown.empty());
  EXPECT_EQ(ck.ignored, (std::vector<std::string>{"alphas_cumprod", "model_ema.decay"}));
  const ComponentTensors expected = folder_tensors(kData + "/single_file/sd1_tiny_diffusers");
  size_t compared = 0;
  for (auto& [comp, tensors] : ck.stored_tensors()) {
    for (auto& [k, t] : tensors) {
      const TensorMap& want = expected.at(comp);
      auto it = want.find(k);
      if (it == want.end() && comp == kTextEncoder) it = want.find(k.substr(11));  // flat CLIP names
      ASSERT_NE(it, want.end()) << comp << "/" << k;
      EXPECT_TRUE(bit_equal(t, it->second)) << comp << "/" << k;
      ++compared;
    }
  }
  EXPECT_EQ(ck.components.at(kVae)->keys().size(), 248u);
  EXPECT_EQ(ck.components.at(kTextEncoder)->keys().size(), 2u * 16 + 4);
  EXPECT_GT(compared, 300u);
}

TEST(CheckpointDiffusersAgreement, TextEncodersLoadThroughTheSingleFileSources) {
  // Module::load reading a component source gives the same model (same outputs) as the folder.
  struct Case {
    const char* file;
    const char* folder;
    const char* component;
  } cases[] = {{"sd1_tiny.safetensors", "sd1_tiny_diffusers", kTextEncoder},
               {"sd1_tiny.ckpt", "sd1_tiny_diffusers", kTextEncoder},
               {"sdxl_tiny.safetensors", "sdxl_tiny_diffusers", kTextEncoder2}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    const std::string folder = kData + "/single_file/" + c.folder + "/" + c.component;
    auto reference = ClipTextModel::from_pretrained(folder);
    ClipTextModel model(ClipTextConfig::from_file(folder + "/config.json"));
    const SingleFileCheckpoint ck = load_single_file(kData + "/single_file/" + c.file);
    const LoadReport r = model.load_transformers(*ck.components.at(c.component));
    EXPECT_TRUE(r.missing.empty());
    EXPECT_TRUE(r.unexpected.empty());
    const Tensor ids = from_vector({14, 3, 7, 1, 15, 15, 15, 15, 14, 9, 0, 12, 5, 2, 15, 15}, {2, 8}, DType::I64);
    ClipTextRequest req;
    req.pooled = true;
    req.text_embeds = std::string(c.component) == kTextEncoder2;
    const ClipTextOutput a = model.forward(ids, req), b = reference->forward(ids, req);
    EXPECT_TRUE(bit_equal(a.last_hidden_state, b.last_hidden_state));
    EXPECT_TRUE(bit_equal(a.pooled, b.pooled));
    if (req.text_embeds) EXPECT_TRUE(bit_equal(a.text_embeds, b.text_embeds));
  }
}

TEST(CheckpointDiffusersAgreement, VPredictionTravelsAsComfyUiMarker) {
  // A folder whose scheduler predicts v -> a file with the "v_pred" marker -> detected -> a folder
  // whose scheduler predicts v again, with no option given anywhere.
  const fs::path dir = temp_dir("vpred");
  fs::copy(kData + "/single_file/sd1_tiny_diffusers", dir / "in", fs::copy_options::recursive);
  fs::create_directories(dir / "in" / "scheduler");
  std::ofstream(dir / "in" / "scheduler" / "scheduler_config.json") << R"({"prediction_type": "v_prediction"})";
  const std::string file = (dir / "v.safetensors").string();
  diffusers_folder_to_single_file((dir / "in").string(), file);
  EXPECT_TRUE(SafetensorsFile::open(file).contains("v_pred"));
  const SingleFileCheckpoint ck = load_single_file(file);
  EXPECT_EQ(int(ck.detected.prediction), int(Prediction::VPrediction));
  EXPECT_EQ(ck.ignored, std::vector<std::string>{"v_pred"});
  single_file_to_diffusers_folder(file, (dir / "out").string());
  std::ifstream in(dir / "out" / "scheduler" / "scheduler_config.json");
  EXPECT_EQ(nlohmann::json::parse(in).at("prediction_type"), "v_prediction");
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- configs

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

TEST(CheckpointConfigs, DerivedValuesMatchWhatDiffusersWrote) {
  const fs::path out = temp_dir("configs");
  FileToFolderOptions o;
  o.tokenizer_from = kData + "/clip";
  single_file_to_diffusers_folder(kData + "/single_file/sd1_tiny.safetensors", out.string(), o);
  const std::string ref = kData + "/single_file/sd1_tiny_diffusers/";
  const nlohmann::json unet = read_json(out / "unet/config.json"), unet_ref = read_json(ref + "unet/config.json");
  for (const char* k : {"in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
                        "up_block_types", "cross_attention_dim", "use_linear_projection", "mid_block_type",
                        "transformer_layers_per_block", "addition_embed_type", "_class_name"})
    EXPECT_EQ(unet.at(k), unet_ref.at(k)) << k;
  const nlohmann::json vae = read_json(out / "vae/config.json"), vae_ref = read_json(ref + "vae/config.json");
  for (const char* k : {"in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
                        "down_block_types", "up_block_types", "mid_block_add_attention", "_class_name"})
    EXPECT_EQ(vae.at(k), vae_ref.at(k)) << k;
  EXPECT_EQ(vae.at("scaling_factor"), 0.18215);
  const nlohmann::json te = read_json(out / "text_encoder/config.json"), te_ref = read_json(ref + "text_encoder/config.json");
  for (const char* k : {"hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "max_position_embeddings",
                        "hidden_act"})
    EXPECT_EQ(te.at(k), te_ref.at(k)) << k;
  const nlohmann::json index = read_json(out / "model_index.json");
  EXPECT_EQ(index.at("_class_name"), "StableDiffusionPipeline");
  EXPECT_EQ(index.at("unet"), nlohmann::json::array({"diffusers", "UNet2DConditionModel"}));
  EXPECT_EQ(index.at("tokenizer"), nlohmann::json::array({"transformers", "CLIPTokenizer"}));
  EXPECT_EQ(index.at("scheduler"), nlohmann::json::array({"diffusers", "PNDMScheduler"}));
  EXPECT_EQ(index.at("safety_checker"), nlohmann::json::array({nullptr, nullptr}));
  EXPECT_EQ(read_json(out / "scheduler/scheduler_config.json").at("prediction_type"), "epsilon");
  EXPECT_TRUE(fs::exists(out / "tokenizer/vocab.json"));
  EXPECT_EQ(read_json(out / "tokenizer/special_tokens_map.json").at("pad_token"), "<|endoftext|>");
  fs::remove_all(out);
}

KeyShapes diffusers_shapes(const char* list) {
  KeyShapes ks;
  for (const Row& r : read_list(list)) ks[canonical_diffusers_key(kUnet, r.diffusers)] = r.shape;
  return ks;
}

TEST(CheckpointConfigs, FullSizeConfigsFromTheKeyListsAreTheHubOnes) {
  using nlohmann::json;
  const json sd15 = json::parse(unet_config_json(ModelFamily::SD1, Prediction::Unknown, diffusers_shapes("sd15_unet")));
  EXPECT_EQ(sd15.at("block_out_channels"), json::array({320, 640, 1280, 1280}));
  EXPECT_EQ(sd15.at("attention_head_dim"), 8);
  EXPECT_EQ(sd15.at("cross_attention_dim"), 768);
  EXPECT_EQ(sd15.at("use_linear_projection"), false);
  EXPECT_EQ(sd15.at("transformer_layers_per_block"), 1);
  EXPECT_EQ(sd15.at("sample_size"), 64);
  EXPECT_FALSE(sd15.contains("reverse_transformer_layers_per_block"));

  EXPECT_THROW(unet_config_json(ModelFamily::SD2, Prediction::Unknown, diffusers_shapes("sd21_unet")), Error);
  const json sd21 = json::parse(unet_config_json(ModelFamily::SD2, Prediction::VPrediction, diffusers_shapes("sd21_unet")));
  EXPECT_EQ(sd21.at("attention_head_dim"), json::array({5, 10, 20, 20}));
  EXPECT_EQ(sd21.at("use_linear_projection"), true);
  EXPECT_EQ(sd21.at("cross_attention_dim"), 1024);
  EXPECT_EQ(sd21.at("upcast_attention"), true);
  EXPECT_EQ(sd21.at("sample_size"), 96);
  EXPECT_EQ(json::parse(scheduler_config_json(ModelFamily::SD2, Prediction::VPrediction)).at("_class_name"),
            "DDIMScheduler");

  const json xl = json::parse(unet_config_json(ModelFamily::SDXL, Prediction::Unknown, diffusers_shapes("sdxl_unet")));
  EXPECT_EQ(xl.at("transformer_layers_per_block"), json::array({1, 2, 10}));
  EXPECT_EQ(xl.at("attention_head_dim"), json::array({5, 10, 20}));
  EXPECT_EQ(xl.at("projection_class_embeddings_input_dim"), 2816);
  EXPECT_EQ(xl.at("down_block_types"), json::array({"DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"}));
  EXPECT_EQ(xl.at("mid_block_type"), "UNetMidBlock2DCrossAttn");

  const json ssd = json::parse(unet_config_json(ModelFamily::SSD1B, Prediction::Unknown, diffusers_shapes("ssd1b_unet")));
  EXPECT_EQ(ssd.at("transformer_layers_per_block"), json::array({1, 2, 4}));
  EXPECT_EQ(ssd.at("reverse_transformer_layers_per_block"), json::parse("[[4, 4, 10], [2, 1, 1], 1]"));
  EXPECT_EQ(ssd.at("mid_block_type"), "UNetMidBlock2D");

  const json ref = json::parse(unet_config_json(ModelFamily::SDXLRefiner, Prediction::Unknown,
                                                diffusers_shapes("sdxl_refiner_unet")));
  EXPECT_EQ(ref.at("block_out_channels"), json::array({384, 768, 1536, 1536}));
  EXPECT_EQ(ref.at("attention_head_dim"), json::array({6, 12, 24, 24}));
  EXPECT_EQ(ref.at("transformer_layers_per_block"), 4);
  EXPECT_EQ(ref.at("cross_attention_dim"), 1280);
  EXPECT_EQ(ref.at("projection_class_embeddings_input_dim"), 2560);

  KeyShapes vae, bigg, h;
  for (const Row& r : read_list("vae")) vae[r.diffusers] = r.shape;
  for (const Row& r : read_list("openclip_bigg_sdxl_text_encoder_2")) bigg[r.diffusers] = r.shape;
  for (const Row& r : read_list("openclip_h_sd2_text_encoder")) h[r.diffusers] = r.shape;
  const json v = json::parse(vae_config_json(ModelFamily::SDXL, vae));
  EXPECT_EQ(v.at("block_out_channels"), json::array({128, 256, 512, 512}));
  EXPECT_EQ(v.at("scaling_factor"), 0.13025);
  EXPECT_EQ(v.at("force_upcast"), true);
  const json g = json::parse(text_encoder_config_json(ModelFamily::SDXL, kTextEncoder2, bigg));
  EXPECT_EQ(g.at("architectures"), json::array({"CLIPTextModelWithProjection"}));
  EXPECT_EQ(g.at("num_hidden_layers"), 32);
  EXPECT_EQ(g.at("num_attention_heads"), 20);
  EXPECT_EQ(g.at("projection_dim"), 1280);
  EXPECT_EQ(g.at("hidden_act"), "gelu");
  const json hj = json::parse(text_encoder_config_json(ModelFamily::SD2, kTextEncoder, h));
  EXPECT_EQ(hj.at("num_hidden_layers"), 23);
  EXPECT_EQ(hj.at("num_attention_heads"), 16);
  EXPECT_EQ(hj.at("intermediate_size"), 4096);
  EXPECT_EQ(json::parse(model_index_json(ModelFamily::SDXLRefiner, Prediction::Unknown, false, {"unet"})).at("_class_name"),
            "StableDiffusionXLImg2ImgPipeline");
  EXPECT_EQ(json::parse(model_index_json(ModelFamily::SD1, Prediction::Unknown, true, {"unet"})).at("_class_name"),
            "StableDiffusionInpaintPipeline");
}

}  // namespace
}  // namespace sd::nn
