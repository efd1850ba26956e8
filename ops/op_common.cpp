#include "ops/op_common.h"

#include <sstream>

namespace sd::detail {

std::string describe(const std::vector<Tensor>& ts) {
  std::ostringstream os;
  for (size_t i = 0; i < ts.size(); ++i) os << (i ? ", " : "") << ts[i].str();
  return os.str();
}

void check_same(const char* op, const std::vector<Tensor>& ts) {
  const Tensor* first = nullptr;
  for (const Tensor& t : ts) {
    SD_CHECK(t.defined(), op, ": undefined tensor argument");
    if (!first) {
      first = &t;
      continue;
    }
    SD_CHECK(t.dtype() == first->dtype(), op, ": dtypes differ (", describe(ts), ")");
    SD_CHECK(t.device() == first->device(), op, ": devices differ (", describe(ts), ")");
  }
}

void check_floating(const char* op, const Tensor& t) {
  SD_CHECK(t.defined() && is_floating(t.dtype()), op, ": needs a floating tensor, got ", t.str());
}

void check_dim(const char* op, const Tensor& t, int64_t ndim, const char* what) {
  SD_CHECK(t.dim() == ndim, op, ": ", what, " must be ", ndim, "-d, got ", t.str());
}

void check_cpu(const char* op, const std::vector<Tensor>& ts) {
  for (const Tensor& t : ts)
    SD_CHECK(!t.defined() || t.is_cpu(), op, ": no CUDA kernel in this build yet for ", t.str());
}

}  // namespace sd::detail
