// LoRAs on GPU models (on the fly and merged, f32 and bf16) against the CPU f32 run with the same LoRA,
// and a bit-exact unmerge on the GPU; textual-inversion rows on a GPU encoder.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>

#include "models/adapters/textual_inversion.h"
#include "tests/models/adapters/lora_fixtures.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

struct GpuModels {
  std::shared_ptr<UNet2DConditionModel> unet;
  std::shared_ptr<ClipTextModel> te, te2;
};

GpuModels load_gpu(const std::string& name, DType dt) {
  GpuModels m;
  m.unet = UNet2DConditionModel::from_pretrained(test::unet_golden_dir(name), dt, Device::cuda(),
                                                 name == "sd1" ? "fp16" : "");
  m.te = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l", dt, Device::cuda());
  if (name == "sdxl")
    m.te2 = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_bigg", dt, Device::cuda());
  return m;
}

TEST(CudaLora, GoldenLorasMatchTheCpu) {
  SD_REQUIRE_CUDA();
  for (const std::string name : {"sd1", "sdxl"}) {
    const std::string file = test::lora_file(name + (name == "sd1" ? "_peft" : "_kohya") + ".safetensors");
    test::LoraModels cpu = test::load_lora_models(name);
    load_lora(file, cpu.targets(), {});
    const test::LoraOutputs ref = test::run_lora_models(cpu);
    const auto io = test::unet_golden_io(name);
    for (LoraMode mode : {LoraMode::OnTheFly, LoraMode::Merge}) {
      for (DType dt : {DType::F32, DType::BF16}) {
        GpuModels g = load_gpu(name, dt);
        LoraOptions o;
        o.mode = mode;
        LoadedLora l = load_lora(file, {g.unet.get(), g.te.get(), g.te2.get()}, o);
        const double tol = dt == DType::F32 ? 1e-4 : 2e-2;
        const Tensor u = test::run_unet_golden(*g.unet, io, Device::cuda());
        ASSERT_TRUE(u.is_cuda());
        const double eu = test::relative_error(copy_to(u, DType::F32, Device::cpu()), ref.unet);
        const Tensor ids = copy_to(test::clip_golden_ids("l"), DType::I64, Device::cuda());
        const double et = test::relative_error(copy_to(g.te->forward(ids), DType::F32, Device::cpu()), ref.te);
        std::printf("[ CudaLora ] %s %s %s: unet %.2e, text encoder %.2e\n", name.c_str(),
                    mode == LoraMode::Merge ? "merged" : "on-the-fly", dtype_name(dt), eu, et);
        EXPECT_LE(eu, tol) << name << " " << dtype_name(dt);
        EXPECT_LE(et, tol) << name << " " << dtype_name(dt);
      }
    }
  }
}

TEST(CudaLora, KeepOriginalUnmergeIsBitExactOnTheGpu) {
  SD_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::BF16}) {
    GpuModels g = load_gpu("sdxl", dt);
    std::vector<Tensor> before;
    for (auto& [n, t] : g.unet->state_dict()) before.push_back(copy_to(t, t.dtype(), Device::cpu()));
    LoraOptions o;
    o.mode = LoraMode::Merge;
    o.keep_original = true;
    LoadedLora l = load_lora(test::lora_file("sdxl_peft.safetensors"), {g.unet.get(), g.te.get(), g.te2.get()}, o);
    l.remove();
    const auto now = g.unet->state_dict();
    for (size_t i = 0; i < now.size(); ++i) {
      const Tensor c = copy_to(now[i].second, now[i].second.dtype(), Device::cpu());
      EXPECT_EQ(std::memcmp(c.data_ptr(), before[i].data_ptr(), c.nbytes()), 0) << now[i].first;
    }
  }
}

TEST(CudaTextualInversion, RowsLandOnTheGpuEncoder) {
  SD_REQUIRE_CUDA();
  TokenizerConfig cfg;
  cfg.pad_token = 999;
  ClipTokenizer tok = ClipTokenizer::from_folder(test::lora_file("tokenizer"), cfg);
  ClipTokenizer tok_cpu = tok;
  auto gpu = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l", DType::F32, Device::cuda());
  auto cpu = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l");
  TextualInversions tg, tc;
  tg.load(test::lora_file("ti/cat_toy"), {{&tok, gpu.get()}, {}});
  tc.load(test::lora_file("ti/cat_toy"), {{&tok_cpu, cpu.get()}, {}});
  const std::vector<int> ids = tg.encode_padded(tok, "a photo of <cat-toy>");
  std::vector<double> v(ids.begin(), ids.end());
  const Tensor t = from_vector(v, {1, int64_t(ids.size())}, DType::I64);
  const Tensor out = gpu->forward(copy_to(t, DType::I64, Device::cuda()));
  EXPECT_TRUE(out.is_cuda());
  EXPECT_LE(test::relative_error(copy_to(out, DType::F32, Device::cpu()), cpu->forward(t)), 1e-4);
}

}  // namespace
}  // namespace sd::nn
