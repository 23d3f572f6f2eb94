"""`seedforge curate` on a corpus someone else wrote: Self-Instruct's human-eval prediction files
(../shared/data/self-instruct/human_eval, 6 files x the same 252 user-oriented tasks).

Known duplicates: each task appears once per file. Three files give it as written (instruction,
input, target); three give the same task in the files' own prompt form ("...\\n\\nInput: ...\\nOutput:"
as the instruction, empty input): exact copies of each other, near copies of the plain form.
Ground truth at threshold 0.7 is the exact Jaccard of the word 3-shingles curate compares.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import minhash
from pipelines.curate import curate_command

DATA = Path(__file__).resolve().parents[2] / "shared/data/self-instruct/human_eval"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared not beside this checkout")


def _corpus(d: Path) -> dict[str, tuple[int, str]]:
    """Write one Parquet file per prediction file; return id -> (task, form)."""
    d.mkdir()
    truth = {}
    for k, f in enumerate(sorted(DATA.glob("*_predictions.jsonl"))):
        form = "plain" if k < 3 else "prompt"
        rows = []
        for task, line in enumerate(f.read_text().splitlines()):
            r = json.loads(line)
            rid = f"{f.name.split('_')[0]}-{task:03d}"
            inst, inp = (r["instruction"], r["input"]) if form == "plain" else (r["prompt"], "")
            rows.append({"id": rid, "instruction": inst, "input": inp, "output": r["target"]})
            truth[rid] = (task, form)
        pq.write_table(pa.Table.from_pylist(rows), d / f"{f.stem}.parquet")
    return truth


def _jaccard(a: dict, b: dict) -> float:
    sa, sb = (set(minhash.shingles(minhash.normalize(" ".join([r["instruction"], r["input"], r["output"]]))))
              for r in (a, b))
    return len(sa & sb) / len(sa | sb)


def test_curate_removes_known_duplicates_and_keeps_distinct_tasks(ray_session, tmp_path):
    truth = _corpus(tmp_path / "in")
    rows = {r["id"]: r for f in sorted((tmp_path / "in").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    # a row is a known duplicate when an earlier-id copy of its task is at Jaccard >= 0.7 (exact copies: 1.0)
    by_task: dict[int, list[str]] = {}
    for rid in sorted(rows):
        by_task.setdefault(truth[rid][0], []).append(rid)
    known = {rid for ids in by_task.values() for j, rid in enumerate(ids)
             if any(_jaccard(rows[rid], rows[o]) >= 0.7 for o in ids[:j])}
    assert len(known) > 0.8 * (len(rows) - len(by_task))  # most copies are duplicates at 0.7

    results = []
    for blocks in (1, 7):  # the same output whatever the partitioning
        out = tmp_path / f"out{blocks}"
        funnel = curate_command(str(tmp_path / "in"), str(out), ["filters.enabled=false", f"num_partitions={blocks}"])
        kept = {r["id"] for r in pq.read_table(out / "data").to_pylist()}
        rejected = pq.read_table(out / "rejected").to_pylist()
        results.append((kept, sorted((r["id"], r["duplicate_of"]) for r in rejected)))
        assert funnel["rows_in"] == len(rows) and funnel["rows_out"] == len(kept)
    assert results[0] == results[1]
    kept, rejected = results[0]
    removed = {rid for rid, _ in rejected}
    recall = len(removed & known) / len(known)
    tasks_lost = len(by_task) - len({truth[rid][0] for rid in kept})
    wrong = [(rid, dup) for rid, dup in rejected if truth[rid][0] != truth[dup][0] and _jaccard(rows[rid], rows[dup]) < 0.7]
    assert recall >= 0.95, recall
    assert tasks_lost <= 0.01 * len(by_task), tasks_lost
    assert len(wrong) <= 0.01 * len(rows), wrong[:5]
    print(f"known duplicates {len(known)}, removed {len(removed)}, recall {recall:.4f}, "
          f"tasks lost {tasks_lost}, wrongly removed {len(wrong)}, kept {len(kept)}")
    points_to = dict(rejected)
    for rid in removed:  # duplicate_of chains (exact copy -> its near-duplicate) end at a kept, smaller id
        seen = rid
        while seen in points_to:
            assert points_to[seen] < seen
            seen = points_to[seen]
        assert seen in kept
