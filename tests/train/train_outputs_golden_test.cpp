// What sd_train saves, loaded on both sides: tests/data/train_outputs holds the outputs of eight short
// sd_train runs on the tiny pipelines (commands.json: SD1 / SDXL, LoRA with both file layouts, full
// fine-tunes with the diffusers folder and the single file, textual inversion (learned_embeds and the
// A1111/ComfyUI file), DreamBooth LoRA with prior preservation and DreamBooth full with the single file), and
// tests/golden/make_train_output_goldens.py loaded each as users do in diffusers (pipe.load_lora_weights,
// from_pretrained on the saved folder, from_single_file with the tiny pipeline as config,
// pipe.load_textual_inversion; no key reported unexpected or missing) and recorded the UNet and text-encoder
// outputs for fixed inputs, or for textual inversion the token ids and encoder outputs of prompts with the
// trigger (<case>_io.safetensors). Here:
//   * the same files through the C++ loaders (infer::Pipeline::load + nn::load_lora, Pipeline::load on the
//     saved folder, nn::load_single_file on the single file, nn::TextualInversions as sd_infer --embedding)
//     give diffusers' outputs (f32, relative error <= 1e-5; token ids exactly), and the training visibly
//     changed them (> 1e-2 relative to the starting pipeline);
//   * the sd_train binary, run again with the same command, writes the committed files again (every case but
//     sd1_full; sd1_db_lora generates its 2 class images again first, about 5 s).
//     With one BLAS thread (commands.json "env") the bytes are identical run after run. The thread count
//     matters: OpenBLAS's multi-threaded sgemm rounds differently (our own OpenMP loops do not: any
//     OMP_NUM_THREADS gives the same bytes), and after 10 AdamW steps that reaches about 1e-4 relative in
//     the fp16 LoRA files and 1e-3 in a full fine-tune's f32 weights. On a CPU whose OpenBLAS kernel rounds
//     differently from the machine that made the fixtures, the files are therefore compared tensor by tensor
//     (same names, dtypes, shapes and metadata; values within 1e-3 for LoRA and embedding files, 1e-2 for
//     full weights), and the test says which of the two comparisons it made.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "infer/pipeline.h"
#include "infer/prompt_encoder.h"
#include "models/adapters/lora.h"
#include "models/adapters/textual_inversion.h"
#include "models/clip/clip_text.h"
#include "models/formats/single_file.h"
#include "models/unet/unet.h"
#include "ops/concat.h"
#include "ops/view.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"
#include "train/train_args.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;

const std::string kData = SD_TEST_DATA_DIR;
const std::string kOut = kData + "/train_outputs";
const std::string kSdTrain = std::string(SD_BINARY_DIR) + "/tools/sd_train";
constexpr double kTolerance = 1e-5;  // C++ f32 vs diffusers f32
constexpr double kMinEffect = 1e-2;  // relative change of each output made by the training
const std::map<std::string, std::string> kLoraFiles = {{"diffusers", "pytorch_lora_weights.safetensors"},
                                                       {"kohya", "pytorch_lora_weights_kohya.safetensors"}};

const nlohmann::json& commands() {
  static const nlohmann::json j = [] {
    std::ifstream f(kOut + "/commands.json");
    EXPECT_TRUE(f.good()) << "missing " << kOut << "/commands.json";
    return nlohmann::json::parse(f);
  }();
  return j;
}

std::string source_of(const std::string& c) {
  return kData + "/" + commands().at("cases").at(c).at("source").get<std::string>();
}

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

// ---------------------------------------------------------------- inputs and outputs

struct Io {
  std::map<std::string, Tensor> t;
  std::vector<std::string> captions;
  bool has(const std::string& k) const { return t.count(k) > 0; }
  const Tensor& at(const std::string& k) const {
    auto it = t.find(k);
    if (it == t.end()) throw std::runtime_error("io file has no tensor '" + k + "'");
    return it->second;
  }
};

