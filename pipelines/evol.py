"""Evol-Instruct (Xu et al., 2023) as a stage over the engine pool: evolve, eliminate, respond.

Each round, every live lineage draws one operation (seeded by its row id and the round), the model
rewrites the instruction, and the eliminator drops failed evolutions with a reason: engine errors,
empty / truncated rewrites, leaked template words, a copy of the parent (identical_to_parent), no
information gain (the model's Yes/No equality judgement), and responses that are empty, truncated,
refuse, are too short or are only stop words.
A surviving evolution becomes the parent of the next round; after a failure the parent carries on.

The parent's instruction and input are evolved together (the rewrite must keep the input), so an
evolved row has its whole task in `instruction` and an empty `input`. `round` is the evolution depth
(1 + the parent's depth when the parent is itself evolved); meta.evol_round is the iteration.
Lineages are 1:1, so every step uses one sample per prompt whatever `n` says.
"""
from __future__ import annotations

import json
import random
from collections import Counter

from pipelines import schema
from pipelines.evol_prompts import (EQUALITY_CHOICES, build_equality_prompt, build_evol_prompt,
                                    evolution_failure, parse_evolved, parse_yes_no, response_failure)
from pipelines.llm import request, sampling_json
from pipelines.method_config import EvolConfig

METHOD = "evol_instruct"
STAGE = "evol_eliminator"


def _seed(*parts) -> int:
    return int(schema.make_id(*parts)[:8], 16)


def task_text(r: dict) -> str:
    """The text a row's task is evolved from: instruction, plus its input when there is one."""
    inp = (r.get("input") or "").strip()
    return r["instruction"].strip() + (f"\n\n{inp}" if inp else "")


def pick_operation(row_id: str, rnd: int, seed: int, operations: list[str]) -> str:
    """The operation a lineage uses in a round: a seeded draw, the same on every run."""
    return random.Random(_seed("evol_op", seed, row_id, rnd)).choice(list(operations))


def _depth(r: dict) -> int:
    return int(r.get("round") or 0) if r.get("method") == METHOD else 0


def _user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def _by_key(out_rows: list[dict]) -> dict[int, dict]:
    """First sample per request key (lineages are 1:1)."""
    res: dict[int, dict] = {}
    for o in out_rows:
        res.setdefault(int(o["_k"]), o)
    return res


