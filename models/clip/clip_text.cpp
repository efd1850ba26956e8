#include "models/clip/clip_text.h"

#include <algorithm>
#include <filesystem>

#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/view.h"
#include "runtime/nvtx.h"

namespace sd::nn {

// ---------------------------------------------------------------- blocks

ClipAttention::ClipAttention(const ClipTextConfig& c) : heads(c.num_attention_heads) {
  const int64_t D = c.hidden_size;
  // transformers' registration order (k, v, q, out), so named_parameters() lists like its own.
  k_proj = register_module("k_proj", std::make_shared<Linear>(D, D));
  v_proj = register_module("v_proj", std::make_shared<Linear>(D, D));
  q_proj = register_module("q_proj", std::make_shared<Linear>(D, D));
  out_proj = register_module("out_proj", std::make_shared<Linear>(D, D));
}

Tensor ClipAttention::forward(const Tensor& x) const {
  SD_NVTX_RANGE(trace_name("ClipAttention"));
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), Dh = D / heads;
  // [B, L, D] -> [B, H, L, Dh] as a permuted view; attention takes strided inputs.
  auto split_heads = [&](const Tensor& t) { return permute(reshape(t, {B, L, heads, Dh}), {0, 2, 1, 3}); };
  Tensor q = split_heads(q_proj->forward(x));
  Tensor k = split_heads(k_proj->forward(x));
  Tensor v = split_heads(v_proj->forward(x));
  // Scale 1/sqrt(Dh) (the op's default, as transformers); token i sees tokens 0..i only.
  Tensor o = scaled_dot_product_attention(q, k, v, Tensor(), 0.0, /*causal=*/true);  // [B, H, L, Dh]
  return out_proj->forward(reshape(permute(o, {0, 2, 1, 3}), {B, L, D}));
}

ClipMlp::ClipMlp(const ClipTextConfig& c) : act(c.hidden_act) {
  fc1 = register_module("fc1", std::make_shared<Linear>(c.hidden_size, c.intermediate_size));
  fc2 = register_module("fc2", std::make_shared<Linear>(c.intermediate_size, c.hidden_size));
}

Tensor ClipMlp::forward(const Tensor& x) const {
  SD_NVTX_RANGE(trace_name("ClipMlp"));
  Tensor h = fc1->forward(x);  // [B, L, I]
  h = act == ClipActivation::QuickGelu ? quick_gelu(h) : gelu(h);
  return fc2->forward(h);
}

ClipEncoderLayer::ClipEncoderLayer(const ClipTextConfig& c) {
  self_attn = register_module("self_attn", std::make_shared<ClipAttention>(c));
  layer_norm1 = register_module("layer_norm1", std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps));
  mlp = register_module("mlp", std::make_shared<ClipMlp>(c));
  layer_norm2 = register_module("layer_norm2", std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps));
}

Tensor ClipEncoderLayer::forward(const Tensor& x) const {
  SD_NVTX_RANGE(trace_name("ClipEncoderLayer"));
  Tensor h = x + self_attn->forward(layer_norm1->forward(x));
  return h + mlp->forward(layer_norm2->forward(h));
}

ClipTextEmbeddings::ClipTextEmbeddings(const ClipTextConfig& c) {
  token_embedding = register_module("token_embedding", std::make_shared<Embedding>(c.vocab_size, c.hidden_size));
  position_embedding =
      register_module("position_embedding", std::make_shared<Embedding>(c.max_position_embeddings, c.hidden_size));
}

Tensor ClipTextEmbeddings::forward(const Tensor& ids) const {
  SD_NVTX_RANGE(trace_name("ClipTextEmbeddings"));
  const int64_t L = ids.size(1);
  const Tensor& pos = checked(position_embedding->weight, "ClipTextEmbeddings.position_embedding");
  SD_CHECK(L <= pos.size(0), "ClipTextModel: ", L, " tokens per row, but the model has only ", pos.size(0),
           " positions (max_position_embeddings)");
  // Positions are 0..L-1 for every row: the first L rows of the table, broadcast over B.
  return token_embedding->forward(ids) + narrow(pos, 0, 0, L);  // [B, L, D] + [L, D]
}