Io read_io(const std::string& c) {
  const SafetensorsFile f = SafetensorsFile::open(kOut + "/" + c + "_io.safetensors");
  Io io;
  for (const std::string& k : f.keys()) io.t[k] = f.get(k);
  if (f.metadata().count("captions"))  // textual-inversion cases record prompts per variant instead
    io.captions = nlohmann::json::parse(f.metadata().at("captions")).get<std::vector<std::string>>();
  return io;
}

struct Encoders {
  nn::UNet2DConditionModel* unet = nullptr;
  nn::ClipTextModel* te = nullptr;
  nn::ClipTextModel* te2 = nullptr;
  nn::LoraTargets targets() const { return {unet, te, te2}; }
};

Encoders encoders(const infer::Pipeline& p) { return {p.unet.get(), p.text_encoder.get(), p.text_encoder_2.get()}; }

using Outputs = std::map<std::string, Tensor>;

// The UNet on (sample, timestep, encoder_hidden_states[, text_embeds, time_ids]), the text encoders on the ids.
Outputs run(const Encoders& m, const Io& io) {
  Outputs out;
  nn::UNetAddedCond added;
  if (io.has("text_embeds")) added = {io.at("text_embeds"), io.at("time_ids")};
  out["unet"] = m.unet->forward(io.at("sample"), io.at("timestep"), io.at("encoder_hidden_states"), added);
  out["te"] = m.te->forward(io.at("input_ids"));
  if (m.te2) {
    nn::ClipTextRequest req;
    req.text_embeds = true;
    nn::ClipTextOutput o = m.te2->forward(io.at("input_ids_2"), req);
    out["te2"] = o.last_hidden_state;
    out["te2_embeds"] = o.text_embeds;
  }
  return out;
}

// Each output against diffusers' <output>_<variant>; one line of relative errors.
void expect_diffusers(const std::string& c, const std::string& variant, const Outputs& got, const Io& io) {
  std::string line;
  for (const auto& [k, v] : got) {
    const Tensor& want = io.at(k + "_" + variant);
    ASSERT_EQ(v.shape(), want.shape()) << c << " " << variant << " " << k;
    const double err = test::relative_error(v, want);
    char buf[64];
    std::snprintf(buf, sizeof(buf), "  %s %.2e", k.c_str(), err);
    line += buf;
    EXPECT_LE(err, kTolerance) << c << " " << variant << " " << k << ": C++ vs diffusers";
  }
  std::printf("[ GoldenTrainOutputs ] %-9s %-9s vs diffusers:%s\n", c.c_str(), variant.c_str(), line.c_str());
}

// The training changed every output.
void expect_effect(const std::string& c, const std::string& variant, const Outputs& trained, const Outputs& base) {
  std::string line;
  for (const auto& [k, v] : trained) {
    const double effect = test::relative_error(v, base.at(k));
    char buf[64];
    std::snprintf(buf, sizeof(buf), "  %s %.3f", k.c_str(), effect);
    line += buf;
    EXPECT_GT(effect, kMinEffect) << c << " " << variant << " " << k << ": the training changed nothing";
  }
  std::printf("[ GoldenTrainOutputs ] %-9s %-9s effect:    %s\n", c.c_str(), variant.c_str(), line.c_str());
}

// Adapted modules in a LoRA file (one lora_A / lora_down per module, both layouts).
int64_t lora_modules(const std::string& path) {
  int64_t n = 0;
  for (const std::string& k : SafetensorsFile::open(path).keys())
    if (k.ends_with(".lora_A.weight") || k.ends_with(".lora_down.weight")) ++n;
  return n;
}

// ---------------------------------------------------------------- loading what sd_train saved

