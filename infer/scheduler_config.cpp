#include "infer/scheduler_config.h"

#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace sd::infer {
namespace {

using json = nlohmann::json;

// The __init__ arguments of each diffusers class (diffusers 0.42), i.e. the keys from_config
// hands to it. Everything else in a file is ignored by diffusers and by us.
const std::map<std::string, std::set<std::string>>& class_keys() {
  static const std::map<std::string, std::set<std::string>> keys = [] {
    const std::set<std::string> common = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                          "trained_betas", "prediction_type", "timestep_spacing", "steps_offset"};
    auto with = [&](std::initializer_list<const char*> extra) {
      std::set<std::string> s = common;
      for (const char* k : extra) s.insert(k);
      return s;
    };
    std::map<std::string, std::set<std::string>> m;
    m["DDPMScheduler"] = with({"variance_type", "clip_sample", "thresholding", "dynamic_thresholding_ratio",
                               "clip_sample_range", "sample_max_value", "rescale_betas_zero_snr"});
    m["DDIMScheduler"] = with({"clip_sample", "set_alpha_to_one", "thresholding", "dynamic_thresholding_ratio",
                               "clip_sample_range", "sample_max_value", "rescale_betas_zero_snr"});
    m["PNDMScheduler"] = with({"skip_prk_steps", "set_alpha_to_one"});
    m["EulerDiscreteScheduler"] =
        with({"interpolation_type", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "sigma_min",
              "sigma_max", "timestep_type", "rescale_betas_zero_snr", "final_sigmas_type"});
    m["EulerAncestralDiscreteScheduler"] = with({"rescale_betas_zero_snr"});
    m["HeunDiscreteScheduler"] =
        with({"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "clip_sample", "clip_sample_range"});
    m["DPMSolverMultistepScheduler"] =
        with({"solver_order", "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "algorithm_type",
              "solver_type", "lower_order_final", "euler_at_final", "use_karras_sigmas", "use_exponential_sigmas",
              "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas", "flow_shift", "final_sigmas_type",
              "lambda_min_clipped", "variance_type", "rescale_betas_zero_snr", "use_dynamic_shifting",
              "time_shift_type"});
    m["UniPCMultistepScheduler"] =
        with({"solver_order", "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "predict_x0",
              "solver_type", "lower_order_final", "disable_corrector", "solver_p", "use_karras_sigmas",
              "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas", "flow_shift", "final_sigmas_type",
              "rescale_betas_zero_snr", "use_dynamic_shifting", "time_shift_type", "sigma_min", "sigma_max",
              "shift_terminal"});
    m["LCMScheduler"] = with({"original_inference_steps", "clip_sample", "clip_sample_range", "set_alpha_to_one",
                              "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "timestep_scaling",
                              "rescale_betas_zero_snr"});
    return m;
  }();
  return keys;
}

// Python's json.dumps writes float('inf') / float('nan') as bare tokens that strict JSON (and
// nlohmann) rejects. Turn those tokens, outside strings, into strings the number reader accepts.
std::string quote_nonfinite_tokens(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) out += text[++i];
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    bool replaced = false;
    for (const char* tok : {"-Infinity", "Infinity", "NaN"}) {
      const size_t n = std::char_traits<char>::length(tok);
      if (text.compare(i, n, tok) == 0) {
        out += std::string("\"") + tok + "\"";
        i += n - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

json parse_json(const std::string& text, const std::string& what) {
  try {
    return json::parse(quote_nonfinite_tokens(text));
  } catch (const std::exception& e) {
    SD_FAIL("scheduler config ", what, " is not valid JSON: ", e.what());
  }
}

// Reads the keys of one (merged) config object for one class.
class Reader {
 public:
  Reader(const json& j, const std::string& source, const std::string& cls) : j_(j), src_(source), cls_(cls) {}

  bool has(const std::string& k) const { return j_.contains(k); }
  bool has_value(const std::string& k) const { return j_.contains(k) && !j_.at(k).is_null(); }

  template <class... Args>
  [[noreturn]] void fail(const std::string& k, const Args&... msg) const {
    std::ostringstream os;
    ((os << msg), ...);
    SD_FAIL("scheduler config ", src_, " (", cls_, "): key \"", k, "\" ", os.str(), " (value ",
            j_.contains(k) ? j_.at(k).dump() : std::string("absent"), ")");
  }

  // Integers of a scheduler config are step counts and offsets: anything past 2^31 (or a float
  // such as 1e30, whose conversion would be undefined) is refused before a table is sized by it.
  int64_t integer(const std::string& k, int64_t def) const {
    if (!has(k)) return def;
    const json& v = j_.at(k);
    constexpr double kLimit = double(int64_t(1) << 31);
    double d = 0;
    if (v.is_number_unsigned()) d = double(v.get<uint64_t>());
    else if (v.is_number_integer()) d = double(v.get<int64_t>());
    else if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) d = v.get<double>();
    else fail(k, "must be an integer");
    if (!(std::fabs(d) <= kLimit)) fail(k, "is out of range");
    return int64_t(d);
  }
  int64_t in_range(const std::string& k, int64_t v, int64_t lo, int64_t hi) const {
    if (v < lo || v > hi) fail(k, "must be between ", lo, " and ", hi);
    return v;
  }
  // A finite number strictly between lo and hi (betas, scales: the ends would divide by zero).
  double inside(const std::string& k, double v, double lo, double hi) const {
    if (!(std::isfinite(v) && v > lo && v < hi)) fail(k, "must be a finite number above ", lo, " and below ", hi);
    return v;
  }
  static bool number_of(const json& v, double* out) {
    if (v.is_number()) {
      *out = v.get<double>();
      return true;
    }
    if (v.is_string()) {  // the bare Infinity/NaN tokens of Python's json
      const std::string s = v.get<std::string>();
      if (s == "-Infinity") *out = -INFINITY;
      else if (s == "Infinity") *out = INFINITY;
      else if (s == "NaN") *out = NAN;
      else return false;
      return true;
    }
    return false;
  }
  double number(const std::string& k, double def) const {
    if (!has(k)) return def;
    double d = 0;
    if (!number_of(j_.at(k), &d)) fail(k, "must be a number");
    return d;
  }
  std::optional<double> optional_number(const std::string& k) const {
    if (!has_value(k)) return std::nullopt;
    double d = 0;
    if (!number_of(j_.at(k), &d)) fail(k, "must be a number or null");
    return d;
  }
  // None is falsy in Python, so null reads as false.
  bool flag(const std::string& k, bool def) const {
    if (!has(k)) return def;
    const json& v = j_.at(k);
    if (v.is_null()) return false;
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_number_integer()) return v.get<int64_t>() != 0;
    fail(k, "must be true or false");
  }
  std::string string(const std::string& k, const std::string& def) const {
    if (!has(k)) return def;
    if (!j_.at(k).is_string()) fail(k, "must be a string");
    return j_.at(k).get<std::string>();
  }
  void one_of(const std::string& k, const std::string& value, std::initializer_list<const char*> allowed,
              const char* what = "is not supported") const {
    for (const char* a : allowed)
      if (value == a) return;
    std::string list;
    for (const char* a : allowed) list += std::string(list.empty() ? "" : ", ") + "\"" + a + "\"";
    fail(k, what, ": only ", list);
  }
  // A key whose only supported value is "off" (false / null).
  void require_off(const std::string& k, const char* why) const {
    if (!has_value(k)) return;
    const json& v = j_.at(k);
    const bool on = v.is_boolean() ? v.get<bool>() : v.is_number() ? v.get<double>() != 0.0 : true;
    if (on) fail(k, "is not supported: ", why);
  }

 private:
  const json& j_;
  const std::string& src_;
  const std::string& cls_;
};

SchedulerConfig build(const json& file, const std::string& source, const std::string& target_class);

// The file with the overrides applied (an override also un-lists its key from
// _use_default_values, since from_config's keyword arguments always win).
json merge_overrides(json file, const json& overrides) {
  for (auto it = overrides.begin(); it != overrides.end(); ++it) {
    file[it.key()] = it.value();
    if (file.contains("_use_default_values") && file["_use_default_values"].is_array()) {
      json kept = json::array();
      for (const json& k : file["_use_default_values"])
        if (!(k.is_string() && k.get<std::string>() == it.key())) kept.push_back(k);
      file["_use_default_values"] = kept;
    }
  }
  return file;
}

}  // namespace

const std::vector<std::string>& SchedulerConfig::supported_classes() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& [name, keys] : class_keys()) v.push_back(name);
    return v;
  }();
  return names;
}

