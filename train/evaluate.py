"""After training: greedy generation on held-out instructions, scored with ROUGE-L against references.

The eval file is Self-Instruct's JSONL (`instruction`, `instances[0].input/output`), e.g.
user_oriented_instructions.jsonl. Prompts are rendered exactly as in training (train.data), so a
chat-template model is asked in the format it was tuned on.
"""
from __future__ import annotations

import json

import torch
from rouge_score import rouge_scorer
from transformers import AutoModelForCausalLM, AutoTokenizer

from train import data as tdata


def load_eval_rows(path: str, n: int) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            if len(rows) >= n:
                break
            if not line.strip():
                continue
            r = json.loads(line)
            inst = (r.get("instances") or [{}])[0]
            if "instruction" not in r or "output" not in inst:
                raise ValueError(f"{path}: rows need `instruction` and `instances[0].output`")
            rows.append({"instruction": r["instruction"], "input": inst.get("input", ""), "reference": inst["output"]})
    return rows


def generate(model, tokenizer, prompts: list[str], kind: str, max_new_tokens: int) -> list[str]:
    out = []
    for p in prompts:  # one at a time: no padding-side subtleties, and eval_samples is small
        enc = tokenizer(p, return_tensors="pt", add_special_tokens=(kind == "plain"))
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def rouge_eval(model_dir: str, eval_file: str, samples: int, template: str, max_new_tokens: int) -> dict:
    rows = load_eval_rows(eval_file, samples)
    if not rows:
        return {"rouge_l": None, "samples": []}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    kind = tdata.resolve_template(tokenizer, template)
    preds = generate(model, tokenizer, [tdata.prompt_text(tokenizer, r, kind) for r in rows], kind, max_new_tokens)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scored = [dict(r, prediction=p, rouge_l=scorer.score(r["reference"], p)["rougeL"].fmeasure)
              for r, p in zip(rows, preds)]
    return {"rouge_l": sum(s["rouge_l"] for s in scored) / len(scored), "file": eval_file, "samples": scored}
