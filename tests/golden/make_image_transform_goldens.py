#!/usr/bin/env python3
"""Writes tests/data/image_transforms/: small source images in every format the trainer decodes,
and what PIL (+ torchvision's transform rules) makes of them, for train/image_transforms.

diffusers' training scripts do `Image.open(p).convert("RGB")`, then torchvision
`Resize(resolution, interpolation)` (shorter side to `resolution`), `CenterCrop`/`RandomCrop`,
optionally `RandomHorizontalFlip`, `ToTensor()` and `Normalize([0.5], [0.5])`.

torchvision is not installed here (no wheel matches torch 2.15), so its few rules are written out
below exactly as torchvision's functional API computes them on PIL images:
  * Resize(int): short, long = sorted sides; new_short = size, new_long = int(size * long / short);
    unchanged size returns the image itself; otherwise PIL `img.resize((w, h), resample)` (no box,
    no reducing_gap).
  * CenterCrop: top = int(round((h - th) / 2.0)), left = int(round((w - tw) / 2.0)) (Python's
    round: half to even), then img.crop.
  * ToTensor: float32(u8) / 255 (CHW); Normalize([0.5], [0.5]): (x - 0.5) / 0.5 in float32.
Resampling itself is PIL's.

Run once by hand (needs Pillow with WebP, numpy, safetensors); the outputs are committed:
    python3 tests/golden/make_image_transform_goldens.py
"""
import io
import json
import os
import struct
import zlib

import numpy as np
import PIL
from PIL import Image, features
import safetensors
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "data", "image_transforms")

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def tv_resize(img, size, interp):
    """torchvision.transforms.functional.resize(img, size) for a PIL image and an int size."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_h, new_w) == (h, w):
        return img
    return img.resize((new_w, new_h), RESAMPLE[interp])


def tv_center_crop(img, th, tw):
    w, h = img.size
    assert tw <= w and th <= h, "the trainer always crops inside the resized image"
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return img.crop((left, top, left + tw, top + th)), top, left


def tv_to_normalized(img):
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def rgb_u8(img):
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def make_sources(rng):
    """name -> (file bytes, file name). Synthetic: gradients, noise, hard edges (which make the
    negative lobes of bicubic/lanczos overshoot and clip)."""
    out = {}

    # 37 high x 53 wide RGB: red ramp along x, green along y, blue noise, a checkerboard and
    # saturated blocks.
    h, w = 37, 53
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = (x * 255 // (w - 1)).astype(np.uint8)
    rgb[..., 1] = (y * 255 // (h - 1)).astype(np.uint8)
    rgb[..., 2] = rng.integers(0, 256, (h, w), dtype=np.uint8)
    rgb[5:15, 30:44] = np.where(((y[5:15, 30:44] + x[5:15, 30:44]) % 2 == 0)[..., None], 255, 0)
    rgb[20:30, 3:9] = (255, 255, 255)
    rgb[22:34, 9:17] = (0, 0, 0)
    rgb[25:37, 40:53] = rng.integers(0, 256, (12, 13, 3), dtype=np.uint8)
    out["rgb"] = (png_bytes(Image.fromarray(rgb, "RGB")), "rgb_37x53.png")

    # 90 x 120 smooth pattern with thin lines: large downscale ratios (wide filter supports).
    h, w = 90, 120
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    big = np.zeros((h, w, 3), np.uint8)
    big[..., 0] = (127.5 + 127.5 * np.sin(x / 7.0) * np.cos(y / 11.0)).round().astype(np.uint8)
    big[..., 1] = ((x + 2 * y) % 64 * 4).astype(np.uint8)
    big[..., 2] = (255 * ((x // 9 + y // 5) % 2)).astype(np.uint8)
    big[::13, :, :] = 255
    big[:, ::17, 1] = 0
    out["big"] = (png_bytes(Image.fromarray(big, "RGB")), "big_90x120.png")

    # RGBA with alpha 0..255 (convert("RGB") drops alpha: colour under alpha 0 must survive).
    rgba = rng.integers(0, 256, (29, 31, 4), dtype=np.uint8)
    rgba[:10, :, 3] = 0
    rgba[10:20, :, 3] = 255
    out["rgba"] = (png_bytes(Image.fromarray(rgba, "RGBA")), "rgba_29x31.png")

    # Grayscale (L), grayscale + alpha (LA), 16-bit grayscale (I;16), palette with tRNS.
    gray = rng.integers(0, 256, (23, 19), dtype=np.uint8)
    out["gray"] = (png_bytes(Image.fromarray(gray, "L")), "gray_23x19.png")
    la = rng.integers(0, 256, (7, 9, 2), dtype=np.uint8)
    out["la"] = (png_bytes(Image.fromarray(la, "LA")), "la_7x9.png")
    g16 = np.array([0, 1, 100, 254, 255, 256, 1000, 40000, 65535], np.uint16)
    g16 = np.tile(g16, (5, 1))
    g16[2] = rng.integers(0, 65536, 9, dtype=np.uint16)
    im16 = Image.fromarray(g16.astype("<u2"))  # mode I;16
    out["gray16"] = (png_bytes(im16), "gray16_5x9.png")
    # 16-bit RGB and gray+alpha PNGs (Pillow cannot write these: raw chunks): the high byte is kept.
    out["rgb16"] = (png16(rng.integers(0, 65536, (4, 5, 3), dtype=np.uint16), 2), "rgb16_4x5.png")
    out["la16"] = (png16(rng.integers(0, 65536, (3, 6, 2), dtype=np.uint16), 4), "la16_3x6.png")
    pal = Image.fromarray(rng.integers(0, 8, (10, 12), dtype=np.uint8), "P")
    pal.putpalette([(i * 37 + c * 91) % 256 for i in range(8) for c in range(3)])
    pal.info["transparency"] = 3
    out["palette"] = (png_bytes(pal, transparency=3), "palette_10x12.png")

    # JPEG (4:2:0 and 4:4:4), WebP (lossy RGB, lossless RGBA), BMP, GIF.
    rgb_img = Image.open(io.BytesIO(out["rgb"][0]))
    out["jpeg420"] = (save_bytes(rgb_img, "JPEG", quality=90), "rgb_37x53_420.jpg")
    out["jpeg444"] = (save_bytes(rgb_img, "JPEG", quality=95, subsampling=0), "rgb_37x53_444.jpg")
    out["webp_lossy"] = (save_bytes(rgb_img, "WEBP", quality=80), "rgb_37x53_lossy.webp")
    rgba_img = Image.open(io.BytesIO(out["rgba"][0]))
    out["webp_lossless"] = (save_bytes(rgba_img, "WEBP", lossless=True, exact=True), "rgba_29x31_lossless.webp")
    out["bmp"] = (save_bytes(rgb_img.crop((0, 0, 11, 9)), "BMP"), "rgb_9x11.bmp")
    # GIF without a transparent index (stb gives transparent pixels black, PIL their palette colour).
    gif = pal.copy()
    gif.info.pop("transparency", None)
    out["gif"] = (save_bytes(gif, "GIF"), "palette_10x12.gif")
    return out


def png16(arr, color_type):
    """A 16-bit PNG of arr [H, W, C] (C = 3: color type 2, C = 2: color type 4), filter 0."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png_bytes(img, **kw):
    return save_bytes(img, "PNG", **kw)


