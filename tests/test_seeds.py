"""Seed files: the project's own set and the original 175-task format load; bad files name the line."""
import json
from pathlib import Path

import pytest

from pipelines.io import InputError
from pipelines.seeds import load_seed_tasks

ORIGINAL = Path(__file__).parent.parent.parent / "shared" / "data" / "self-instruct" / "seed_tasks.jsonl"


def test_own_seed_set_loads_with_both_kinds():
    tasks = load_seed_tasks("configs/data/seed_tasks.jsonl")
    assert len(tasks) >= 100
    assert len({t["id"] for t in tasks}) == len(tasks)
    assert 10 <= sum(t["is_classification"] for t in tasks) < len(tasks)


@pytest.mark.skipif(not ORIGINAL.exists(), reason="../shared not beside this checkout")
def test_original_self_instruct_file_loads():
    tasks = load_seed_tasks(ORIGINAL)
    assert len(tasks) == 175
    assert sum(t["is_classification"] for t in tasks) == sum(
        '"is_classification": true' in line for line in ORIGINAL.read_text().splitlines())


def _write(tmp_path, lines, raw=None):
    p = tmp_path / "seeds.jsonl"
    if raw is not None:
        p.write_bytes(raw)
    else:
        p.write_text("\n".join(lines) + "\n")
    return p


GOOD = json.dumps({"id": "a", "instruction": "Say hi.", "instances": [{"input": "", "output": "hi"}]})


@pytest.mark.parametrize("lines,raw,match", [
    (None, None, "seed file not found"),
    ([""], None, "has no tasks"),
    ([GOOD, "{not json"], None, r"seeds\.jsonl:2: not JSON"),
    ([GOOD, json.dumps({"id": "b", "instances": []})], None, r":2: required field missing: instruction"),
    ([GOOD, GOOD], None, r":2: duplicate id 'a' \(first on line 1\)"),
    (None, (GOOD + "\n").encode() + b'{"id": "\xff"}\n', r":2: not UTF-8"),
    ([json.dumps({"id": "c", "instruction": "x y z", "instances": [{"input": "q"}]})], None, ":1: field instances"),
])
def test_bad_seed_files_name_file_and_line(tmp_path, lines, raw, match):
    p = tmp_path / "seeds.jsonl" if lines is None and raw is None else _write(tmp_path, lines or [], raw)
    with pytest.raises(InputError, match=match):
        load_seed_tasks(p)
