// NVTX ranges: in builds with the CUDA toolkit (SD_WITH_NVTX) each op and model block opens a named range, so an Nsight
// Systems timeline reads like the model. Free (compiled out) in CPU-only builds.
#pragma once

#ifdef SD_WITH_NVTX
#include <nvtx3/nvToolsExt.h>
namespace sd {
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};
}  // namespace sd
#define SD_NVTX_CAT2(a, b) a##b
#define SD_NVTX_CAT(a, b) SD_NVTX_CAT2(a, b)
#define SD_NVTX_RANGE(name) ::sd::NvtxRange SD_NVTX_CAT(sd_nvtx_range_, __LINE__)(name)
#else
#define SD_NVTX_RANGE(name) ((void)0)
#endif