TEST(GoldenTrainOutputs, LoraFilesLoadAndRunLikeDiffusers) {
  for (const std::string c : {"sd1_lora", "sdxl_lora", "sd1_db_lora"}) {
    const Io io = read_io(c);
    const auto p = infer::Pipeline::load(source_of(c));
    const Encoders m = encoders(*p);
    const Outputs base = run(m, io);
    expect_diffusers(c, "base", base, io);
    for (const auto& [layout, name] : kLoraFiles) {
      const std::string path = kOut + "/" + c + "/" + name;
      nn::LoraOptions opt;
      opt.strict = true;  // every key of the file must address a layer
      nn::LoadedLora lora = nn::load_lora(path, m.targets(), opt);
      std::printf("[ GoldenTrainOutputs ] %-9s %-9s %s\n", c.c_str(), layout.c_str(), lora.report().str().c_str());
      EXPECT_EQ(lora.report().format, layout == "kohya" ? nn::LoraFormat::Kohya : nn::LoraFormat::Diffusers);
      EXPECT_TRUE(lora.report().unmatched.empty());
      EXPECT_EQ(lora.report().total_applied(), lora_modules(path)) << c << " " << layout;
      const Outputs got = run(m, io);
      expect_diffusers(c, layout, got, io);
      expect_effect(c, layout, got, base);
      lora.remove();
      EXPECT_EQ(test::relative_error(run(m, io).at("unet"), base.at("unet")), 0.0) << "remove() left a change";
    }
  }
}

TEST(GoldenTrainOutputs, FullFineTuneFolderLoadsAndRunsLikeDiffusers) {
  for (const std::string c : {"sd1_full", "sdxl_full", "sd1_db_full"}) {
    const Io io = read_io(c);
    const auto base = infer::Pipeline::load(source_of(c));
    const Outputs base_out = run(encoders(*base), io);
    expect_diffusers(c, "base", base_out, io);
    const auto p = infer::Pipeline::load(kOut + "/" + c);
    EXPECT_EQ(p->family, base->family);
    EXPECT_EQ(p->pipeline_class, base->pipeline_class);
    const Outputs got = run(encoders(*p), io);
    expect_diffusers(c, "folder", got, io);
    expect_effect(c, "folder", got, base_out);
    // The tokenizers sd_train copied give the ids diffusers' tokenizers gave.
    for (size_t b = 0; b < io.captions.size(); ++b) {
      const std::vector<double> want = io.at("input_ids").to_vector();
      const std::vector<int> ids = p->tokenizer->encode_padded(io.captions[b]);
      ASSERT_EQ(ids.size(), 77u);
      for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(ids[i], int(want[b * 77 + i])) << c << " caption " << b;
      if (p->tokenizer_2) {
        const std::vector<double> want2 = io.at("input_ids_2").to_vector();
        const std::vector<int> ids2 = p->tokenizer_2->encode_padded(io.captions[b]);
        for (size_t i = 0; i < ids2.size(); ++i) EXPECT_EQ(ids2[i], int(want2[b * 77 + i])) << c << " caption " << b;
      }
    }
  }
}

// Text-encoder names as single-file sources (and CLIPTextModelWithProjection) spell them: with "text_model.".
std::string checkpoint_spelling(const std::string& k) {
  for (const char* flat : {"embeddings.", "encoder.", "final_layer_norm."})
    if (k.starts_with(flat)) return "text_model." + k;
  return k;
}

