"""The training recipe run by every Ray Train worker: setup, train, save (torchtune style).

`train_func(config)` gets a flat dict built by train.launch.loop_config; nothing here knows about
pipelines.config. Every worker runs the same number of micro-batches per step and the same number of
eval forwards (FSDP2 all-gathers inside forward, so unequal counts would hang).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import tempfile
import time

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from transformers import AutoModelForCausalLM, AutoTokenizer

from train import data as tdata
from train import loss as tloss
from train.head import HeadSelect
from train.packing import BatchFeed, Packer, collate

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
# Dense bf16 (fp16 for V100/T4) tensor-core peak TFLOPS per GPU, for the MFU estimate.
# First substring of the device name that matches wins, so longer names come first (L40S before L4).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L40": 181.0, "A10G": 70.0,
               "A10": 125.0, "L4": 121.0, "V100": 125.0, "T4": 65.0}


class ShardSource:
    """Epochs of this worker's Ray Data shard: epoch 0 streams (tokenising as it goes) and keeps the
    token ids; later epochs replay them in a seeded shuffle. Streaming each epoch anew would put
    streaming_split's start-of-epoch barrier between workers whose shards pack into different numbers
    of micro-batches, while the others wait in a gradient all-reduce: a deadlock."""

    def __init__(self, shard, tokenize, seed: int):
        self.shard, self.tokenize, self.seed = shard, tokenize, seed
        self.cache, self.complete, self._stream = [], False, None

    def _pull(self):
        if self._stream is None:
            self._stream = iter(self.shard.iter_rows())
        for row in self._stream:
            ex = self.tokenize(row)
            if ex is not None:
                self.cache.append(ex)
                yield ex
        self.complete = True

    def __call__(self, epoch: int, skip: int):
        if epoch == 0 and not self.complete:
            for i, ex in enumerate(self._pull()):
                if i >= skip:
                    yield ex
            return
        if not self.complete:
            for _ in self._pull():  # resumed in a later epoch: read the shard once first
                pass
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        for j in torch.randperm(len(self.cache), generator=g).tolist()[skip:]:
            yield self.cache[j]


def peak_flops(c: dict, device) -> float | None:
    if device.type != "cuda":
        return None
    if c["peak_tflops"]:
        return c["peak_tflops"] * 1e12
    name = torch.cuda.get_device_name(device)
    return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)


def add_lora(model, c: dict, adapter_dir: str | None = None):
    """Wrap in peft LoRA on every linear layer: fresh, or the trainable adapter of a checkpoint."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    return get_peft_model(model, LoraConfig(r=c["lora_r"], lora_alpha=c["lora_alpha"], lora_dropout=0.0,
                                            target_modules="all-linear", task_type="CAUSAL_LM"))


def merged_copy(model):
    """A plain HF model with the LoRA update folded in; the live (training) model is left as it is."""
    return copy.deepcopy(model).merge_and_unload()


