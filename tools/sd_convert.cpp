// sd_convert: Stable Diffusion checkpoints between diffusers folders and single files
// (.safetensors / .ckpt), see models/formats/single_file.h.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "models/formats/single_file.h"
#include "runtime/error.h"

namespace {

void usage(FILE* out) {
  std::fprintf(out,
               "usage: sd_convert --from <diffusers dir | file.safetensors | file.ckpt> --to <out.safetensors | out_dir>\n"
               "                  [--family sd1|sd2|sdxl|sdxl_refiner|ssd1b] [--prediction epsilon|v_prediction]\n"
               "                  [--use_ema] [--half] [--variant fp16] [--tokenizer_from dir] [--info]\n"
               "\n"
               "Converts Stable Diffusion weights between the diffusers folder layout (unet/, vae/,\n"
               "text_encoder/, text_encoder_2/) and original single-file checkpoints (ldm/sgm names, as\n"
               "A1111, ComfyUI and kohya use them).\n"
               "\n"
               "  folder -> file.safetensors    one safetensors file with original names\n"
               "  file   -> file.safetensors    re-save (e.g. a .ckpt as safetensors, EMA weights, fp16);\n"
               "                                only UNet/VAE/text-encoder weights are kept\n"
               "  file   -> dir                 a diffusers folder: weights, config.json files, scheduler,\n"
               "                                model_index.json\n"
               "\n"
               ".ckpt files are read without Python and without running their pickle: only tensors and\n"
               "inert training metadata are accepted; any other Python global is refused by name.\n"
               "\n"
               "options:\n"
               "  --family F        model family, when detection from the keys is not wanted or fails\n"
               "  --prediction P    epsilon or v_prediction; needed for SD2 when writing a folder (the\n"
               "                    weights of 768-v and 512-base models look alike) unless the file has\n"
               "                    ComfyUI's v_pred marker; v_prediction writes that marker into files\n"
               "  --use_ema         take the UNet from the model_ema.* copy of a training checkpoint\n"
               "  --half            store floating tensors as float16\n"
               "  --variant V       read <name>.<V>.safetensors files of a diffusers folder (e.g. fp16)\n"
               "  --tokenizer_from D  copy vocab.json + merges.txt from D into tokenizer/ (tokenizer_2/)\n"
               "  --info            print what the input holds and exit\n");
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sd::nn;
  std::string from, to, variant, tokenizer_from;
  ModelFamily family = ModelFamily::Unknown;
  Prediction prediction = Prediction::Unknown;
  bool use_ema = false, half = false, info = false;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        SD_CHECK(i + 1 < argc, "sd_convert: ", a, " needs a value");
        return argv[++i];
      };
      if (a == "--help" || a == "-h") {
        usage(stdout);
        return 0;
      } else if (a == "--from") from = value();
      else if (a == "--to") to = value();
      else if (a == "--family") family = parse_family(value());
      else if (a == "--prediction") prediction = parse_prediction(value());
      else if (a == "--variant") variant = value();
      else if (a == "--tokenizer_from") tokenizer_from = value();
      else if (a == "--use_ema") use_ema = true;
      else if (a == "--half") half = true;
      else if (a == "--info") info = true;
      else SD_FAIL("sd_convert: unknown argument '", a, "' (see --help)");
    }
    if (from.empty() || (to.empty() && !info)) {
      usage(stderr);
      return 2;
    }
    const bool from_dir = std::filesystem::is_directory(from);
    const std::optional<sd::DType> dtype = half ? std::optional<sd::DType>(sd::DType::F16) : std::nullopt;

    if (info) {
      if (from_dir) {
        DiffusersFolder f = read_diffusers_folder(from, variant);
        std::printf("diffusers folder, family %s\n", family_name(f.family));
        for (auto& [name, tensors] : f.components) std::printf("  %s: %zu tensors\n", name.c_str(), tensors.size());
      } else {
        SingleFileLoadOptions lo;
        lo.family = family;
        lo.use_ema = use_ema;
        SingleFileCheckpoint ck = load_single_file(from, lo);
        std::printf("single file: %s\n", ck.detected.describe().c_str());
        if (ck.global_step) std::printf("  global_step %lld\n", static_cast<long long>(*ck.global_step));
        for (auto& [name, src] : ck.components) std::printf("  %s: %zu tensors\n", name.c_str(), src->keys().size());
        std::printf("  ignored: %zu keys, unknown: %zu keys\n", ck.ignored.size(), ck.unknown.size());
        for (size_t i = 0; i < ck.unknown.size() && i < 20; ++i) std::printf("    unknown: %s\n", ck.unknown[i].c_str());
      }
      return 0;
    }

    const bool to_file = to.size() > 12 && to.compare(to.size() - 12, 12, ".safetensors") == 0;
    if (from_dir) {
      SD_CHECK(to_file, "sd_convert: a diffusers folder converts to a .safetensors file, not '", to, "'");
      FolderToFileOptions o;
      o.family = family;
      o.variant = variant;
      o.save.dtype = dtype;
      o.save.prediction = prediction;
      diffusers_folder_to_single_file(from, to, o);
    } else if (to_file) {
      SingleFileLoadOptions lo;
      lo.family = family;
      lo.use_ema = use_ema;
      SingleFileCheckpoint ck = load_single_file(from, lo);
      SD_CHECK(!ck.components.empty(), "sd_convert: '", from, "' holds no UNet, VAE or text encoder (",
               ck.detected.describe(), ")");
      SingleFileSaveOptions so;
      so.dtype = dtype;
      so.prediction = prediction != Prediction::Unknown ? prediction : ck.detected.prediction;
      save_single_file(to, ck.stored_tensors(), ck.family, so);
      if (!ck.unknown.empty())
        std::fprintf(stderr, "sd_convert: %zu keys no rule maps were left out, e.g. %s\n", ck.unknown.size(),
                     ck.unknown.front().c_str());
    } else {
      SingleFileLoadOptions lo;
      lo.family = family;
      const SingleFileCheckpoint ck = load_single_file(from, lo);  // reads the index only
      if (!ck.unknown.empty())
        std::fprintf(stderr, "sd_convert: %zu keys no rule maps are left out, e.g. %s\n", ck.unknown.size(),
                     ck.unknown.front().c_str());
      FileToFolderOptions o;
      o.load.family = family;
      o.load.use_ema = use_ema;
      o.prediction = prediction;
      o.dtype = dtype;
      o.tokenizer_from = tokenizer_from;
      single_file_to_diffusers_folder(from, to, o);
    }
    std::printf("wrote %s\n", to.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
