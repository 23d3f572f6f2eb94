"""Self-Instruct round logic against a fake engine: target limit, truncation, classification, resume,
prompt sampling; and the vLLM engine's structured-output fallback against a fake vLLM.

Fast: no model, and no Ray but in the exact-scores test. The fake answers each prompt kind with
canned, prompt-dependent text.
"""
from __future__ import annotations

import json

from actors.vllm_engine import VLLMEngine, sampling_kwargs
from pipelines import io
from pipelines import self_instruct_prompts as P
from pipelines.config import GenerateConfig, SamplingConfig, SelfInstructSampling
from pipelines.novelty import NoveltyIndex, filter_novel
from pipelines.self_instruct import SelfInstruct

SEEDS = [{"id": f"seed_{k}", "instruction": f"Seed task number {k} about topic {w}", "instances": [],
          "is_classification": False} for k, w in enumerate("alpha beta gamma delta epsilon zeta eta theta".split())]
TOPICS = ("volcanoes tides glaciers deserts comets orchids bridges violins lanterns ferries kites "
          "sparrows canals quarries tunnels meadows").split()


class Fake:
    def __init__(self, classify_answer=lambda inst: "Yes" if "label" in inst.lower() else "No", classify_error="",
                 history_period=0):
        """history_period=k: call c's "history" instruction repeats call c-k's (0: always new words)."""
        self.classify_answer, self.classify_error, self.calls = classify_answer, classify_error, 0
        self.history_period = history_period

    def generate(self, rows):
        out = []
        for r in rows:
            p, res = r["prompt"], {"finish_reason": "stop", "error": ""}
            if p.startswith("Come up with a series of tasks"):
                self.calls += 1
                a = " ".join(f"{t}{self.calls}" for t in TOPICS[:6])  # words no other call uses
                h = (self.calls - 1) % self.history_period + 1 if self.history_period else self.calls
                b = " ".join(f"{t}{h}" for t in TOPICS[6:12])
                res["text"] = (f" Label the mood of {a} as happy or sad\n"
                               f"{r['n_shown'] + 2}. Describe the history of {b}")
            elif p.startswith("Can the following task"):
                inst = p.rsplit("Task: ", 1)[1].split("\n")[0]
                res["text"] = self.classify_answer(inst)
                res["error"] = self.classify_error if "history" in inst else ""
            elif p.startswith("Given the classification task"):
                res["text"] = "Class label: Happy\nStory: The cat found home.\nClass label: Sad\nStory: The dog"
                res["finish_reason"] = "length"  # cut off: the last instance must go
            else:
                res["text"] = "Example 1\nInput: one\nOutput: first answer\nInput: two\nOutput: second answer"
            out.append({**r, "prompt_tokens": 5, "output_tokens": 5, "sample_index": 0, "model": "fake", **res})
        return out


def cfg(**kw):
    return GenerateConfig(**{"prompts_per_round": 3, "rounds": 2, "target_instructions": 100, **kw})


def test_round_rows_truncation_and_classification(tmp_path):
    si = SelfInstruct(SEEDS, Fake(), cfg(rounds=1), "fake", str(tmp_path))
    rows, rejected, stats = si.run()
    insts = {r["instruction"] for r in rows}
    assert len(insts) == 6  # two per prompt, all novel (different topics)
    clf = [r for r in rows if r["is_classification"]]
    other = [r for r in rows if not r["is_classification"]]
    assert clf and other
    assert {(r["input"], r["output"]) for r in clf} == {("The cat found home.", "Happy")}  # "Sad" was cut off
    assert all(r["operation"] == "output_first" for r in clf)
    assert all(r["finish_reason"] == "stop" for r in clf)  # complete, though its completion was cut off
    assert all('"completion_finish_reason": "length"' in r["meta"] for r in clf)
    assert {(r["input"], r["output"]) for r in other} == {("one", "first answer"), ("two", "second answer")}
    reasons = [x["reason"] for x in rejected]
    assert reasons.count("truncated_instance") == 3
    assert stats["rounds"][0]["classify_parse_failures"] == 0


