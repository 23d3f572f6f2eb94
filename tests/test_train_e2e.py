"""Real Ray Train on 2 CPU workers with a tiny random Llama (SmolLM2's tokenizer): a run killed after
its first checkpoint is rerun on the same output_dir (under FSDP2) and resumes from that checkpoint;
the loss falls; the published folder loads and generates. One test: each Ray Train start costs
tens of seconds on this box, so the phases share runs."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from pipelines import io, schema  # noqa: E402
from pipelines.config import Config  # noqa: E402
from pipelines.models import resolve_model  # noqa: E402
from train.launch import run_training  # noqa: E402

EVAL_FILE = Path(__file__).resolve().parents[2] / "shared/data/self-instruct/user_oriented_instructions.jsonl"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("train_e2e")
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=64, num_attention_heads=2, num_key_value_heads=2, head_dim=32, num_hidden_layers=2,
        intermediate_size=128, vocab_size=len(tok), tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    rows = [schema.row(id=f"r{i}", instruction=f"Repeat the word {w}.", output=f"{w} {w} {w}.",
                       system="Be brief." if i % 3 == 0 else "")
            for i, w in enumerate(["apple", "river", "stone", "cloud", "tiger", "bread", "lamp", "green"] * 4)]
    io.write_shards(rows, root / "run" / "data", rows_per_shard=16)
    return root


def make_cfg(root, **train):
    base = dict(num_workers=2, cpus_per_worker=0.5, max_seq_len=128, micro_batch_size=2, grad_accum=2,
                lr=1e-3, lr_schedule="constant", checkpoint_every=4, eval_fraction=0.2, torch_threads=1,
                keep_checkpoints=5)
    return Config(model=str(root / "tiny"), output_dir=str(root / "run"), train={**base, **train})


def test_killed_run_resumes_then_publishes(run_dir):
    out = run_dir / "run"
    # 1. DDP run killed at step 5, after its checkpoint at step 4 (no retries: the fit fails).
    with pytest.raises(Exception, match="injected failure"):
        run_training(make_cfg(run_dir, max_steps=12, max_failures=0), crash_at_step=5)
    assert (out / "ray_train" / "train" / "step_0000004" / "model" / "config.json").exists()
    # 2. Same output_dir (= storage path and run name), now FSDP2: resumes from step 4, ends at 12.
    cfg = make_cfg(run_dir, max_steps=12, strategy="fsdp2", eval_file=str(EVAL_FILE), eval_samples=2,
                   eval_max_new_tokens=8)
    s = run_training(cfg)
    hist = s["history"]
    assert [h["step"] for h in hist] == list(range(1, 13))
    assert s["starts"] == [0, 4] and s["resumed_from_step"] == 4 and s["steps"] == 12
    assert min(h["step"] for h in hist if h["attempt"] == 1) == 5  # first resumed step is k+1
    losses = [h["loss"] for h in hist]
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses  # overfits the same rows
    assert s["eval_loss"] is not None and 0 < s["non_padding_share"] <= 1
    assert all(h["tokens_per_s"] > 0 and h["lr"] > 0 for h in hist)

    manifest = json.loads((out / "manifest.json").read_text())["train"]
    assert len(manifest["history"]) == 12 and manifest["rouge_l"] is not None
    assert len(manifest["rouge"]["samples"]) == 2
    # 3. The published folder (FSDP2 weights gathered to rank 0) loads and generates.
    assert json.loads((out / "model" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert next(model.parameters()).dtype == torch.float32
    first = AutoModelForCausalLM.from_pretrained(out / "ray_train" / "train" / "step_0000004" / "model")
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), model.state_dict().values()))
    enc = tok.apply_chat_template([{"role": "user", "content": "Repeat the word apple."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > enc["input_ids"].shape[1]
