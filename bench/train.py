"""Benchmark: train.launch.run_training (Ray Train, one worker) vs a plain single-process PyTorch loop.

Same model, same rows (Self-Instruct's 175 seed tasks as our Parquet schema), same packing, same
number of steps and torch threads. Prints tokens/s of both (non-padding tokens per second of step
time, first step excluded: it holds start-up) and their ratio (target >= 0.9), and the share of
non-padding tokens with and without packing (target >= 0.95 with packing).

    python bench/train.py [--model smollm2-135m|tiny] [--steps 8] [--max-seq-len 512]

The box is shared and its speed drifts by +-15% over minutes, so the runs alternate: plain, Ray,
plain, Ray, ..., plain (--repeats Ray runs); each Ray run is compared with the mean of the plain
runs on either side, and the median of those ratios is the result.

The plain loop is the simplest one: it projects every position onto the vocabulary and keeps the
response positions' logits. run_training projects only positions whose loss weight is not zero
(train/head.py), which the ratio includes. `--plain-select` gives the plain loop the same projection,
so the ratio then shows what Ray itself costs (its actors, polling and data feed on 2 cores).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pipelines import io, schema  # noqa: E402
from pipelines.config import Config  # noqa: E402
from pipelines.models import resolve_model  # noqa: E402
from train import data as tdata  # noqa: E402
from train.head import HeadSelect  # noqa: E402
from train.packing import Packer, collate  # noqa: E402

SEEDS = Path(__file__).resolve().parents[2] / "shared/data/self-instruct/seed_tasks.jsonl"


def seed_rows() -> list[dict]:
    rows = []
    for line in SEEDS.read_text().splitlines():
        t = json.loads(line)
        for k, inst in enumerate(t["instances"]):
            rows.append(schema.row(id=f"{t['id']}-{k}", instruction=t["instruction"], input=inst["input"],
                                   output=inst["output"], method="seed"))
    return rows


def make_model(name: str, workdir: Path) -> str:
    if name != "tiny":
        return resolve_model(name)
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=2, head_dim=32,
                                 num_hidden_layers=2, intermediate_size=128, vocab_size=len(tok),
                                 tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(workdir / "tiny")
    tok.save_pretrained(workdir / "tiny")
    return str(workdir / "tiny")


class CpuByProcess:
    """CPU seconds per process of this process tree (Ray's raylet, GCS, workers, actors), sampled
    every few seconds in a thread: where the cores went while run_training ran. Sparse on purpose:
    the sampler runs beside the Ray run and would otherwise take CPU from it."""

    def __init__(self, interval: float = 5.0):
        self.interval, self.seen, self.t_start = interval, {}, time.time()
        self._stop, self._thread = threading.Event(), threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                c = p.cpu_times()
                # The latest title: Ray renames a worker (ray::IDLE -> ray::RayTrainWorker) once it has a job.
                name = " ".join(p.cmdline()[:2])[:60] if p.pid != me.pid else "bench driver"
                if p.pid in self.seen:
                    first = self.seen[p.pid][1]
                else:  # a process born during the run counts from zero, not from when it was first seen
                    first = 0.0 if p.create_time() >= self.t_start else c.user + c.system
                self.seen[p.pid] = (name, first, c.user + c.system)
            except psutil.Error:
                pass

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def top(self, k: int = 8) -> list[tuple[str, float]]:
        used = sorted(((v[2] - v[1], v[0]) for v in self.seen.values()), reverse=True)
        return [(name, sec) for sec, name in used[:k]]


def padding_share(examples, max_len: int, mbs: int, packing: bool) -> float:
    packer = Packer(max_len) if packing else None
    rows = [b for e in examples for b in (packer.add(e) if packer else [[e]])] + (packer.flush() if packer else [])
    batches = [collate(rows[i:i + mbs], 0) for i in range(0, len(rows) - mbs + 1, mbs)]
    return sum(b["tokens"] for b in batches) / sum(b["slots"] for b in batches)


def plain_loop(model_path: str, rows: list[dict], a) -> float:
    """The reference: one process, no Ray, the simplest loop that trains on the same packed batches."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    head = HeadSelect(model) if a.plain_select else None
    kind = tdata.resolve_template(tok, "auto")
    examples = [e for e in (tdata.tokenize(tok, r, kind, a.max_seq_len) for r in rows) if e]
    packer, pending, it = Packer(a.max_seq_len), [], iter(examples * 100)
    tokens = seconds = 0.0
    for step in range(a.steps):
        t0 = time.perf_counter()
        while len(pending) < a.micro_batch_size:
            pending += packer.add(next(it))
        b, pending = collate(pending[:a.micro_batch_size], tok.pad_token_id), pending[a.micro_batch_size:]
        mask = b["kind"] == 2  # response tokens only (lambda_p = 0)
        with head.only(mask.reshape(-1)) if head else contextlib.nullcontext():
            logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
        loss = F.cross_entropy(logits if head else logits[mask], b["labels"][mask])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        print(f"  plain step {step + 1}: loss {loss.item():.3f}  {b['tokens'] / dt:.0f} tok/s", flush=True)
        if step > 0:
            tokens, seconds = tokens + b["tokens"], seconds + dt
    return tokens / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny (random 2-layer Llama), or a folder")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="Ray runs, each between two plain runs")
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--micro-batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both trainers")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--plain-select", action="store_true",
                    help="the plain loop also projects only response positions (isolates Ray's own cost)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    import ray
    from transformers import AutoTokenizer

    from train.launch import run_training

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model_path = make_model(a.model, work)
    rows = seed_rows()
    io.write_shards(rows, work / "run" / "data", rows_per_shard=100)
    tok = AutoTokenizer.from_pretrained(model_path)
    kind = tdata.resolve_template(tok, "auto")
    examples = [e for e in (tdata.tokenize(tok, r, kind, a.max_seq_len) for r in rows) if e]
    print(f"model {a.model}, {len(rows)} rows, {a.steps} steps, max_seq_len {a.max_seq_len}, "
          f"micro_batch {a.micro_batch_size}, {a.threads} threads", flush=True)

    # plain, ray, plain, ray, ..., plain: each Ray run is compared with the plain runs on either side
    # of it (the box's speed drifts over minutes), and the median of those ratios is the result.
    plains, runs = [plain_loop(model_path, rows, a)], []
    for i in range(a.repeats):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        cfg = Config(model=model_path, output_dir=str(work / f"out{i}"), data_dir=str(work / "run" / "data"),
                     train=dict(num_workers=1, cpus_per_worker=0.5, max_seq_len=a.max_seq_len,
                                micro_batch_size=a.micro_batch_size, grad_accum=1, lr=a.lr, lr_schedule="constant",
                                max_steps=a.steps, checkpoint_every=a.steps, eval_fraction=0.0,
                                torch_threads=a.threads, packing=True))
        t0 = time.perf_counter()
        with CpuByProcess() as cpu:
            s = run_training(cfg)
        wall = time.perf_counter() - t0
        ray.shutdown()
        for h in s["history"]:
            print(f"  ray run {i + 1} step {h['step']}: loss {h['loss']:.3f}  {h['tokens_per_s']:.0f} tok/s", flush=True)
        runs.append((s, wall, cpu))
        plains.append(plain_loop(model_path, rows, a))

    proj = "response-only" if a.plain_select else "full"
    print(f"plain PyTorch loop ({proj} vocab projection) and run_training (Ray Train, 1 worker), tokens/s:")
    ratios = []
    for i, (s, wall, _) in enumerate(runs):
        ref = (plains[i] + plains[i + 1]) / 2
        ratios.append(s["tokens_per_s"] / ref)
        print(f"  repeat {i + 1}: plain {plains[i]:.0f} / {plains[i + 1]:.0f}, ours {s['tokens_per_s']:.0f} "
              f"(run_training wall {wall:.0f} s incl. start-up): ratio {ratios[-1]:.3f}")
    ratio = sorted(ratios)[len(ratios) // 2]
    print(f"ratio ours/plain, median of {len(ratios)}: {ratio:.3f}   (target >= 0.9) "
          f"{'ok' if ratio >= 0.9 else 'MISSED'}")
    s, wall, cpu = runs[-1]
    print(f"non-padding share, packing:    {padding_share(examples, a.max_seq_len, a.micro_batch_size, True):.3f}"
          f"   (run_training reported {s['non_padding_share']:.3f}; target >= 0.95)")
    print(f"CPU seconds by process during the last run_training ({wall:.0f} s wall, 2 cores = {2 * wall:.0f} CPU-s):")
    for name, sec in cpu.top():
        print(f"  {sec:7.1f}  {name}")
    print(f"non-padding share, no packing: {padding_share(examples, a.max_seq_len, a.micro_batch_size, False):.3f}")


if __name__ == "__main__":
    main()
