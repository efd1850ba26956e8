// CLIP text encoder: config.json parsing, full-size key lists against transformers', loading
// (both key spellings, shards, fp16 variant, bad files), pooling positions, request semantics,
// textual-inversion rows, and gradients through the whole model.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "autograd/engine.h"
#include "models/clip/clip_text.h"
#include "ops/concat.h"
#include "ops/linear.h"
#include "ops/view.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

namespace fs = std::filesystem;
const std::string kData = SD_TEST_DATA_DIR;

// A fresh directory per use, removed with its files.
struct TempDir {
  fs::path dir;
  TempDir() {
    static int counter = 0;
    dir = fs::temp_directory_path() / ("sd_clip_text_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
};

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// ---------------------------------------------------------------- config

TEST(ClipTextConfig, ParsesTheGoldenConfigs) {
  ClipTextConfig l = ClipTextConfig::from_file(kData + "/clip_tiny_l/config.json");
  EXPECT_EQ(l.vocab_size, 1000);
  EXPECT_EQ(l.hidden_size, 32);
  EXPECT_EQ(l.intermediate_size, 37);
  EXPECT_EQ(l.num_hidden_layers, 2);
  EXPECT_EQ(l.num_attention_heads, 4);
  EXPECT_EQ(l.max_position_embeddings, 77);
  EXPECT_EQ(l.hidden_act, ClipActivation::QuickGelu);
  EXPECT_EQ(l.eos_token_id, 998);
  EXPECT_FALSE(l.with_projection);
  ClipTextConfig h = ClipTextConfig::from_file(kData + "/clip_tiny_h/config.json");
  EXPECT_EQ(h.hidden_act, ClipActivation::Gelu);
  EXPECT_EQ(h.eos_token_id, 2);
  ClipTextConfig g = ClipTextConfig::from_file(kData + "/clip_tiny_bigg/config.json");
  EXPECT_TRUE(g.with_projection);
  EXPECT_EQ(g.projection_dim, 24);
  EXPECT_DOUBLE_EQ(g.layer_norm_eps, 1e-5);
}

TEST(ClipTextConfig, MissingKeysTakeTransformersDefaults) {
  ClipTextConfig c = ClipTextConfig::from_json(R"({"hidden_size": 64, "num_attention_heads": 4})");
  EXPECT_EQ(c.vocab_size, 49408);
  EXPECT_EQ(c.intermediate_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 12);
  EXPECT_EQ(c.max_position_embeddings, 77);
  EXPECT_EQ(c.hidden_act, ClipActivation::QuickGelu);
  EXPECT_EQ(c.eos_token_id, 49407);
  // A full CLIPConfig: the text part.
  ClipTextConfig t = ClipTextConfig::from_json(R"({"model_type": "clip", "text_config": {"hidden_size": 48,
      "num_attention_heads": 6, "hidden_act": "gelu"}, "vision_config": {}})");
  EXPECT_EQ(t.hidden_size, 48);
  EXPECT_EQ(t.hidden_act, ClipActivation::Gelu);
}

TEST(ClipTextConfig, UnsupportedValuesNameTheKey) {
  struct Case {
    const char* json;
    const char* key;
  };
  const Case cases[] = {
      {R"({"hidden_act": "relu"})", "hidden_act"},
      {R"({"hidden_act": "gelu_new"})", "hidden_act"},
      {R"({"hidden_size": "768"})", "hidden_size"},
      {R"({"num_hidden_layers": 2.5})", "num_hidden_layers"},
      {R"({"hidden_size": 30, "num_attention_heads": 4})", "num_attention_heads"},
      {R"({"vocab_size": 0})", "vocab_size"},
      {R"({"attention_dropout": 0.1})", "attention_dropout"},
      {R"({"layer_norm_eps": "1e-5"})", "layer_norm_eps"},
      {R"({"architectures": ["CLIPModel"]})", "architectures"},
      {R"({"model_type": "t5"})", "model_type"},
      {R"([1, 2])", "object"},
      {R"({"hidden_size": )", "JSON"},
  };
  for (const Case& c : cases) {
    const std::string msg = error_of([&] { ClipTextConfig::from_json(c.json, "cfg.json"); });
    EXPECT_NE(msg.find(c.key), std::string::npos) << c.json << " -> " << msg;
    EXPECT_NE(msg.find("cfg.json"), std::string::npos) << msg;
  }
  EXPECT_NE(error_of([] { ClipTextConfig::from_file("/nonexistent/config.json"); }).find("/nonexistent"),
            std::string::npos);
}

