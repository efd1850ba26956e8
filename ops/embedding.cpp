#include "ops/embedding.h"

#include "autograd/node.h"
#include "ops/cpu/embedding.h"
#include "ops/cuda/embedding.h"
#include "ops/op_common.h"

namespace sd {

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  SD_NVTX_RANGE("embedding");
  const char* op = "embedding";
  detail::check_floating(op, weight);
  detail::check_dim(op, weight, 2, "weight [V, D]");
  SD_CHECK(ids.defined() && (ids.dtype() == DType::I32 || ids.dtype() == DType::I64),
           "embedding: ids must be i32 or i64, got ", ids.defined() ? ids.str() : std::string("an undefined tensor"));
  SD_CHECK(ids.device() == weight.device(), "embedding: ids ", ids.str(), " and weight ", weight.str(),
           " are on different devices");
  const int64_t V = weight.size(0);
  // Checked before the (parallel) gather: an exception cannot leave an OpenMP region, and a
  // GPU kernel cannot raise one. GPU ids are checked on a host copy (one synchronisation;
  // ids are few).
  int64_t bad = 0;
  const Tensor ids_host = ids.is_cpu() ? ids : copy_to(ids, ids.dtype(), Device::cpu());
  SD_CHECK(!cpu::find_bad_id(ids_host, V, bad), "embedding: id ", bad, " is out of range for a table of V = ", V,
           " rows (weight ", weight.str(), ")");
  Tensor out = SD_DISPATCH_DEVICE(weight, cpu::embedding(weight, ids), cuda::embedding(weight, ids));
  if (auto node = autograd::make_node(op, {weight})) {
    node->save(ids);
    node->backward = [V](Node& n, const std::vector<Tensor>& go) {
      return std::vector<Tensor>{SD_DISPATCH_DEVICE(go[0], cpu::embedding_backward(go[0], n.saved[0], V),
                                                    cuda::embedding_backward(go[0], n.saved[0], V))};
    };
    autograd::set_outputs(node, {out});
  }
  return out;
}

}  // namespace sd