def test_target_reached_candidates_are_not_pooled(tmp_path):
    si = SelfInstruct(SEEDS, Fake(), cfg(target_instructions=4), "fake", str(tmp_path))
    rows, rejected, stats = si.run()
    assert stats["pool_machine"] == 4 and len(stats["rounds"]) == 1
    target = [x for x in rejected if x["stage"] == "self_instruct/target"]
    assert len(target) == 2
    assert len(si.index) == len(SEEDS) + 4  # the two over the target are not in the novelty index


def test_parse_failures_per_round_and_classify_errors(tmp_path):
    si = SelfInstruct(SEEDS, Fake(classify_answer=lambda inst: "Maybe", classify_error="boom"), cfg(), "fake",
                      str(tmp_path))
    rows, rejected, stats = si.run()
    per_round = [r["classify_parse_failures"] for r in stats["rounds"]]
    assert per_round == [3, 3]  # not cumulative: each round has 3 label instructions answered "Maybe"
    errs = [x for x in rejected if x["stage"] == "self_instruct/classify"]
    assert len(errs) == 6 and all(x["reason"] == "boom" for x in errs)
    assert not any("history" in r["instruction"] for r in rows)
    # they passed novelty, so they stay in the pool (and the index), unflagged and without instances
    unflagged = [m for m in si.machine if m["is_classification"] is None]
    assert sorted(m["id"] for m in unflagged) == sorted(x["id"] for x in errs)
    assert all("history" in m["instruction"] for m in unflagged)
    assert stats["pool_machine"] == 12 and [r["classify_errors"] for r in stats["rounds"]] == [3, 3]
    assert si.index._texts == [t["instruction"] for t in SEEDS] + [m["instruction"] for m in si.machine]


def _round_files(run_dir, r):
    d = run_dir / "stages/self_instruct" / f"round-{r:04d}"
    return (io.read_rows(d / "instructions.parquet"), io.read_rows(d / "rows.parquet"),
            io.read_rows(d / "rejected.parquet", rejected=True))


def test_resumed_run_equals_uninterrupted_with_classify_errors(tmp_path):
    """Round 2 repeats round 1's "history" instructions, whose classification failed: both an
    uninterrupted run and one resumed after round 1 judge them against the same index."""
    quiet = dict(log=lambda *_: None)
    a, b = tmp_path / "a", tmp_path / "b"
    whole = SelfInstruct(SEEDS, Fake(classify_error="boom", history_period=3), cfg(), "fake", str(a), **quiet)
    whole.run()
    SelfInstruct(SEEDS, Fake(classify_error="boom", history_period=3), cfg(rounds=1), "fake", str(b), **quiet).run()
    fake = Fake(classify_error="boom", history_period=3)
    fake.calls = 3  # as if the same engine went on: round 2's prompts are calls 4..6
    resumed = SelfInstruct(SEEDS, fake, cfg(), "fake", str(b), **quiet)
    resumed.run()
    assert fake.calls == 6
    assert _round_files(a, 2) == _round_files(b, 2)
    assert resumed.index._texts == whole.index._texts
    novel = [x for x in _round_files(a, 2)[2] if x["stage"] == "self_instruct/novelty"]
    assert len(novel) == 3 and all("history" in x["instruction"] and x["rouge_l"] == 1.0 for x in novel)


