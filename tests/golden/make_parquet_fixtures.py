#!/usr/bin/env python3
"""Writes the Parquet reader's fixtures to tests/data/parquet/ and, as the oracle, what pyarrow
reads back from each file (tests/data/parquet/expected.json: row count, leaf column paths and
every value of every byte-array column, hex-encoded, null as null).

Files:
  strings_<codec>_<plain|dict>_v<1|2>.parquet   every codec x encoding x data page version; 23
      rows in row groups of 5 (the last one short), small pages (several per column chunk), a
      nullable UTF-8 column with nulls, a required binary column, an int64 column (not a byte
      array) and a list<string> column (repeated), which the reader must refuse
  tiny_dict.parquet   a compressed dictionary page of 10 bytes (a short string's inline storage)
  dict_fallback.parquet   a dictionary page limit so small that the writer falls back to PLAIN
      pages in the middle of a column chunk (dictionary pages, then plain ones)
  bomb.parquet   one 4 MiB value, dictionary-encoded and zstd-compressed, in 70 rows: 280 MiB of
      values from about a kilobyte, which the reader must refuse before building them
  checksum.parquet   one PLAIN, uncompressed page per column with page CRCs (the corruption test
      flips a byte inside the page data; "corrupt" in the JSON says where)
  pokemon_like/data/train-00000-of-00001.parquet   written by `datasets` exactly as an Image
      feature is stored (struct {bytes: binary, path: string}, PNG bytes) with a `text` column,
      in the folder layout of a Hugging Face dataset repository; one image is None

Run once by hand (needs pyarrow, datasets, Pillow, numpy); the outputs are committed:
    python3 tests/golden/make_parquet_fixtures.py
"""
import io
import json
import os
import shutil

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "data", "parquet")
ROWS = 23


def strings_table():
    rng = np.random.default_rng(7)
    words = ["pokemon", "a drawing of", "green", "dragon", "é ü ß 漢字", "", "with wings", "blue"]
    text, blob, ids, tags = [], [], [], []
    for i in range(ROWS):
        # Nulls at irregular places, including a row group's first and last rows.
        text.append(None if i in (0, 4, 5, 11, 22) else " ".join(words[(i * k) % len(words)] for k in range(1, 2 + i % 4)))
        # Repeated values (so dictionaries help), an empty one and bytes that are not UTF-8.
        blob.append(bytes(rng.integers(0, 256, size=(i % 3) * 9, dtype=np.uint8)) if i % 4 else b"\x00\xff\x10")
        ids.append(i * 1000003)
        tags.append(["t%d" % k for k in range(i % 3)])
    return pa.table({
        "text": pa.array(text, pa.string()),
        "blob": pa.array(blob, pa.binary()),
        "id": pa.array(ids, pa.int64()),
        "tags": pa.array(tags, pa.list_(pa.string())),
    }, schema=pa.schema([
        pa.field("text", pa.string(), nullable=True),
        pa.field("blob", pa.binary(), nullable=False),
        pa.field("id", pa.int64(), nullable=False),
        pa.field("tags", pa.list_(pa.string()), nullable=True),
    ]))


def write_strings(table):
    names = []
    for codec in ("none", "snappy", "gzip", "zstd"):
        for enc in ("plain", "dict"):
            for version in ("1.0", "2.0"):
                name = "strings_%s_%s_v%s.parquet" % (codec, enc, version[0])
                pq.write_table(table, os.path.join(OUT_DIR, name), row_group_size=5, compression=codec,
                               use_dictionary=(enc == "dict"), data_page_version=version,
                               data_page_size=48, write_batch_size=2, write_statistics=False)
                names.append(name)
    pq.write_table(table, os.path.join(OUT_DIR, "dict_fallback.parquet"), row_group_size=ROWS,
                   compression="snappy", use_dictionary=True, dictionary_pagesize_limit=40,
                   data_page_size=48, write_batch_size=2, write_statistics=False)
    names.append("dict_fallback.parquet")
    # A dictionary of 10 bytes ("a", "b"): small enough for a std::string's inline buffer.
    small = pa.table({"label": pa.array(["a", "b", None, "b", "a", "a", "b", None, "a", "b"], pa.string())})
    pq.write_table(small, os.path.join(OUT_DIR, "tiny_dict.parquet"), compression="snappy", use_dictionary=True)
    names.append("tiny_dict.parquet")
    return names


def write_checksum(table):
    name = "checksum.parquet"
    path = os.path.join(OUT_DIR, name)
    pq.write_table(table, path, compression="none", use_dictionary=False, write_page_checksum=True,
                   write_statistics=False)
    # The "text" column chunk is one data page; its last 4 bytes are PLAIN values.
    col = pq.ParquetFile(path).metadata.row_group(0).column(0)
    assert col.path_in_schema == "text" and col.dictionary_page_offset is None
    return name, {"file": name, "offset": col.data_page_offset + col.total_compressed_size - 4}