// diffusers reads the tiny single file with from_single_file(config=<tiny pipeline>): the configs come from
// the folder, the weights from the file. The same here: the tiny pipeline's config.json files, weights from
// nn::load_single_file (infer::Pipeline::load on a single file takes its configs from the released models'
// presets, whose heads and norm groups the tiny models do not have).
TEST(GoldenTrainOutputs, SingleFileLoadsAndRunsLikeDiffusers) {
  for (const std::string c : {"sd1_full", "sdxl_full", "sd1_db_full"}) {
    const Io io = read_io(c);
    const std::string source = source_of(c);
    const nn::SingleFileCheckpoint ck = nn::load_single_file(kOut + "/" + c + "/model.safetensors");
    EXPECT_EQ(ck.family, c.starts_with("sd1") ? nn::ModelFamily::SD1 : nn::ModelFamily::SDXL);
    EXPECT_TRUE(ck.unknown.empty()) << "keys no rule maps, first: " << (ck.unknown.empty() ? "" : ck.unknown[0]);
    EXPECT_EQ(ck.metadata.count("sd_train_steps"), 1u);

    // Every tensor of the file is the folder's, bit for bit (in f32).
    const nn::DiffusersFolder folder = nn::read_diffusers_folder(kOut + "/" + c);
    std::vector<std::string> components = {"unet", "vae", "text_encoder"};
    if (c.starts_with("sdxl")) components.push_back("text_encoder_2");
    for (const std::string& comp : components) {
      ASSERT_TRUE(ck.components.count(comp)) << c << ": the single file has no " << comp;
      const auto& src = *ck.components.at(comp);
      std::set<std::string> file_keys, folder_keys;
      for (const std::string& k : src.keys()) file_keys.insert(k);
      int64_t differ = 0;
      for (const auto& [k, t] : folder.components.at(comp)) {
        if (k.ends_with("position_ids")) continue;
        const std::string fk = comp.starts_with("text_encoder") ? checkpoint_spelling(k) : k;
        folder_keys.insert(fk);
        if (src.contains(fk) &&
            test::relative_error(src.get(fk, DType::F32, Device::cpu()), copy_to(t, DType::F32, Device::cpu())) != 0.0)
          ++differ;
      }
      EXPECT_EQ(file_keys, folder_keys) << c << " " << comp;
      EXPECT_EQ(differ, 0) << c << " " << comp << ": tensors of the single file differ from the folder's";
      std::printf("[ GoldenTrainOutputs ] %-9s single file %-14s %4zu tensors == folder's\n", c.c_str(), comp.c_str(),
                  file_keys.size());
    }

    nn::LoadOptions opt;  // strict: every parameter present
    auto unet = std::make_shared<nn::UNet2DConditionModel>(nn::UNetConfig::from_file(source + "/unet/config.json"));
    const nn::LoadReport ur = unet->load(*ck.components.at("unet"), opt);
    EXPECT_TRUE(ur.unexpected.empty()) << ur.str();
    auto encoder = [&](const std::string& comp) {
      auto m = std::make_shared<nn::ClipTextModel>(nn::ClipTextConfig::from_file(source + "/" + comp + "/config.json"));
      const nn::LoadReport r = m->load_transformers(*ck.components.at(comp), opt);
      EXPECT_TRUE(r.unexpected.empty()) << comp << ": " << r.str();
      return m;
    };
    auto te = encoder("text_encoder");
    std::shared_ptr<nn::ClipTextModel> te2 = c.starts_with("sdxl") ? encoder("text_encoder_2") : nullptr;
    const Outputs got = run({unet.get(), te.get(), te2.get()}, io);
    expect_diffusers(c, "single", got, io);
    // diffusers' single-file and folder outputs are the same numbers (the script checks it).
    for (const auto& [k, v] : got) EXPECT_EQ(test::relative_error(io.at(k + "_single"), io.at(k + "_folder")), 0.0);
  }
}

// ---------------------------------------------------------------- textual inversion

// Token ids [B, 77] of the io file as rows of ints.
std::vector<std::vector<int>> id_rows(const Tensor& t) {
  const std::vector<double> v = t.to_vector();
  std::vector<std::vector<int>> rows(size_t(t.size(0)));
  for (size_t b = 0; b < rows.size(); ++b)
    for (int64_t i = 0; i < t.size(1); ++i) rows[b].push_back(int(v[b * size_t(t.size(1)) + size_t(i)]));
  return rows;
}

Tensor ids_tensor(const std::vector<std::vector<int>>& rows) {
  std::vector<double> v;
  for (const auto& r : rows) v.insert(v.end(), r.begin(), r.end());
  return from_vector(v, {int64_t(rows.size()), int64_t(rows.at(0).size())}, DType::I64);
}