def test_prompt_sampling_human_and_machine_kept_apart(tmp_path):
    """8 instructions per prompt: min(2, pool) machine ones, seeds fill the rest; seed ids and
    machine (parent) ids are listed apart and are exactly the instructions shown."""
    seeds = [{"id": f"s{k}", "instruction": f"Seed instruction {k} about subject {k}", "instances": [],
              "is_classification": False} for k in range(20)]
    si = SelfInstruct(seeds, Fake(), cfg(prompts_per_round=5), "fake", str(tmp_path))
    text = {t["id"]: t["instruction"] for t in seeds}
    for pool, want in [(0, 0), (1, 1), (5, 2)]:
        si.machine = [{"id": f"m{k}", "instruction": f"Machine task {k} on theme {k}"} for k in range(pool)]
        text.update({m["id"]: m["instruction"] for m in si.machine})
        for req in si._prompts(1):
            assert req["n_shown"] == 8
            assert len(req["parent_ids"]) == want and len(req["seed_ids"]) == 8 - want
            assert set(req["seed_ids"]) <= {t["id"] for t in seeds}
            assert set(req["parent_ids"]) <= {m["id"] for m in si.machine}
            lines = req["prompt"].splitlines()
            assert lines[-1] == "9."
            shown = [ln.split(". ", 1)[1] for ln in lines[1:-1]]
            assert sorted(shown) == sorted(text[i] for i in req["seed_ids"] + req["parent_ids"])
    few = SelfInstruct(seeds[:3], Fake(), cfg(prompts_per_round=2), "fake", str(tmp_path / "few"))
    few.machine = si.machine
    for req in few._prompts(1):  # fewer seeds than wanted: all of them, still 2 machine
        assert req["n_shown"] == 5 and len(req["parent_ids"]) == 2 and sorted(req["seed_ids"]) == ["s0", "s1", "s2"]


def test_instance_stop_follows_max_instances_and_meta_names_templates(tmp_path):
    rows, _, _ = SelfInstruct(SEEDS, Fake(), cfg(rounds=1, max_instances_per_task=2), "fake", str(tmp_path)).run()
    assert rows
    for r in rows:
        assert json.loads(r["sampling_params"])["stop"] == ["Task:", "Example 3"]
        meta = json.loads(r["meta"])
        assert meta["instruction_template"] == P.INSTRUCTION_TEMPLATE
        assert meta["classify_template"] == P.CLASSIFY_TEMPLATE
    given = cfg(max_instances_per_task=2, sampling=SelfInstructSampling(
        instances=SamplingConfig(temperature=0.0, stop=["\nTask:", "Example 3"])))
    si = SelfInstruct(SEEDS, Fake(), given, "fake", str(tmp_path / "given"))
    assert si._instance_sampling().stop == ["\nTask:", "Example 3"]  # already there: not added twice


def test_resume_after_committed_round(tmp_path):
    first = SelfInstruct(SEEDS, Fake(), cfg(rounds=1), "fake", str(tmp_path)).run()
    fake = Fake()
    si = SelfInstruct(SEEDS, fake, cfg(rounds=2), "fake", str(tmp_path), log=lambda *_: None)
    rows, _, stats = si.run()
    assert fake.calls == 3  # only round 2's prompts were generated
    assert [r["round"] for r in stats["rounds"]] == [1, 2]
    assert {r["id"] for r in first[0]} <= {r["id"] for r in rows}


