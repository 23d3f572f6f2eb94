"""A run directory mirrored to a pyarrow.fs URI (file:// here; s3:// and gs:// take the same path)."""
from __future__ import annotations

import json
import shutil

import pytest

from pipelines import io, remote


def _tree(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not any(s.startswith(".") for s in p.relative_to(d).parts)}


def _run_dir(d, shard_rows):
    io.write_rows([{"instruction": f"task {i}", "output": "x"} for i in range(shard_rows)],
                  d / "stages" / "generate" / "part-00000.parquet")
    io.write_json({"status": "running", "stages": {"generate": {"status": "done"}}}, d / "manifest.json")


def test_push_mirrors_replaces_and_deletes_then_pull_restores(tmp_path):
    local, target = tmp_path / "local", tmp_path / "bucket" / "runs" / "x"
    uri = f"file://{target}"
    _run_dir(local, 3)
    (local / ".tmp-half-written.parquet").write_bytes(b"partial")  # never mirrored
    assert remote.push(local, uri) == 2
    assert _tree(target) == _tree(local) and not (target / ".tmp-half-written.parquet").exists()
    assert remote.push(local, uri) == 1  # nothing changed: only the manifest is sent again

    # A stage directory replaced by a rerun: its old shard disappears from the mirror too.
    shutil.rmtree(local / "stages" / "generate")
    io.write_rows([{"instruction": "only", "output": "y"}], local / "stages" / "generate" / "part-00001.parquet")
    remote.push(local, uri)
    assert sorted(_tree(target)) == ["manifest.json", "stages/generate/part-00001.parquet"]
    assert _tree(target) == _tree(local)

    # Another machine: an empty staging directory is filled from the mirror.
    other = tmp_path / "other"
    assert remote.pull(uri, other) == 1
    assert _tree(other) == _tree(local)
    assert io.read_rows(other / "stages" / "generate")[0]["instruction"] == "only"
    assert remote.push(other, uri) == 1  # pulled files count as pushed


def test_pull_drops_work_that_was_never_mirrored_and_fetches_what_changed(tmp_path):
    local, target = tmp_path / "local", tmp_path / "remote"
    uri = f"file://{target}"
    _run_dir(local, 2)
    remote.push(local, uri)
    io.write_rows([{"instruction": "unmirrored", "output": "z"}], local / "stages" / "extra" / "rows.parquet")
    io.write_rows([{"instruction": f"t{i}", "output": "x"} for i in range(50)],
                  target / "stages" / "generate" / "part-00000.parquet")  # newer remote content
    remote.pull(uri, local)
    assert _tree(local) == _tree(target)
    assert not (local / "stages" / "extra").exists()


def test_new_remote_keeps_local_and_clear_removes_everything(tmp_path):
    local, target = tmp_path / "local", tmp_path / "remote"
    _run_dir(local, 1)
    assert remote.pull(f"file://{target}", local) == 0 and (local / "manifest.json").exists()
    remote.push(local, f"file://{target}")
    (target / "ray_train" / "train").mkdir(parents=True)
    (target / "ray_train" / "train" / "checkpoint.txt").write_text("Ray Train's own")
    remote.push(local, f"file://{target}")
    assert (target / "ray_train" / "train" / "checkpoint.txt").exists()  # never deleted by the mirror
    remote.clear(f"file://{target}")
    assert list(target.iterdir()) == []


def test_staging_dir_is_stable_per_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("SEEDFORGE_STAGING", str(tmp_path))
    a = remote.staging_dir("s3://bucket/runs/a")
    assert a == remote.staging_dir("s3://bucket/runs/a/") and a != remote.staging_dir("s3://bucket/runs/b")
    assert a.parent == tmp_path


def test_unwritable_uri_names_it():
    with pytest.raises(OSError, match=r"output_dir file:///proc/seedforge/run: not writable"):
        remote.check_writable("file:///proc/seedforge/run")  # not even root may create it


def test_unknown_scheme_names_the_uri():
    with pytest.raises(OSError, match=r"output_dir nosuch://x/y"):
        remote.check_writable("nosuch://x/y")


def test_manifest_config_records_the_uri_and_hash_ignores_it(tmp_path, monkeypatch):
    from pipelines.config import load_config
    from pipelines.run import RunDir, config_hash, stage_remote

    monkeypatch.setenv("SEEDFORGE_STAGING", str(tmp_path / "staging"))
    uri = f"file://{tmp_path}/remote/run"
    cfg = load_config("configs/demo.yaml", [f"output_dir={uri}"])
    local_cfg = stage_remote(cfg, uri, overwrite=False)
    assert local_cfg.output_dir.startswith(str(tmp_path / "staging"))
    assert config_hash(local_cfg) == config_hash(cfg)
    RunDir(local_cfg, uri).prepare(overwrite=False)
    m = json.loads((tmp_path / "remote" / "run" / "manifest.json").read_text())
    assert m["config"]["output_dir"] == uri and m["config_hash"] == config_hash(cfg)


def test_train_resume_false_clears_checkpoints_at_a_uri_or_path(tmp_path):
    from train.launch import _clear_checkpoints

    for where, target in ((f"file://{tmp_path}/uri/ray_train/train", tmp_path / "uri" / "ray_train" / "train"),
                          (str(tmp_path / "path" / "ray_train" / "train"), tmp_path / "path" / "ray_train" / "train")):
        (target / "checkpoint_000001").mkdir(parents=True)
        (target / "checkpoint_000001" / "state.pt").write_bytes(b"old")
        _clear_checkpoints(where)
        assert not target.exists() or not any(target.iterdir()), where