// What the make script recorded for each variant of a textual-inversion case: the starting pipeline on the
// prompts with the trigger ("plain") and with the initializer word once per vector ("init", the untrained
// embedding), and the trained embedding loaded from learned_embeds(.safetensors, _2) ("diffusers") and from
// the A1111 file ("a1111"). The C++ side loads the files with nn::TextualInversions as sd_infer --embedding
// does (the folder for SD1; for SDXL's pair each file into its encoder, as diffusers' recipe does, and the
// clip_l/clip_g file in one call), encodes with TextualInversions::encode_padded (trigger -> all its vectors)
// and runs the encoders as the pipelines use them (SD1 last_hidden_state; SDXL hidden_states[-2] of both and
// text_embeds), then infer::encode_prompts (sd_infer's prompt path) for the conditioning diffusers'
// encode_prompt gives (the script checked that it is these outputs).
TEST(GoldenTrainOutputs, TextualInversionFilesLoadAndEncodeLikeDiffusers) {
  for (const std::string c : {"sd1_ti", "sdxl_ti"}) {
    const Io io = read_io(c);
    const SafetensorsFile f = SafetensorsFile::open(kOut + "/" + c + "_io.safetensors");
    const nlohmann::json prompts = nlohmann::json::parse(f.metadata().at("prompts"));
    const std::string token = f.metadata().at("token"), trigger = f.metadata().at("a1111_trigger");
    const int64_t n = std::stoll(f.metadata().at("num_vectors"));
    const bool sdxl = c.starts_with("sdxl");
    std::map<std::string, Outputs> outs;
    for (const std::string variant : {"plain", "init", "diffusers", "a1111"}) {
      const auto p = infer::Pipeline::load(source_of(c));
      const nn::TextEncoderSlot first{&*p->tokenizer, p->text_encoder.get()};
      const nn::TextEncoderSlot second{sdxl ? &*p->tokenizer_2 : nullptr, p->text_encoder_2.get()};
      const int64_t vocab = p->tokenizer->size();
      nn::TextualInversions ti;
      std::vector<nn::TextualInversionEmbedding> loaded;  // copies: load() may move earlier ones
      if (variant == "diffusers" && !sdxl) {
        loaded.push_back(ti.load(kOut + "/" + c, {first, {}}));  // the folder: learned_embeds.safetensors
      } else if (variant == "diffusers") {
        loaded.push_back(ti.load(kOut + "/" + c + "/learned_embeds.safetensors", {first, {}}));
        loaded.push_back(ti.load(kOut + "/" + c + "/learned_embeds_2.safetensors", {second, {}}));
      } else if (variant == "a1111") {
        loaded.push_back(ti.load(kOut + "/" + c + "/" + trigger + ".safetensors", {first, second}));
      }
      for (const nn::TextualInversionEmbedding& e : loaded) {
        EXPECT_EQ(e.token, variant == "a1111" ? trigger : token) << c << " " << variant;
        EXPECT_EQ(e.num_vectors, n) << c << " " << variant;
        EXPECT_EQ(e.added.size(), variant == "a1111" && sdxl ? 2u : 1u) << c << " " << variant;
        for (const auto& a : e.added) {
          std::vector<int> want(static_cast<size_t>(n), 0);
          for (int64_t j = 0; j < n; ++j) want[size_t(j)] = int(vocab + j);  // new ids after the vocabulary
          EXPECT_EQ(a.ids, want) << c << " " << variant;
        }
      }
      const std::vector<std::string> texts = prompts.at(variant).get<std::vector<std::string>>();
      // Token ids exactly as diffusers' maybe_convert_prompt + tokenizer gave them.
      std::vector<std::vector<int>> ids, ids2;
      for (const std::string& t : texts) {
        ids.push_back(ti.encode_padded(*p->tokenizer, t));
        if (sdxl) ids2.push_back(ti.encode_padded(*p->tokenizer_2, t));
      }
      EXPECT_EQ(ids, id_rows(io.at("ids_" + variant))) << c << " " << variant;
      if (sdxl) EXPECT_EQ(ids2, id_rows(io.at("ids2_" + variant))) << c << " " << variant;
      Outputs& got = outs[variant];
      if (!sdxl) {
        got["te"] = p->text_encoder->forward(ids_tensor(ids));
      } else {
        nn::ClipTextRequest r1;
        r1.last_hidden_state = false;
        r1.hidden_states = {-2};
        got["te"] = p->text_encoder->forward(ids_tensor(ids), r1).hidden_states.at(0);
        nn::ClipTextRequest r2 = r1;
        r2.text_embeds = true;
        nn::ClipTextOutput o = p->text_encoder_2->forward(ids_tensor(ids2), r2);
        got["te2"] = o.hidden_states.at(0);
        got["te2_embeds"] = o.text_embeds;
      }
      expect_diffusers(c, variant, got, io);
      // sd_infer's prompt path (infer::encode_prompts with the embeddings) gives the same conditioning.
      infer::PromptEncodeOptions po;
      po.embeddings = &ti;
      double worst = 0;
      for (size_t b = 0; b < texts.size(); ++b) {
        const infer::EncodedPrompts e = infer::encode_prompts(*p, texts[b], std::nullopt, false, po);
        const int64_t B = int64_t(b);
        const Tensor want = sdxl ? cat({narrow(got.at("te"), 0, B, 1), narrow(got.at("te2"), 0, B, 1)}, -1)
                                 : narrow(got.at("te"), 0, B, 1);
        ASSERT_EQ(e.cond.context.shape(), want.shape()) << c << " " << variant << " prompt " << b;
        worst = std::max(worst, test::relative_error(e.cond.context, want));
        if (sdxl) worst = std::max(worst, test::relative_error(e.cond.pooled, narrow(got.at("te2_embeds"), 0, B, 1)));
      }
      std::printf("[ GoldenTrainOutputs ] %-9s %-9s encode_prompts vs the encoders: %.2e\n", c.c_str(), variant.c_str(),
                  worst);
      EXPECT_LE(worst, kTolerance) << c << " " << variant << ": encode_prompts";
    }
    // The A1111 file holds the learned_embeds vectors; the embedding changes the outputs, and the training
    // moved it away from its initializer.
    for (const auto& [k, v] : outs.at("diffusers")) EXPECT_EQ(test::relative_error(outs.at("a1111").at(k), v), 0.0) << c << " " << k;
    expect_effect(c, "vs plain", outs.at("diffusers"), outs.at("plain"));
    expect_effect(c, "vs init", outs.at("diffusers"), outs.at("init"));
  }
}

