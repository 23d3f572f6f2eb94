"""End to end on real parts: local Ray, the real vLLM engine, real Parquet, real Ray Train.

One small `seedforge run` (the demo config, scaled down) feeds every assertion here.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import schema
from pipelines.config import load_config
from pipelines.novelty import rouge_l
from pipelines.seeds import load_seed_tasks
from pipelines.self_instruct_prompts import instruction_problem

pytestmark = pytest.mark.e2e
REPO = Path(__file__).parent.parent
SMALL = ["generate.rounds=2", "generate.prompts_per_round=12", "train.max_steps=4", "train.checkpoint_every=2",
         "train.num_workers=2", "train.eval_fraction=0.1"]


@pytest.fixture(scope="module")
def demo_run(engine, tmp_path_factory):
    from pipelines.run import run

    out = tmp_path_factory.mktemp("demo") / "run"
    cfg = load_config(REPO / "configs/demo.yaml", [f"output_dir={out}"] + SMALL)
    manifest = run(cfg, engine=engine)
    return out, manifest


def _rows(p: Path):
    """Rows of a Parquet file or of the shards of a directory."""
    if p.is_dir() and not any(p.glob("*.parquet")):
        return []
    return pq.read_table(p).to_pylist()


def test_run_writes_schema_conformant_data_and_manifest_counts_match(demo_run):
    out, m = demo_run
    assert m["status"] == "done"
    data = pq.read_table(out / "data")
    assert data.schema.names == schema.EXAMPLE_SCHEMA.names
    assert data.num_rows > 0 and data.num_rows == m["files"]["data_rows"]
    rejected = pq.read_table(out / "rejected")
    assert rejected.num_rows == m["files"]["rejected_rows"] > 0
    assert set(schema.REJECTED_SCHEMA.names) <= set(rejected.schema.names)
    assert all(r for r in rejected.column("reason").to_pylist())
    rows = data.to_pylist()
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:  # lineage is filled in
        assert r["method"] == "self_instruct" and r["model"] == "smollm2-135m"
        assert r["seed_ids"] and r["round"] in (1, 2) and r["template"].startswith("self_instruct/")
        assert json.loads(r["sampling_params"])["max_tokens"] > 0 and r["finish_reason"]
    assert set(m["stages"]) == {"generate", "curate", "train"}
    assert m["stages"]["generate"]["output_tokens"] > 0 and m["versions"]["ray"]


def test_kept_instructions_are_novel_and_pass_filters(demo_run):
    out, _ = demo_run
    seeds = [t["instruction"] for t in load_seed_tasks(REPO / "configs/data/seed_tasks.jsonl")]
    insts = sorted({r["instruction"] for r in _rows(out / "data")})
    assert insts
    for a in insts:
        assert instruction_problem(a) == ""
        assert max(rouge_l(a, s) for s in seeds) <= 0.7
    for a, b in itertools.combinations(insts, 2):
        assert rouge_l(a, b) <= 0.7, (a, b)


def test_rejected_rows_carry_reasons_counted_in_manifest(demo_run):
    out, m = demo_run
    gen_rejected = sum(f.metadata.num_rows for f in map(pq.ParquetFile, (out / "rejected").glob("generate-*.parquet")))
    assert gen_rejected == m["stages"]["generate"]["rejected_rows"]
    stages = set(pq.read_table(out / "rejected").column("stage").to_pylist())
    assert "self_instruct/novelty" in stages or "self_instruct/instance_filter" in stages


def test_output_first_for_classification_input_first_otherwise(demo_run):
    out, _ = demo_run
    rows = [r for d in sorted((out / "stages/self_instruct").glob("round-*")) for r in _rows(d / "rows.parquet")]
    assert rows
    for r in rows:
        assert r["operation"] == ("output_first" if r["is_classification"] else "input_first")


def test_model_folder_loads_in_transformers_and_generates(demo_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, m = demo_run
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    ids = tok("List three colours:", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 5
    assert m["stages"]["train"]["steps"] == 4


def test_rerun_of_finished_run_does_nothing(demo_run, engine):
    from pipelines.run import run

    out, m = demo_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    cfg = load_config(REPO / "configs/demo.yaml", [f"output_dir={out}"] + SMALL)
    again = run(cfg, engine=engine)
    assert again["status"] == "done"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == before


def test_other_config_on_same_run_dir_is_refused(demo_run):
    from pipelines.run import RunError, run

    out, _ = demo_run
    cfg = load_config(REPO / "configs/demo.yaml", [f"output_dir={out}", "generate.rounds=3"])
    with pytest.raises(RunError, match="another config"):
        run(cfg)


def test_killed_during_round_two_resumes_from_round_two(tmp_path):
    """SIGKILL the driver after round 1 is committed; the rerun keeps round 1 and does round 2."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipelines.cli", "generate", str(REPO / "configs/demo.yaml"),
           f"output_dir={out}", "generate.rounds=2", "generate.prompts_per_round=6", "ray.num_cpus=2", "ray.address=local"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    round1 = out / "stages/self_instruct/round-0001"
    deadline = time.time() + 600
    while not round1.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert round1.exists(), "round 1 never committed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local cluster it started
    proc.wait()
    assert not (out / "stages/self_instruct/round-0002").exists()
    first = {p.name: p.read_bytes() for p in round1.iterdir()}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "round 1 already committed, resuming after it" in res.stderr
    assert "round 2/2" in res.stderr and "round 1/2" not in res.stderr
    assert {p.name: p.read_bytes() for p in round1.iterdir()} == first
    ids = [r["id"] for r in pq.read_table(out / "stages/generate").to_pylist()]
    assert len(ids) == len(set(ids))
    assert not list(out.rglob(".tmp-*"))