SchedulerConfig SchedulerConfig::defaults(const std::string& class_name) {
  auto it = class_keys().find(class_name);
  if (it == class_keys().end()) {
    std::string list;
    for (const std::string& n : supported_classes()) list += (list.empty() ? "" : ", ") + n;
    SD_FAIL("scheduler class \"", class_name, "\" is not supported (supported: ", list, ")");
  }
  SchedulerConfig c;
  c.class_name = class_name;
  c.source = "<defaults>";
  // Per-class __init__ defaults that differ from the struct's.
  if (class_name == "DDPMScheduler" || class_name == "DDIMScheduler") c.clip_sample = true;
  if (class_name == "DDIMScheduler" || class_name == "LCMScheduler") c.set_alpha_to_one = true;
  if (class_name == "HeunDiscreteScheduler") {
    c.beta_start = 0.00085;
    c.beta_end = 0.012;
  }
  if (class_name == "LCMScheduler") {
    c.beta_start = 0.00085;
    c.beta_end = 0.012;
    c.beta_schedule = "scaled_linear";
  }
  if (class_name == "EulerDiscreteScheduler" || class_name == "EulerAncestralDiscreteScheduler" ||
      class_name == "HeunDiscreteScheduler" || class_name == "DPMSolverMultistepScheduler" ||
      class_name == "UniPCMultistepScheduler")
    c.timestep_spacing = "linspace";
  if (class_name == "UniPCMultistepScheduler") c.solver_type = "bh2";
  return c;
}

