"""Seed tasks: the Self-Instruct JSONL format (id, name, instruction, instances, is_classification).

Any problem is an InputError that names the file and the line, so a user can fix the file.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.io import InputError

REQUIRED = ("id", "instruction", "instances")


def load_seed_tasks(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: seed file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 (byte {raw[e.start]:#x} at offset {e.start})") from None
    tasks, seen = [], {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            t = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(t, dict):
            raise InputError(f"{path}:{n}: a seed task must be a JSON object")
        missing = [k for k in REQUIRED if k not in t]
        if missing:
            raise InputError(f"{path}:{n}: required field missing: {', '.join(missing)}")
        if not isinstance(t["instruction"], str) or not t["instruction"].strip():
            raise InputError(f"{path}:{n}: field instruction must be a non-empty string")
        if not isinstance(t["instances"], list) or not all(
                isinstance(i, dict) and "output" in i for i in t["instances"]):
            raise InputError(f"{path}:{n}: field instances must be a list of {{input, output}} objects")
        tid = str(t["id"])
        if tid in seen:
            raise InputError(f"{path}:{n}: duplicate id {tid!r} (first on line {seen[tid]})")
        seen[tid] = n
        tasks.append({"id": tid, "name": t.get("name", tid), "instruction": t["instruction"].strip(),
                      "instances": [{"input": i.get("input", "") or "", "output": i["output"]}
                                    for i in t["instances"]],
                      "is_classification": bool(t.get("is_classification", False))})
    if not tasks:
        raise InputError(f"{path}: seed file has no tasks")
    return tasks
