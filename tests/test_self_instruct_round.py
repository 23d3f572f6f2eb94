"""Self-Instruct round logic against a fake engine: target limit, truncation, classification, resume.

Fast: no Ray, no model. The fake answers each prompt kind with canned, prompt-dependent text.
"""
from __future__ import annotations

from pipelines import self_instruct_prompts as P
from pipelines.config import GenerateConfig
from pipelines.novelty import NoveltyIndex, filter_novel
from pipelines.self_instruct import SelfInstruct

SEEDS = [{"id": f"seed_{k}", "instruction": f"Seed task number {k} about topic {w}", "instances": [],
          "is_classification": False} for k, w in enumerate("alpha beta gamma delta epsilon zeta eta theta".split())]
TOPICS = ("volcanoes tides glaciers deserts comets orchids bridges violins lanterns ferries kites "
          "sparrows canals quarries tunnels meadows").split()


class Fake:
    def __init__(self, classify_answer=lambda inst: "Yes" if "label" in inst.lower() else "No", classify_error=""):
        self.classify_answer, self.classify_error, self.calls = classify_answer, classify_error, 0

    def generate(self, rows):
        out = []
        for r in rows:
            p, res = r["prompt"], {"finish_reason": "stop", "error": ""}
            if p.startswith("Come up with a series of tasks"):
                self.calls += 1
                a = " ".join(f"{t}{self.calls}" for t in TOPICS[:6])  # words no other call uses
                b = " ".join(f"{t}{self.calls}" for t in TOPICS[6:12])
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


def test_resume_after_committed_round(tmp_path):
    first = SelfInstruct(SEEDS, Fake(), cfg(rounds=1), "fake", str(tmp_path)).run()
    fake = Fake()
    si = SelfInstruct(SEEDS, fake, cfg(rounds=2), "fake", str(tmp_path), log=lambda *_: None)
    rows, _, stats = si.run()
    assert fake.calls == 3  # only round 2's prompts were generated
    assert [r["round"] for r in stats["rounds"]] == [1, 2]
    assert {r["id"] for r in first[0]} <= {r["id"] for r in rows}


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
    for ln, st in zip(progress, stats["rounds"]):
        rate = float(re.search(r"(\d+) tok/s", ln).group(1))
        assert abs(rate - round(st["instruction_tokens"] / st["seconds"])) <= 1
        eta = float(re.search(r"ETA to target ([\d.]+) min", ln).group(1))
        assert eta >= 0
