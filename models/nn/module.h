// Modules: a tree of named children and parameters whose dotted names are exactly the keys
// of diffusers/transformers checkpoints ("down_blocks.1.attentions.0.proj_in.weight"), so a
// state dict is a walk of the tree and loading a real file is a lookup by name.
//
// Parameters start unallocated (only their shape is known): loading reads each one straight
// from the file into the wanted dtype/device; init_parameters() fills them for training from
// scratch and for tests.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/formats/tensor_source.h"
#include "runtime/tensor.h"

namespace sd::nn {

struct LoadReport {
  std::vector<std::string> missing;     // parameters of the module the source lacks
  std::vector<std::string> unexpected;  // keys of the source (under the prefix) nothing uses
  std::string str() const;
};

struct LoadOptions {
  DType dtype = DType::F32;
  Device device = Device::cpu();
  bool strict = true;  // missing parameters are an error (unexpected keys are only reported)
  // Keys of the source that are known leftovers and not reported (e.g. "position_ids").
  std::vector<std::string> ignore_suffixes;
};

enum class Init { Zeros, Ones, Uniform /* U(-b, b), b = 1/sqrt(fan_in) like PyTorch's Linear/Conv */ };

class Module {
 public:
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  struct Param {
    std::string name;
    Tensor* slot;
    Shape shape;
    Init init;
    int64_t fan_in;
  };

  // Every parameter below this module, with its full dotted name.
  std::vector<std::pair<std::string, Param*>> named_parameters(const std::string& prefix = "");
  std::vector<std::pair<std::string, Tensor>> state_dict();
  // This module (named `name`) and every module below it, parents before children, with full
  // dotted names ("down_blocks.0.resnets.1.conv1"): how adapters find the layers they attach to.
  std::vector<std::pair<std::string, Module*>> named_modules(const std::string& name = "");
  LoadReport load(const TensorSource& src, const LoadOptions& opt = {}, const std::string& prefix = "");
  // Deterministic initialisation (Philox stream `seed`, one offset per parameter).
  void init_parameters(uint64_t seed, DType dtype = DType::F32, Device device = Device::cpu());
  void to(DType dtype, Device device);
  void set_requires_grad(bool on);
  // Every 4-d parameter with a spatial kernel (3x3 convolution weights) stored channels-last
  // ([O, kh, kw, C] in memory) or back to contiguous: what channels-last convolutions read, so
  // they do not transpose the weight on every call. Values, names and requires_grad are kept.
  void set_conv_weights_channels_last(bool on);
  int64_t num_parameters();
  std::shared_ptr<Module> child(const std::string& name) const;

  // Profiler ranges (NVTX in CUDA builds) carry each block's dotted name, so an Nsight Systems timeline
  // reads like the model ("unet.down_blocks.1.attentions.0"). name_for_tracing(root) names this module
  // `root` and every module below it by its path; until then trace_name() is `fallback` (the class).
  void name_for_tracing(const std::string& root);
  const char* trace_name(const char* fallback) const { return trace_name_.empty() ? fallback : trace_name_.c_str(); }

 protected:
  Module() = default;
  void register_parameter(const std::string& name, Tensor* slot, Shape shape, Init init, int64_t fan_in = 1);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }

 private:
  std::vector<Param> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  std::string trace_name_;
};

// A loaded parameter or a clear error naming it (forward before load/init).
const Tensor& checked(const Tensor& t, const char* what);

}  // namespace sd::nn