def write_gzip_corrupt_target():
    # For a gzip page, the last bytes of the compressed data are the gzip trailer (CRC-32 and
    # length), so flipping one of them is always detected.
    path = os.path.join(OUT_DIR, "strings_gzip_plain_v1.parquet")
    col = pq.ParquetFile(path).metadata.row_group(0).column(1)
    assert col.path_in_schema == "blob"
    return {"file": "strings_gzip_plain_v1.parquet", "column": "blob",
            "offset": col.data_page_offset + col.total_compressed_size - 3}


def write_bomb():
    # A 4 MiB dictionary entry (zstd makes it a few hundred bytes) used by 70 rows: 280 MiB of
    # values from a file of about 1 KB, more than the reader allows a file this small.
    name = "bomb.parquet"
    table = pa.table({"text": pa.array(["a" * (4 << 20)] * 70, pa.string())})
    pq.write_table(table, os.path.join(OUT_DIR, name), compression="zstd", use_dictionary=True,
                   dictionary_pagesize_limit=8 << 20, write_statistics=False)
    meta = pq.ParquetFile(os.path.join(OUT_DIR, name)).metadata
    assert meta.num_row_groups == 1 and meta.row_group(0).column(0).dictionary_page_offset is not None
    return {"file": name, "column": "text", "rows": 70, "value_bytes": 4 << 20}


def write_pokemon_like():
    rng = np.random.default_rng(3)
    images, text = [], []
    for i in range(6):
        a = rng.integers(0, 256, size=(4 + i, 5, 3), dtype=np.uint8)
        images.append(None if i == 2 else Image.fromarray(a))
        text.append("a drawing of a %s pokemon with %d eyes" % (["red", "blue", "green"][i % 3], i))
    ds = datasets.Dataset.from_dict({"image": images, "text": text}).cast_column("image", datasets.Image())
    folder = os.path.join(OUT_DIR, "pokemon_like", "data")
    os.makedirs(folder, exist_ok=True)
    name = os.path.join("pokemon_like", "data", "train-00000-of-00001.parquet")
    ds.to_parquet(os.path.join(OUT_DIR, name))
    return name


def hexify(v):
    if v is None:
        return None
    return (v.encode("utf-8") if isinstance(v, str) else v).hex()


def describe(name):
    path = os.path.join(OUT_DIR, name)
    f = pq.ParquetFile(path)
    table = f.read()
    leaves = []
    for i in range(f.metadata.num_columns):
        c = f.metadata.schema.column(i)
        leaves.append((c.path, c.physical_type, c.max_repetition_level))
    columns = {}
    for path, physical, max_rep in leaves:
        if physical != "BYTE_ARRAY" or max_rep > 0:
            continue
        arr = table
        parts = path.split(".")
        col = table.column(parts[0]).combine_chunks()
        for p in parts[1:]:
            # A null struct makes its fields null too (definition level below the maximum).
            col = pa.compute.struct_field(col, p) if col.null_count == 0 else pa.compute.if_else(
                pa.compute.is_null(col), pa.scalar(None, col.type.field(p).type), pa.compute.struct_field(col, p))
        columns[path] = [hexify(v) for v in col.to_pylist()]
    codecs = sorted({f.metadata.row_group(r).column(c).compression
                     for r in range(f.metadata.num_row_groups) for c in range(f.metadata.num_columns)})
    return {
        "num_rows": f.metadata.num_rows,
        "num_row_groups": f.metadata.num_row_groups,
        "codecs": codecs,
        "column_paths": [p for p, _, _ in leaves],
        "byte_columns": columns,
    }


def main():
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    os.makedirs(OUT_DIR)
    table = strings_table()
    names = write_strings(table)
    checksum_name, corrupt_crc = write_checksum(table)
    names.append(checksum_name)
    names.append(write_pokemon_like())
    out = {
        "written_by": "pyarrow %s, datasets %s" % (pa.__version__, datasets.__version__),
        "files": {n: describe(n) for n in names},
        "corrupt_crc": corrupt_crc,
        "corrupt_gzip": write_gzip_corrupt_target(),
        "bomb": write_bomb(),
    }
    with open(os.path.join(OUT_DIR, "expected.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, x)) for d, _, xs in os.walk(OUT_DIR) for x in xs)
    print("wrote %d files, %d bytes in all" % (len(names) + 2, total))


if __name__ == "__main__":
    main()
