"""Keeps machine-specific data out of committed fixtures.

save_pretrained records where a model was loaded from ("_name_or_path": an absolute path of the
machine that ran the script); a fixture must not carry it. Call strip_machine_paths(folder) after
every save_pretrained; tests/models/fixture_hygiene_test.cpp checks every committed JSON file.
"""
import json
import os

MACHINE_KEYS = ("_name_or_path",)


def strip_machine_paths(folder):
    for root, _, files in os.walk(folder):
        for name in files:
            if not name.endswith(".json"):
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            if not isinstance(config, dict) or not any(k in config for k in MACHINE_KEYS):
                continue
            for k in MACHINE_KEYS:
                config.pop(k, None)
            # diffusers' own layout: to_json_string() is indent=2, sort_keys=True, newline-ended.
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