// ---------------------------------------------------------------- keys of the real models

// name -> shape in the order of tests/data/keys/<file> (written by make_clip_goldens.py from
// transformers' own full-size models on the meta device).
std::vector<std::pair<std::string, Shape>> read_keys(const std::string& file) {
  std::ifstream f(kData + "/keys/" + file);
  EXPECT_TRUE(f.good()) << file;
  std::vector<std::pair<std::string, Shape>> out;
  std::string line;
  while (std::getline(f, line)) {
    const size_t tab = line.find('\t');
    Shape shape;
    std::string dims = line.substr(tab + 1);
    for (char& ch : dims)
      if (ch == '[' || ch == ']' || ch == ',') ch = ' ';
    std::istringstream is(dims);
    for (int64_t d; is >> d;) shape.push_back(d);
    out.emplace_back(line.substr(0, tab), shape);
  }
  return out;
}

void expect_same_keys(ClipTextConfig cfg, const std::string& file, size_t count) {
  ClipTextModel m(cfg);
  std::vector<std::pair<std::string, Shape>> ours;
  for (auto& [name, p] : m.named_parameters()) ours.emplace_back(name, p->shape);
  const auto theirs = read_keys(file);
  EXPECT_EQ(theirs.size(), count) << file;
  EXPECT_EQ(ours, theirs) << file;
  // Shape-only until loaded: building the full-size model allocates nothing.
  EXPECT_TRUE(m.state_dict().empty());
}

TEST(ClipTextKeys, PresetsMatchTransformersNamesAndShapes) {
  expect_same_keys(ClipTextConfig::clip_vit_l14(), "clip_l.tsv", 196);
  expect_same_keys(ClipTextConfig::openclip_vit_h14(), "openclip_h.tsv", 372);
  expect_same_keys(ClipTextConfig::openclip_vit_bigg14(), "openclip_bigg.tsv", 517);
}

// ---------------------------------------------------------------- pooling positions

TEST(ClipText, PoolingPositionsFollowTransformersRules) {
  // Row 0: a textual-inversion id (50000) larger than EOS before the EOS; row 1: EOS padding;
  // row 2: no EOS at all.
  Tensor ids = from_vector({49406, 50000, 320, 49407, 0, 0,  //
                            49406, 320, 49407, 49407, 49407, 49407,  //
                            49406, 2, 5, 7, 9, 3},
                           {3, 6}, DType::I64);
  EXPECT_EQ(clip_pooling_positions(ids, 49407), (std::vector<int64_t>{3, 2, 0}));
  // Legacy eos_token_id 2: first position of the largest id (token 2 itself is not looked for;
  // row 2's largest is BOS).
  EXPECT_EQ(clip_pooling_positions(ids, 2), (std::vector<int64_t>{1, 2, 0}));
  Tensor ids32 = from_vector({1, 9, 9, 4}, {1, 4}, DType::I32);
  EXPECT_EQ(clip_pooling_positions(ids32, 2), std::vector<int64_t>{1});
  EXPECT_EQ(clip_pooling_positions(ids32, 4), std::vector<int64_t>{3});
  EXPECT_THROW(clip_pooling_positions(zeros({2, 3}), 2), Error);
  EXPECT_THROW(clip_pooling_positions(from_vector({1, 2}, {2}, DType::I64), 2), Error);
}

// ---------------------------------------------------------------- a small f64 model

ClipTextConfig tiny_config(ClipActivation act, bool projection, int64_t eos) {
  ClipTextConfig c;
  c.vocab_size = 12;
  c.hidden_size = 8;
  c.intermediate_size = 11;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.max_position_embeddings = 6;
  c.hidden_act = act;
  c.projection_dim = 5;
  c.with_projection = projection;
  c.bos_token_id = 10;
  c.eos_token_id = eos;
  return c;
}

