// The stream every kernel of this thread launches on (runtime/stream.h).
#pragma once
#include <cuda_runtime.h>

#include "runtime/stream.h"

namespace sd::cuda {
inline cudaStream_t stream() { return static_cast<cudaStream_t>(current_stream_handle()); }
}  // namespace sd::cuda