def run_evol(rows: list[dict], engine, cfg: EvolConfig, model_name: str, seed: int):
    """Evolve `rows` for cfg.rounds rounds; returns (kept rows, rejected rows, stats)."""
    parents = sorted(rows, key=lambda r: r["id"])[: cfg.max_rows or None]
    kept, rejected = [], []
    tried, survived, reasons = Counter(), Counter(), Counter()
    tokens = Counter()
    for rnd in range(1, cfg.rounds + 1):
        # 1. evolve every live lineage
        cands = []
        for k, p in enumerate(parents):
            op = pick_operation(p["id"], rnd, seed, cfg.operations)
            s = sampling_json(cfg.sampling.evolve, n=1, seed=_seed("evolve", seed, p["id"], rnd))
            cands.append({"k": k, "parent": p, "op": op, "depth": _depth(p) + 1, "evolve_sampling": s,
                          "req": request(messages=_user(build_evol_prompt(op, task_text(p))), sampling=s, _k=k)})
        outs = _by_key(engine.generate([c["req"] for c in cands]))
        live = []
        for c in cands:
            o = outs.get(c["k"], {"text": "", "finish_reason": "error", "error": "no result"})
            tokens["prompt"] += int(o.get("prompt_tokens") or 0)
            tokens["output"] += int(o.get("output_tokens") or 0)
            c["evolved"] = parse_evolved(o.get("text") or "")
            c["evolve_out"] = o
            tried[(c["op"], c["depth"])] += 1
            why = evolution_failure(c["evolved"], task_text(c["parent"]), o.get("finish_reason") or "", o.get("error") or "")
            (live.append(c) if why is None else rejected.append(_reject(c, why, model_name, rnd)))
        # 2. eliminator: does the evolution add information? (model judgement, Yes/No choice)
        if cfg.equality_check and live:
            reqs = [request(messages=_user(build_equality_prompt(task_text(c["parent"]), c["evolved"])),
                            sampling=sampling_json(cfg.sampling.judge, n=1, choice=EQUALITY_CHOICES,
                                                   seed=_seed("judge", seed, c["parent"]["id"], rnd)), _k=c["k"])
                    for c in live]
            judged = _by_key(engine.generate(reqs))
            still = []
            for c in live:
                o = judged.get(c["k"], {"text": "", "error": "no result"})
                tokens["prompt"] += int(o.get("prompt_tokens") or 0)
                tokens["output"] += int(o.get("output_tokens") or 0)
                equal = parse_yes_no(o.get("text") or "")
                c["judge"] = (o.get("text") or "").strip()
                if o.get("error"):
                    rejected.append(_reject(c, f"engine_error: {o['error']}", model_name, rnd))
                elif equal is None:
                    rejected.append(_reject(c, f"unparseable_judgement: {c['judge'][:40]!r}", model_name, rnd))
                elif equal:
                    rejected.append(_reject(c, "no_information_gain: judged equal to parent", model_name, rnd))
                else:
                    still.append(c)
            live = still
        # 3. respond to each surviving evolution; eliminate bad responses
        reqs = []
        for c in live:
            c["respond_sampling"] = sampling_json(cfg.sampling.respond, n=1,
                                                  seed=_seed("respond", seed, c["parent"]["id"], rnd))
            reqs.append(request(messages=_user(c["evolved"]), sampling=c["respond_sampling"], _k=c["k"]))
        answers = _by_key(engine.generate(reqs))
        next_parents = list(parents)  # a failed evolution leaves its parent to carry on
        for c in live:
            o = answers.get(c["k"], {"text": "", "finish_reason": "error", "error": "no result"})
            tokens["prompt"] += int(o.get("prompt_tokens") or 0)
            tokens["output"] += int(o.get("output_tokens") or 0)
            c["response"] = o
            why = response_failure(o.get("text") or "", cfg.min_response_words, cfg.refusal_max_words,
                                   o.get("error") or "", o.get("finish_reason") or "")
            if why is not None:
                rejected.append(_reject(c, why, model_name, rnd))
                continue
            r = _row(c, model_name, rnd)
            kept.append(r)
            next_parents[c["k"]] = r
            survived[(c["op"], c["depth"])] += 1
        parents = next_parents
    for r in rejected:
        reasons[r["reason"].split(":")[0]] += 1
    by_op: dict = {}
    for (op, depth), n in sorted(tried.items()):
        by_op.setdefault(op, {})[str(depth)] = {"tried": n, "survived": survived[(op, depth)]}
    stats = {"input_rows": len(rows), "lineages": len(parents), "rounds": cfg.rounds, "kept": len(kept),
             "rejected": len(rejected), "by_operation_depth": by_op, "rejected_reasons": dict(reasons),
             "prompt_tokens": tokens["prompt"], "output_tokens": tokens["output"]}
    return kept, rejected, stats


def _base(c: dict, model_name: str, rnd: int) -> dict:
    p, o = c["parent"], c["evolve_out"]
    iid = schema.make_id(METHOD, p["id"], c["op"], c["depth"], c["evolved"])
    meta = {"evol_round": rnd, "parent_instruction": task_text(p),
            "evolve": {"sampling": json.loads(c["evolve_sampling"]), "finish_reason": o.get("finish_reason", ""),
                       "prompt_tokens": int(o.get("prompt_tokens") or 0), "output_tokens": int(o.get("output_tokens") or 0)}}
    if "judge" in c:
        meta["judge"] = c["judge"]
    return schema.row(id=iid, instruction=c["evolved"], input="", method=METHOD, instruction_id=iid,
                      seed_ids=list(p.get("seed_ids") or []), parent_ids=[p["id"]], round=c["depth"],
                      operation=c["op"], model=model_name, template=f"evol/{c['op']}",
                      sampling_params=c["evolve_sampling"], finish_reason=o.get("finish_reason", ""),
                      meta=json.dumps(meta, sort_keys=True))


def _row(c: dict, model_name: str, rnd: int) -> dict:
    r, o = _base(c, model_name, rnd), c["response"]
    r.update(id=schema.make_id(r["instruction_id"], o["text"]), output=o["text"],
             sampling_params=c["respond_sampling"], finish_reason=o.get("finish_reason", ""),
             prompt_tokens=int(o.get("prompt_tokens") or 0), output_tokens=int(o.get("output_tokens") or 0))
    return r


def _reject(c: dict, reason: str, model_name: str, rnd: int) -> dict:
    r = _row(c, model_name, rnd) if "response" in c else _base(c, model_name, rnd)
    return schema.reject(r, STAGE, reason)