// LayerNorms start at weight 1 / bias 0; make them random too so a swap would show.
void randomize_norms(ClipTextModel& m, uint64_t seed) {
  for (auto& [name, p] : m.named_parameters())
    if (name.find("norm") != std::string::npos)
      *p->slot = test::random_tensor(p->shape, p->slot->dtype(), seed++, 0.5, 1.5).set_name(name);
}

TEST(ClipText, RequestsSelectHiddenStatesAndStopEarly) {
  ClipTextModel m(tiny_config(ClipActivation::Gelu, true, 11));
  m.init_parameters(3, DType::F64);
  Tensor ids = from_vector({10, 3, 4, 11, 11, 11, 10, 1, 2, 5, 7, 11}, {2, 6}, DType::I64);
  ClipTextRequest all;
  all.all_hidden_states = all.pooled = all.text_embeds = true;
  ClipTextOutput full = m.forward(ids, all);
  ASSERT_EQ(full.hidden_states.size(), 3u);
  EXPECT_EQ(full.last_hidden_state.shape(), (Shape{2, 6, 8}));
  EXPECT_EQ(full.pooled.shape(), (Shape{2, 8}));
  EXPECT_EQ(full.text_embeds.shape(), (Shape{2, 5}));
  // last_hidden_state = final LN of hidden_states[-1]; pooled = its rows at the EOS positions.
  EXPECT_TRUE(test::all_close(m.final_layer_norm(full.hidden_states[2]), full.last_hidden_state, 0, 0));
  const Tensor& last = full.last_hidden_state;
  Tensor eos_rows = cat({unsqueeze(select(select(last, 0, 0), 0, 3), 0), unsqueeze(select(select(last, 0, 1), 0, 5), 0)}, 0);
  EXPECT_TRUE(test::all_close(full.pooled, eos_rows, 0, 0));
  EXPECT_TRUE(test::all_close(full.text_embeds, linear(eos_rows, m.text_projection->weight), 1e-12, 1e-12));
  // Only the penultimate: the last layer is not run, the values are the same.
  ClipTextRequest pen;
  pen.last_hidden_state = false;
  pen.hidden_states = {-2, 0, 2, -3};
  ClipTextOutput p = m.forward(ids, pen);
  ASSERT_EQ(p.hidden_states.size(), 4u);
  EXPECT_FALSE(p.last_hidden_state.defined());
  EXPECT_FALSE(p.pooled.defined());
  EXPECT_TRUE(test::all_close(p.hidden_states[0], full.hidden_states[1], 0, 0));
  EXPECT_TRUE(test::all_close(p.hidden_states[1], full.hidden_states[0], 0, 0));
  EXPECT_TRUE(test::all_close(p.hidden_states[2], full.hidden_states[2], 0, 0));
  EXPECT_TRUE(test::all_close(p.hidden_states[3], full.hidden_states[0], 0, 0));
  // i32 ids and the one-argument forward agree.
  EXPECT_TRUE(test::all_close(m.forward(copy_to(ids, DType::I32, Device::cpu())), full.last_hidden_state, 0, 0));
  // Fewer tokens than positions: the first L positions are used, and causality means the
  // first L outputs do not depend on the tokens after them.
  Tensor head = m.forward(contiguous(narrow(ids, 1, 0, 4)));
  EXPECT_TRUE(test::all_close(head, narrow(full.last_hidden_state, 1, 0, 4), 1e-12, 1e-12));

  ClipTextRequest bad;
  bad.hidden_states = {3};
  EXPECT_THROW(m.forward(ids, bad), Error);
  bad.hidden_states = {-4};
  EXPECT_THROW(m.forward(ids, bad), Error);
  EXPECT_THROW(m.forward(from_vector({1, 2, 3, 4, 5, 6, 7}, {1, 7}, DType::I64)), Error);  // 7 > 6 positions
  EXPECT_THROW(m.forward(from_vector({1, 2, 12}, {1, 3}, DType::I64)), Error);            // id out of range
  EXPECT_THROW(m.forward(zeros({1, 3})), Error);                                          // float ids
  ClipTextModel no_proj(tiny_config(ClipActivation::Gelu, false, 11));
  no_proj.init_parameters(3, DType::F64);
  ClipTextRequest te;
  te.text_embeds = true;
  EXPECT_THROW(no_proj.forward(ids, te), Error);
  ClipTextModel unloaded(tiny_config(ClipActivation::Gelu, false, 11));
  EXPECT_NE(error_of([&] { unloaded.forward(ids); }).find("not loaded"), std::string::npos);
}

