"""Driver side: build the TorchTrainer from a pipelines.config.Config, run it, publish the model.

`run_training(cfg)` expects Ray to be initialised by the caller. The run's checkpoints live in
{output_dir}/ray_train/train; Ray Train V2 (the default in Ray 2.60) has no Trainer.restore: a new
fit() with the same storage_path and name loads that folder's checkpoint snapshot, and the workers
resume from `ray.train.get_checkpoint()`, the latest checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from pipelines import io, remote
from pipelines.models import resolve_model
from train import data as tdata

RUN_NAME = "train"


def loop_config(cfg, model_path: str, has_eval: bool, **extra) -> dict:
    """The flat dict every worker's train_func gets: TrainConfig's fields plus resolved paths."""
    c = cfg.train.model_dump()
    c.update(model_path=model_path, has_eval=has_eval, **extra)
    return c


def build_trainer(cfg, datasets: dict, train_loop_config: dict, storage: str):
    """`storage`: where Ray Train keeps checkpoints (a local path or a pyarrow.fs URI)."""
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    from train.recipe import train_func

    t = cfg.train
    if not t.resume:
        _clear_checkpoints(f"{storage}/{RUN_NAME}")
    return TorchTrainer(
        train_func,
        train_loop_config=train_loop_config,
        # Fractional CPUs: the trainer's workers must leave CPUs to the Ray Data tasks feeding them.
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=RUN_NAME, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints)),
        datasets=datasets,
        # preserve_order: the same rows reach a worker in the same order on a rerun (resume skips by count).
        dataset_config=ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )


def _clear_checkpoints(path: str) -> None:
    if remote.is_uri(path):
        remote.clear(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _publish(src: str, dest: Path) -> None:
    """Copy a model folder to dest, replacing any previous one without a half-copied state."""
    tmp = dest.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{dest.name}")
    old = dest.with_name(f".old-{uuid.uuid4().hex[:8]}-{dest.name}")
    shutil.copytree(src, tmp)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def summarize(progress: dict) -> dict:
    hist, starts = progress["history"], progress["starts"]
    # Throughput over this attempt's steps after its first (which includes data start-up and warm-up).
    steady = [h for h in hist if h["step"] > starts[-1] + 1] or hist[-1:]
    time_s = sum(h["step_time_s"] for h in steady)
    evals = [h["eval_loss"] for h in hist if h.get("eval_loss") is not None]
    tokens = sum(h["tokens"] for h in hist)
    slots = sum(h["tokens"] / h["non_padding_share"] for h in hist if h["non_padding_share"])
    return {
        "steps": hist[-1]["step"] if hist else 0,
        "starts": starts,  # step each attempt began from; >0 = resumed from a checkpoint
        "resumed_from_step": starts[-1] or None,
        "first_loss": hist[0]["loss"] if hist else None,
        "final_loss": hist[-1]["loss"] if hist else None,
        "eval_loss": evals[-1] if evals else None,
        "tokens_per_s": sum(h["tokens"] for h in steady) / time_s if time_s else None,
        "non_padding_share": tokens / slots if slots else None,
        "history": hist,
    }


def run_training(cfg, storage: str | None = None, **test_hooks) -> dict:
    """Train cfg.model on cfg.data_dir (or {output_dir}/data); write {output_dir}/model and the
    manifest's "train" key; return the summary. `storage`: where checkpoints live (default
    {output_dir}/ray_train). `test_hooks` (e.g. crash_at_step) go to the workers."""
    t = cfg.train
    if t.lora_r and t.strategy != "ddp":
        raise ValueError("train.lora_r > 0 is implemented for train.strategy=ddp only")
    out = Path(cfg.output_dir)
    storage = storage or str(out.resolve() / "ray_train")
    model_path = resolve_model(cfg.model)
    datasets = tdata.load_datasets(cfg.data_dir or str(out / "data"), t.eval_fraction)
    trainer = build_trainer(cfg, datasets, loop_config(cfg, model_path, "eval" in datasets, **test_hooks), storage)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint in {storage}/{RUN_NAME}")
    with result.checkpoint.as_directory() as d:
        _publish(os.path.join(d, "model"), out / "model")
        with open(os.path.join(d, "progress.json")) as f:
            summary = summarize(json.load(f))
    summary["model_dir"] = str(out / "model")
    if t.eval_file and t.eval_samples:
        from train.evaluate import rouge_eval

        summary["rouge"] = rouge_eval(str(out / "model"), t.eval_file, t.eval_samples, t.template,
                                      t.eval_max_new_tokens)
        summary["rouge_l"] = summary["rouge"]["rouge_l"]
    manifest = io.read_json(out / "manifest.json", default={}) or {}
    manifest["train"] = summary
    io.write_json(manifest, out / "manifest.json")
    return summary
