// The CLIP text encoder on the GPU against the CPU run of the same golden tiny models
// (tests/data/clip_tiny_*): every output in f32 (relative error <= 1e-4) and bf16 (<= 2e-2),
// and in f32 the gradients of the token table and a layer weight.
#include <gtest/gtest.h>

#include "autograd/engine.h"
#include "models/clip/clip_text.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

ClipTextOutput run(const ClipTextModel& m, const Tensor& ids) {
  ClipTextRequest req;
  req.all_hidden_states = req.pooled = true;
  req.text_embeds = m.config().with_projection;
  return m.forward(ids, req);
}

void compare(const std::string& what, const Tensor& gpu, const Tensor& cpu, double tol) {
  ASSERT_TRUE(gpu.defined() && cpu.defined()) << what;
  EXPECT_TRUE(gpu.is_cuda()) << what;
  const double err = test::relative_error(copy_to(gpu, DType::F32, Device::cpu()), cpu);
  std::printf("[ CudaClipText ] %-40s rel err %.3g\n", what.c_str(), err);
  EXPECT_LE(err, tol) << what;
}

void check_model(const std::string& name) {
  const std::string dir = std::string(SD_TEST_DATA_DIR) + "/clip_tiny_" + name;
  const Tensor ids = SafetensorsFile::open(dir + "/io.safetensors").get("input_ids");
  auto cpu = ClipTextModel::from_pretrained(dir);
  const ClipTextOutput ref = run(*cpu, ids);
  for (DType dt : {DType::F32, DType::BF16}) {
    const double tol = dt == DType::F32 ? 1e-4 : 2e-2;
    const std::string tag = name + (dt == DType::F32 ? " f32 " : " bf16 ");
    auto gpu = ClipTextModel::from_pretrained(dir, dt, Device::cuda());
    const ClipTextOutput out = run(*gpu, copy_to(ids, DType::I64, Device::cuda()));
    compare(tag + "last_hidden_state", out.last_hidden_state, ref.last_hidden_state, tol);
    for (size_t i = 0; i < ref.hidden_states.size(); ++i)
      compare(tag + "hidden_states." + std::to_string(i), out.hidden_states[i], ref.hidden_states[i], tol);
    compare(tag + "pooled", out.pooled, ref.pooled, tol);
    if (ref.text_embeds.defined()) compare(tag + "text_embeds", out.text_embeds, ref.text_embeds, tol);
  }

  // Backward in f32: what textual inversion and text-encoder LoRA need.
  auto grads = [&](ClipTextModel& m, Device dev) {
    Tensor& table = m.text_model->embeddings->token_embedding->weight;
    Tensor& fc1 = m.text_model->layers[0]->mlp->fc1->weight;
    table.set_requires_grad(true);
    fc1.set_requires_grad(true);
    const ClipTextOutput o = run(m, copy_to(ids, DType::I64, dev));
    const Tensor& y = o.text_embeds.defined() ? o.text_embeds : o.pooled;
    // The same random upstream gradients on both devices, for the sequence and the pooled output.
    const Tensor w1 = copy_to(test::random_tensor(o.last_hidden_state.shape(), DType::F32, 5), DType::F32, dev);
    const Tensor w2 = copy_to(test::random_tensor(y.shape(), DType::F32, 6), DType::F32, dev);
    autograd::backward({o.last_hidden_state, y}, {w1, w2});
    return std::make_pair(table.grad(), fc1.grad());
  };
  auto gpu = ClipTextModel::from_pretrained(dir, DType::F32, Device::cuda());
  auto [gt_cpu, gf_cpu] = grads(*cpu, Device::cpu());
  auto [gt_gpu, gf_gpu] = grads(*gpu, Device::cuda());
  compare(name + " f32 grad token_embedding", gt_gpu, gt_cpu, 1e-4);
  compare(name + " f32 grad layers.0.mlp.fc1", gf_gpu, gf_cpu, 1e-4);
}

TEST(CudaClipText, ClipLMatchesCpu) {
  SD_REQUIRE_CUDA();
  check_model("l");
}
TEST(CudaClipText, OpenClipHMatchesCpu) {
  SD_REQUIRE_CUDA();
  check_model("h");
}
TEST(CudaClipText, OpenClipBigGMatchesCpu) {
  SD_REQUIRE_CUDA();
  check_model("bigg");
}

}  // namespace
}  // namespace sd::nn