TEST(ClipText, AddTokensKeepsOldTokensOutputsIdentical) {
  auto m = ClipTextModel::from_pretrained(kData + "/clip_tiny_l");
  SafetensorsFile io = SafetensorsFile::open(kData + "/clip_tiny_l/io.safetensors");
  Tensor ids = io.get("input_ids");
  ClipTextRequest req;
  req.pooled = true;
  req.all_hidden_states = true;
  ClipTextOutput before = m->forward(ids, req);
  Tensor& table = m->text_model->embeddings->token_embedding->weight;
  table.set_requires_grad(true);
  Tensor vectors = test::random_tensor({3, 32}, DType::F64, 5);  // converted to the table's f32
  auto [first, end] = m->add_tokens(vectors);
  EXPECT_EQ(first, 1000);
  EXPECT_EQ(end, 1003);
  EXPECT_EQ(m->config().vocab_size, 1003);
  EXPECT_EQ(table.shape(), (Shape{1003, 32}));
  EXPECT_EQ(table.dtype(), DType::F32);
  EXPECT_TRUE(table.requires_grad());
  EXPECT_EQ(table.name(), "embeddings.token_embedding.weight");  // the flat key it was loaded from
  EXPECT_TRUE(test::all_close(narrow(table, 0, 1000, 3), vectors, 1e-6, 1e-7));
  for (auto& [name, p] : m->named_parameters()) {
    if (name == "text_model.embeddings.token_embedding.weight") {
      EXPECT_EQ(p->shape, (Shape{1003, 32}));
    }
  }
  // Bit-identical outputs for the old ids.
  ClipTextOutput after = m->forward(ids, req);
  EXPECT_TRUE(test::all_close(after.last_hidden_state, before.last_hidden_state, 0, 0));
  EXPECT_TRUE(test::all_close(after.pooled, before.pooled, 0, 0));
  for (size_t i = 0; i < before.hidden_states.size(); ++i)
    EXPECT_TRUE(test::all_close(after.hidden_states[i], before.hidden_states[i], 0, 0));
  // A new id is used like any other: its row is the embedding, and gradients reach it.
  Tensor with_new = from_vector({997, 1001, 5, 998}, {1, 4}, DType::I64);
  ClipTextRequest h0;
  h0.last_hidden_state = false;
  h0.hidden_states = {0};
  Tensor emb = m->forward(with_new, h0).hidden_states[0];
  std::vector<double> e = emb.to_vector(), v = vectors.to_vector(),
                      pos = m->text_model->embeddings->position_embedding->weight.to_vector();
  for (int d = 0; d < 32; ++d) EXPECT_NEAR(e[32 + d], float(v[32 + d]) + pos[32 + d], 1e-6);
  Tensor out = m->forward(with_new);
  autograd::backward(out, ones(out.shape()));
  std::vector<double> g = table.grad().to_vector();
  double new_row = 0, unused_row = 0;
  for (int d = 0; d < 32; ++d) {
    new_row += std::abs(g[1001 * 32 + d]);
    unused_row += std::abs(g[1002 * 32 + d]);
  }
  EXPECT_GT(new_row, 0);
  EXPECT_EQ(unused_row, 0);
  EXPECT_THROW(m->add_tokens(zeros({2, 31})), Error);
}

// ---------------------------------------------------------------- loading

