"""The fixed vLLM engine pool and the Ray Data stage that feeds it.

`EnginePool` starts `pool_size` long-lived engine actors once per run (restarted by Ray if they
die, with the in-flight call retried), and `pool.map(ds)` is the generation stage of any pipeline:
a `map_batches` over `EngineClient` with exactly one client per engine. Stages build request rows
with `request()` and read results with the columns listed in actors.vllm_engine.OUTPUT_COLUMNS.
"""
from __future__ import annotations

import json
import time
import uuid

import ray

from actors.engine_client import EngineClient
from actors.vllm_engine import VLLMEngine, cpu_env
from pipelines.config import EngineConfig, SamplingConfig


def engine_args(cfg: EngineConfig, seed: int) -> dict:
    """Flat vLLM LLM(...) keyword arguments from the typed config (the config stops here)."""
    kw = dict(dtype=cfg.dtype, enforce_eager=cfg.enforce_eager, max_num_seqs=cfg.max_num_seqs,
              seed=seed, tensor_parallel_size=cfg.tensor_parallel_size)
    if cfg.tensor_parallel_size > 1:
        kw["distributed_executor_backend"] = "ray"  # vLLM places its TP workers with Ray
    else:
        kw["distributed_executor_backend"] = "uni"
    if cfg.num_gpus > 0 or cfg.tensor_parallel_size > 1:
        kw["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    else:
        # On the CPU, vLLM 0.32 crashes when a request with its own seed is prefilled in chunks
        # ("CPU Generator does not use offset"): schedule whole prompts instead.
        kw["enable_chunked_prefill"] = False
        kw["max_num_batched_tokens"] = max(cfg.max_model_len, 8192)
    return kw


def sampling_json(s: SamplingConfig, **extra) -> str:
    d = s.model_dump()
    if not d["stop"]:
        d.pop("stop")
    d.update(extra)
    return json.dumps(d, sort_keys=True)


def request(prompt: str = "", messages: list[dict] | None = None, sampling: str = "{}", **cols) -> dict:
    """A request row for the engine; `cols` ride along unchanged to the output rows."""
    return {"prompt": prompt, "messages": json.dumps(messages) if messages else "", "sampling": sampling, **cols}


class EnginePool:
    def __init__(self, model_path: str, cfg: EngineConfig, seed: int = 0):
        self.cfg = cfg
        gpus = cfg.num_gpus if cfg.tensor_parallel_size == 1 else 0
        actor = ray.remote(VLLMEngine).options(
            num_cpus=cfg.num_cpus, num_gpus=gpus, max_restarts=cfg.max_retries,
            max_task_retries=cfg.max_retries, runtime_env={"env_vars": cpu_env()} if gpus == 0 else None)
        t = time.time()
        threads = (cfg.cpu_threads or 0) if gpus == 0 and cfg.tensor_parallel_size == 1 else None
        self.engines = [actor.remote(model_path, cfg.max_model_len, engine_args(cfg, seed), cfg.cpu_kvcache_gb,
                                     threads) for _ in range(cfg.pool_size)]
        ray.get([e.claim.remote("start", "start") for e in self.engines])  # wait until loaded
        self.startup_s = time.time() - t
        self.usage = {"requests": 0, "prompt_tokens": 0, "output_tokens": 0, "seconds": 0.0}

    def map(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        """The generation stage: one request row in, one row per sample out."""
        return ds.map_batches(
            EngineClient, batch_format="pyarrow", batch_size=self.cfg.batch_size,
            fn_constructor_kwargs={"engines": self.engines, "pass_id": uuid.uuid4().hex},
            compute=ray.data.ActorPoolStrategy(size=len(self.engines)), num_cpus=0.01)  # one client an engine

    def generate(self, rows: list[dict]) -> list[dict]:
        """Rows in, rows out (through Ray Data), in the input order of `rows`."""
        if not rows:
            return []
        t = time.time()
        rows = [{**r, "_order": i} for i, r in enumerate(rows)]
        out = self.map(ray.data.from_items(rows)).take_all()
        self.usage["seconds"] += time.time() - t
        self.usage["requests"] += len(rows)
        self.usage["prompt_tokens"] += sum(r["prompt_tokens"] for r in out if r["sample_index"] == 0)
        self.usage["output_tokens"] += sum(r["output_tokens"] for r in out)
        out.sort(key=lambda r: (r["_order"], r["sample_index"]))
        for r in out:
            r.pop("_order")
        return out

    def shutdown(self, wait_s: float = 10.0) -> None:
        """Kill the engines, then wait (at most wait_s) until Ray has their CPUs back: ray.kill
        returns before the raylet frees them, so the next stage's Datasets (curate, train) could
        start on a cluster that still looks full."""
        from pipelines.stages import wait_for_cpus  # stages imports this module lazily too

        free = ray.available_resources().get("CPU", 0.0) + self.cfg.num_cpus * len(self.engines)
        for e in self.engines:
            ray.kill(e)
        self.engines = []
        wait_for_cpus(free - 1e-6, wait_s)
