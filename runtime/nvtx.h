// Named ranges around each op and model block. In builds with the CUDA toolkit (SD_WITH_NVTX) each
// also opens an NVTX range, so an Nsight Systems timeline reads like the model; in every build it
// feeds the SD_PROFILE per-op table (runtime/op_profile.h), which costs one branch when off.
#pragma once

#include "runtime/op_profile.h"

#ifdef SD_WITH_NVTX
#include <nvtx3/nvToolsExt.h>
#endif

namespace sd {
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) : profile_(name) {
#ifdef SD_WITH_NVTX
    nvtxRangePushA(name);
#endif
  }
  ~NvtxRange() {
#ifdef SD_WITH_NVTX
    nvtxRangePop();
#endif
  }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;

 private:
  ProfileRange profile_;
};
}  // namespace sd

#define SD_NVTX_CAT2(a, b) a##b
#define SD_NVTX_CAT(a, b) SD_NVTX_CAT2(a, b)
#define SD_NVTX_RANGE(name) ::sd::NvtxRange SD_NVTX_CAT(sd_nvtx_range_, __LINE__)(name)