TEST(ClipText, LoadsFlatAndPrefixedKeysShardsAndFp16Variant) {
  auto ref = ClipTextModel::from_pretrained(kData + "/clip_tiny_h");
  SafetensorsFile io = SafetensorsFile::open(kData + "/clip_tiny_h/io.safetensors");
  Tensor ids = io.get("input_ids");
  Tensor expected = ref->forward(ids);
  const std::string config = kData + "/clip_tiny_h/config.json";

  // The checkpoint spelling "text_model.*" plus the stray position_ids buffer (older saves).
  TempDir prefixed;
  fs::copy_file(config, prefixed / "config.json");
  auto sd = ref->state_dict();
  sd.emplace_back("text_model.embeddings.position_ids", arange(77, DType::I64));
  save_safetensors(prefixed / "model.safetensors", sd);
  auto m1 = ClipTextModel::from_pretrained(prefixed.dir.string());
  EXPECT_TRUE(test::all_close(m1->forward(ids), expected, 0, 0));
  LoadReport r = m1->load_transformers(*SafetensorsSource::open(prefixed / "model.safetensors"));
  EXPECT_TRUE(r.missing.empty() && r.unexpected.empty()) << r.str();

  // Two shards and an index.
  TempDir sharded;
  fs::copy_file(config, sharded / "config.json");
  std::vector<std::pair<std::string, Tensor>> a(sd.begin(), sd.begin() + 10), b(sd.begin() + 10, sd.end());
  save_safetensors(sharded / "model-00001-of-00002.safetensors", a);
  save_safetensors(sharded / "model-00002-of-00002.safetensors", b);
  std::string index = R"({"metadata": {}, "weight_map": {)";
  for (size_t i = 0; i < sd.size(); ++i)
    index += (i ? "," : "") + ("\"" + sd[i].first + "\": \"model-0000" + (i < 10 ? "1" : "2") + "-of-00002.safetensors\"");
  write_text(sharded / "model.safetensors.index.json", index + "}}");
  EXPECT_TRUE(test::all_close(ClipTextModel::from_pretrained(sharded.dir.string())->forward(ids), expected, 0, 0));

  // The fp16 variant, loaded as f32 and as bf16.
  TempDir half;
  fs::copy_file(config, half / "config.json");
  std::vector<std::pair<std::string, Tensor>> h16;
  for (auto& [k, v] : ref->state_dict()) h16.emplace_back(k, copy_to(v, DType::F16, Device::cpu()));
  save_safetensors(half / "model.fp16.safetensors", h16);
  auto m16 = ClipTextModel::from_pretrained(half.dir.string());
  EXPECT_EQ(m16->text_model->final_layer_norm->weight.dtype(), DType::F32);
  EXPECT_LT(test::relative_error(m16->forward(ids), expected), 5e-3);
  auto mbf = ClipTextModel::from_pretrained(half.dir.string(), DType::BF16);
  Tensor ybf = mbf->forward(ids);
  EXPECT_EQ(ybf.dtype(), DType::BF16);
  EXPECT_LT(test::relative_error(ybf, expected), 3e-2);
  Tensor yh = ClipTextModel::from_pretrained(half.dir.string(), DType::F16)->forward(ids);
  EXPECT_EQ(yh.dtype(), DType::F16);
  EXPECT_LT(test::relative_error(yh, expected), 1e-2);

  TempDir empty_dir;
  fs::copy_file(config, empty_dir / "config.json");
  EXPECT_NE(error_of([&] { ClipTextModel::from_pretrained(empty_dir.dir.string()); }).find("model.safetensors"),
            std::string::npos);
  TempDir no_config;
  EXPECT_NE(error_of([&] { ClipTextModel::from_pretrained(no_config.dir.string()); }).find("config.json"),
            std::string::npos);
}