def save_bytes(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# (source, out_h, out_w): down, up, mixed, one axis only, ~2x, exact 3x, big ratios, and sizes
# where the height shrinks by more than twice as many pixels as the width (rgb 11x50, big 9x100:
# Pillow 13 runs the vertical pass first there).
RESIZE_CASES = [
    ("rgb", 16, 23), ("rgb", 11, 50), ("rgb", 41, 62), ("rgb", 64, 31), ("rgb", 37, 26),
    ("rgb", 50, 53), ("rgb", 18, 26), ("rgb", 1, 1),
    ("big", 13, 17), ("big", 30, 40), ("big", 7, 70), ("big", 9, 100),
]

# (source, resolution, interpolation): the full diffusers transform with a center crop.
FULL_CASES = [("rgb", 32, "lanczos"), ("big", 24, "bilinear"), ("gray", 16, "bicubic"), ("rgba", 20, "nearest")]

# (h, w, resolution) for torchvision's shorter-side size rule (int truncation of size*long/short).
SIZE_RULE_CASES = [(37, 53, 32), (53, 37, 32), (90, 120, 24), (768, 1024, 512), (1080, 1920, 1024),
                   (1000, 1001, 512), (3, 1000, 7), (512, 512, 512), (333, 1000, 1024), (23, 19, 16)]


def main():
    rng = np.random.default_rng(20261201)
    os.makedirs(OUT_DIR, exist_ok=True)
    for f in os.listdir(OUT_DIR):
        os.remove(os.path.join(OUT_DIR, f))
    sources = make_sources(rng)
    tensors = {}
    files = {}
    decoded = {}
    for name, (data, fname) in sources.items():
        with open(os.path.join(OUT_DIR, fname), "wb") as f:
            f.write(data)
        files[name] = fname
        img = Image.open(io.BytesIO(data))
        img.load()
        decoded[name] = img.convert("RGB")
        tensors["decoded/" + name] = rgb_u8(img)

    for src, oh, ow in RESIZE_CASES:
        for interp, resample in RESAMPLE.items():
            out = decoded[src].resize((ow, oh), resample)
            tensors["resize/%s/%s/%dx%d" % (src, interp, oh, ow)] = rgb_u8(out)

    full = []
    for src, res, interp in FULL_CASES:
        img = decoded[src]
        resized = tv_resize(img, res, interp)
        cropped, top, left = tv_center_crop(resized, res, res)
        key = "full/%s/%s/%d" % (src, interp, res)
        tensors[key] = tv_to_normalized(cropped)
        full.append({"key": key, "source": src, "resolution": res, "interpolation": interp,
                     "resized_hw": [resized.height, resized.width], "crop_top_left": [top, left],
                     "original_size": [img.height, img.width]})

    size_rule = []
    for h, w, res in SIZE_RULE_CASES:
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(res * long / short)
        new_w, new_h = (res, new_long) if w <= h else (new_long, res)
        size_rule.append([h, w, res, new_h, new_w])

    meta = {
        "files": json.dumps(files, sort_keys=True),
        "full": json.dumps(full),
        "size_rule": json.dumps(size_rule),
        "made_by": "Pillow %s (libwebp %s), numpy %s, safetensors %s; torchvision rules by hand" % (
            PIL.__version__, features.version("webp"), np.__version__, safetensors.__version__),
    }
    save_file(tensors, os.path.join(OUT_DIR, "goldens.safetensors"), metadata=meta)
    total = sum(os.path.getsize(os.path.join(OUT_DIR, f)) for f in os.listdir(OUT_DIR))
    print("wrote %d tensors, %d files, %d bytes in %s" % (len(tensors), len(files) + 1, total, OUT_DIR))


if __name__ == "__main__":
    main()
