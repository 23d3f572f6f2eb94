"""Orca-style explanation tuning (Mukherjee et al., 2023): responses written under a system message.

Each source row gets one system message from the pool below (our wording), drawn deterministically
from the run seed and the row id; the model answers with messages=[system, user]. The new row keeps
the source's instruction and input, stores the system message in `system` and its name in
`template`, and points back to the source through `parent_ids`.
"""
from __future__ import annotations

import json
import random
from collections import Counter

from pipelines import schema
from pipelines.llm import request, sampling_json
from pipelines.method_config import OrcaConfig

METHOD = "orca"
STAGE = "orca_generate"

# The names are repeated in method_config.ORCA_SYSTEM_NAMES, so the config can validate
# orca.system_messages without importing this module (it pulls in ray); a test keeps the two equal.
SYSTEM_MESSAGES: dict[str, str] = {
    "step_by_step": "You are a helpful assistant. Work through the task step by step, and show each step "
                    "of your reasoning before you give the final answer.",
    "explain_like_five": "You are a patient teacher talking to a five-year-old. Answer using simple words and "
                         "short sentences, and explain any idea a young child might not know.",
    "think_first": "You are a careful assistant. Before you answer, think about what the task really asks and "
                   "what could go wrong, then write your answer.",
    "justify_steps": "You are a rigorous assistant. Solve the task faithfully, and after every step say why "
                     "that step is correct.",
    "detailed": "You are a thorough assistant. Give a detailed, complete answer that covers the background, "
                "the main points and any important exceptions.",
    "brief": "You are a concise assistant. Answer briefly and directly, with no more words than the task needs.",
    "teacher_hints": "You are a teacher. First restate in your own words what the task asks and any rules it "
                     "sets, then show how to use those rules to reach the answer.",
    "options_reasoning": "You are an assistant that explains choices. If the task has options or possible "
                         "answers, give the right one, then say why each other one is wrong.",
    "faithful_follow": "You are an assistant that follows instructions exactly. Do precisely what the task says, "
                       "no more and no less, and briefly check your answer against every instruction.",
    "expert_plain": "You are a domain expert writing for a general audience. Give an accurate answer and "
                    "explain any technical term the first time you use it.",
    "structured": "You are an organised assistant. Lay out your answer with a short summary first, then the "
                  "supporting details as a numbered list.",
    "check_work": "You are a meticulous assistant. Answer the task, then re-read your answer, check it for "
                  "mistakes and correct any you find before finishing.",
    "examples": "You are a helpful assistant who teaches by example. Answer the task and add a short, concrete "
                "example that makes the answer easier to understand.",
    "socratic": "You are a thoughtful tutor. Break the task into the smaller questions it depends on, answer "
                "each in turn, and combine them into the final answer.",
}


def _seed(*parts) -> int:
    return int(schema.make_id(*parts)[:8], 16)


def pick_system(row_id: str, seed: int, names: list[str] | None = None) -> str:
    """The name of the system message a row is answered under: a seeded draw over `names` (or all)."""
    pool = sorted(names) if names else sorted(SYSTEM_MESSAGES)
    unknown = [n for n in pool if n not in SYSTEM_MESSAGES]
    if unknown:
        raise ValueError(f"unknown Orca system messages {unknown}; known: {sorted(SYSTEM_MESSAGES)}")
    return random.Random(_seed("orca_system", seed, row_id)).choice(pool)


def user_content(r: dict) -> str:
    """The user turn for a source row: instruction, plus its input when there is one."""
    inp = (r.get("input") or "").strip()
    return r["instruction"].strip() + (f"\n\n{inp}" if inp else "")


def build_messages(r: dict, system_name: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_MESSAGES[system_name]},
            {"role": "user", "content": user_content(r)}]


def response_failure(text: str, min_words: int, error: str = "", finish_reason: str = "stop") -> str | None:
    if error:
        return f"engine_error: {error}"
    n = len((text or "").split())
    if n == 0:
        return "empty_response"
    if finish_reason == "length":  # cut off mid-explanation; curation would drop it later anyway
        return "response_truncated"
    if n < min_words:
        return f"too_short: {n} words < {min_words}"
    return None


def run_orca(rows: list[dict], engine, cfg: OrcaConfig, model_name: str, seed: int):
    """Explanation-style responses for `rows`; returns (kept rows, rejected rows, stats)."""
    src = sorted(rows, key=lambda r: r["id"])[: cfg.max_rows or None]
    reqs = []
    for k, r in enumerate(src):
        name = pick_system(r["id"], seed, cfg.system_messages)
        s = sampling_json(cfg.sampling, seed=_seed("orca", seed, r["id"]))
        reqs.append(request(messages=build_messages(r, name), sampling=s, _k=k, _system=name, _sampling=s))
    kept, rejected = [], []
    used, reasons = Counter(), Counter()
    for o in engine.generate(reqs):
        r, name = src[int(o["_k"])], o["_system"]
        text = o.get("text") or ""
        iid = r.get("instruction_id") or r["id"]
        rid = schema.make_id(METHOD, r["id"], name, int(o.get("sample_index") or 0), text)
        row = schema.row(
            id=rid, instruction=r["instruction"], input=r.get("input") or "", output=text,
            system=SYSTEM_MESSAGES[name], method=METHOD, instruction_id=iid,
            seed_ids=list(r.get("seed_ids") or []), parent_ids=[r["id"]], operation="explain",
            is_classification=r.get("is_classification"), model=model_name, template=name,
            sampling_params=o["_sampling"], finish_reason=o.get("finish_reason") or "",
            prompt_tokens=int(o.get("prompt_tokens") or 0), output_tokens=int(o.get("output_tokens") or 0),
            meta=json.dumps({"source_method": r.get("method", ""), "sample_index": int(o.get("sample_index") or 0)}))
        why = response_failure(text, cfg.min_response_words, o.get("error") or "", o.get("finish_reason") or "")
        if why:
            rejected.append(schema.reject(row, STAGE, why))
            reasons[why.split(":")[0]] += 1
        else:
            kept.append(row)
            used[name] += 1
    stats = {"input_rows": len(rows), "requests": len(reqs), "kept": len(kept), "rejected": len(rejected),
             "system_messages": dict(sorted(used.items())), "rejected_reasons": dict(reasons)}
    return kept, rejected, stats