TEST(ClipText, BadFilesNameTheKeyAndTheFile) {
  const std::string dir = kData + "/clip_tiny_bigg";
  auto ref = ClipTextModel::from_pretrained(dir);
  auto sd = ref->state_dict();
  TempDir tmp;
  fs::copy_file(dir + "/config.json", tmp / "config.json");

  // Missing key.
  std::vector<std::pair<std::string, Tensor>> missing;
  for (auto& kv : sd)
    if (kv.first != "text_model.encoder.layers.1.mlp.fc2.bias") missing.push_back(kv);
  save_safetensors(tmp / "model.safetensors", missing);
  std::string msg = error_of([&] { ClipTextModel::from_pretrained(tmp.dir.string()); });
  EXPECT_NE(msg.find("text_model.encoder.layers.1.mlp.fc2.bias"), std::string::npos) << msg;
  EXPECT_NE(msg.find(tmp / "model.safetensors"), std::string::npos) << msg;

  // Wrong shape (a projection of another width).
  std::vector<std::pair<std::string, Tensor>> wrong;
  for (auto& kv : sd) wrong.emplace_back(kv.first, kv.first == "text_projection.weight" ? zeros({16, 32}) : kv.second);
  save_safetensors(tmp / "model.safetensors", wrong);
  msg = error_of([&] { ClipTextModel::from_pretrained(tmp.dir.string()); });
  EXPECT_NE(msg.find("text_projection.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(16, 32)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(24, 32)"), std::string::npos) << msg;
  EXPECT_NE(msg.find(tmp / "model.safetensors"), std::string::npos) << msg;

  // A flat (transformers >= 5.6 CLIPTextModel) file lacks the projection of a WithProjection config.
  std::vector<std::pair<std::string, Tensor>> flat;
  for (auto& kv : sd)
    if (kv.first.rfind("text_model.", 0) == 0) flat.emplace_back(kv.first.substr(11), kv.second);
  save_safetensors(tmp / "model.safetensors", flat);
  msg = error_of([&] { ClipTextModel::from_pretrained(tmp.dir.string()); });
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;

  // Non-strict: the report lists what is missing and what is left over.
  LoadOptions lenient;
  lenient.strict = false;
  ClipTextModel m(ref->config());
  std::map<std::string, Tensor> tensors;
  for (auto& kv : missing) tensors[kv.first] = kv.second;
  tensors["text_model.embeddings.position_ids"] = arange(77, DType::I64);
  tensors["logit_scale"] = zeros({});
  LoadReport r = m.load_transformers(MapSource(tensors), lenient);
  EXPECT_EQ(r.missing, std::vector<std::string>{"text_model.encoder.layers.1.mlp.fc2.bias"});
  EXPECT_EQ(r.unexpected, std::vector<std::string>{"logit_scale"});
}

// ---------------------------------------------------------------- gradients

// One forward's outputs flattened into one tensor, so gradcheck sees all of them.
Tensor all_outputs(const ClipTextModel& m, const Tensor& ids, bool projection) {
  ClipTextRequest req;
  req.hidden_states = {-2};
  req.pooled = true;
  req.text_embeds = projection;
  ClipTextOutput o = m.forward(ids, req);
  std::vector<Tensor> parts = {reshape(o.last_hidden_state, {-1}), reshape(o.hidden_states[0], {-1}),
                               reshape(o.pooled, {-1})};
  if (projection) parts.push_back(reshape(o.text_embeds, {-1}));
  return cat(parts, 0);
}

TEST(GradClipText, TokenEmbeddingWithAddedRowsAndMlpWeight) {
  ClipTextModel m(tiny_config(ClipActivation::Gelu, true, 11));
  m.init_parameters(21, DType::F64);
  randomize_norms(m, 100);
  // Textual inversion: two new rows (ids 12, 13) used in the prompts and trained through.
  m.add_tokens(test::random_tensor({2, 8}, DType::F64, 7));
  Tensor ids = from_vector({10, 3, 12, 5, 11, 11, 10, 13, 1, 2, 7, 11}, {2, 6}, DType::I64);
  Tensor& table = m.text_model->embeddings->token_embedding->weight;
  Tensor& fc1 = m.text_model->layers[0]->mlp->fc1->weight;
  auto f = [&](const std::vector<Tensor>& in) {
    table = in[0];
    fc1 = in[1];
    return all_outputs(m, ids, true);
  };
  EXPECT_TRUE(test::gradcheck(f, {table, fc1}, test::GradcheckOptions{1e-6, 1e-5, 1e-8, {}}));
}

TEST(GradClipText, QuickGeluLegacyPoolingAttentionAndPositionWeights) {
  ClipTextModel m(tiny_config(ClipActivation::QuickGelu, false, 2));
  m.init_parameters(22, DType::F64);
  randomize_norms(m, 200);
  Tensor ids = from_vector({10, 3, 11, 5, 0, 0, 10, 2, 1, 11, 7, 4}, {2, 6}, DType::I64);
  Tensor& q = m.text_model->layers[1]->self_attn->q_proj->weight;
  Tensor& pos = m.text_model->embeddings->position_embedding->weight;
  Tensor& ln = m.text_model->layers[0]->layer_norm1->weight;
  auto f = [&](const std::vector<Tensor>& in) {
    q = in[0];
    pos = in[1];
    ln = in[2];
    return all_outputs(m, ids, false);
  };
  EXPECT_TRUE(test::gradcheck(f, {q, pos, ln}, test::GradcheckOptions{1e-6, 1e-5, 1e-8, {}}));
}

}  // namespace
}  // namespace sd::nn
