"""Bad input through the real CLI: a clear error naming what is wrong, exit code 2, nothing lost."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
GOOD = json.dumps({"id": "a", "instruction": "Name three rivers.", "instances": [{"input": "", "output": "x"}]})


def seedforge(*args, timeout=300):
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stderr


@pytest.mark.parametrize("content,match", [
    (None, "seed file not found"),
    ("", "seed file has no tasks"),
    (GOOD + "\n{oops\n", r"seeds\.jsonl:2: not JSON"),
    (json.dumps({"id": "a", "instances": []}), r"seeds\.jsonl:1: required field missing: instruction"),
    (GOOD + "\n" + GOOD, r"seeds\.jsonl:2: duplicate id 'a'"),
    (b"\xff\xfe", r"seeds\.jsonl:1: not UTF-8"),
])
def test_bad_seed_file_is_reported_before_anything_runs(tmp_path, content, match):
    seeds = tmp_path / "seeds.jsonl"
    if isinstance(content, bytes):
        seeds.write_bytes(content)
    elif content is not None:
        seeds.write_text(content)
    code, err = seedforge("run", "configs/demo.yaml", f"seed_file={seeds}", f"output_dir={tmp_path}/run")
    assert code == 2
    assert "error:" in err and __import__("re").search(match, err), err[-2000:]
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


@pytest.mark.parametrize("override,match", [
    ("generate.roundz=2", r"generate\.roundz: unknown key"),
    ("generate.rounds=two", r"generate\.rounds: .*integer"),
    ("model=/nonexistent/model", r"model: /nonexistent/model: no such model folder"),
    ("output_dir=/dev/null/run", r"output_dir /dev/null/run: not writable"),
])
def test_bad_config_names_the_key(tmp_path, override, match):
    args = ["run", "configs/demo.yaml", f"output_dir={tmp_path}/run", override]
    code, err = seedforge(*args)
    assert code == 2 and __import__("re").search(match, err), err[-2000:]


def test_tensor_parallel_larger_than_a_node_is_refused(tmp_path):
    code, err = seedforge("generate", "configs/demo.yaml", f"output_dir={tmp_path}/run",
                          "engine.tensor_parallel_size=4", "ray.num_cpus=1", "ray.address=local")
    assert code == 2
    assert "engine.tensor_parallel_size=4" in err and "largest node of this cluster has 0" in err, err[-2000:]


def test_run_dir_of_another_config_is_kept_without_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    manifest = {"config_hash": "0000", "status": "done", "stages": {}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "data").mkdir()
    (run / "data" / "part-00000.parquet").write_bytes(b"precious")
    code, err = seedforge("run", "configs/flan_demo.yaml", f"output_dir={run}")
    assert code == 2 and "another config" in err and "--overwrite" in err
    assert (run / "data" / "part-00000.parquet").read_bytes() == b"precious"
    assert json.loads((run / "manifest.json").read_text()) == manifest
