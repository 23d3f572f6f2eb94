"""Self-Instruct (Wang et al., 2022): a task pool that grows round by round.

A round: sample 6 human + 2 machine instructions per prompt -> the model continues the list ->
instruction filters -> ROUGE-L novelty against the pool (deterministic order) -> "is it
classification?" (beside it, Ray tasks give kept instructions their exact novelty scores) ->
output-first or input-first instances -> instance filters. Each round is committed atomically as
a directory under `stages/self_instruct/`; a rerun resumes after the last committed round.

The novelty index always holds the seeds plus the committed pool, in commit order: every
instruction that passes the novelty filter joins the pool, even one whose classification call
failed (it keeps a null flag and gets no instances), because later candidates were already judged
against it. So a resumed run, which rebuilds the index from the committed rounds, continues
exactly as an uninterrupted one would.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

from pipelines import io, schema
from pipelines import self_instruct_prompts as P
from pipelines.config import GenerateConfig
from pipelines.llm import request, sampling_json
from pipelines.novelty import NoveltyIndex, filter_novel, kept_score_is_exact

METHOD = "self_instruct"
SCORE_BATCH = 4096  # kept rows per exact-score task: each task loads the index (see exact_scores_async)


def exact_scores_async(index: NoveltyIndex, texts: list[str], before: list[int]):
    """The exact (ROUGE-L, most similar) of kept instructions against the pool before each
    (NoveltyIndex.best_before), beside the round's engine passes: Ray tasks over batches of
    SCORE_BATCH rows, all reading one object-store copy of the index (its arrays are shared,
    read-only; its token dict and texts are unpickled by each task); in this process when Ray is
    not running (unit tests with a fake engine). Returns a function that waits for the scores, in
    order. The decisions never wait for this: its cost per row grows with the pool
    (pipelines/novelty.py), theirs does not."""
    import ray

    if not texts or not ray.is_initialized():
        out = index.best_before(texts, before)
        return lambda: out
    ref, task = ray.put(index), ray.remote(num_cpus=1)(NoveltyIndex.best_before)
    refs = [task.remote(ref, texts[i:i + SCORE_BATCH], before[i:i + SCORE_BATCH])
            for i in range(0, len(texts), SCORE_BATCH)]
    return lambda: [x for r in ray.get(refs) for x in r]


def _seed_int(*parts) -> int:
    return int(schema.make_id(*parts), 16) % (2**31)


def _engine_rejects(outs: list[dict], stage: str) -> tuple[list[dict], list[dict]]:
    ok = [o for o in outs if not o["error"]]
    bad = [schema.reject(schema.row(method=METHOD, instruction=o.get("instruction", ""),
                                    model=o.get("model", "")), stage, o["error"]) for o in outs if o["error"]]
    return ok, bad


class SelfInstruct:
    def __init__(self, seeds: list[dict], engine, cfg: GenerateConfig, model_name: str, run_dir: str, seed: int = 0,
                 log=print, *, on_commit=lambda: None):
        """`on_commit` runs after each committed round (a remote output_dir mirrors it)."""
        self.seeds, self.engine, self.cfg, self.model, self.seed, self.log = seeds, engine, cfg, model_name, seed, log
        self.on_commit = on_commit
        self.dir = Path(run_dir) / "stages" / METHOD
        self.index = NoveltyIndex(cfg.rouge_threshold)
        for s in seeds:
            self.index.add(s["instruction"])
        self.machine: list[dict] = []  # pool entries: id, instruction, round

    # -- one round ------------------------------------------------------------------------
    def _prompts(self, r: int) -> list[dict]:
        rng = random.Random(_seed_int(self.seed, "prompts", r))
        s = self.cfg.sampling.instructions
        reqs = []
        for p in range(self.cfg.prompts_per_round):
            mach = rng.sample(self.machine, min(self.cfg.num_machine, len(self.machine)))
            human = rng.sample(self.seeds, min(self.cfg.num_human + self.cfg.num_machine - len(mach), len(self.seeds)))
            shown = [(t["instruction"], "seed", t["id"]) for t in human] + [(m["instruction"], "machine", m["id"]) for m in mach]
            rng.shuffle(shown)
            reqs.append(request(prompt=P.instruction_prompt([t for t, _, _ in shown]),
                                sampling=sampling_json(s, seed=_seed_int(self.seed, r, p)),
                                prompt_index=p, n_shown=len(shown),
                                seed_ids=[i for _, k, i in shown if k == "seed"],
                                parent_ids=[i for _, k, i in shown if k == "machine"]))
        return reqs

    def _candidates(self, outs: list[dict], r: int, rejected: list[dict]) -> list[dict]:
        cands = []
        for o in outs:
            for k, (inst, problem) in enumerate(P.parse_instructions(o["text"], o["n_shown"] + 1, o["finish_reason"] == "length")):
                problem = problem or P.instruction_problem(inst)
                c = schema.row(instruction=inst, method=METHOD, round=r, seed_ids=list(o["seed_ids"]),
                               parent_ids=list(o["parent_ids"]), model=self.model, template=P.INSTRUCTION_TEMPLATE,
                               sampling_params=o["sampling"], finish_reason=o["finish_reason"],
                               prompt_tokens=o["prompt_tokens"], output_tokens=o["output_tokens"],
                               id=schema.make_id(METHOD, "candidate", r, o["prompt_index"], o["sample_index"], k, inst))
                if problem:
                    rejected.append(schema.reject(c, "self_instruct/instruction_filter", problem))
                else:
                    cands.append(c)
        return cands

    def _classify(self, insts: list[dict], rejected: list[dict]) -> tuple[dict[str, bool], int]:
        """Flags per instruction id and the number of answers that were neither Yes nor No (counted
        as not classification). An engine error leaves the instruction without a flag; its rejected
        row carries the error."""
        s = self.cfg.sampling.classify
        extra = {"choice": [" Yes", " No"]} if self.cfg.use_structured_output else {}
        outs = self.engine.generate([request(prompt=P.classify_prompt(c["instruction"]), iid=c["id"],
                                             sampling=sampling_json(s, n=1, **extra)) for c in insts])
        by_id = {c["id"]: c for c in insts}
        flags, failures = {}, 0
        for o in outs:
            if o["error"]:
                rejected.append(schema.reject(by_id[o["iid"]], "self_instruct/classify", o["error"]))
                continue
            f = P.parse_classification(o["text"])
            failures += f is None
            flags[o["iid"]] = bool(f)
        return flags, failures

    def _instance_sampling(self):
        """The configured instance sampling plus the stop after the last example kept."""
        s, stop = self.cfg.sampling.instances, P.example_stop(self.cfg.max_instances_per_task)
        return s if stop in s.stop else s.model_copy(update={"stop": [*s.stop, stop]})

    def _instances(self, insts: list[dict], r: int, rejected: list[dict]) -> list[dict]:
        s = self._instance_sampling()
        reqs = [request(prompt=(P.output_first_prompt if c["is_classification"] else P.input_first_prompt)(c["instruction"]),
                        sampling=sampling_json(s, seed=_seed_int(self.seed, "inst", c["id"])), iid=c["id"]) for c in insts]
        outs, bad = _engine_rejects(self.engine.generate(reqs), "self_instruct/instances")
        rejected += bad
        by_id = {c["id"]: c for c in insts}
        rows = []
        for o in outs:
            c = by_id[o["iid"]]
            clf = c["is_classification"]
            pairs = (P.parse_output_first if clf else P.parse_input_first)(o["text"])
            cut = []
            if pairs and o["finish_reason"] == "length":  # the last instance ran into the token limit
                cut = [(pairs.pop(), "truncated_instance")]
            kept, dropped = P.clean_instances(pairs, self.cfg.max_instances_per_task)
            dropped = cut + dropped
            if not pairs and not cut:
                dropped = [(("", o["text"]), "unparseable_instances")]
            for (inp, out), problem in [(p, "") for p in kept] + dropped:
                row = schema.row(**{**c, "id": schema.make_id(METHOD, c["id"], inp, out), "input": inp, "output": out,
                                    "instruction_id": c["id"], "operation": "output_first" if clf else "input_first",
                                    "template": P.OUTPUT_FIRST_TEMPLATE if clf else P.INPUT_FIRST_TEMPLATE,
                                    # an instance before the cut-off ended at the next marker: it is complete
                                    "sampling_params": o["sampling"],
                                    "finish_reason": "length" if problem == "truncated_instance" else "stop",
                                    "prompt_tokens": o["prompt_tokens"], "output_tokens": o["output_tokens"],
                                    # the instruction's own lineage: `template` and `sampling_params`
                                    # above are the instance generation's
                                    "meta": json.dumps({"completion_finish_reason": o["finish_reason"],
                                                        "instruction_template": c["template"],
                                                        "instruction_finish_reason": c["finish_reason"],
                                                        "instruction_sampling": c["sampling_params"],
                                                        "classify_template": P.CLASSIFY_TEMPLATE})})
                if problem:
                    rejected.append(schema.reject(row, "self_instruct/instance_filter", problem))
                else:
                    rows.append(row)
        return rows

    def round(self, r: int) -> dict:
        t0, rejected = time.time(), []
        outs, bad = _engine_rejects(self.engine.generate(self._prompts(r)), "self_instruct/instructions")
        rejected += bad
        cands = sorted(self._candidates(outs, r, rejected), key=lambda c: c["id"])  # order independent of Ray
        room, n0 = self.cfg.target_instructions - len(self.machine), len(self.index)
        accepted = []
        # past the target, filter_novel stops: those candidates are neither scored nor pooled
        decisions = filter_novel(self.index, [c["instruction"] for c in cands], max_keep=room)
        for c, d in zip(cands, decisions):
            if d is None:
                rejected.append(schema.reject(c, "self_instruct/target", "target_instructions reached"))
                continue
            keep, score, similar = d
            c.update(rouge_l=score, most_similar=similar)
            if not keep:
                rejected.append(schema.reject(c, "self_instruct/novelty", f"rouge_l_above_threshold: {score:.4f} > {self.cfg.rouge_threshold}"))
            else:
                accepted.append(c)
        for c in accepted:  # the pool id of an instruction is its content hash
            c["id"] = schema.make_id(METHOD, "instruction", c["instruction"])
        # kept rows' exact scores, computed while the engines classify, where the filter gave a
        # lower bound (a kept row's pool position is n0 + its rank)
        late = [k for k in range(len(accepted)) if not kept_score_is_exact(n0 + k)] if self.cfg.exact_novelty_scores else []
        scores = exact_scores_async(self.index, [accepted[k]["instruction"] for k in late], [n0 + k for k in late])
        flags, failures = self._classify(accepted, rejected) if accepted else ({}, 0)
        for k, (score, similar) in zip(late, scores()):
            accepted[k].update(rouge_l=score, most_similar=similar)
        by_id = {c["id"]: c for c in accepted}
        for x in rejected:  # rows the classification rejected were copied before the scores came
            if x["stage"] == "self_instruct/classify":
                x.update(rouge_l=by_id[x["id"]]["rouge_l"], most_similar=by_id[x["id"]]["most_similar"])
        for c in accepted:  # no flag (engine error): stays in the pool, see the module docstring
            c["is_classification"] = flags.get(c["id"])
        flagged = [c for c in accepted if c["id"] in flags]
        rows = self._instances(flagged, r, rejected) if flagged else []
        tokens = sum(o["prompt_tokens"] + o["output_tokens"] for o in outs)
        dt = time.time() - t0  # the rate from the unrounded time: a fast (fake) round rounds to 0.00 s
        stats = {"round": r, "prompts": self.cfg.prompts_per_round, "completions": len(outs),
                 "candidates": len(cands) + sum(1 for x in rejected if x["stage"].endswith("instruction_filter")),
                 "instructions_kept": len(accepted), "classification": sum(flags.values()),
                 "classify_parse_failures": failures, "classify_errors": len(accepted) - len(flags),
                 "rows": len(rows), "rejected": _count(rejected), "instruction_tokens": tokens,
                 "instruction_tokens_per_s": round(tokens / max(dt, 1e-9), 1), "seconds": round(dt, 2)}
        return {"instructions": accepted, "rows": rows, "rejected": rejected, "stats": stats}

    # -- rounds, commits, resume -------------------------------------------------------------
    def _commit(self, r: int, res: dict) -> None:
        final = self.dir / f"round-{r:04d}"
        tmp = self.dir / f".tmp-round-{r:04d}"
        shutil.rmtree(tmp, ignore_errors=True)
        io.write_rows(res["instructions"], tmp / "instructions.parquet")
        io.write_rows(res["rows"], tmp / "rows.parquet")
        io.write_rows(res["rejected"], tmp / "rejected.parquet", rejected=True)
        io.write_json(res["stats"], tmp / "stats.json")
        os.rename(tmp, final)  # the commit point: a round directory is complete or absent
        self.on_commit()

    def committed(self) -> list[Path]:
        return sorted(self.dir.glob("round-*")) if self.dir.is_dir() else []

    def run(self) -> tuple[list[dict], list[dict], dict]:
        rounds = []
        for d in self.committed():
            for inst in io.read_rows(d / "instructions.parquet"):
                self.index.add(inst["instruction"])
                self.machine.append(inst)
            rounds.append(io.read_json(d / "stats.json"))
            self.log(f"self_instruct: round {rounds[-1]['round']} already committed, resuming after it")
        t0 = time.time()
        for r in range(len(rounds) + 1, self.cfg.rounds + 1):
            if len(self.machine) >= self.cfg.target_instructions:
                break
            # before any work of the round (the kill test waits for it; not the "round r/N:" form
            # of the progress line)
            self.log(f"self_instruct: starting round {r} of {self.cfg.rounds} (pool: {len(self.seeds)} seed tasks, "
                     f"{len(self.machine)} machine instructions)")
            res = self.round(r)
            self._commit(r, res)
            self.machine += res["instructions"]
            rounds.append(res["stats"])
            st = res["stats"]
            rate = st["instruction_tokens_per_s"]
            left = (self.cfg.target_instructions - len(self.machine)) / max(st["instructions_kept"], 1) * st["seconds"]
            self.log(f"self_instruct: round {r}/{self.cfg.rounds}: +{st['instructions_kept']} instructions "
                     f"(pool {len(self.machine)}/{self.cfg.target_instructions}), {st['rows']} rows, "
                     f"{rate:.0f} tok/s, ETA to target {left / 60:.1f} min")
            if not res["instructions"]:
                self.log("self_instruct: the round added no new instruction; stopping")
                break
        rows = [x for d in self.committed() for x in io.read_rows(d / "rows.parquet")]
        rejected = [x for d in self.committed() for x in io.read_rows(d / "rejected.parquet", rejected=True)]
        return rows, rejected, {"rounds": rounds, "pool_machine": len(self.machine), "rows": len(rows),
                                "rejected": _count(rejected), "seconds": round(time.time() - t0, 2)}


def _count(rejected: list[dict]) -> dict:
    out: dict = {}
    for x in rejected:
        key = f"{x['stage']}: {x['reason'].split(':')[0]}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))
