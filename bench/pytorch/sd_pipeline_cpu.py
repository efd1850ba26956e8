# PyTorch + diffusers baseline for bench/cpu_compare.sh: the stages sd_infer reports (text encode,
# denoise loop, VAE decode, VAE encode of an input image) for one image on the CPU in f32 or bf16, printed as one JSON line. A baseline
# only: the product never runs Python.
import json, sys, time
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from PIL import Image

model, size, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[sys.argv[5] if len(sys.argv) > 5 else "fp32"]
torch.set_num_threads(threads)
t = time.perf_counter()
pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=dtype, safety_checker=None)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
load = time.perf_counter() - t
with torch.inference_mode():
    t = time.perf_counter()
    pos, neg = pipe.encode_prompt("a cat", "cpu", 1, True, "")
    text = time.perf_counter() - t
    t = time.perf_counter()
    latents = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, height=size, width=size, num_inference_steps=steps,
                   guidance_scale=7.5, generator=torch.Generator().manual_seed(1), output_type="latent").images
    denoise = time.perf_counter() - t
    t = time.perf_counter()
    pipe.vae.decode(latents / pipe.vae.config.scaling_factor)
    decode = time.perf_counter() - t
    encode = 0.0
    if len(sys.argv) > 6:  # the input image bench/cpu_compare.sh gives both tools: VAE encode
        image = pipe.image_processor.preprocess(Image.open(sys.argv[6]).convert("RGB")).to(dtype)
        t = time.perf_counter()
        pipe.vae.encode(image).latent_dist.sample(torch.Generator().manual_seed(1))
        encode = time.perf_counter() - t
print(json.dumps({"load_s": load, "text_encode_s": text, "denoise_s": denoise, "decode_s": decode,
                  "vae_encode_s": encode, "torch": torch.__version__}))
