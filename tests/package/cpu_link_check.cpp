// Linked with every object of sd_core and the CPU-only backend sd_nocuda, and no CUDA library
// (CMakeLists.txt): the link fails when a CUDA entry point the CPU code calls has no stand-in in
// runtime/cuda_stub.cpp or ops/cuda_stub.cpp. Running it shows the stand-in answers.
#include <cstdio>

#include "runtime/cuda_api.h"

int main() {
  std::printf("CPU-only link: built_with_cuda %d, devices %d (%s)\n", int(sd::cudart::built_with_cuda()),
              sd::cudart::device_count(), sd::cudart::unavailable_reason().c_str());
  return sd::cudart::device_count() == 0 ? 0 : 1;
}