def test_kept_rows_get_exact_scores_past_the_freeze(tmp_path, monkeypatch, ray_session):
    """Past novelty._FREEZE the filter gives kept rows a lower bound; with exact_novelty_scores the
    round replaces it with the exact best over the pool before each row (seeds, then the pool in
    commit order): on the instruction, its instance rows and its classify-error rejects. On the
    session's Ray cluster, so the round sends the rows to Ray tasks (several: SCORE_BATCH=5) as a
    real run does; the tasks only read the index, so the driver's smaller _FREEZE is no matter."""
    from pipelines import novelty, self_instruct
    from pipelines.rouge import rouge_l

    monkeypatch.setattr(novelty, "_FREEZE", 10)
    monkeypatch.setattr(self_instruct, "SCORE_BATCH", 5)
    assert ray_session.is_initialized()
    got = {}
    for exact in (True, False):
        si = SelfInstruct(SEEDS, Fake(classify_error="boom"), cfg(prompts_per_round=6, exact_novelty_scores=exact),
                          "fake", str(tmp_path / str(exact)), log=lambda *_: None)
        rows, rejected, _ = si.run()
        got[exact] = si.machine, rows, [x for x in rejected if x["stage"] == "self_instruct/classify"]
    machine, rows, errors = got[True]
    pool = [s["instruction"] for s in SEEDS] + [m["instruction"] for m in machine]
    assert len(machine) == 24 and errors and rows
    for p, m in enumerate(machine, start=len(SEEDS)):
        scores = [rouge_l(m["instruction"], x) for x in pool[:p]]
        assert (m["rouge_l"], m["most_similar"]) == (max(scores), pool[scores.index(max(scores))]), m["instruction"]
    by_inst = {m["instruction"]: (m["rouge_l"], m["most_similar"]) for m in machine}
    for x in rows + errors:
        assert (x["rouge_l"], x["most_similar"]) == by_inst[x["instruction"]]
    assert {x["instruction"] for x in errors} <= set(by_inst) and len({x["instruction"] for x in rows}) > 1
    bound = {m["instruction"]: m["rouge_l"] for m in got[False][0]}
    assert bound.keys() == by_inst.keys()  # the same decisions; lower scores without the pass
    assert all(bound[t] <= f for t, (f, _) in by_inst.items()) and sum(bound[t] < f for t, (f, _) in by_inst.items()) > 10


def test_filter_novel_max_keep_stops_and_leaves_index():
    idx = NoveltyIndex()
    got = filter_novel(idx, ["Write a poem about the sea.", "Write a poem about the sea!", "Name three rivers in Asia.",
                             "Explain how tides work.", "Sort a list of numbers."], max_keep=2)
    assert [g if g is None else g[0] for g in got] == [True, False, True, None, None]
    assert idx._texts == ["Write a poem about the sea.", "Name three rivers in Asia."]


def test_input_first_without_example_headers_and_inline():
    assert P.parse_input_first("Input: a b\nOutput: c d\nInput: e\nOutput: f") == [("a b", "c d"), ("e", "f")]
    assert P.parse_input_first("Example 1: Input: France Output: Paris") == [("France", "Paris")]
    assert P.parse_input_first("Output: only this\nExample 2\nOutput: and this") == [("", "only this"), ("", "and this")]


def test_progress_line_per_round_and_commit_hook(tmp_path):
    """One progress line per round (pool size so far, tok/s, ETA to the target) and the commit hook
    (a remote output_dir mirrors each round) called once per committed round."""
    import re

    lines, commits = [], []
    si = SelfInstruct(SEEDS, Fake(), cfg(rounds=2, target_instructions=40), "fake", str(tmp_path),
                      log=lines.append, on_commit=lambda: commits.append(len(si.committed())))
    _, _, stats = si.run()
    progress = [ln for ln in lines if re.search(r"round \d/2: ", ln)]
    assert len(progress) == 2 and commits == [1, 2]
    pools = [int(re.search(r"pool (\d+)/40", ln).group(1)) for ln in progress]
    kept = [r["instructions_kept"] for r in stats["rounds"]]
    assert pools == [kept[0], kept[0] + kept[1]] and pools[0] > 0
    starts = [ln for ln in lines if ln.startswith("self_instruct: starting round")]  # names the seed count
    assert starts == [f"self_instruct: starting round {r} of 2 (pool: {len(SEEDS)} seed tasks, {m} machine instructions)"
                      for r, m in [(1, 0), (2, pools[0])]]
    for ln, st in zip(progress, stats["rounds"]):
        rate = float(re.search(r"(\d+) tok/s", ln).group(1))
        assert abs(rate - st["instruction_tokens_per_s"]) <= 1 and st["instruction_tokens"] > 0
        if st["seconds"] >= 0.1:  # a fake round can take under 5 ms, which rounds to 0.00 s
            assert abs(rate - st["instruction_tokens"] / st["seconds"]) <= 0.06 * rate + 1
        eta = float(re.search(r"ETA to target ([\d.]+) min", ln).group(1))
        assert eta >= 0