def build_model(src: str, c: dict, device, adapter_dir: str | None = None):
    """HF model on the device, wrapped for DDP (prepare_model) or sharded with FSDP2; and the autocast."""
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    if c["lora_r"]:
        if c["strategy"] != "ddp":
            raise ValueError("lora_r > 0 is implemented for strategy=ddp only")
        model = add_lora(model, c, adapter_dir)
    if c["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    bf16 = c["dtype"] == "bfloat16"
    if c["strategy"] == "fsdp2":
        # Ray's prepare_model(parallel_strategy="fsdp") is FSDP1 and refuses CPUs; FSDP2 runs on gloo.
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
            else MixedPrecisionPolicy()
        model.to(device)
        blocks = set(getattr(model, "_no_split_modules", None) or [])
        for m in model.modules():
            if type(m).__name__ in blocks:  # one shard group per decoder layer, then the rest
                fully_shard(m, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model, contextlib.nullcontext()
    model = ray.train.torch.prepare_model(model)
    return model, (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())


def unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def lr_lambda(warmup: int, total: int, schedule: str):
    def f(step: int) -> float:  # step = optimiser steps taken so far
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - frac if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return f


def _forward(model, batch, device, amp):
    with amp:
        return model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                     use_cache=False).logits


def _loss(model, head: HeadSelect, b, device, amp, lp: float, lr_: float):
    """(weighted NLL sum, count) of one micro-batch; the vocabulary projection runs only on the
    positions whose weight is not zero."""
    w = tloss.token_weights(b["kind"].to(device), lp, lr_)
    with head.only((w > 0).reshape(-1)):
        logits = _forward(model, b, device, amp)
    return tloss.kept_nll(logits, b["labels"].to(device), w)


def _sync_ctx(model, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if not sync and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def _all_reduce(values: list[float], device, op=None) -> list[float]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def evaluate(model, head, examples, c, device, amp, pad_id) -> float | None:
    """Held-out loss (same WIT weights), summed over all workers' eval shards."""
    packer = Packer(c["max_seq_len"]) if c["packing"] else None
    rows = [b for e in examples for b in (packer.add(e) if packer else [[e]])] + (packer.flush() if packer else [])
    mbs = c["micro_batch_size"]
    chunks = [rows[i:i + mbs] for i in range(0, len(rows), mbs)]
    n_max = int(_all_reduce([len(chunks)], device, dist.ReduceOp.MAX if dist.is_initialized() else None)[0])
    dummy = [[{"input_ids": [pad_id, pad_id], "response": [0, 0]}]]  # weight 0: keeps forwards in step
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(n_max):
            b = collate(chunks[i] if i < len(chunks) else dummy, pad_id)
            s, n = _loss(model, head, b, device, amp, c["lambda_prompt"], c["lambda_response"])
            total, count = total + float(s.detach()), count + n
    model.train()
    total, count = _all_reduce([total, count], device)
    return total / count if count else None


def save_checkpoint(model, optim, sched, tokenizer, feed, progress, step, metrics, rank):
    # Every rank takes part in the gathers (FSDP2 all-gathers); with cpu_offload only rank 0 gets data.
    lora = hasattr(unwrap(model), "merge_and_unload")
    sd = None if lora else get_model_state_dict(model, options=FULL)
    osd = get_optimizer_state_dict(model, optim, options=FULL)
    with tempfile.TemporaryDirectory() as d:
        if rank == 0 and lora:  # the adapter to resume from, and the merged model to publish
            unwrap(model).save_pretrained(os.path.join(d, "adapter"))
            merged_copy(unwrap(model)).save_pretrained(os.path.join(d, "model"), safe_serialization=True)
        elif rank == 0:
            unwrap(model).save_pretrained(os.path.join(d, "model"), state_dict=sd, safe_serialization=True)
        if rank == 0:
            tokenizer.save_pretrained(os.path.join(d, "model"))
            torch.save({"optim": osd, "sched": sched.state_dict(), "step": step}, os.path.join(d, "state.pt"))
            with open(os.path.join(d, "progress.json"), "w") as f:
                json.dump(progress, f)
        torch.save(feed.state_dict(), os.path.join(d, f"data_rank{rank}.pt"))  # each worker's position
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=f"step_{step:07d}")


def train_func(c: dict) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if c.get("torch_threads"):
        torch.set_num_threads(c["torch_threads"])
    torch.manual_seed(c["seed"])

    # ---- setup: tokenizer, model (from the latest checkpoint if there is one), optimiser, data
    tokenizer = AutoTokenizer.from_pretrained(c["model_path"])
    kind = tdata.resolve_template(tokenizer, c["template"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ckpt = ray.train.get_checkpoint()
    state, feed_state, progress = None, None, {"history": [], "starts": []}
    with (ckpt.as_directory() if ckpt else contextlib.nullcontext(None)) as ck:
        # A LoRA run resumes from the base model plus the checkpoint's adapter, a full one from model/.
        src = os.path.join(ck, "model") if ck and not c["lora_r"] else c["model_path"]
        model, amp = build_model(src, c, device, os.path.join(ck, "adapter") if ck and c["lora_r"] else None)
        if ck:
            state = torch.load(os.path.join(ck, "state.pt"), map_location="cpu", weights_only=False)
            with open(os.path.join(ck, "progress.json")) as f:
                progress = json.load(f)
            p = os.path.join(ck, f"data_rank{rank}.pt")
            feed_state = torch.load(p, weights_only=False) if os.path.exists(p) else None
    head = HeadSelect(unwrap(model))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=c["lr"],
                              weight_decay=c["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(c["warmup_steps"], c["max_steps"], c["lr_schedule"]))
    step = 0
    if state:
        set_optimizer_state_dict(model, optim, state["optim"], options=StateDictOptions(full_state_dict=True))
        sched.load_state_dict(state["sched"])
        step = state["step"]
    progress["starts"].append(step)
    progress["history"] = [h for h in progress["history"] if h["step"] <= step]

    tok = lambda row: tdata.tokenize(tokenizer, row, kind, c["max_seq_len"])  # noqa: E731
    feed = BatchFeed(ShardSource(ray.train.get_dataset_shard("train"), tok, c["seed"] + rank),
                     c["micro_batch_size"], Packer(c["max_seq_len"]) if c["packing"] else None)
    if feed_state:
        feed.load_state_dict(feed_state)
    eval_shard = ray.train.get_dataset_shard("eval") if c["has_eval"] else None
    eval_examples = None
    n_params, peak = sum(p.numel() for p in model.parameters()), peak_flops(c, device)
    lp, lr_ = c["lambda_prompt"], c["lambda_response"]

    # ---- train
    t0 = time.perf_counter()  # a step's time includes the previous step's report (and checkpoint)
    while step < c["max_steps"]:
        if c.get("crash_at_step") == step + 1 and progress["starts"] == [0]:
            raise RuntimeError(f"injected failure at step {step + 1} (test hook)")
        batches = [collate(feed.next(), pad_id) for _ in range(c["grad_accum"])]
        n_local = sum(tloss.count_targets(b["kind"], lp, lr_) for b in batches)
        n_step = _all_reduce([n_local], device)[0]  # the denominator, before any backward
        scale = tloss.step_scale(n_step, world)
        loss_sum = 0.0
        for i, b in enumerate(batches):
            with _sync_ctx(model, i == len(batches) - 1):
                s, _ = _loss(model, head, b, device, amp, lp, lr_)
                (s * scale).backward()
            loss_sum += float(s.detach())
        grad_norm = (float(torch.nn.utils.clip_grad_norm_(model.parameters(), c["max_grad_norm"]))
                     if c["max_grad_norm"] > 0 else None)
        lr_now = sched.get_last_lr()[0]
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        step += 1
        tokens = sum(b["tokens"] for b in batches)
        loss_sum, tokens, slots = _all_reduce([loss_sum, tokens, sum(b["slots"] for b in batches)], device)
        t1 = time.perf_counter()
        dt, t0 = t1 - t0, t1
        m = {"step": step, "loss": loss_sum / max(n_step, 1), "lr": lr_now, "tokens": int(tokens),
             "tokens_per_s": tokens / dt, "step_time_s": dt, "non_padding_share": tokens / max(slots, 1),
             "grad_norm": grad_norm, "attempt": len(progress["starts"]) - 1}
        if peak:
            m["mfu"] = 6 * n_params * m["tokens_per_s"] / (world * peak)  # 6 = forward + backward FLOPs/param/token
        last = step == c["max_steps"]
        if c["has_eval"] and (last or (c["eval_every"] and step % c["eval_every"] == 0)):
            if eval_examples is None:
                eval_examples = [e for e in map(tok, eval_shard.iter_rows()) if e is not None]
            te = time.perf_counter()
            m["eval_loss"] = evaluate(model, head, eval_examples, c, device, amp, pad_id)
            t0 += time.perf_counter() - te  # evaluation is not training time
        progress["history"].append(m)
        if last or step % c["checkpoint_every"] == 0:
            save_checkpoint(model, optim, sched, tokenizer, feed, progress, step, m, rank)
        else:
            ray.train.report(m)
