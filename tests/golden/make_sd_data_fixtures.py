#!/usr/bin/env python3
"""Writes tests/data/sd_data/: the image sd_data's tests cannot make themselves.

  cmyk_24x16.jpg          a CMYK JPEG (Pillow writes the Adobe APP14 marker and inverted CMYK, as
                          Photoshop does): sd_data clean must see mode CMYK and convert it to RGB
  cmyk_24x16_pil_rgb.png  what Pillow's Image.open(...).convert("RGB") makes of it (the reference
                          the C++ conversion is compared with, within a small tolerance)

Every other test image (grayscale, RGBA, 16-bit, palette, corrupt, truncated, duplicates) is made by
the tests themselves or taken from tests/data/image_transforms.

Run once by hand (needs Pillow); the outputs are committed:
    python3 tests/golden/make_sd_data_fixtures.py
"""
import os

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "data", "sd_data")


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    w, h = 24, 16
    img = Image.new("CMYK", (w, h))
    px = img.load()
    # Four flat quarters (so JPEG's loss stays small inside them) with a gradient row at the bottom.
    quarters = [(0, 255, 255, 0), (255, 0, 255, 0), (0, 0, 0, 0), (0, 0, 0, 200)]  # red, green, white, dark grey
    for y in range(h):
        for x in range(w):
            if y >= h - 2:
                px[x, y] = (x * 10, 0, 255 - x * 10, 40)
            else:
                px[x, y] = quarters[(y * 2 // (h - 2)) * 2 + (x * 2 // w)]
    path = os.path.join(OUT_DIR, "cmyk_24x16.jpg")
    img.save(path, quality=95, subsampling=0)
    back = Image.open(path)
    assert back.mode == "CMYK", back.mode
    back.convert("RGB").save(os.path.join(OUT_DIR, "cmyk_24x16_pil_rgb.png"))
    print("wrote", OUT_DIR)


if __name__ == "__main__":
    main()