// ---------------------------------------------------------------- sd_train writes the same files again

struct TempDir {
  fs::path dir;
  explicit TempDir(const std::string& name) {
    dir = fs::temp_directory_path() / ("sd_train_outputs_" + std::to_string(::getpid()) + "_" + name);
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char ch : s) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return q + "'";
}

// {data} (tests/data) and {tmp} (the run's scratch folder) in an argument of commands.json.
std::string expand_arg(std::string a, const fs::path& scratch) {
  for (const auto& [key, value] : {std::pair<std::string, std::string>{"{data}", kData}, {"{tmp}", scratch.string()}})
    for (size_t at = a.find(key); at != std::string::npos; at = a.find(key, at + value.size())) a.replace(at, key.size(), value);
  return a;
}

// Runs the case's command of commands.json into `out` (scratch files, e.g. DreamBooth's generated class
// images, in `scratch`); returns the exit status (output in `log`).
int run_sd_train(const std::string& c, const fs::path& out, const fs::path& scratch, const fs::path& log) {
  const nlohmann::json& j = commands();
  std::string cmd;
  for (const auto& [k, v] : j.at("env").items()) cmd += k + "=" + shell_quote(v.get<std::string>()) + " ";
  cmd += shell_quote(kSdTrain) + " --pretrained_model_name_or_path " + shell_quote(source_of(c));
  for (const auto& a : j.at("common")) cmd += " " + shell_quote(a.get<std::string>());
  for (const auto& a : j.at("cases").at(c).at("args")) cmd += " " + shell_quote(expand_arg(a.get<std::string>(), scratch));
  cmd += " --output_dir " + shell_quote(out.string()) + " >" + shell_quote(log.string()) + " 2>&1";
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A rewritten safetensors file against the committed one: the same bytes, or (see the header comment) the
// same names, dtypes, shapes and metadata with every tensor within `tol` (relative).
void expect_same_safetensors(const fs::path& got, const fs::path& committed, double tol, const std::string& what) {
  const std::string a = read_bytes(got), b = read_bytes(committed);
  if (a == b) {
    std::printf("[ GoldenTrainOutputs ] %-40s byte-identical (%zu bytes)\n", what.c_str(), a.size());
    return;
  }
  const SafetensorsFile fa = SafetensorsFile::open(got.string()), fb = SafetensorsFile::open(committed.string());
  EXPECT_EQ(fa.metadata(), fb.metadata()) << what;
  ASSERT_EQ(fa.keys(), fb.keys()) << what;
  double worst = 0;
  std::string worst_key;
  for (const std::string& k : fa.keys()) {
    ASSERT_EQ(fa.info(k).dtype_str, fb.info(k).dtype_str) << what << " " << k;
    ASSERT_EQ(fa.info(k).shape, fb.info(k).shape) << what << " " << k;
    const double e = test::relative_error(fa.get(k, DType::F64, Device::cpu()), fb.get(k, DType::F64, Device::cpu()));
    if (e > worst) worst = e, worst_key = k;
  }
  std::printf("[ GoldenTrainOutputs ] %-40s NOT byte-identical: same names/dtypes/shapes/metadata, worst tensor "
              "rel err %.2e (%s; bound %.0e): this CPU's BLAS rounds differently from the fixtures' machine\n",
              what.c_str(), worst, worst_key.c_str(), tol);
  EXPECT_LE(worst, tol) << what << ": " << worst_key;
}

std::set<std::string> files_under(const fs::path& d) {
  std::set<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(d, fs::directory_options::follow_directory_symlink))
    if (!e.is_directory()) out.insert(e.path().lexically_relative(d).string());
  return out;
}