# -- the engine's structured-output fallback (a fake vLLM: no model is loaded) ----------------------
class _Out:
    def __init__(self, text):
        self.text, self.finish_reason, self.token_ids = text, "stop", [1]


class _Result:
    def __init__(self, text):
        self.outputs, self.prompt_token_ids = [_Out(text)], [1, 2]


class _Tok:
    def encode(self, text, add_special_tokens=False):
        return list(range(len(text.split())))


class FakeVLLM(VLLMEngine):
    """VLLMEngine with vLLM replaced: SamplingParams are (kwargs, choice) dicts; generation fails
    for any request with a choice unless the backend works, and for the prompt "bad"."""

    def __init__(self, supported=True, backend_works=False):
        self.max_model_len, self.tokenizer = 64, _Tok()
        self._structured = dict if supported else None
        self.structured = supported
        self.backend_works, self.calls = backend_works, []

    def _make_params(self, kwargs, choice):
        return {"kwargs": kwargs, "choice": choice}

    def _run(self, reqs):
        self.calls.append([req[3]["choice"] for req in reqs])
        if any(req[1] == [0] for req in reqs):  # the one-word prompt "bad"
            raise RuntimeError("engine refused the prompt")
        if not self.backend_works and any(req[3]["choice"] for req in reqs):
            raise ValueError("no structured output backend for this platform")
        return {req[0]: _Result("Yes" if req[3]["choice"] else " free text") for req in reqs}


def _rows(*prompts, choice=True):
    s = json.dumps({"max_tokens": 3, **({"choice": [" Yes", " No"]} if choice else {})})
    return [{"prompt": p, "sampling": s} for p in prompts]


def test_sampling_kwargs_caps_tokens_and_drops_choice_without_support():
    kw, choice = sampling_kwargs({"max_tokens": 50, "temperature": 0.0, "choice": [" Yes", " No"]}, 60, 64, True)
    assert kw == {"max_tokens": 4, "temperature": 0.0} and choice == [" Yes", " No"]
    assert sampling_kwargs({"max_tokens": 5, "choice": [" Yes", " No"]}, 1, 64, False) == ({"max_tokens": 5}, None)
    assert sampling_kwargs({}, 70, 64, True) == ({"max_tokens": 1}, None)


def test_engine_resends_without_choice_when_structured_output_fails():
    e = FakeVLLM()
    out = e.generate_rows(_rows("is it one", "is it two") + _rows("plain one", choice=False))
    assert [o["error"] for o in out] == ["", "", ""]
    assert [o["text"] for o in out] == [" free text"] * 3  # the parser decides on free text
    assert e.structured is False
    # the batch, then row 0 with and without its choice, then the others without one
    assert e.calls == [[[" Yes", " No"], [" Yes", " No"], None], [[" Yes", " No"]], [None], [None], [None]]
    e.calls.clear()
    e.generate_rows(_rows("is it three"))
    assert e.calls == [[None]]  # off from then on: one call, no failure first


def test_engine_keeps_choice_where_it_works_and_reports_other_errors():
    e = FakeVLLM(backend_works=True)
    out = e.generate_rows(_rows("is it one", "bad"))
    assert [(o["text"], o["error"]) for o in out] == [("Yes", ""), ("", "RuntimeError: engine refused the prompt")]
    assert e.structured is True  # "bad" fails without its choice too: not a structured-output failure


def test_engine_without_structured_output_support_sends_no_choice():
    e = FakeVLLM(supported=False)
    out = e.generate_rows(_rows("is it one"))
    assert e.calls == [[None]] and out[0]["text"] == " free text" and out[0]["error"] == ""


def test_engine_falls_back_when_params_refuse_the_choice():
    class Refusing(FakeVLLM):
        def _make_params(self, kwargs, choice):
            if choice:
                raise TypeError("unexpected keyword argument 'structured_outputs'")
            return super()._make_params(kwargs, choice)

    e = Refusing()
    out = e.generate_rows(_rows("is it one"))
    assert out[0]["error"] == "" and e.structured is False and e.calls == [[None]]
