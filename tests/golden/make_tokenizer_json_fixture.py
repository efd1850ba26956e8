#!/usr/bin/env python3
"""A tokenizer folder as transformers 5 saves it: tokenizer.json (+ tokenizer_config.json), no
vocab.json / merges.txt (tests/models/clip/tokenizer_json_test.cpp).

  tests/data/tokenizer_json_sd1/   CLIPTokenizer.from_pretrained(tests/data/pipe_tiny_sd1/tokenizer)
                                   .save_pretrained(...), plus ids.json: input_ids of a few prompts
                                   as transformers computes them from that folder.

Python is only the test oracle; CI never runs this script.
"""
import json
import os
import shutil

import transformers
from transformers import CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")
PROMPTS = ["a photo of a cat", "A RED circle, on a blue background!", "don't stop-believing 123", ""]


def main():
    dst = os.path.join(DATA, "tokenizer_json_sd1")
    shutil.rmtree(dst, ignore_errors=True)
    tok = CLIPTokenizer.from_pretrained(os.path.join(DATA, "pipe_tiny_sd1", "tokenizer"))
    tok.save_pretrained(dst)
    assert not os.path.exists(os.path.join(dst, "vocab.json")), "expected transformers 5 (tokenizer.json only)"
    again = CLIPTokenizer.from_pretrained(dst)
    ids = {p: again(p, padding="max_length", max_length=again.model_max_length)["input_ids"] for p in PROMPTS}
    with open(os.path.join(dst, "ids.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "ids": ids}, f, indent=1)
    print(sorted(os.listdir(dst)))


if __name__ == "__main__":
    main()
