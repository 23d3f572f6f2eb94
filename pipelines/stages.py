"""The stages of `seedforge run`, each a plain function of the run context.

STAGES is the pipeline: read it top to bottom. A stage returns its stats for the manifest; the
runner (pipelines.run) commits it and skips it on a rerun.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import io
from pipelines.config import Config
from pipelines.models import resolve_model


def init_ray(cfg: Config) -> None:
    """Join the cluster given (or in RAY_ADDRESS, as `ray job submit` sets it); else join a local
    cluster started with `ray start`, or start one ("local" always starts a fresh one). A local
    cluster gets the dashboard: it serves the State API, which Ray Train's placement-group
    cleaner polls (without it, a warning every second of training), and users get the web UI."""
    import ray

    if not ray.is_initialized():
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
        if address and address != "local":
            ray.init(address=address)
        else:
            try:
                ray.init(address=address, num_cpus=cfg.ray.num_cpus)
            except ValueError as e:  # a `ray start` cluster runs here: join it with its own resources
                if "existing cluster" not in str(e):
                    raise
                ray.init()
    quiet_ray_data_console(not cfg.ray.data_logs)


def quiet_ray_data_console(quiet: bool = True) -> None:
    """Ray Data's console output on (quiet=False) or warnings only. Its INFO lines are each
    execution's plan and, off a terminal (`ray job logs`, a file), a progress table every few
    seconds; its progress bars come from the driver and from workers (Ray Train's data split), where
    each update is forwarded as a new line. That was ~580 of the demo's 788 lines, burying
    seedforge's own progress lines; Ray Data's log file (logs/ray-data/ray-data.log) keeps everything."""
    import logging

    import ray.data  # configures the "ray.data" logger and its handlers
    from ray.data._internal.logging import SessionFileHandler
    from ray.util.debug import log_once

    for h in logging.getLogger("ray.data").handlers:
        if not isinstance(h, SessionFileHandler):
            h.setLevel(logging.WARNING if quiet else logging.INFO)
    # datasets copy this context, so the bars are off in the workers that run them too
    ray.data.DataContext.get_current().enable_progress_bars = not quiet
    # Ray Data then warns once that bars are off and names its own switch; ours is ray.data_logs
    log_once("ray_data_progress_manager_disabled")


def wait_for_cpus(at_least: float, wait_s: float) -> bool:
    """Poll Ray's resource view until it shows at_least free CPUs; False after wait_s. The view
    lags: it counts a finished task's or a killed actor's CPU for tens of ms more."""
    import ray

    deadline = time.time() + wait_s
    while ray.available_resources().get("CPU", 0.0) < at_least:
        if time.time() >= deadline:
            return False
        time.sleep(0.05)
    return True


def check_free_cpu(log=print, wait_s: float = 10.0) -> bool:
    """True when Ray has a CPU free for the Datasets of a stage about to start; else, after giving
    Ray's resource view wait_s to catch up, log a warning and return False. Also turns off Ray Data's
    own check, made at the start of every execution: Ray's view counts a finished task's CPU for
    tens of ms more (26-63 ms after a materialize() with both CPUs busy, on this box), curation runs
    ~15 executions back to back, and in 7 of 8 demo runs Ray Data warned once "The Dataset job
    will hang unless more CPUs are freed up" while nothing waited."""
    from ray.util.debug import log_once

    log_once("cpu_warning")  # the key of that check's warning (ray.data.Dataset._execute): now spent
    if wait_for_cpus(1e-4, wait_s):  # 1e-4: Ray's smallest CPU share, so "any CPU free"
        return True
    log(f"warning: Ray has had no CPU free for {wait_s:g} s: this stage's Ray Data work waits "
        "until actors or other jobs free some (`ray status` shows what holds them)")
    return False


@dataclass
class Context:
    cfg: Config
    run_dir: Path
    log: callable
    _engine: object = field(default=None, repr=False)
    owns_engine: bool = True
    sync: callable = lambda: None  # mirror committed work to a remote output_dir (pipelines.remote)
    output_uri: str | None = None  # that remote output_dir, if any

    @property
    def engine(self):
        """The run's fixed vLLM engine pool, started on first use and shared by every method."""
        if self._engine is None:
            from pipelines.llm import EnginePool

            self.log(f"starting {self.cfg.engine.pool_size} vLLM engine(s) for {self.cfg.model}")
            self._engine = EnginePool(resolve_model(self.cfg.model), self.cfg.engine, self.cfg.seed)
            self.log(f"engines ready in {self._engine.startup_s:.0f}s")
        return self._engine

    def close(self) -> None:
        if self._engine is not None and self.owns_engine:
            self._engine.shutdown()
            self._engine = None


def _write_dir(rows: list[dict], directory: Path, rejected: bool = False) -> None:
    """Replace a directory of shards atomically (write beside it, then rename)."""
    tmp = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    io.write_shards(rows, tmp, rejected=rejected)
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(tmp, directory)


def generate(ctx: Context) -> dict:
    from pipelines.methods import run_method, stage_names

    cfg, rows, rejected, per_method = ctx.cfg, [], [], {}
    before = dict(ctx._engine.usage) if ctx._engine is not None else {}  # a shared pool counts for many runs
    for method, name in zip(cfg.generate.methods, stage_names(cfg.generate.methods)):
        new, bad, stats = run_method(method, rows, ctx, name)
        rows += new
        rejected += bad
        per_method[name] = {"rows": len(new), "rejected": len(bad), **stats}
        ctx.log(f"generate/{name}: {len(new)} rows, {len(bad)} rejected")
    io.write_shards(rejected, ctx.run_dir / "rejected", prefix="generate", rejected=True)
    _write_dir(rows, ctx.run_dir / "stages" / "generate")
    usage = {k: v - before.get(k, 0) for k, v in ctx._engine.usage.items()} if ctx._engine is not None else {}
    secs = usage.get("seconds", 0.0)
    return {"rows": len(rows), "rejected_rows": len(rejected), "methods": per_method,
            "engine_startup_s": round(ctx._engine.startup_s, 1) if ctx._engine else 0,
            "requests": usage.get("requests", 0), "prompt_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("output_tokens", 0), "generation_seconds": round(secs, 2),
            "output_tokens_per_s": round(usage.get("output_tokens", 0) / secs, 2) if secs else 0.0}


def curate(ctx: Context) -> dict:
    from pipelines.curate import curate as run_curate

    ctx.close()  # generation is over: give the engines' CPUs back to Ray Data and Ray Train
    return run_curate(ctx.run_dir / "stages" / "generate", ctx.run_dir, ctx.cfg.curate)


def train(ctx: Context) -> dict:
    from train.launch import run_training

    ctx.close()
    # A remote run keeps its checkpoints at the URI (Ray Train writes there itself), so a rerun on
    # another machine resumes from them.
    return run_training(ctx.cfg, storage=f"{ctx.output_uri.rstrip('/')}/ray_train" if ctx.output_uri else None)


STAGES = [
    ("generate", generate),
    ("curate", curate),
    ("train", train),
]
