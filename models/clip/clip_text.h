// The CLIP text transformer of Stable Diffusion, matching transformers' CLIPTextModel and
// CLIPTextModelWithProjection (modeling_clip.py) with their checkpoint keys:
//
//   text_model.embeddings.token_embedding.weight     [V, D]
//   text_model.embeddings.position_embedding.weight  [P, D]   (P = max_position_embeddings)
//   text_model.encoder.layers.N.self_attn.{k,v,q,out}_proj.{weight [D, D], bias [D]}
//   text_model.encoder.layers.N.layer_norm1.{weight, bias} [D]
//   text_model.encoder.layers.N.mlp.fc1.{weight [I, D], bias [I]}, mlp.fc2.{weight [D, I], bias [D]}
//   text_model.encoder.layers.N.layer_norm2.{weight, bias} [D]
//   text_model.final_layer_norm.{weight, bias} [D]
//   text_projection.weight [projection_dim, D]        (WithProjection only, no bias)
//
// Forward, for ids [B, L] (L <= P; SD feeds 77 padded ids, no attention mask):
//   h0 = token_embedding[ids] + position_embedding[0..L)          hidden_states[0]
//   h  = h + out_proj(attn(layer_norm1(h)))    causal self-attention, heads of D / H
//   h  = h + fc2(act(fc1(layer_norm2(h))))     act = quick_gelu or gelu; h is hidden_states[i]
//   last_hidden_state = final_layer_norm(h_N)
//   pooled = last_hidden_state[b, eos position of row b];  text_embeds = text_projection(pooled)
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/clip/clip_text_config.h"
#include "models/nn/layers.h"

namespace sd::nn {

class ClipAttention : public Module {
 public:
  explicit ClipAttention(const ClipTextConfig& c);
  Tensor forward(const Tensor& x) const;  // x [B, L, D] -> [B, L, D], causal
  std::shared_ptr<Linear> k_proj, v_proj, q_proj, out_proj;
  int64_t heads;
};

class ClipMlp : public Module {
 public:
  explicit ClipMlp(const ClipTextConfig& c);
  Tensor forward(const Tensor& x) const;  // [B, L, D] -> [B, L, D]
  std::shared_ptr<Linear> fc1, fc2;
  ClipActivation act;
};

class ClipEncoderLayer : public Module {
 public:
  explicit ClipEncoderLayer(const ClipTextConfig& c);
  Tensor forward(const Tensor& x) const;  // pre-norm residual block, [B, L, D] -> [B, L, D]
  std::shared_ptr<ClipAttention> self_attn;
  std::shared_ptr<LayerNorm> layer_norm1;
  std::shared_ptr<ClipMlp> mlp;
  std::shared_ptr<LayerNorm> layer_norm2;
};

class ClipTextEmbeddings : public Module {
 public:
  explicit ClipTextEmbeddings(const ClipTextConfig& c);
  Tensor forward(const Tensor& ids) const;  // ids [B, L] i32/i64 -> [B, L, D]
  std::shared_ptr<Embedding> token_embedding, position_embedding;
};

// transformers' CLIPTextTransformer: the parameters under "text_model.".
class ClipTextTransformer : public Module {
 public:
  explicit ClipTextTransformer(const ClipTextConfig& c);
  std::shared_ptr<ClipTextEmbeddings> embeddings;
  std::vector<std::shared_ptr<ClipEncoderLayer>> layers;  // registered as "encoder.layers.N"
  std::shared_ptr<LayerNorm> final_layer_norm;
};

// What one forward computes. Hidden-state indices are those of transformers' `hidden_states`
// tuple: 0 = the embeddings, i = the output of layer i (no final LN), N = the last layer's
// output before final_layer_norm; negative indices count from the end (-1 = N, -2 = the
// penultimate). Layers after the deepest one needed are not run.
//   SD1.x:        last_hidden_state (clip skip n > 0: hidden_states {-(n+1)}, then final_layer_norm())
//   SD2.x:        last_hidden_state of the 23-layer model
//   SDXL:         CLIP-L hidden_states {-2}; bigG hidden_states {-2} + text_embeds (clip skip n: -(n+2))
struct ClipTextRequest {
  bool last_hidden_state = true;     // final_layer_norm(hidden_states[N])
  std::vector<int64_t> hidden_states;  // these entries, in this order
  bool all_hidden_states = false;    // all N + 1 entries (then `hidden_states` is ignored)
  bool pooled = false;               // final-LN state at the EOS position (transformers' pooler_output)
  bool text_embeds = false;          // text_projection(pooled); needs a WithProjection model
};

struct ClipTextOutput {
  Tensor last_hidden_state;          // [B, L, D]
  std::vector<Tensor> hidden_states; // [B, L, D] each, as requested
  Tensor pooled;                     // [B, D]
  Tensor text_embeds;                // [B, projection_dim]
};

// Position of the token each row's pooled output is read from, exactly as transformers picks
// it: for the legacy eos_token_id == 2 the first position of the row's largest id (the EOS
// 49407 of a tokenized prompt, but an added textual-inversion token > 49407 wins), otherwise
// the first position holding eos_token_id (0 when the row has none). ids [B, L] i32/i64, any
// device; returns B positions.
std::vector<int64_t> clip_pooling_positions(const Tensor& ids, int64_t eos_token_id);

class ClipTextModel : public Module {
 public:
  explicit ClipTextModel(const ClipTextConfig& c);

  // A transformers folder: config.json plus model.safetensors, model.safetensors.index.json
  // (shards) or the fp16 variant model.fp16.safetensors / model.safetensors.index.fp16.json
  // (first one found, in this order). Weights are converted to `dtype` on `device`.
  static std::shared_ptr<ClipTextModel> from_pretrained(const std::string& dir, DType dtype = DType::F32,
                                                        Device device = Device::cpu());

  // Loads either spelling of the keys: "text_model.embeddings..." (every SD checkpoint, and
  // CLIPTextModelWithProjection) or the flattened "embeddings..." that CLIPTextModel saves since
  // transformers 5.6. The stray buffer "text_model.embeddings.position_ids" is ignored. Missing
  // keys or wrong shapes raise sd::Error naming the key and the file (when opt.strict).
  LoadReport load_transformers(const TensorSource& src, const LoadOptions& opt = {});

  ClipTextOutput forward(const Tensor& input_ids, const ClipTextRequest& request) const;
  Tensor forward(const Tensor& input_ids) const { return forward(input_ids, ClipTextRequest{}).last_hidden_state; }
  // final_layer_norm on a hidden state (SD1 clip skip).
  Tensor final_layer_norm(const Tensor& hidden) const;

  // Textual inversion: appends vectors [n, D] as new token-embedding rows and returns their
  // ids [first, end). Existing rows keep their values; the table keeps its dtype, device and
  // requires_grad (it becomes a new leaf: an optimizer holding the old tensor must be told).
  std::pair<int64_t, int64_t> add_tokens(const Tensor& vectors);

  const ClipTextConfig& config() const { return config_; }
  std::shared_ptr<ClipTextTransformer> text_model;
  std::shared_ptr<Linear> text_projection;  // null unless config.with_projection

 private:
  ClipTextConfig config_;
};

}  // namespace sd::nn
