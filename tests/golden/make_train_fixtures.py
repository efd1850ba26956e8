#!/usr/bin/env python3
"""Small training datasets for the sd_train tests (tests/train/*, tests/data/train_tiny*).

Python is only used to draw the pictures once; CI never runs this script. Writes:

tests/data/train_tiny/          8 PNGs of 64x64 (a filled shape in a named colour on a named background)
                                and metadata.jsonl {"file_name", "text"}: the Hugging Face imagefolder layout
tests/data/train_tiny_txt/      4 of them as JPEG/WebP/PNG with same-name .txt captions (kohya layout), one of
                                different size (80x48) so resizing and cropping run
tests/data/train_tiny_parquet/  the same 8 examples as a Hub dataset repository: data/train-00000-of-00001.parquet
                                with an Image column ({bytes, path}) and a text column, written by `datasets`

Run: python3 tests/golden/make_train_fixtures.py   (Pillow, datasets 5.x)
"""
import json
import os
import shutil

from PIL import Image, ImageDraw

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
           "white": (245, 245, 245), "black": (15, 15, 15), "purple": (140, 50, 170), "orange": (240, 140, 30)}
EXAMPLES = [("circle", "red", "white"), ("square", "blue", "yellow"), ("triangle", "green", "black"),
            ("circle", "yellow", "purple"), ("square", "orange", "blue"), ("triangle", "white", "red"),
            ("circle", "black", "green"), ("square", "purple", "orange")]


def draw(shape, fg, bg, w=64, h=64):
    img = Image.new("RGB", (w, h), COLOURS[bg])
    d = ImageDraw.Draw(img)
    box = (w * 0.2, h * 0.2, w * 0.8, h * 0.8)
    if shape == "circle":
        d.ellipse(box, fill=COLOURS[fg])
    elif shape == "square":
        d.rectangle(box, fill=COLOURS[fg])
    else:
        d.polygon([(w * 0.5, h * 0.15), (w * 0.85, h * 0.8), (w * 0.15, h * 0.8)], fill=COLOURS[fg])
    return img


def main():
    out = os.path.join(ROOT, "train_tiny")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    rows = []
    with open(os.path.join(out, "metadata.jsonl"), "w") as f:
        for i, (shape, fg, bg) in enumerate(EXAMPLES):
            name = f"{i:02d}_{fg}_{shape}.png"
            draw(shape, fg, bg).save(os.path.join(out, name), optimize=True)
            caption = f"a {fg} {shape} on a {bg} background"
            f.write(json.dumps({"file_name": name, "text": caption}) + "\n")
            rows.append((os.path.join(out, name), caption))

    txt = os.path.join(ROOT, "train_tiny_txt")
    shutil.rmtree(txt, ignore_errors=True)
    os.makedirs(txt)
    for i, (shape, fg, bg) in enumerate(EXAMPLES[:4]):
        ext = [".png", ".jpg", ".webp", ".png"][i]
        size = (80, 48) if i == 3 else (64, 64)
        img = draw(shape, fg, bg, *size)
        name = f"{i:02d}_{fg}_{shape}{ext}"
        img.save(os.path.join(txt, name), quality=95) if ext != ".png" else img.save(os.path.join(txt, name))
        with open(os.path.join(txt, f"{i:02d}_{fg}_{shape}.txt"), "w") as f:
            f.write(f"a {fg} {shape} on a {bg} background\n")

    import datasets
    pq = os.path.join(ROOT, "train_tiny_parquet")
    shutil.rmtree(pq, ignore_errors=True)
    os.makedirs(os.path.join(pq, "data"))
    ds = datasets.Dataset.from_dict({"image": [p for p, _ in rows], "text": [c for _, c in rows]})
    ds = ds.cast_column("image", datasets.Image())
    ds.to_parquet(os.path.join(pq, "data", "train-00000-of-00001.parquet"))


if __name__ == "__main__":
    main()