ClipTextTransformer::ClipTextTransformer(const ClipTextConfig& c) {
  embeddings = register_module("embeddings", std::make_shared<ClipTextEmbeddings>(c));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    layers.push_back(
        register_module("encoder.layers." + std::to_string(i), std::make_shared<ClipEncoderLayer>(c)));
  final_layer_norm = register_module("final_layer_norm", std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps));
}

// ---------------------------------------------------------------- pooling

std::vector<int64_t> clip_pooling_positions(const Tensor& ids, int64_t eos_token_id) {
  SD_CHECK(ids.defined() && ids.dim() == 2 && (ids.dtype() == DType::I32 || ids.dtype() == DType::I64),
           "clip_pooling_positions: ids must be [B, L] i32/i64, got ",
           ids.defined() ? ids.str() : std::string("an undefined tensor"));
  const Tensor h = copy_to(ids, DType::I64, Device::cpu());
  const int64_t B = h.size(0), L = h.size(1);
  const int64_t* p = h.data<int64_t>();
  std::vector<int64_t> pos(size_t(B), 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* row = p + b * L;
    if (eos_token_id == 2) {
      // transformers keeps the pre-#24773 rule for configs with the old eos id: argmax of the ids.
      pos[size_t(b)] = std::max_element(row, row + L) - row;
    } else {
      // First position of the EOS (pads may be EOS too); argmax of an all-false row is 0.
      const int64_t* it = std::find(row, row + L, eos_token_id);
      pos[size_t(b)] = it == row + L ? 0 : it - row;
    }
  }
  return pos;
}

// ---------------------------------------------------------------- model

ClipTextModel::ClipTextModel(const ClipTextConfig& c) : config_(c) {
  config_.validate();
  text_model = register_module("text_model", std::make_shared<ClipTextTransformer>(c));
  if (c.with_projection)
    text_projection = register_module("text_projection", std::make_shared<Linear>(c.hidden_size, c.projection_dim, false));
  name_for_tracing("text_encoder");  // the pipeline renames SDXL's second one text_encoder_2
}

Tensor ClipTextModel::final_layer_norm(const Tensor& hidden) const {
  return text_model->final_layer_norm->forward(hidden);
}

ClipTextOutput ClipTextModel::forward(const Tensor& ids, const ClipTextRequest& req) const {
  SD_NVTX_RANGE(trace_name("ClipTextModel"));
  SD_CHECK(ids.defined() && ids.dim() == 2 && (ids.dtype() == DType::I32 || ids.dtype() == DType::I64),
           "ClipTextModel: input_ids must be [B, L] i32/i64, got ",
           ids.defined() ? ids.str() : std::string("an undefined tensor"));
  SD_CHECK(!req.text_embeds || text_projection, "ClipTextModel: text_embeds asked of a model without "
           "text_projection (config is not CLIPTextModelWithProjection)");
  const int64_t N = int64_t(text_model->layers.size());

  // Which entries of hidden_states to keep, and how deep to run.
  std::vector<int64_t> wanted;
  if (req.all_hidden_states) {
    for (int64_t i = 0; i <= N; ++i) wanted.push_back(i);
  } else {
    for (int64_t i : req.hidden_states) {
      const int64_t j = i < 0 ? i + N + 1 : i;
      SD_CHECK(j >= 0 && j <= N, "ClipTextModel: hidden_states index ", i, " is out of range for ", N,
               " layers (0..", N, " or -", N + 1, "..-1)");
      wanted.push_back(j);
    }
  }
  const bool need_final = req.last_hidden_state || req.pooled || req.text_embeds;
  int64_t depth = need_final ? N : 0;
  for (int64_t j : wanted) depth = std::max(depth, j);

  std::vector<Tensor> states(size_t(N + 1));  // only the wanted ones are kept
  auto keep = [&](int64_t j, const Tensor& h) {
    if (std::find(wanted.begin(), wanted.end(), j) != wanted.end()) states[size_t(j)] = h;
  };
  Tensor h = text_model->embeddings->forward(ids);  // [B, L, D]
  keep(0, h);
  for (int64_t i = 0; i < depth; ++i) {
    h = text_model->layers[size_t(i)]->forward(h);
    keep(i + 1, h);
  }

  ClipTextOutput out;
  for (int64_t j : wanted) out.hidden_states.push_back(states[size_t(j)]);
  if (!need_final) return out;
  Tensor last = final_layer_norm(h);
  if (req.last_hidden_state) out.last_hidden_state = last;
  if (req.pooled || req.text_embeds) {
    // Row b's EOS state is row b * L + pos[b] of the flattened [B * L, D] states: one gather
    // (embedding) whose backward scatters the gradient back to those rows.
    const int64_t B = last.size(0), L = last.size(1), D = last.size(2);
    std::vector<int64_t> pos = clip_pooling_positions(ids, config_.eos_token_id);
    std::vector<double> rows;
    for (int64_t b = 0; b < B; ++b) rows.push_back(double(b * L + pos[size_t(b)]));
    Tensor index = from_vector(rows, {B}, DType::I64, last.device());
    Tensor pooled = embedding(reshape(last, {B * L, D}), index);  // [B, D]
    if (req.pooled) out.pooled = pooled;
    if (req.text_embeds) out.text_embeds = text_projection->forward(pooled);
  }
  return out;
}

