#include "models/nn/module.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "autograd/node.h"
#include "runtime/image_layout.h"
#include "runtime/rng.h"

namespace sd::nn {

std::string LoadReport::str() const {
  std::ostringstream os;
  os << missing.size() << " missing, " << unexpected.size() << " unexpected";
  auto list = [&](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    os << "; " << what << ": ";
    for (size_t i = 0; i < v.size() && i < 20; ++i) os << (i ? ", " : "") << v[i];
    if (v.size() > 20) os << ", ... (" << v.size() - 20 << " more)";
  };
  list("missing", missing);
  list("unexpected", unexpected);
  return os.str();
}

void Module::register_parameter(const std::string& name, Tensor* slot, Shape shape, Init init, int64_t fan_in) {
  params_.push_back({name, slot, std::move(shape), init, fan_in});
}

std::shared_ptr<Module> Module::child(const std::string& name) const {
  for (const auto& [n, m] : children_)
    if (n == name) return m;
  return nullptr;
}

std::vector<std::pair<std::string, Module::Param*>> Module::named_parameters(const std::string& prefix) {
  std::vector<std::pair<std::string, Param*>> out;
  for (Param& p : params_) out.emplace_back(prefix + p.name, &p);
  for (auto& [name, m] : children_) {
    auto sub = m->named_parameters(prefix + name + ".");
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules(const std::string& name) {
  std::vector<std::pair<std::string, Module*>> out{{name, this}};
  for (auto& [child_name, m] : children_) {
    auto sub = m->named_modules(name.empty() ? child_name : name + "." + child_name);
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

void Module::name_for_tracing(const std::string& root) {
  trace_name_ = root;
  for (auto& [child_name, m] : children_) m->name_for_tracing(root + "." + child_name);
}

std::vector<std::pair<std::string, Tensor>> Module::state_dict() {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [name, p] : named_parameters())
    if (p->slot->defined()) out.emplace_back(name, *p->slot);
  return out;
}

LoadReport Module::load(const TensorSource& src, const LoadOptions& opt, const std::string& prefix) {
  // Two phases, so a bad file never leaves the module half-loaded: first check every key and
  // shape and read every tensor, then swap them all in.
  LoadReport report;
  std::set<std::string> used;
  auto params = named_parameters();
  for (auto& [name, p] : params) {
    const std::string key = prefix + name;
    if (!src.contains(key)) {
      report.missing.push_back(key);
      continue;
    }
    const Shape shape = src.shape(key);
    SD_CHECK(shape == p->shape, "loading '", key, "' from ", src.describe(), ": shape ", shape_str(shape),
             " does not match the model's ", shape_str(p->shape));
    used.insert(key);
  }
  for (const std::string& k : src.keys()) {
    if (k.rfind(prefix, 0) != 0 || used.count(k)) continue;
    bool ignored = false;
    for (const std::string& suf : opt.ignore_suffixes)
      ignored |= k.size() >= suf.size() && k.compare(k.size() - suf.size(), suf.size(), suf) == 0;
    if (!ignored) report.unexpected.push_back(k);
  }
  SD_CHECK(!opt.strict || report.missing.empty(), "loading from ", src.describe(), ": ", report.str());
  struct Loaded {
    Param* param;
    std::string key;
    Tensor value;
  };
  std::vector<Loaded> loaded;
  for (auto& [name, p] : params) {
    const std::string key = prefix + name;
    if (used.count(key)) loaded.push_back({p, key, src.get_in_place(key, opt.dtype, opt.device)});
  }
  for (Loaded& l : loaded) {
    const bool grad = l.param->slot->defined() && l.param->slot->requires_grad();
    *l.param->slot = l.value;
    l.param->slot->set_name(l.key);
    if (grad) l.param->slot->set_requires_grad(true);
  }
  return report;
}

void Module::init_parameters(uint64_t seed, DType dtype, Device device) {
  uint64_t offset = 0;
  for (auto& [name, p] : named_parameters()) {
    Tensor t = empty(p->shape, DType::F32);
    const int64_t n = t.numel();
    switch (p->init) {
      case Init::Zeros: fill_(t, 0.0); break;
      case Init::Ones: fill_(t, 1.0); break;
      case Init::Uniform: {
        const double b = 1.0 / std::sqrt(double(std::max<int64_t>(p->fan_in, 1)));
        fill_uniform_(t, seed, offset, -b, b);
        break;
      }
    }
    offset += uniform_blocks(n);
    *p->slot = copy_to(t, dtype, device);
    p->slot->set_name(name);
  }
}

void Module::to(DType dtype, Device device) {
  for (auto& [name, p] : named_parameters()) {
    if (!p->slot->defined()) continue;
    const bool grad = p->slot->requires_grad();
    *p->slot = copy_to(*p->slot, dtype, device);
    p->slot->set_name(name);
    if (grad) p->slot->set_requires_grad(true);
  }
}

void Module::set_conv_weights_channels_last(bool on) {
  for (auto& [name, p] : named_parameters()) {
    Tensor& w = *p->slot;
    if (!w.defined() || w.dim() != 4 || w.size(2) * w.size(3) == 1) continue;
    const bool grad = w.requires_grad();
    Tensor moved = on ? channels_last_raw(w) : contiguous_raw(w);
    if (moved.same(w)) continue;
    w = moved;
    w.set_name(name);
    if (grad) w.set_requires_grad(true);
  }
}

void Module::set_requires_grad(bool on) {
  for (auto& [name, p] : named_parameters())
    if (p->slot->defined()) p->slot->set_requires_grad(on);
}

int64_t Module::num_parameters() {
  int64_t n = 0;
  for (auto& [name, p] : named_parameters()) n += shape_numel(p->shape);
  return n;
}

const Tensor& checked(const Tensor& t, const char* what) {
  SD_CHECK(t.defined(), what, ": parameter not loaded (load weights or call init_parameters first)");
  return t;
}

}  // namespace sd::nn
