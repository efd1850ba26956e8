// A program outside the project that uses the installed library: tokenizes a prompt with CLIP's
// tokenizer and runs the text encoder of the built-in model on it (what a pipeline does first).
// Built against the installed package by scripts/package_check.sh, with CMake (find_package(sd)) and
// with pkg-config; README.md shows it.
#include <cstdio>
#include <string>
#include <vector>

#include "infer/pipeline.h"
#include "models/clip/clip_text.h"
#include "runtime/tensor.h"

int main(int argc, char** argv) {
  const std::string prompt = argc > 1 ? argv[1] : "a red circle on a blue background";
  const std::string model = argc > 2 ? argv[2] : sd::infer::default_model_dir();
  try {
    const sd::ClipTokenizer tokenizer = sd::infer::load_tokenizer_folder(model + "/tokenizer");
    const std::vector<int> ids = tokenizer.encode_padded(prompt);
    std::printf("ids:");
    for (size_t i = 0; i < ids.size() && (i == 0 || ids[i - 1] != tokenizer.eos_id()); ++i) std::printf(" %d", ids[i]);
    std::printf("\n");

    const auto encoder = sd::nn::ClipTextModel::from_pretrained(model + "/text_encoder");
    std::vector<double> values(ids.begin(), ids.end());
    const sd::Tensor input = sd::from_vector(values, {1, int64_t(ids.size())}, sd::DType::I64);
    const sd::Tensor hidden = encoder->forward(input);
    const std::vector<double> h = hidden.to_vector();
    std::printf("last_hidden_state %s, first values %.6f %.6f %.6f\n", sd::shape_str(hidden.shape()).c_str(), h[0],
                h[1], h[2]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "text_embedding: %s\n", e.what());
    return 1;
  }
  return 0;
}