SchedulerConfig SchedulerConfig::from_json_string(const std::string& text, const std::string& source,
                                                  const std::string& target_class, const std::string& overrides_json) {
  const json file = parse_json(text, source);
  SD_CHECK(file.is_object(), "scheduler config ", source, " is not a JSON object");
  json over = overrides_json.empty() ? json::object() : parse_json(overrides_json, source + " overrides");
  SD_CHECK(over.is_object(), "scheduler config overrides for ", source, " are not a JSON object");
  const json merged = merge_overrides(file, over);
  SchedulerConfig c = build(merged, source, target_class);
  c.raw_json_ = merged.dump();
  return c;
}

SchedulerConfig SchedulerConfig::from_file(const std::string& path, const std::string& target_class,
                                           const std::string& overrides_json) {
  std::ifstream in(path, std::ios::binary);
  SD_CHECK(in.good(), "cannot open scheduler config '", path, "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json_string(ss.str(), path, target_class, overrides_json);
}

SchedulerConfig SchedulerConfig::with_class(const std::string& target_class, const std::string& overrides_json) const {
  const std::string text = raw_json_.empty() ? std::string("{}") : raw_json_;
  return from_json_string(text, source, target_class, overrides_json);
}

namespace {

SchedulerConfig build(const json& file, const std::string& source, const std::string& target_class) {
  std::string cls = target_class;
  if (cls.empty()) {
    SD_CHECK(file.contains("_class_name") && file["_class_name"].is_string(), "scheduler config ", source,
             ": no \"_class_name\" (a string) and no scheduler class given");
    cls = file["_class_name"].get<std::string>();
    SD_CHECK(class_keys().count(cls), "scheduler config ", source, ": \"_class_name\" \"", cls,
             "\" is not a scheduler sd supports (", [] {
               std::string list;
               for (const std::string& n : SchedulerConfig::supported_classes()) list += (list.empty() ? "" : ", ") + n;
               return list;
             }(), "); choose one with --scheduler");
  } else if (file.contains("_class_name")) {
    // The file's own class does not matter when another is asked for, but it must look like one
    // (diffusers' from_config takes any scheduler's config).
    const json& fc = file["_class_name"];
    SD_CHECK(fc.is_string() && fc.get<std::string>().size() > 9 &&
                 fc.get<std::string>().compare(fc.get<std::string>().size() - 9, 9, "Scheduler") == 0,
             "scheduler config ", source, ": \"_class_name\" ", fc.dump(), " is not a scheduler class name");
  }
  SchedulerConfig c = SchedulerConfig::defaults(cls);
  c.source = source;
  const std::set<std::string>& keys = class_keys().at(cls);

  // As extract_init_dict: drop the _use_default_values keys and the private keys.
  std::set<std::string> use_defaults;
  if (file.contains("_use_default_values") && file["_use_default_values"].is_array())
    for (const json& k : file["_use_default_values"])
      if (k.is_string()) use_defaults.insert(k.get<std::string>());
  json j = json::object();
  for (auto it = file.begin(); it != file.end(); ++it) {
    if (it.key().empty() || it.key()[0] == '_' || use_defaults.count(it.key())) continue;
    j[it.key()] = it.value();
  }
  const bool karras_family = cls == "EulerDiscreteScheduler" || cls == "HeunDiscreteScheduler" ||
                             cls == "DPMSolverMultistepScheduler" || cls == "UniPCMultistepScheduler";
  for (auto it = j.begin(); it != j.end(); ++it) {
    const bool sigma_range = it.key() == "sigma_min" || it.key() == "sigma_max";
    if (!keys.count(it.key()) && !(karras_family && sigma_range)) c.ignored_keys.push_back(it.key());
  }

  // A view of j restricted to the keys the class takes (the hasattr-read sigma range apart).
  json jc = json::object();
  for (auto it = j.begin(); it != j.end(); ++it)
    if (keys.count(it.key())) jc[it.key()] = it.value();
  const Reader r(jc, source, cls);
  if (karras_family) {
    json js = json::object();
    for (const char* k : {"sigma_min", "sigma_max"})
      if (j.contains(k)) js[k] = j[k];
    const Reader rs(js, source, cls);
    c.sigma_min = rs.optional_number("sigma_min");
    c.sigma_max = rs.optional_number("sigma_max");
    if (c.sigma_min) rs.inside("sigma_min", *c.sigma_min, 0.0, 1e6);
    if (c.sigma_max) rs.inside("sigma_max", *c.sigma_max, 0.0, 1e6);
  }

  // ---- common ----
  c.num_train_timesteps = r.in_range("num_train_timesteps", r.integer("num_train_timesteps", c.num_train_timesteps), 2,
                                     100000);
  // A beta is a variance fraction: 0 < beta < 1, or alphas_cumprod reaches 0 (or goes negative).
  c.beta_start = r.inside("beta_start", r.number("beta_start", c.beta_start), 0.0, 1.0);
  c.beta_end = r.inside("beta_end", r.number("beta_end", c.beta_end), 0.0, 1.0);
  c.beta_schedule = r.string("beta_schedule", c.beta_schedule);
  if (r.has_value("trained_betas")) {
    const json& tb = jc["trained_betas"];
    if (!tb.is_array()) r.fail("trained_betas", "must be a list of numbers or null");
    for (const json& v : tb) {
      double d = 0;
      if (!Reader::number_of(v, &d)) r.fail("trained_betas", "must be a list of numbers or null");
      if (!(std::isfinite(d) && d > 0.0 && d < 1.0))
        r.fail("trained_betas", "must hold finite numbers above 0 and below 1 (", d, " is not)");
      c.trained_betas.push_back(d);
    }
    if (int64_t(c.trained_betas.size()) != c.num_train_timesteps)
      r.fail("trained_betas", "must have num_train_timesteps (", c.num_train_timesteps, ") entries, has ",
             c.trained_betas.size());
  } else {
    r.one_of("beta_schedule", c.beta_schedule, {"linear", "scaled_linear", "squaredcos_cap_v2"});
  }
  if (keys.count("rescale_betas_zero_snr")) c.rescale_betas_zero_snr = r.flag("rescale_betas_zero_snr", false);
  c.prediction_type = r.string("prediction_type", c.prediction_type);
  c.timestep_spacing = r.string("timestep_spacing", c.timestep_spacing);
  c.steps_offset = r.in_range("steps_offset", r.integer("steps_offset", c.steps_offset), 0, c.num_train_timesteps);
  if (cls != "LCMScheduler")  // LCM ignores timestep_spacing
    r.one_of("timestep_spacing", c.timestep_spacing, {"leading", "linspace", "trailing"});

  // ---- shared optional keys ----
  if (keys.count("thresholding")) r.require_off("thresholding", "dynamic thresholding is not implemented");
  if (keys.count("clip_sample")) {
    c.clip_sample = r.flag("clip_sample", c.clip_sample);
    c.clip_sample_range = r.inside("clip_sample_range", r.number("clip_sample_range", c.clip_sample_range), 0.0, 1e6);
  }
  if (keys.count("set_alpha_to_one")) c.set_alpha_to_one = r.flag("set_alpha_to_one", c.set_alpha_to_one);
  if (keys.count("use_beta_sigmas")) r.require_off("use_beta_sigmas", "beta sigmas (scipy) are not implemented");
  if (keys.count("use_karras_sigmas")) c.use_karras_sigmas = r.flag("use_karras_sigmas", false);
  if (keys.count("use_exponential_sigmas")) c.use_exponential_sigmas = r.flag("use_exponential_sigmas", false);
  if (c.use_karras_sigmas && c.use_exponential_sigmas)  // diffusers raises the same
    r.fail("use_exponential_sigmas", "cannot be combined with use_karras_sigmas");
  if (keys.count("final_sigmas_type")) {
    c.final_sigmas_type = r.string("final_sigmas_type", "zero");
    r.one_of("final_sigmas_type", c.final_sigmas_type, {"zero", "sigma_min"}, "is not valid");
  }
  if (keys.count("use_flow_sigmas")) r.require_off("use_flow_sigmas", "flow-matching sigmas are not implemented");
  if (keys.count("use_dynamic_shifting")) r.require_off("use_dynamic_shifting", "dynamic shifting is not implemented");

  // ---- per class ----
  const std::string& p = c.prediction_type;
  if (cls == "DDPMScheduler") {
    if (r.has("variance_type") && !jc["variance_type"].is_null()) {
      c.variance_type = r.string("variance_type", "fixed_small");
      r.one_of("variance_type", c.variance_type, {"fixed_small", "fixed_small_log", "fixed_large"});
    }
    r.one_of("prediction_type", p, {"epsilon", "v_prediction", "sample"});
  } else if (cls == "DDIMScheduler" || cls == "LCMScheduler") {
    r.one_of("prediction_type", p, {"epsilon", "v_prediction", "sample"});
    if (cls == "LCMScheduler") {
      c.original_inference_steps = r.integer("original_inference_steps", 50);
      if (c.original_inference_steps < 1 || c.original_inference_steps > c.num_train_timesteps)
        r.fail("original_inference_steps", "must be in [1, num_train_timesteps]");
      c.timestep_scaling = r.inside("timestep_scaling", r.number("timestep_scaling", 10.0), 0.0, 1e6);
    }
  } else if (cls == "PNDMScheduler") {
    c.skip_prk_steps = r.flag("skip_prk_steps", false);
    r.one_of("prediction_type", p, {"epsilon", "v_prediction"});
  } else if (cls == "EulerDiscreteScheduler") {
    r.one_of("interpolation_type", r.string("interpolation_type", "linear"), {"linear"});
    r.one_of("timestep_type", r.string("timestep_type", "discrete"), {"discrete"});
    if (p == "original_sample") c.prediction_type = "sample";
    r.one_of("prediction_type", c.prediction_type, {"epsilon", "v_prediction", "sample", "original_sample"});
  } else if (cls == "EulerAncestralDiscreteScheduler") {
    r.one_of("prediction_type", p, {"epsilon", "v_prediction"});
  } else if (cls == "HeunDiscreteScheduler") {
    r.one_of("prediction_type", p, {"epsilon", "v_prediction", "sample"});
  } else if (cls == "DPMSolverMultistepScheduler") {
    r.one_of("prediction_type", p, {"epsilon", "v_prediction", "sample"});
    c.solver_order = r.integer("solver_order", 2);
    if (c.solver_order < 1 || c.solver_order > 3) r.fail("solver_order", "must be 1, 2 or 3");
    c.algorithm_type = r.string("algorithm_type", "dpmsolver++");
    if (c.algorithm_type == "deis") c.algorithm_type = "dpmsolver++";  // diffusers' own remapping
    r.one_of("algorithm_type", c.algorithm_type, {"dpmsolver++", "sde-dpmsolver++"});
    c.solver_type = r.string("solver_type", "midpoint");
    if (c.solver_type == "logrho" || c.solver_type == "bh1" || c.solver_type == "bh2") c.solver_type = "midpoint";
    r.one_of("solver_type", c.solver_type, {"midpoint", "heun"});
    c.lower_order_final = r.flag("lower_order_final", true);
    c.euler_at_final = r.flag("euler_at_final", false);
    c.use_lu_lambdas = r.flag("use_lu_lambdas", false);
    c.lambda_min_clipped = r.number("lambda_min_clipped", c.lambda_min_clipped);
    if (std::isnan(c.lambda_min_clipped)) r.fail("lambda_min_clipped", "must not be NaN");
    r.require_off("variance_type", "learned variance is not implemented");
  } else if (cls == "UniPCMultistepScheduler") {
    r.one_of("prediction_type", p, {"epsilon", "v_prediction", "sample"});
    c.solver_order = r.integer("solver_order", 2);
    if (c.solver_order < 1 || c.solver_order > 3) r.fail("solver_order", "must be 1, 2 or 3");
    c.predict_x0 = r.flag("predict_x0", true);
    c.solver_type = r.string("solver_type", "bh2");
    if (c.solver_type == "midpoint" || c.solver_type == "heun" || c.solver_type == "logrho") c.solver_type = "bh2";
    r.one_of("solver_type", c.solver_type, {"bh1", "bh2"});
    c.lower_order_final = r.flag("lower_order_final", true);
    if (r.has_value("disable_corrector")) {
      const json& d = jc["disable_corrector"];
      if (!d.is_array()) r.fail("disable_corrector", "must be a list of step indices");
      for (const json& v : d) {
        if (!v.is_number_integer()) r.fail("disable_corrector", "must be a list of step indices");
        c.disable_corrector.push_back(v.get<int64_t>());
      }
    }
    if (!c.predict_x0 && c.final_sigmas_type == "zero")  // as DPM-Solver's noise-prediction rule
      r.fail("final_sigmas_type", "must be \"sigma_min\" with predict_x0 false: noise prediction cannot step to "
             "sigma 0 (diffusers 0.42 returns NaN there)");
    r.require_off("solver_p", "a predictor scheduler object cannot come from a file");
    r.require_off("shift_terminal", "it needs flow-matching sigmas");
  }
  return c;
}

}  // namespace
}  // namespace sd::infer