TEST(GoldenTrainOutputs, SdTrainWritesTheCommittedFilesAgain) {
  ASSERT_TRUE(fs::is_regular_file(kSdTrain)) << kSdTrain << " is not built (ninja sd_train)";
  for (const std::string c : {"sd1_lora", "sdxl_lora", "sdxl_full", "sd1_ti", "sdxl_ti", "sd1_db_lora", "sd1_db_full"}) {
    TempDir tmp(c);
    const fs::path out = tmp.dir / "out", scratch = tmp.dir / "scratch", log = tmp.dir / "log.txt";
    fs::create_directories(scratch);
    ASSERT_EQ(run_sd_train(c, out, scratch, log), 0) << c << ": sd_train failed:\n" << read_bytes(log);
    const fs::path committed = kOut + "/" + c;
    if (c.ends_with("_lora") || c.ends_with("_ti")) {
      // The adapter / embedding files, and nothing else but the logs and the run's configuration.
      std::set<std::string> written = files_under(out);
      std::erase_if(written, [](const std::string& f) { return f.starts_with("logs/") || f == kRunConfigFile; });
      EXPECT_EQ(written, files_under(committed)) << c << ": the saved files";
      for (const std::string& name : files_under(committed))
        expect_same_safetensors(out / name, committed / name, 1e-3, c + "/" + name);
      continue;
    }
    // The whole pipeline folder: every file of the starting pipeline is there (symlinked ones too), the
    // untouched ones byte for byte (committed as symlinks to the starting pipeline's files), the trained
    // weights and the single file as committed.
    std::set<std::string> written = files_under(out);
    std::erase_if(written, [](const std::string& f) { return f.starts_with("logs/") || f == kRunConfigFile; });
    std::set<std::string> expected = files_under(source_of(c));
    expected.insert("model.safetensors");
    EXPECT_EQ(written, expected) << c << ": the saved folder's files";
    EXPECT_EQ(files_under(committed), expected);
    for (const std::string& f : written) {
      if (!fs::exists(committed / f)) continue;
      if (fs::is_symlink(committed / f)) {
        EXPECT_TRUE(read_bytes(out / f) == read_bytes(fs::path(source_of(c)) / f)) << c << "/" << f << " is not a copy";
      } else {
        expect_same_safetensors(out / f, committed / f, 1e-2, c + "/" + f);
      }
    }
  }
}

}  // namespace
}  // namespace sd::train
