// Checked calls for every CUDA library: each failure becomes sd::Error with file, line,
// the call's text and the library's own error string.
#pragma once
#include <cuda_runtime.h>

#include "runtime/error.h"

#define SD_CUDA_CHECK(call)                                                              \
  do {                                                                                   \
    cudaError_t sd_err_ = (call);                                                        \
    if (sd_err_ != cudaSuccess)                                                          \
      SD_FAIL("CUDA error ", cudaGetErrorName(sd_err_), " (", cudaGetErrorString(sd_err_), \
              ") in ", #call);                                                           \
  } while (0)

// After a kernel launch: launch-configuration errors surface here, not at the next sync.
#define SD_CUDA_CHECK_LAUNCH(name)                                                       \
  do {                                                                                   \
    cudaError_t sd_err_ = cudaGetLastError();                                            \
    if (sd_err_ != cudaSuccess)                                                          \
      SD_FAIL("CUDA kernel ", name, " failed to launch: ", cudaGetErrorString(sd_err_)); \
  } while (0)

#define SD_CUBLAS_CHECK(call)                                                            \
  do {                                                                                   \
    auto sd_st_ = (call);                                                                \
    if (sd_st_ != 0) SD_FAIL("cuBLAS error ", int(sd_st_), " in ", #call);               \
  } while (0)

#define SD_CUDNN_CHECK(call)                                                             \
  do {                                                                                   \
    auto sd_st_ = (call);                                                                \
    if (sd_st_ != 0) SD_FAIL("cuDNN error ", cudnnGetErrorString(sd_st_), " in ", #call); \
  } while (0)

#define SD_NCCL_CHECK(call)                                                              \
  do {                                                                                   \
    auto sd_st_ = (call);                                                                \
    if (sd_st_ != 0) SD_FAIL("NCCL error ", ncclGetErrorString(sd_st_), " in ", #call);  \
  } while (0)