// ---------------------------------------------------------------- loading

LoadReport ClipTextModel::load_transformers(const TensorSource& src, const LoadOptions& opt_in) {
  LoadOptions opt = opt_in;
  opt.ignore_suffixes.push_back("embeddings.position_ids");  // a buffer older saves carry
  // transformers >= 5.6 saves CLIPTextModel without the "text_model." level; WithProjection
  // keeps it. Without the projection the flat layout is exactly text_model's own parameters.
  const bool flat = !src.contains("text_model.embeddings.token_embedding.weight") &&
                    src.contains("embeddings.token_embedding.weight") && !text_projection;
  return flat ? text_model->load(src, opt, "") : load(src, opt);
}

std::shared_ptr<ClipTextModel> ClipTextModel::from_pretrained(const std::string& dir, DType dtype, Device device) {
  namespace fs = std::filesystem;
  const fs::path d(dir);
  SD_CHECK(fs::is_regular_file(d / "config.json"), "ClipTextModel::from_pretrained: '", dir,
           "' has no config.json");
  auto model = std::make_shared<ClipTextModel>(ClipTextConfig::from_file((d / "config.json").string()));
  std::string weights;
  for (const char* name : {"model.safetensors", "model.safetensors.index.json", "model.fp16.safetensors",
                           "model.safetensors.index.fp16.json"}) {
    if (fs::is_regular_file(d / name)) {
      weights = (d / name).string();
      break;
    }
  }
  SD_CHECK(!weights.empty(), "ClipTextModel::from_pretrained: '", dir,
           "' has no model.safetensors, model.safetensors.index.json or fp16 variant of them");
  LoadOptions opt;
  opt.dtype = dtype;
  opt.device = device;
  model->load_transformers(*SafetensorsSource::open(weights), opt);
  return model;
}

// ---------------------------------------------------------------- textual inversion

std::pair<int64_t, int64_t> ClipTextModel::add_tokens(const Tensor& vectors) {
  Embedding& table = *text_model->embeddings->token_embedding;
  const Tensor old = checked(table.weight, "ClipTextModel::add_tokens: token_embedding");
  const int64_t V = old.size(0), D = old.size(1);
  SD_CHECK(vectors.defined() && vectors.dim() == 2 && vectors.size(1) == D,
           "ClipTextModel::add_tokens: vectors must be [n, ", D, "], got ",
           vectors.defined() ? vectors.str() : std::string("an undefined tensor"));
  const int64_t n = vectors.size(0);
  // A new table [V + n, D]: old rows copied bit for bit, new rows converted to its dtype/device.
  Tensor grown = empty({V + n, D}, old.dtype(), old.device());
  copy_(as_strided(grown, {V, D}, {D, 1}, 0), old);
  if (n > 0) copy_(as_strided(grown, {n, D}, {D, 1}, V * D), vectors);
  grown.set_name(old.name());
  if (old.requires_grad()) grown.set_requires_grad(true);
  table.weight = grown;
  for (auto& [name, p] : table.named_parameters())
    if (p->slot == &table.weight) p->shape = grown.shape();  // load/keys see the new size
  config_.vocab_size = V + n;
  return {V, V + n};
}

}  // namespace sd::nn
