#include "infer/prompt_encoder.h"

#include <algorithm>

#include "autograd/node.h"
#include "infer/prompt_weights.h"
#include "models/adapters/textual_inversion.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/view.h"
#include "runtime/error.h"
#include "runtime/nvtx.h"

namespace sd::infer {
namespace {

struct Chunks {
  std::vector<std::vector<int>> ids;
  std::vector<std::vector<float>> weights;
  int64_t tokens = 0;
};

// Multi-vector textual-inversion triggers stand for several tokens: expand them in the token
// stream and cut it into 75-token chunks again (BREAK boundaries are not kept then).
void expand_embeddings(Chunks& c, const ClipTokenizer& tok, const nn::TextualInversions& tis) {
  std::vector<int> ids;
  std::vector<float> weights;
  bool changed = false;
  for (size_t k = 0; k < c.ids.size(); ++k) {
    for (size_t i = 1; i < c.ids[k].size() && c.ids[k][i] != tok.eos_id(); ++i) {
      const std::vector<int> e = tis.expand(tok, {c.ids[k][i]});
      changed |= e.size() != 1;
      for (int id : e) {
        ids.push_back(id);
        weights.push_back(c.weights[k][i]);
      }
    }
  }
  if (!changed) return;
  const size_t n = size_t(tok.chunk_length());
  Chunks out;
  out.tokens = int64_t(ids.size());
  for (size_t b = 0; b < std::max<size_t>(ids.size(), 1); b += n) {
    const size_t e = std::min(ids.size(), b + n);
    out.ids.push_back(tok.frame(std::vector<int>(ids.begin() + long(b), ids.begin() + long(e))));
    std::vector<float> w(out.ids.back().size(), 1.0f);
    for (size_t i = b; i < e; ++i) w[1 + i - b] = weights[i];
    out.weights.push_back(std::move(w));
  }
  c = std::move(out);
}

Chunks tokenize(const ClipTokenizer& tok, const std::string& text, const PromptEncodeOptions& o) {
  Chunks c;
  if (o.a1111_syntax) {
    WeightedChunks w = encode_weighted_chunks(tok, text, o.comma_backtrack);
    c.ids = std::move(w.ids);
    c.weights = std::move(w.weights);
    for (const auto& ids : c.ids)
      for (size_t i = 1; i < ids.size() && ids[i] != tok.eos_id(); ++i) ++c.tokens;
    if (o.embeddings) expand_embeddings(c, tok, *o.embeddings);
  } else {
    std::vector<int> ids = tok.encode(text);
    if (o.embeddings) ids = o.embeddings->expand(tok, ids);
    c.tokens = int64_t(ids.size());
    if (ids.size() > size_t(tok.chunk_length())) ids.resize(size_t(tok.chunk_length()));  // diffusers: truncation
    c.ids.push_back(tok.frame(ids));
    c.weights.emplace_back(c.ids.back().size(), 1.0f);
  }
  return c;
}

void pad_to(Chunks& c, size_t n, const ClipTokenizer& tok) {
  while (c.ids.size() < n) {
    c.ids.push_back(tok.frame({}));
    c.weights.emplace_back(c.ids.back().size(), 1.0f);
  }
}

struct EncoderOutput {
  Tensor hidden;  // [k, L, D], one row per chunk, emphasis applied
  Tensor pooled;  // [k, P] (text_embeds) when asked
};

// One encoder over all chunks at once (a batch of k rows). hidden_index 0 = last_hidden_state.
EncoderOutput run_encoder(const nn::ClipTextModel& model, const Chunks& c, int64_t hidden_index, bool final_ln,
                          bool text_embeds, Device device) {
  SD_NVTX_RANGE("encode_prompt");
  const int64_t k = int64_t(c.ids.size()), L = int64_t(c.ids.front().size());
  std::vector<double> flat;
  for (const auto& row : c.ids) {
    for (int id : row) {
      SD_CHECK(id < model.config().vocab_size, "encode_prompt: token id ", id, " is outside the text encoder's ",
               model.config().vocab_size, "-token vocabulary (tokenizer and text encoder do not belong together)");
      flat.push_back(double(id));
    }
  }
  const Tensor ids = from_vector(flat, {k, L}, DType::I64, device);
  nn::ClipTextRequest req;
  req.last_hidden_state = hidden_index == 0;
  if (hidden_index != 0) req.hidden_states = {hidden_index};
  req.text_embeds = text_embeds;
  const nn::ClipTextOutput out = model.forward(ids, req);
  Tensor h = hidden_index == 0 ? out.last_hidden_state : out.hidden_states.at(0);
  if (final_ln) h = model.final_layer_norm(h);
  // Emphasis, per chunk: z * w, then back to the chunk's mean (A1111's process_tokens).
  std::vector<Tensor> rows;
  bool weighted = false;
  for (int64_t i = 0; i < k; ++i) {
    Tensor z = select(h, 0, i);  // [L, D]
    const auto& w = c.weights[size_t(i)];
    if (std::any_of(w.begin(), w.end(), [](float v) { return v != 1.0f; })) {
      weighted = true;
      const DType dt = z.dtype();
      Tensor zf = to(z, DType::F32);
      const double original_mean = mean_all(zf).item();
      std::vector<double> wd(w.begin(), w.end());
      zf = zf * from_vector(wd, {L, 1}, DType::F32, device);
      const double new_mean = mean_all(zf).item();
      zf = zf * (original_mean / new_mean);
      z = to(zf, dt);
    }
    rows.push_back(unsqueeze(z, 0));
  }
  EncoderOutput r;
  r.hidden = weighted ? cat(rows, 0) : h;
  if (text_embeds) r.pooled = out.text_embeds;
  return r;
}

// Rows [first, first + n) of an encoder's output as one prompt's conditioning: the chunks'
// hidden states end to end, [1, n L, D].
Tensor prompt_hidden(const EncoderOutput& r, int64_t first, int64_t n) {
  const Tensor h = narrow(r.hidden, 0, first, n);
  return reshape(contiguous(h), {1, n * h.size(1), h.size(2)});
}

}  // namespace

EncodedPrompts encode_prompts(const Pipeline& pipe, const std::string& prompt,
                              const std::optional<std::string>& negative, bool with_uncond,
                              const PromptEncodeOptions& o) {
  SD_CHECK(o.clip_skip >= 0, "encode_prompt: clip_skip must be >= 0, got ", o.clip_skip);
  autograd::NoGrad no_grad;
  // The encoders in order, each with its tokenizer; SDXL's hidden states are the penultimate ones.
  struct Enc {
    const nn::ClipTextModel* model;
    const ClipTokenizer* tok;
    bool pooled;
  };
  std::vector<Enc> encs;
  if (pipe.text_encoder) encs.push_back({pipe.text_encoder.get(), &*pipe.tokenizer, false});
  if (pipe.text_encoder_2) encs.push_back({pipe.text_encoder_2.get(), &*pipe.tokenizer_2, true});
  const bool sdxl = pipe.is_sdxl();
  for (const Enc& e : encs) {
    const int64_t layers = e.model->config().num_hidden_layers;
    // hidden_states has layers + 1 entries; SD takes [-(n+1)], SDXL [-(n+2)].
    SD_CHECK(o.clip_skip + (sdxl ? 1 : 0) <= layers, "encode_prompt: clip_skip ", o.clip_skip,
             " leaves no layer of the ", layers, "-layer text encoder");
  }
  const bool zero_uncond = with_uncond && !negative.has_value() && pipe.force_zeros_for_empty_prompt;
  const bool encode_uncond = with_uncond && !zero_uncond;

  std::vector<Chunks> cond, uncond;
  size_t n = 1;
  for (const Enc& e : encs) {
    cond.push_back(tokenize(*e.tok, prompt, o));
    n = std::max(n, cond.back().ids.size());
    if (encode_uncond) {
      uncond.push_back(tokenize(*e.tok, negative.value_or(""), o));
      n = std::max(n, uncond.back().ids.size());
    }
  }
  for (size_t i = 0; i < encs.size(); ++i) {
    pad_to(cond[i], n, *encs[i].tok);
    if (encode_uncond) pad_to(uncond[i], n, *encs[i].tok);
  }

  // The prompt and the negative prompt go through each encoder as one batch when they use the
  // same layer (a batch of 2n rows keeps the GEMMs twice as tall: on a CPU, 77-row products run
  // well below the peak); rows are independent, so each prompt's result is unchanged.
  const int uncond_skip = o.clip_skip_negative ? o.clip_skip : 0;
  const bool together = encode_uncond && uncond_skip == o.clip_skip;
  auto layer_of = [&](int clip_skip) -> int64_t {
    return sdxl ? -(clip_skip + 2) : (clip_skip > 0 ? -(clip_skip + 1) : 0);
  };
  auto run = [&](size_t i, const Chunks& chunks, int clip_skip) {
    return run_encoder(*encs[i].model, chunks, layer_of(clip_skip), !sdxl && clip_skip > 0, encs[i].pooled,
                       pipe.device);
  };
  EncodedPrompts out;
  std::vector<Tensor> cond_parts, uncond_parts;
  const int64_t rows = int64_t(n);
  for (size_t i = 0; i < encs.size(); ++i) {
    // rc holds the prompt's rows from 0; ru the negative's from uncond_first (after the prompt's
    // when they share the batch).
    EncoderOutput rc, ru;
    int64_t uncond_first = 0;
    if (together) {
      Chunks both = cond[i];
      both.ids.insert(both.ids.end(), uncond[i].ids.begin(), uncond[i].ids.end());
      both.weights.insert(both.weights.end(), uncond[i].weights.begin(), uncond[i].weights.end());
      rc = ru = run(i, both, o.clip_skip);
      uncond_first = rows;
    } else {
      rc = run(i, cond[i], o.clip_skip);
      if (encode_uncond) ru = run(i, uncond[i], uncond_skip);
    }
    cond_parts.push_back(prompt_hidden(rc, 0, rows));
    if (encs[i].pooled) out.cond.pooled = narrow(rc.pooled, 0, 0, 1);
    if (encode_uncond) {
      uncond_parts.push_back(prompt_hidden(ru, uncond_first, rows));
      if (encs[i].pooled) out.uncond.pooled = narrow(ru.pooled, 0, uncond_first, 1);
    }
  }
  auto joined = [](const std::vector<Tensor>& parts) { return parts.size() == 1 ? parts[0] : cat(parts, 2); };
  out.cond.context = joined(cond_parts);
  out.chunks = int64_t(n);
  out.tokens = cond.front().tokens;
  if (encode_uncond) {
    out.uncond.context = joined(uncond_parts);
  } else if (zero_uncond) {
    out.uncond.context = zeros_like(out.cond.context);
    if (out.cond.pooled.defined()) out.uncond.pooled = zeros_like(out.cond.pooled);
  }
  return out;
}

}  // namespace sd::infer
