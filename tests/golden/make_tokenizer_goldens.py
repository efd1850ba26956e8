#!/usr/bin/env python3
"""Reference ids for the C++ CLIP tokenizer (tests/models/clip/tokenizer_test.cpp), made by transformers.

Python is only the test oracle; CI never runs this script. It writes tests/data/tokenizer_goldens.jsonl,
one JSON object per line:
  prompt       the text
  added        (optional) tokens added with add_tokens() before encoding, in this order
  ids          transformers 4.x CLIPTokenizer (the Python "slow" one, ftfy not installed) ids, no BOS/EOS
  padded_eos   the same tokenizer with padding="max_length", max_length=77, truncation=True (pad 49407)
  padded_zero  the same with pad_token="!" (pad id 0), as SD2 / SDXL tokenizer_2; transformers then treats
               "!" as a special token, so every "!" in the text is id 0 too (not "!</w>" = 256)
  fast         (only where it differs from ids) transformers 5.x CLIPTokenizer ids, which is the HF
               tokenizers pipeline (4.x CLIPTokenizerFast with special tokens matched before normalising)
  fast_padded_zero (only where it differs from padded_zero) the 5.x tokenizer with pad_token="!"
  decoded      (hand-written cases only) the slow tokenizer's decode(ids)

transformers 5 has no slow CLIPTokenizer any more, so two interpreters are needed: run this script with
the one that has transformers 5 and name one with transformers 4.x (no ftfy, no torch needed) with
--slow-python, e.g.
  python3 -m venv /tmp/tf4 && /tmp/tf4/bin/pip install transformers==4.57.1
  python3 tests/golden/make_tokenizer_goldens.py --slow-python /tmp/tf4/bin/python
The script also compares 4.x CLIPTokenizerFast with the slow tokenizer and prints every disagreement.
Prompts are generated deterministically (fixed seed) from characters assigned in Unicode 14 (Python
3.11's unicodedata), so every tool involved agrees on their properties.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLIP_DIR = os.path.join(ROOT, "tests", "data", "clip")
OUT = os.path.join(ROOT, "tests", "data", "tokenizer_goldens.jsonl")

# ---------------------------------------------------------------------------------------------
# Prompts

HAND = [
    "", " ", "   ", "\t", "\n", " \t\n\r ", "\u3000", "\u00a0", "\u2028", "\u00a0\u2003 \u3000",
    "a photo of a cat", "an astronaut riding a horse on mars", "it's 1024x1024 pixels",
    "A Photo Of A Cat", "A PHOTO OF A CAT", "a  photo\tof\na\r\ncat", "   leading and trailing   ",
    "a    photo     of    a     cat", "tabs\t\t\tand\n\n\nnewlines", "word\u00a0with\u00a0nbsp",
    # punctuation
    "hello, world!", "what?!", "...", "a...b", "!!!", "?!?!", "a,b,c", "a, b, c", "(masterpiece), ((best quality))",
    "[blurry], (worst quality:1.4)", "\\(literal\\)", "a:b;c", "e-mail", "snake_case_word", "a/b\\c", "~tilde~",
    "{a|b|c}", "<lora:foo_v2:0.8>", "#hashtag @user", "https://example.com/a?b=c&d=e#frag", "50% off!",
    "\"quoted\" 'single'", "\u201csmart quotes\u201d \u2018single\u2019", "don\u2019t", "a--b---c", "--no-stop",
    "*bold* _under_ `code`", "<>[]{}()", "a<b>c", "<|", "|>", "<|>", "<||>", "<|foo|>",
    # numbers
    "0", "7", "42", "1234567890", "12345678901234567890", "3.14159", "-5", "+5", "1,000,000", "00700",
    "1024x1024", "8k uhd", "4K", "year 2023", "v1.5", "f/1.8 50mm", "1st 2nd 3rd 4th", "x\u00b2 + y\u00b3",
    "\u00bd \u00bc \u00be", "\u2160 \u216b \u217b", "\u2460\u2461\u2462", "\u0661\u0662\u0663", "\u0967\u0968\u0969",
    "\uff11\uff12\uff13", "\u4e00\u4e8c\u4e09",
    # contractions and case
    "It'S", "I'M", "WE'RE", "they'Ll", "YOU'VE", "she'D", "DON'T", "'S", "''s", "'s's", "x's 'ſ", "'ſ",
    "rock'n'roll", "y'all", "o'clock", "'twas", "'", "''", "it''s", "it' s", "dog's toy's", "'re're",
    "'ll'd've'm't", "ĳ's",
    # special-token strings in the text
    "<|startoftext|>", "<|endoftext|>", "<|startoftext|>a cat", "a cat<|endoftext|>", "a<|endoftext|>b",
    "<|startoftext|><|endoftext|>", "<|endoftext|>!", "!<|endoftext|>", "<|ENDOFTEXT|>", "<|EndOfText|>",
    "!<|ENDOFTEXT|>", "<|ENDOFTEXT|>!", "<|startoftext", "startoftext|>", "<|ſtartoftext|>",
    "<| startoftext |>", "a <|endoftext|> b <|endoftext|> c", "<|endoftext|><|endoftext|><|endoftext|>",
    # HTML entities (no html.unescape in transformers: they stay literal)
    "&amp;", "salt &amp; pepper", "&lt;b&gt;", "&#39;s", "&quot;hi&quot;", "&nbsp;", "AT&T", "&#x27;",
    # accents, scripts
    "café", "cafe\u0301", "naïve résumé", "Zürich", "São Paulo", "Øresund", "Łódź", "crème brûlée", "piñata",
    "Ångström", "\u212bngstr\u00f6m", "straße", "STRASSE", "\u1e9e", "ﬁre ﬂy", "ＡＢＣ ｄｅｆ", "İstanbul",
    "ıi", "ΟΔΟΣ", "ΟΔΟΣ.", "ΟΔΟΣ.Α", "ΣΑΣ", "Σ", "ΑΣ", "ΑΣΑ", "ΑΣ'", "Ⓐ\u03a3", "ª\u03a3", "\u03a3\u0301",
    "σοφία ΣΟΦΊΑ", "Москва", "ПРИВЕТ мир", "Ελληνικά", "Հայերեն", "ქართული", "Ꭰ\u13a1\uab70",
    "日本語のテキスト", "東京タワー", "富士山", "猫", "猫咪 cat", "这是中文", "漢字かな交じり文", "さくら", "カタカナ",
    "ｶﾀｶﾅ", "서울", "한국어 텍스트", "\u1100\u1161\u11a8", "القاهرة", "مرحبا بالعالم", "שלום", "नमस्ते दुनिया",
    "ภาษาไทย", "தமிழ்", "ᚠᚢᚦ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝐁𝐨𝐥𝐝", "\U00020000\U0002a700", "\uf900\ufa30",
    "a\u0345b", "\u0345", "Α\u0345", "ω\u0345\u03a3", "e\u0308\u0301",
    # emoji
    "🙂", "🙂🙂🙂", "a🙂b", "👍🏽", "👨\u200d👩\u200d👧", "🏳️\u200d🌈", "🇯🇵🇫🇷", "1️⃣", "❤️", "☕ coffee", "🐱 cat 🐶 dog",
    # control, format and odd characters
    "a\x00b", "\x00", "a\ufffdb", "\ufffd", "soft\u00adhyphen", "\ufeffbom", "zero\u200bwidth", "a\x0bb", "a\x0cb",
    "a\x1cb", "a\x1fb", "a\x85b", "a\x7fb", "bell\x07", "a\u2028b\u2029c", "a\u200eb", "\ue000private", "\U000f0000",
    "\ufffe", "a\u180eb", "a\u200db",
    # prompt-weight syntax as plain text
    "(masterpiece:1.2), ((best quality)), [[low quality]], (cat:0.5) BREAK dog",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    # long prompts
    ", ".join(["masterpiece", "best quality", "ultra detailed", "8k", "photorealistic", "a beautiful woman",
               "long flowing hair", "standing in a field of flowers", "golden hour", "soft lighting",
               "bokeh", "depth of field", "sharp focus", "highly detailed face", "intricate details",
               "trending on artstation", "by greg rutkowski", "and alphonse mucha", "cinematic", "volumetric fog",
               "octane render", "unreal engine 5", "ray tracing", "hdr", "award winning photograph"]),
    " ".join(["word%d" % i for i in range(60)]),
    "a " * 100,
    "🙂" * 40,
    "supercalifragilisticexpialidocious " * 12,
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!" * 200,
    "1234567890" * 10,
]

ADDED = [
    (["<cat-toy>"], "a photo of <cat-toy>"),
    (["<cat-toy>"], "<cat-toy><cat-toy> <cat-toy>"),
    (["<cat-toy>"], "x<cat-toy>y"),
    (["<cat-toy>"], "<Cat-Toy> and <CAT-TOY>"),
    (["<cat-toy>", "<my-style>"], "<my-style> painting of <cat-toy>, trending"),
    (["<cat>", "<cat-toy>"], "<cat-toy> <cat> <cat-to"),
    (["sks"], "a photo of sks dog asks"),
    (["<My-Style>"], "<My-Style> vs <my-style>"),
    (["<cat-toy>"], "<|startoftext|><cat-toy><|endoftext|>"),
    (["kitty"], "kitty"),
    (["猫猫"], "猫猫 and 猫"),
]

WORDS = """
a an the of in on at with by and or for from under over near beside behind inside portrait photo photograph
painting drawing sketch illustration render concept art of a cat dog fox wolf bear owl dragon knight wizard
princess robot astronaut samurai ninja pirate mermaid elf dwarf castle forest mountain river ocean lake city
street village desert jungle island spaceship planet moon sun stars galaxy nebula sky clouds rain snow storm
sunset sunrise night day morning evening beautiful gorgeous stunning epic majestic mysterious dark bright
colorful vibrant pastel muted neon cyberpunk steampunk fantasy sci-fi medieval futuristic ancient modern
realistic photorealistic hyperrealistic detailed intricate highly ultra sharp focus bokeh depth field
lighting cinematic dramatic soft volumetric rim golden hour studio masterpiece best quality trending
artstation deviantart unreal engine octane blender render 4k 8k hdr uhd dslr canon nikon sony 35mm 50mm
85mm lens f/1.8 wide angle close-up full body half upper shot looking at viewer smiling standing sitting
running flying holding sword staff book flower red orange yellow green blue purple pink white black gray
silver gold golden crystal glass metal wooden stone marble by greg rutkowski alphonse mucha artgerm wlop
makoto shinkai studio ghibli van gogh monet rembrandt picasso dali hokusai it's don't we're they'll you've
i'm she'd isn't can't won't
""".split()

ACCENTED = ["café", "naïve", "résumé", "Zürich", "São", "Paulo", "Øresund", "Łódź", "crème", "brûlée", "piñata",
            "Ελλάδα", "Москва", "東京", "富士山", "桜", "猫", "さくら", "カタカナ", "서울", "القاهرة", "שלום", "नमस्ते",
            "ΟΔΟΣ", "straße", "İzmir", "façade", "jalapeño", "Ærø", "ñandú", "Đà", "Nẵng"]
EMOJI = ["🙂", "🔥", "✨", "🌸", "🐱", "🚀", "❤️", "👍🏽", "🇯🇵", "⭐", "🎨", "👨\u200d🎨"]
SEPS = [" ", " ", " ", ", ", ", ", ",", " | ", ". ", "; ", "  ", "\t", "\n", " - ", "\u3000"]


def recase(rng, w):
    r = rng.random()
    if r < 0.6:
        return w
    if r < 0.75:
        return w.title()
    if r < 0.85:
        return w.upper()
    return "".join(c.upper() if rng.random() < 0.5 else c for c in w)


def word_prompt(rng):
    parts = []
    for _ in range(rng.randint(1, 22)):
        r = rng.random()
        if r < 0.70:
            w = recase(rng, rng.choice(WORDS))
        elif r < 0.78:
            w = rng.choice(ACCENTED)
        elif r < 0.84:
            w = rng.choice(EMOJI)
        elif r < 0.90:
            w = rng.choice(["%d" % rng.randint(0, 99999), "%.2f" % rng.uniform(0, 10), "%dx%d" % ((rng.choice([512, 768, 1024]),) * 2),
                            "%dk" % rng.randint(1, 16), "#%06x" % rng.randint(0, 0xFFFFFF)])
        elif r < 0.95:
            w = "(%s:%.1f)" % (rng.choice(WORDS), rng.uniform(0.3, 1.8))
        else:
            w = rng.choice(["((", "))", "[", "]", "!", "?", "...", "'", "\"", "&", "&amp;", "-", "_", "/", "@", ":", "~"])
        parts.append(w)
    out = parts[0]
    for p in parts[1:]:
        out += rng.choice(SEPS) + p
    if rng.random() < 0.1:
        out = rng.choice([" ", "  ", "\n", "\t"]) + out + rng.choice(["", " ", ".", "!", "\n"])
    return out


# Blocks to draw random characters from (only characters assigned in Unicode 14 are used).
BLOCKS = [(0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0x00, 0x1F), (0x7F, 0xFF), (0x100, 0x24F), (0x250, 0x2FF),
          (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F), (0x590, 0x5FF), (0x600, 0x6FF),
          (0x900, 0x97F), (0xE00, 0xE7F), (0x10A0, 0x10FF), (0x1100, 0x11FF), (0x13A0, 0x13FF), (0x1E00, 0x1EFF),
          (0x1F00, 0x1FFF), (0x2000, 0x206F), (0x2070, 0x209F), (0x20A0, 0x20CF), (0x2100, 0x214F), (0x2150, 0x218F),
          (0x2190, 0x21FF), (0x2200, 0x22FF), (0x2460, 0x24FF), (0x2500, 0x257F), (0x2600, 0x26FF), (0x2C00, 0x2C7F),
          (0x3000, 0x303F), (0x3040, 0x309F), (0x30A0, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xA640, 0xA69F),
          (0xAB70, 0xABBF), (0xAC00, 0xD7A3), (0xF900, 0xFAFF), (0xFB00, 0xFB4F), (0xFE00, 0xFE0F), (0xFE30, 0xFE4F),
          (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF), (0x1F100, 0x1F1FF), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F),
          (0x1F900, 0x1F9FF), (0x20000, 0x2A6DF), (0xE0000, 0xE007F), (0xE000, 0xE0FF)]


def random_unicode(rng):
    out = []
    for _ in range(rng.randint(1, 24)):
        lo, hi = rng.choice(BLOCKS)
        while True:
            c = chr(rng.randint(lo, hi))
            if unicodedata.category(c) != "Cn":
                break
        out.append(c)
        if rng.random() < 0.15:
            out.append(" ")
    return "".join(out)


def long_prompt(rng):
    n = rng.randint(40, 140)
    return ", ".join(recase(rng, rng.choice(WORDS)) for _ in range(n))


def all_records():
    rng = random.Random(20240607)
    recs = [{"prompt": p, "hand": True} for p in HAND]
    recs += [{"prompt": p, "added": a, "hand": True} for a, p in ADDED]
    recs += [{"prompt": word_prompt(rng)} for _ in range(760)]
    recs += [{"prompt": random_unicode(rng)} for _ in range(260)]
    recs += [{"prompt": long_prompt(rng)} for _ in range(40)]
    return recs


# ---------------------------------------------------------------------------------------------
# Workers: run inside one interpreter, return ids for every record.

def worker(recs):
    import transformers
    from transformers import CLIPTokenizer

    vocab = os.path.join(CLIP_DIR, "vocab.json")
    merges = os.path.join(CLIP_DIR, "merges.txt")
    major = int(transformers.__version__.split(".")[0])
    out = {"version": transformers.__version__}

    def enc(tok, text):
        return tok(text, add_special_tokens=False)["input_ids"]

    def padded(tok, text):
        return tok(text, padding="max_length", max_length=77, truncation=True)["input_ids"]

    if major < 5:
        from transformers import CLIPTokenizerFast
        try:
            import ftfy  # noqa: F401
            sys.exit("ftfy is installed in the slow interpreter: the reference must use the BasicTokenizer path")
        except ImportError:
            pass

        def make_slow(added, pad="<|endoftext|>"):
            t = CLIPTokenizer(vocab, merges, pad_token=pad)
            if added:
                t.add_tokens(added)
            return t

        def make_fast4(added):
            t = CLIPTokenizerFast(vocab, merges)
            if added:
                t.add_tokens(added)
            return t

        base, base0, fast4 = make_slow(None), make_slow(None, "!"), make_fast4(None)
        assert base0.pad_token_id == 0
        res = []
        for r in recs:
            a = r.get("added")
            t, t0, f = (make_slow(a), make_slow(a, "!"), make_fast4(a)) if a else (base, base0, fast4)
            ids = enc(t, r["prompt"])
            item = {"ids": ids, "padded_eos": padded(t, r["prompt"]), "padded_zero": padded(t0, r["prompt"]),
                    "ids_zero": enc(t0, r["prompt"]),
                    "fast4": enc(f, r["prompt"]), "fast4_padded": padded(f, r["prompt"])}
            if r.get("hand"):
                item["decoded"] = t.decode(ids)
            res.append(item)
        out["slow"] = res
    else:
        def make_fast5(added, pad="<|endoftext|>"):
            t = CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad)
            if added:
                t.add_tokens(added)
            return t

        base, base0 = make_fast5(None), make_fast5(None, "!")
        assert base0.pad_token_id == 0
        res = []
        for r in recs:
            a = r.get("added")
            t, t0 = (make_fast5(a), make_fast5(a, "!")) if a else (base, base0)
            res.append({"ids": enc(t, r["prompt"]), "padded_eos": padded(t, r["prompt"]),
                        "padded_zero": padded(t0, r["prompt"]), "ids_zero": enc(t0, r["prompt"])})
        out["fast5"] = res
    return out


def frame(ids, pad):
    ids = ids[:75]
    return ([49406] + ids + [49407] + [pad] * 77)[:77]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slow-python", help="interpreter with transformers 4.x (slow CLIPTokenizer)")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        json.dump(worker(json.load(sys.stdin)), sys.stdout)
        return

    recs = all_records()
    results = {}
    here = worker(recs)
    results.update(here)
    if "slow" not in results:
        if not args.slow_python:
            sys.exit("this interpreter has transformers %s without the slow CLIPTokenizer: pass --slow-python" % here["version"])
        p = subprocess.run([args.slow_python, os.path.abspath(__file__), "--worker"], input=json.dumps(recs),
                           capture_output=True, text=True, check=True)
        other = json.loads(p.stdout)
        print("slow reference: transformers", other["version"], file=sys.stderr)
        results.update({k: v for k, v in other.items() if k != "version"})
    print("fast reference: transformers", here["version"] if "fast5" in here else "(none)", file=sys.stderr)

    slow = results["slow"]
    fast5 = results.get("fast5")
    n_fast4_diff, n_fast5_diff = 0, 0
    lines = []
    for i, r in enumerate(recs):
        s = slow[i]
        # The padded forms are the slow ids framed: checked here so the C++ test may rely on it.
        assert s["padded_eos"] == frame(s["ids"], 49407), r
        assert s["padded_zero"] == frame(s["ids_zero"], 0), r
        assert s["fast4_padded"] == frame(s["fast4"], 49407), r
        rec = {"prompt": r["prompt"]}
        if r.get("added"):
            rec["added"] = r["added"]
        rec["ids"] = s["ids"]
        rec["padded_eos"] = s["padded_eos"]
        rec["padded_zero"] = s["padded_zero"]
        if s["fast4"] != s["ids"]:
            n_fast4_diff += 1
            print("slow != 4.x fast: %r\n  slow %s\n  fast %s" % (r["prompt"], s["ids"], s["fast4"]), file=sys.stderr)
        if fast5 is not None:
            f = fast5[i]
            assert f["padded_eos"] == frame(f["ids"], 49407), r
            assert f["padded_zero"] == frame(f["ids_zero"], 0), r
            if f["ids"] != s["ids"] or f["padded_zero"] != s["padded_zero"]:
                n_fast5_diff += 1
            if f["ids"] != s["ids"]:
                rec["fast"] = f["ids"]
            if f["padded_zero"] != s["padded_zero"]:
                rec["fast_padded_zero"] = f["padded_zero"]
            if f["ids"] != s["fast4"]:
                print("4.x fast != 5.x: %r\n  4.x %s\n  5.x %s" % (r["prompt"], s["fast4"], f["ids"]), file=sys.stderr)
        if "decoded" in s:
            rec["decoded"] = s["decoded"]
        lines.append(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("%d prompts; slow vs 4.x CLIPTokenizerFast differ on %d, slow vs 5.x CLIPTokenizer on %d; wrote %s (%d bytes)"
          % (len(recs), n_fast4_diff, n_fast5_diff, args.out, os.path.getsize(args.out)), file=sys.stderr)


if __name__ == "__main__":
    main()
