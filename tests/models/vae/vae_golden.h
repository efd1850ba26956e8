// The tiny diffusers AutoencoderKL of tests/data/vae_tiny/ (tests/golden/make_vae_goldens.py), its
// recorded inputs/outputs and the lowered tile sizes the script gave diffusers, shared by the
// CPU golden tests and the GPU test.
#pragma once
#include <map>
#include <string>

#include "models/vae/vae.h"
#include "runtime/safetensors.h"

namespace sd::test {

inline std::string vae_golden_dir(const std::string& name = "vae_tiny") {
  return std::string(SD_TEST_DATA_DIR) + "/" + name;
}

// io.safetensors: inputs and diffusers' outputs (f32, and f64 under "<name>_f64"), CPU tensors.
inline std::map<std::string, Tensor> vae_golden_io() {
  SafetensorsFile f = SafetensorsFile::open(vae_golden_dir() + "/io.safetensors");
  std::map<std::string, Tensor> io;
  for (const std::string& k : f.keys()) io[k] = f.get(k);
  return io;
}

// diffusers: enable_tiling(); tile_sample_min_size 16, tile_latent_min_size 8, tile_overlap_factor 0.25.
inline nn::VaeTiling vae_golden_tiling() {
  nn::VaeTiling t;
  t.tile_sample = 16;
  t.tile_latent = 8;
  t.overlap_factor = 0.25;
  return t;
}

// Every recorded output of the golden model for the recorded inputs (moved to `device`), as CPU
// f32 tensors under io's names: enc_mean/enc_logvar, odd_mean/odd_logvar, dec, tiled_dec,
// tiled_mean/tiled_logvar.
inline std::map<std::string, Tensor> run_vae_golden(const nn::AutoencoderKL& vae, const std::map<std::string, Tensor>& io,
                                                    Device device = Device::cpu(), DType out = DType::F32) {
  auto in = [&](const char* k) { return copy_to(io.at(k), io.at(k).dtype(), device); };
  auto back = [&](const Tensor& t) { return copy_to(t, out, Device::cpu()); };
  std::map<std::string, Tensor> r;
  auto enc = vae.encode(in("image"));
  r["enc_mean"] = back(enc.mean);
  r["enc_logvar"] = back(enc.logvar);
  auto odd = vae.encode(in("image_odd"));
  r["odd_mean"] = back(odd.mean);
  r["odd_logvar"] = back(odd.logvar);
  r["dec"] = back(vae.decode(in("latents")));
  r["tiled_dec"] = back(vae.decode_tiled(in("latents_big"), vae_golden_tiling()));
  auto tiled = vae.encode_tiled(in("image_big"), vae_golden_tiling());
  r["tiled_mean"] = back(tiled.mean);
  r["tiled_logvar"] = back(tiled.logvar);
  return r;
}

}  // namespace sd::test
