"""Prompt builders, parsers and stage logic of Evol-Instruct, Orca, back-translation and FLAN.

Fast: no Ray, no model. Stages run against a FAKE engine (canned texts chosen from the prompt).
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import backtranslate as bt
from pipelines import evol_prompts as ep
from pipelines import flan, orca, schema
from pipelines.evol import pick_operation, run_evol
from pipelines.flan_templates import COT_CUES, INVERTED, LABEL_FAMILIES, REQUIRED, TEMPLATES
from pipelines.config import Section
from pipelines.config import ConfigError, load_config
from pipelines.method_config import ORCA_SYSTEM_NAMES, BacktranslateConfig, EvolConfig, FlanConfig, OrcaConfig
from pipelines.run import preflight

REPO = Path(__file__).resolve().parents[1]


class FakeEngine:
    """`.generate(rows) -> rows` like EnginePool: `fn(request_row)` gives the text (or a dict of fields)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def generate(self, rows):
        self.calls.append(rows)
        out = []
        for r in rows:
            res = self.fn(r)
            res = {"text": res} if isinstance(res, str) else res
            out.append({**r, "finish_reason": "stop", "prompt_tokens": 11, "output_tokens": 7,
                        "sample_index": 0, "error": "", **res})
        return out


def user_msg(r):
    return json.loads(r["messages"])[-1]["content"]


def src_row(i, instruction, inp=""):
    return schema.row(id=f"src{i}", instruction=instruction, input=inp, output="x", method="self_instruct",
                      seed_ids=[f"seed{i}"])


# ---------------------------------------------------------------------------------------------- Evol
@pytest.mark.parametrize("op", ["add_constraints", "deepen", "concretize", "increase_reasoning", "breadth"])
def test_evol_prompt_builders(op):
    p = ep.build_evol_prompt(op, "  List three uses of vinegar.\n\nInput: kitchen ")
    assert "#Given Prompt#:\nList three uses of vinegar.\n\nInput: kitchen\n\n" in p
    if op == "breadth":
        assert p.rstrip().endswith("#Created Prompt#:") and "#Rewritten Prompt#" not in p
        assert "same domain" in p and "rarer" in p
    else:
        assert p.rstrip().endswith("#Rewritten Prompt#:") and "#Created Prompt#" not in p
        assert ep.DEPTH_METHODS[op] in p and "10 to 20 words" in p
        assert "code, tables" in p  # keep non-text parts
        others = [m for o, m in ep.DEPTH_METHODS.items() if o != op]
        assert not any(m in p for m in others)
    assert "{" not in p  # no unfilled placeholders


def test_evol_unknown_operation_and_equality_prompt():
    with pytest.raises(ValueError):
        ep.build_evol_prompt("shorten", "x")
    q = ep.build_equality_prompt("Name a fruit.", "Name a red fruit.")
    assert "First instruction:\nName a fruit." in q and "Second instruction:\nName a red fruit." in q
    assert "Answer Yes or No" in q and "#" not in q


@pytest.mark.parametrize("raw,want", [
    ("", ""), ("   \n ", ""),
    ("#Rewritten Prompt#: Write a haiku about rain.", "Write a haiku about rain."),
    ("**Created Prompt:**\nDescribe a rare moth.", "Describe a rare moth."),
    ('"Explain tides to a sailor."', "Explain tides to a sailor."),
    ("zx!! qq", "zx!! qq"),  # garbage passes through unchanged; the eliminator judges it
    ("Explain X. The rewritten prompt adds Y.", "Explain X. The rewritten prompt adds Y."),  # leak kept
    ("#RewrittenPrompt#: Write a haiku.", "Write a haiku."), ("Created_Prompt:\nName a moth.", "Name a moth."),
])
def test_parse_evolved(raw, want):
    assert ep.parse_evolved(raw) == want


@pytest.mark.parametrize("raw,want", [("Yes", True), (" no.", False), ("YES, they are", True), ("No", False),
                                      ("", None), ("Maybe", None), ("Nope", None), ("Yesterday", None)])
def test_parse_yes_no(raw, want):
    assert ep.parse_yes_no(raw) is want


def test_evolution_failure_reasons():
    parent = "Write a poem about cats."
    assert ep.evolution_failure("x", parent, error="boom") == "engine_error: boom"
    assert ep.evolution_failure("", parent) == "empty_evolution"
    assert ep.evolution_failure("Write a poem, as in the given prompt.", parent) == \
        "leaked_template_words: given prompt"
    assert ep.evolution_failure("#REWRITTEN PROMPT# Write it.", parent).startswith("leaked_template_words: #rewritten prompt#")
    assert "created prompt" in ep.evolution_failure("My Created Prompt is: write", parent)
    assert ep.evolution_failure("Write a long poem about cats with", parent, "length") == "evolution_truncated"
    assert ep.evolution_failure("write a POEM about cats!", parent) == "identical_to_parent"
    assert ep.evolution_failure("Write a sonnet about cats in iambic pentameter.", parent) is None


@pytest.mark.parametrize("text,leaks", [
    ("Answer all the given prompts in order.", ["given prompts"]),
    ("Created-Prompt: list three birds.", ["created-prompt"]),
    ("Fill in the given_prompt field.", ["given_prompt"]),
    ("Use the RewrittenPrompt below.", ["rewrittenprompt"]),
    ("#Rewritten Prompt# Sum 2 and 3.", ["#rewritten prompt#"]),
    ("Given\n prompt: x, and the created prompts.", ["given prompt", "created prompts"]),
    ("She was prompted to answer a given promptly written note.", []),  # other words built on "prompt"
    ("All is forgiven. Prompt replies are given priority.", []),
    ("Write a prompt given to a new employee.", []),
])
def test_leak_pattern_variants(text, leaks):
    assert ep.leaked_words(text) == leaks
    want = f"leaked_template_words: {', '.join(leaks)}" if leaks else None
    assert ep.evolution_failure(text, "Something else entirely.") == want


def test_response_failure_reasons():
    assert ep.response_failure("", 3) == "empty_response"
    assert ep.response_failure("I'm sorry, but I cannot help with that request at all.", 3) == \
        "refusal: response contains \"i'm sorry, but\""
    # curation's refusal phrases count too, curly apostrophes included
    assert ep.response_failure("As an AI language model, I have no opinions on this.", 3) == \
        "refusal: response contains 'as an ai language model'"
    assert ep.response_failure("I can\u2019t help with writing that essay for you.", 3) == \
        "refusal: response contains \"i can't help\""
    assert ep.response_failure("I am unable to browse the web right now.", 3) == \
        "refusal: response contains 'i am unable to'"
    assert ep.response_failure("The cannot-miss sights are the cathedral and the harbour.", 3) is None
    long_sorry = "Sorry for the wait. " + "word " * 100
    assert ep.response_failure(long_sorry, 3) is None  # default 80 words (paper rule, as EvolConfig)
    assert ep.response_failure(long_sorry, 3, refusal_max_words=80) is None
    assert ep.response_failure(long_sorry, 3, refusal_max_words=None) == "refusal: response contains 'sorry'"
    assert ep.response_failure("Sorry, no idea here.", 3) == "refusal: response contains 'sorry'"
    assert EvolConfig().refusal_max_words == 80  # the function's default matches the config's
    assert ep.response_failure("Paris is the capital and", 3, finish_reason="length") == "response_truncated"
    assert ep.response_failure("", 3, finish_reason="length") == "empty_response"
    assert ep.response_failure("the, and... of it!!!", 1) == "only_stop_words_and_punctuation"
    assert ep.response_failure("?!... ---", 1) == "only_stop_words_and_punctuation"
    assert ep.response_failure("Paris.", 3) == "too_short: 1 words < 3"
    assert ep.response_failure("Paris is the capital.", 3) is None
    assert ep.response_failure("ok", 3, error="prompt_too_long") == "engine_error: prompt_too_long"


def _evol_engine(evolutions: dict, judge="No", answer="Here is a full and helpful answer for you."):
    def fn(r):
        s = json.loads(r["sampling"])
        text = user_msg(r)
        if "#Given Prompt#:" in text:
            given = text.split("#Given Prompt#:\n", 1)[1].split("\n\n#", 1)[0]
            return evolutions.get(given, given + " Use exactly three examples.")
        if "First instruction:" in text:
            assert s["choice"] == ["Yes", "No"] and s["n"] == 1
            return judge(text) if callable(judge) else judge
        return answer(text) if callable(answer) else answer
    return FakeEngine(fn)


def test_run_evol_rows_lineage_and_stats():
    rows = [src_row(1, "Name a fruit."), src_row(2, "Explain rain.", "for kids"), src_row(3, "Sum 2 and 3.")]
    evolutions = {"Name a fruit.": "Name a fruit, as the rewritten prompt asks.",  # leak in round 1
                  "Explain rain.\n\nfor kids": "Explain rain to kids in two sentences."}
    cfg = EvolConfig(rounds=2)
    kept, rej, stats = run_evol(rows, _evol_engine(evolutions), cfg, "fake-model", seed=7)
    by_parent = {}
    for r in kept:
        assert r["method"] == "evol_instruct" and r["model"] == "fake-model" and r["input"] == ""
        assert r["template"] == f"evol/{r['operation']}" and r["output"].startswith("Here is")
        assert json.loads(r["sampling_params"])["seed"] >= 0
        by_parent.setdefault(r["parent_ids"][0], []).append(r)
    # src2: depth 1, then its child evolves to depth 2 with the child as parent
    d1 = [r for r in kept if r["parent_ids"] == ["src2"]]
    assert len(d1) == 1 and d1[0]["instruction"] == "Explain rain to kids in two sentences." and d1[0]["round"] == 1
    d2 = by_parent[d1[0]["id"]]
    assert d2[0]["round"] == 2 and d2[0]["seed_ids"] == ["seed2"]
    assert json.loads(d2[0]["meta"])["evol_round"] == 2
    # src1: the leaked evolution is rejected both rounds; src1 stays the parent (carries on)
    leaks = [r for r in rej if r["parent_ids"] == ["src1"]]
    assert len(leaks) == 2 and all(r["reason"] == "leaked_template_words: rewritten prompt" for r in leaks)
    assert all(r["stage"] == "evol_eliminator" and r["round"] == 1 for r in leaks)
    assert "src1" not in by_parent
    assert len(kept) == 4 and len(rej) == 2
    tried = sum(d["tried"] for ops in stats["by_operation_depth"].values() for d in ops.values())
    survived = sum(d["survived"] for ops in stats["by_operation_depth"].values() for d in ops.values())
    assert (tried, survived) == (6, 4) and stats["rejected_reasons"] == {"leaked_template_words": 2}


def test_run_evol_judge_and_response_eliminator():
    rows = [src_row(1, "Name a fruit."), src_row(2, "Explain clouds."), src_row(3, "Sum 2 and 3.")]
    judge = lambda t: "Yes" if "Name a fruit" in t else ("No" if "clouds" in t else "Maybe so")
    answer = lambda t: "I am sorry, I cannot do that." if "clouds" in t else "ok"
    kept, rej, stats = run_evol(rows, _evol_engine({}, judge, answer), EvolConfig(rounds=1), "m", 0)
    reasons = {r["parent_ids"][0]: r["reason"] for r in rej}
    assert kept == []
    assert reasons == {"src1": "no_information_gain: judged equal to parent",
                       "src2": "refusal: response contains 'sorry'",
                       "src3": "unparseable_judgement: 'Maybe so'"}


def test_run_evol_truncated_response_and_identical_evolution():
    rows = [src_row(1, "Name a fruit."), src_row(2, "Explain clouds."), src_row(3, "Sum 2 and 3.")]
    evolutions = {"Sum 2 and 3.": "sum 2 AND 3"}  # a copy of the parent

    def answer(t):
        if "clouds" in t:
            return {"text": "Clouds form when water vapour cools and", "finish_reason": "length"}
        return "Here is a full and helpful answer for you."
    kept, rej, stats = run_evol(rows, _evol_engine(evolutions, answer=answer), EvolConfig(rounds=1), "m", 0)
    assert {r["parent_ids"][0]: r["reason"] for r in rej} == {"src2": "response_truncated",
                                                              "src3": "identical_to_parent"}
    assert [r["parent_ids"] for r in kept] == [["src1"]]
    assert {r["parent_ids"][0]: r["finish_reason"] for r in rej} == {"src2": "length", "src3": "stop"}
    assert stats["rejected_reasons"] == {"response_truncated": 1, "identical_to_parent": 1}


def test_run_evol_deterministic_and_ops_spread():
    rows = [src_row(i, f"Task number {i}.") for i in range(12)]
    a = run_evol(rows, _evol_engine({}), EvolConfig(rounds=1), "m", 3)
    b = run_evol(rows, _evol_engine({}), EvolConfig(rounds=1), "m", 3)
    assert [r["id"] for r in a[0]] == [r["id"] for r in b[0]] and len(a[0]) == 12
    assert len({r["operation"] for r in a[0]}) >= 3
    ops = [pick_operation(f"r{i}", 1, 0, ["deepen", "breadth"]) for i in range(40)]
    assert set(ops) == {"deepen", "breadth"} and ops == [pick_operation(f"r{i}", 1, 0, ["deepen", "breadth"]) for i in range(40)]
    only = run_evol(rows[:3], _evol_engine({}), EvolConfig(rounds=1, operations=["concretize"], equality_check=False), "m", 0)
    assert {r["operation"] for r in only[0]} == {"concretize"}


def test_run_evol_engine_error_and_empty():
    def fn(r):
        return {"text": "", "finish_reason": "error", "error": "prompt_too_long: 9000 tokens"}
    kept, rej, _ = run_evol([src_row(1, "Name a fruit.")], FakeEngine(fn), EvolConfig(rounds=1), "m", 0)
    assert kept == [] and rej[0]["reason"] == "engine_error: prompt_too_long: 9000 tokens"


# ---------------------------------------------------------------------------------------------- Orca
def test_orca_pool_and_sampling_determinism():
    assert len(orca.SYSTEM_MESSAGES) >= 12 and len(set(orca.SYSTEM_MESSAGES.values())) == len(orca.SYSTEM_MESSAGES)
    ids = [f"row{i}" for i in range(200)]
    picks = [orca.pick_system(i, 0) for i in ids]
    assert picks == [orca.pick_system(i, 0) for i in ids]
    assert len(set(picks)) >= 12  # every message gets used over 200 rows
    assert picks != [orca.pick_system(i, 1) for i in ids]  # the run seed matters
    assert {orca.pick_system(i, 0, ["brief", "detailed"]) for i in ids} == {"brief", "detailed"}
    with pytest.raises(ValueError):
        orca.pick_system("x", 0, ["nope"])


def test_orca_names_match_config_and_bad_name_is_a_config_error():
    assert set(ORCA_SYSTEM_NAMES) == set(orca.SYSTEM_MESSAGES)  # the config's Literal mirrors the pool
    assert OrcaConfig(system_messages=["brief"]).system_messages == ["brief"]
    with pytest.raises(ConfigError, match=r"defaults \(with overrides\): orca\.system_messages\.1: Input should be "
                                          r"'step_by_step'"):
        load_config(None, ["orca.system_messages=[brief, breif]"])


def test_orca_response_failure_reasons():
    assert orca.response_failure("", 1) == "empty_response"
    assert orca.response_failure("  \n ", 3) == "empty_response"
    assert orca.response_failure("Because.", 3) == "too_short: 1 words < 3"
    assert orca.response_failure("Because of the Moon.", 3) is None
    assert orca.response_failure("Because of the Moon and", 3, finish_reason="length") == "response_truncated"
    assert orca.response_failure("x", 3, error="boom", finish_reason="length") == "engine_error: boom"


def test_run_orca_rows():
    rows = [src_row(i, f"Explain thing {i}.", "some input" if i == 0 else "") for i in range(5)]
    seen = []

    def fn(r):
        msgs = json.loads(r["messages"])
        seen.append(msgs)
        if "thing 4" in msgs[1]["content"]:
            return {"text": "", "error": "boom", "finish_reason": "error"}
        if "thing 3" in msgs[1]["content"]:
            return {"text": "Because of reasons, step", "finish_reason": "length"}
        return "Because of reasons, step by step."
    kept, rej, stats = orca.run_orca(rows, FakeEngine(fn), OrcaConfig(), "m", 5)
    assert seen[0][0]["role"] == "system" and seen[0][1] == {"role": "user", "content": "Explain thing 0.\n\nsome input"}
    assert len(kept) == 3 and sorted(r["reason"] for r in rej) == ["engine_error: boom", "response_truncated"]
    assert {r["stage"] for r in rej} == {"orca_generate"}
    assert stats["rejected_reasons"] == {"engine_error": 1, "response_truncated": 1}
    for r in kept:
        assert r["method"] == "orca" and r["system"] == orca.SYSTEM_MESSAGES[r["template"]]
        assert r["parent_ids"] == [f"src{r['instruction'][-2]}"] and r["seed_ids"] == [f"seed{r['instruction'][-2]}"]
        assert r["template"] == orca.pick_system(r["parent_ids"][0], 5)
    again = orca.run_orca(rows, FakeEngine(fn), OrcaConfig(), "m", 5)[0]
    assert [r["id"] for r in again] == [r["id"] for r in kept]
    assert sum(stats["system_messages"].values()) == 3


# -------------------------------------------------------------------------------- back-translation
@pytest.mark.parametrize("raw,want", [
    ("Score: 4", 4.0), ("score:5", 5.0), ("**Score:** 3", 3.0), ("Score: 4/5", 4.0), ("SCORE = 2", 2.0),
    ("The answer is clear.\nScore: 5", 5.0), ("Earlier I said Score: 2, but final Score: 4", 4.0),
    ("I'd give it 4 out of 5.", 4.0), ("3/5", 3.0), ("5", 5.0), ("Score: 4.5", 4.5),
    ("", None), ("garbage text", None), ("Score:", None), ("Score: N", None), ("Score: 7", None),
    ("Score: 0", None), ("The answer is good", None), ("10/10", None),
])
def test_parse_score(raw, want):
    assert bt.parse_score(raw) == want


@pytest.mark.parametrize("raw,want", [
    ("Instruction: How do I bake bread?", "How do I bake bread?"),
    ("Here is the instruction:\nExplain how tides work.", "Explain how tides work."),
    ('"Describe composting."', "Describe composting."),
    ("**Question:** What is a budget?", "What is a budget?"), ("", ""), ("  \n", ""),
])
def test_parse_instruction(raw, want):
    assert bt.parse_instruction(raw) == want


def test_backtranslate_prompts():
    a = bt.build_augment_prompt("  Tides rise twice a day. ")
    assert a.endswith("Text:\nTides rise twice a day.") and "instruction only" in a
    c = bt.build_curate_prompt("Why tides?", "Because of the Moon.")
    assert "Instruction:\nWhy tides?" in c and "Answer:\nBecause of the Moon." in c and '"Score: N"' in c
    assert all(f"{i}:" in c for i in range(1, 6))


def test_read_texts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("First para\nline two.\n\n\n  Second para.  \n \nThird.\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "J1"}) + "\n\n" + json.dumps({"body": "J2"}) + "\n")
    pq.write_table(pa.table({"body": ["P1", None]}), tmp_path / "c.parquet")
    (tmp_path / "ignored.md").write_text("nope")
    assert bt.split_paragraphs("a\r\n\r\nb") == ["a", "b"]
    units = bt.read_texts(str(tmp_path), "body")
    assert [u[2] for u in units] == ["First para\nline two.", "Second para.", "Third.", "J1", "J2", "P1", ""]
    assert bt.read_texts([str(tmp_path / "a.txt")], "x")[1][1] == 1
    with pytest.raises(ValueError, match="no column 'text'"):
        bt.read_texts(str(tmp_path / "b.jsonl"), "text")
    with pytest.raises(FileNotFoundError):
        bt.read_texts(str(tmp_path / "missing"))


def test_run_backtranslate(tmp_path):
    words = lambda w: " ".join([w] * 25)
    (tmp_path / "t.txt").write_text("\n\n".join(["Heading", words("good"), words("bad"), words("weird"), words("oops")]))

    def fn(r):
        t = user_msg(r)
        s = json.loads(r["sampling"])
        if t.startswith("The text below"):
            return "" if "oops" in t else "Instruction: Tell me about " + t.split("Text:\n")[1].split()[0]
        assert "choice" not in s
        return {"good": "Clear.\nScore: 5", "bad": "Score: 2", "weird": "It is fine I guess"}[t.split("Answer:\n")[1].split()[0]]
    cfg = BacktranslateConfig(input=str(tmp_path), min_score=4)
    kept, rej, stats = bt.run_backtranslate(FakeEngine(fn), cfg, "m", 0)
    assert len(kept) == 1 and kept[0]["instruction"] == "Tell me about good" and kept[0]["score"] == 5.0
    assert kept[0]["output"] == words("good") and kept[0]["method"] == "backtranslate"
    reasons = sorted((r["stage"], r["reason"]) for r in rej)
    assert reasons == [("backtranslate_augment", "empty_instruction"),
                       ("backtranslate_curate", "score 2 < min_score 4"),
                       ("backtranslate_curate", "unparseable_score: 'It is fine I guess'"),
                       ("backtranslate_input", "too_short: 1 words < 20")]
    assert [r["score"] for r in rej if r["reason"].startswith("score")] == [2.0]
    assert stats["texts"] == 5 and stats["kept"] == 1 and stats["scores"] == {"2.0": 1, "5.0": 1}
    assert stats["rejected_reasons"] == {"too_short": 1, "empty_instruction": 1, "score": 1, "unparseable_score": 1}
    eng = FakeEngine(lambda r: "Score: 5" if "choice" in json.loads(r["sampling"]) else "Q?")
    kept2, _, _ = bt.run_backtranslate(eng, BacktranslateConfig(input=str(tmp_path), structured_score=True), "m", 0)
    assert json.loads(eng.calls[1][0]["sampling"])["choice"] == bt.SCORE_CHOICES and len(kept2) == 4


# ---------------------------------------------------------------------------------------------- FLAN
def test_flan_templates_inventory():
    assert set(TEMPLATES) == set(REQUIRED) == {"nli", "sentiment", "extractive_qa", "summarization",
                                              "translation", "topic", "paraphrase"}
    dummy = dict(text="T1", text2="T2", label="L", options="OPTIONS:\n- a", src="English", tgt="French")
    for fam, tpls in TEMPLATES.items():
        assert len(tpls) >= 8 and len(set(tpls)) == len(tpls), fam
        assert len(INVERTED[fam]) >= 2
        for t in tpls + INVERTED[fam]:
            t.format(**dummy)  # only known placeholders
        for t in tpls:
            assert "{text}" in t and ("{options}" in t) == (fam in LABEL_FAMILIES), (fam, t)
            assert "{label}" not in t  # the answer never leaks into a forward prompt
            assert ("{text2}" in t) == ("text2" in REQUIRED[fam])


def _flan_data(path: Path):
    rows = []
    for fam in ["nli", "sentiment", "extractive_qa", "summarization", "translation", "topic", "paraphrase"]:
        for i in range(4):
            label = {"nli": ["entailment", "neutral", "contradiction", "neutral"][i], "sentiment": ["positive", "negative"][i % 2],
                     "topic": ["world", "sports", "business", "science"][i], "paraphrase": ["yes", "no"][i % 2]}.get(fam, f"answer {fam} {i}")
            rows.append({"kind": fam, "a": f"{fam} text {i}.", "b": f"{fam} second {i}." if "text2" in REQUIRED[fam] else "",
                         "y": label, "why": f"because {fam} {i}" if i % 2 == 0 else ""})
    rows += [{"kind": "poetry", "a": "x", "b": "", "y": "z", "why": ""}, {"kind": "nli", "a": "p", "b": "", "y": "neutral", "why": ""}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return FlanConfig(input=str(path), columns=dict(family="kind", text="a", text2="b", label="y", rationale="why"))


def test_run_flan_variants(tmp_path):
    cfg = _flan_data(tmp_path / "d.jsonl").model_copy(update=dict(few_shot_rate=0.5, k=2, inversion=True, inversion_rate=1.0))
    rows, rej, stats = flan.run_flan(cfg, seed=0)
    by_sid = {flan.source_id(x): x for x in flan.map_columns(flan.read_table(cfg.input), cfg)}
    assert sorted(r["reason"] for r in rej) == ["missing_value: text2", "unknown_family: 'poetry'"]
    ops = {op for fam in stats["by_family"].values() for op in fam}
    assert ops == {"zero_shot", "few_shot", "cot", "inverted"}
    for r in rows:
        fam, idx = r["template"].split("/")
        assert r["method"] == "flan" and r["model"] == "" and fam in TEMPLATES
        meta = json.loads(r["meta"])
        src = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[meta["source_row"]])
        if r["operation"] == "inverted":
            assert int(idx) >= len(TEMPLATES[fam])
            assert r["output"] == (src["b"] if fam in ("nli", "extractive_qa", "paraphrase") else src["a"])
            continue
        assert int(idx) < len(TEMPLATES[fam])
        if fam in LABEL_FAMILIES:
            opts = stats["options"][fam]
            assert "OPTIONS:\n" + "\n".join(f"- {o}" for o in opts) in r["instruction"]
        if r["operation"] == "cot":
            assert r["output"] == f"{src['why']}. So the answer is {src['y']}."
            assert any(r["instruction"].endswith(c) for c in COT_CUES)
        else:
            assert r["output"] == src["y"]
        if r["operation"] == "few_shot":
            shots = [by_sid[s] for s in meta["exemplars"]]
            assert len(shots) == 2 and all(x["family"] == fam and x["text"] != src["a"] for x in shots)
            blocks = r["instruction"].split("\n\n")
            assert r["instruction"].endswith(":") and "Answer:\nAnswer:" not in r["instruction"]
            for x in shots:  # each exemplar: its text, then its label right after the answer cue
                assert re.search(re.escape(x["text"]) + r"[\s\S]*?: " + re.escape(x["label"]) + r"(\n\n|$)", r["instruction"])
            assert src["a"] in r["instruction"].split(": " + shots[-1]["label"] + "\n\n", 1)[1]
            assert len(blocks) >= 3
    assert stats["options"]["topic"] == ["business", "science", "sports", "world"]
    # 28 good rows -> 28 forward + 14 cot + 28 inverted
    assert len(rows) == 70 and sum(1 for r in rows if r["operation"] == "cot") == 14


def test_run_flan_deterministic_ids_and_seed(tmp_path):
    cfg = _flan_data(tmp_path / "d.jsonl")
    a, b, c = flan.run_flan(cfg, 1)[0], flan.run_flan(cfg, 1)[0], flan.run_flan(cfg, 2)[0]
    assert [r["id"] for r in a] == [r["id"] for r in b] and len({r["id"] for r in a}) == len(a)
    assert [r["id"] for r in a] != [r["id"] for r in c]
    assert {r["template"] for r in a} != {r["template"] for r in c} or [r["operation"] for r in a] != [r["operation"] for r in c]
    none = flan.run_flan(cfg.model_copy(update=dict(few_shot_rate=0.0, cot=False)), 1)[0]
    assert {r["operation"] for r in none} == {"zero_shot"}


def test_flan_label_options_and_csv(tmp_path):
    p = tmp_path / "d.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "text", "text2", "label", "rationale"])
        w.writerow(["sentiment", 'Great, "really" great.', "", "positive", ""])
        w.writerow(["sentiment", "Awful.", "", "meh", ""])
    cfg = FlanConfig(input=str(p), label_options={"sentiment": ["positive", "negative", "neutral"]})
    rows, rej, _ = flan.run_flan(cfg, 0)
    assert len(rows) == 1 and "OPTIONS:\n- positive\n- negative\n- neutral" in rows[0]["instruction"]
    assert 'Great, "really" great.' in rows[0]["instruction"]
    assert rej[0]["reason"] == "label_not_in_options: 'meh'"
    with pytest.raises(ValueError, match="flan.columns.label"):
        flan.run_flan(FlanConfig(input=str(p), columns=dict(label="gold")), 0)


def test_flan_sample_file():
    sample = REPO / "configs/data/flan_sample.csv"
    assert sample.is_file(), "configs/data/flan_sample.csv ships with the repo (the FLAN demo reads it)"
    rows, rej, stats = flan.run_flan(FlanConfig(input=str(sample)), 0)
    assert rej == [] and set(stats["by_family"]) == set(TEMPLATES)
    assert all(not re.search(r"\{\w+\}", r["instruction"]) for r in rows)


def test_flan_demo_prompts_fit_the_curation_word_bound():
    cfg = load_config(REPO / "configs/flan_demo.yaml")
    bound = cfg.curate.filters.max_instruction_words
    assert cfg.flan.max_instruction_words == bound == 150
    rows, _, stats = flan.run_flan(cfg.flan, cfg.seed)
    assert max(len(r["instruction"].split()) for r in rows) <= bound
    assert stats["few_shot_capped"] > 0  # the demo does have prompts the cap shortened
    uncapped = flan.run_flan(cfg.flan.model_copy(update={"max_instruction_words": 10**6}), cfg.seed)[0]
    assert [r["id"] for r in flan.run_flan(cfg.flan, cfg.seed)[0]] == [r["id"] for r in rows]  # deterministic
    assert len(uncapped) == len(rows) and max(len(r["instruction"].split()) for r in uncapped) > bound


def test_flan_few_shot_budget_drops_last_exemplars_then_goes_zero_shot(tmp_path):
    p = tmp_path / "d.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "text", "label"])
        for i in range(4):
            w.writerow(["summarization", " ".join([f"w{i}"] * 20), f"sum {i}"])
    base = FlanConfig(input=str(p), few_shot_rate=1.0, k=3, cot=False)
    full = flan.run_flan(base, 0)[0]
    assert {len(json.loads(r["meta"])["exemplars"]) for r in full} == {3}
    n_full = [len(r["instruction"].split()) for r in full]
    one = flan.run_flan(base.model_copy(update={"max_instruction_words": min(n_full) - 25}), 0)
    for r, r_full in zip(one[0], full):
        shots = json.loads(r["meta"])["exemplars"]
        assert r["operation"] == "few_shot" and len(r["instruction"].split()) <= min(n_full) - 25
        assert shots == json.loads(r_full["meta"])["exemplars"][: len(shots)] and 1 <= len(shots) < 3
    assert one[2]["few_shot_capped"] == 4
    none = flan.run_flan(base.model_copy(update={"max_instruction_words": 30}), 0)[0]
    assert {r["operation"] for r in none} == {"zero_shot"}
    assert flan.fit_shots(["a b c", "d e"], "q r", 7) == ["a b c", "d e"]  # exactly at the budget
    assert flan.fit_shots(["a b c", "d e"], "q r", 6) == ["a b c"]
    assert flan.fit_shots(["a b c"], "q r", 4) == []


def test_flan_single_task_csv_with_constant_family_and_label_names(tmp_path):
    p = tmp_path / "reviews.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "stars"])
        w.writerows([["Loved every minute of it.", "1"], ["Dull and far too long.", "0"], ["Fine.", "2"]])
    cfg = load_config(None, [f"flan.input={p}", "flan.columns.text=review", "flan.columns.label=stars",
                             "flan.family=sentiment", "flan.label_names={0: negative, 1: positive}",
                             "flan.few_shot_rate=0", "generate.methods=[flan]"])
    assert cfg.flan.label_names == {"0": "negative", "1": "positive"}  # YAML int keys compared as text
    preflight(cfg, ["generate"])  # no family column is fine with flan.family
    rows, rej, stats = flan.run_flan(cfg.flan, 0)
    assert [(r["output"], json.loads(r["meta"])["family"]) for r in rows] == [
        ("positive", "sentiment"), ("negative", "sentiment"), ("2", "sentiment")]
    assert "Loved every minute of it." in rows[0]["instruction"] and rows[0]["operation"] == "zero_shot"
    assert stats["options"] == {"sentiment": ["2", "negative", "positive"]}  # an unlisted label keeps its text
    assert [r["reason"] for r in rej] == []
    only = flan.run_flan(cfg.flan.model_copy(update={"label_options": {"sentiment": ["negative", "positive"]}}), 0)
    assert [r["reason"] for r in only[1]] == ["label_not_in_options: '2'"]
    # a family column, where present and non-empty, wins over the constant
    rows = flan.map_columns([{"task": "topic", "text": "a", "label": "x"}, {"task": "", "text": "b", "label": "y"}],
                            FlanConfig(family="sentiment"))
    assert [r["family"] for r in rows] == ["topic", "sentiment"]
    with pytest.raises(ConfigError, match=r"flan\.family: Value error, unknown family 'poetry'"):
        load_config(None, ["flan.family=poetry"])


def test_preflight_checks_method_inputs_before_any_engine(tmp_path):
    def check(*overrides):
        preflight(load_config(None, list(overrides)), ["generate"])

    csv_path = tmp_path / "d.csv"
    csv_path.write_text("kind,text,label\nsentiment,Good.,positive\n")
    with pytest.raises(ConfigError, match=rf"^flan\.input: {tmp_path}/missing\.csv: no such file$"):
        check("generate.methods=[flan]", f"flan.input={tmp_path}/missing.csv")
    with pytest.raises(ConfigError, match=rf"^flan\.columns\.family: column 'task' not in {csv_path} "
                                          r"\(has \['kind', 'label', 'text'\]\) \(or set flan\.family\)$"):
        check("generate.methods=[flan]", f"flan.input={csv_path}")
    with pytest.raises(ConfigError, match=rf"^flan\.columns\.label: column 'gold' not in {csv_path}"):
        check("generate.methods=[flan]", f"flan.input={csv_path}", "flan.columns.family=kind", "flan.columns.label=gold")
    check("generate.methods=[flan]", f"flan.input={csv_path}", "flan.columns.family=kind")
    jsonl, pqt = tmp_path / "d.jsonl", tmp_path / "d.parquet"
    jsonl.write_text("\n" + json.dumps({"task": "nli", "txt": "a", "label": "b"}) + "\n")
    with pytest.raises(ConfigError, match=rf"^flan\.columns\.text: column 'text' not in {jsonl}"):
        check("generate.methods=[flan]", f"flan.input={jsonl}")
    pq.write_table(pa.table({"task": ["nli"], "text": ["a"], "lbl": ["b"]}), pqt)
    with pytest.raises(ConfigError, match=rf"^flan\.columns\.label: column 'label' not in {pqt}"):
        check("generate.methods=[flan]", f"flan.input={pqt}")
    (tmp_path / "d.tsv").write_text("x")
    with pytest.raises(ConfigError, match=r"^flan\.input: .*d\.tsv: unsupported file type"):
        check("generate.methods=[flan]", f"flan.input={tmp_path}/d.tsv")
    with pytest.raises(ConfigError, match=rf"^backtranslate\.input: {tmp_path}/texts: no such file or folder$"):
        check("generate.methods=[self_instruct, backtranslate]", f"backtranslate.input={tmp_path}/texts")
    (tmp_path / "texts").mkdir()
    with pytest.raises(ConfigError, match=rf"^backtranslate\.input: no \.parquet, \.jsonl, \.txt files in {tmp_path}/texts$"):
        check("generate.methods=[backtranslate]", f"backtranslate.input={tmp_path}/texts")
    (tmp_path / "texts" / "a.txt").write_text("Some text.")
    check("generate.methods=[backtranslate]", f"backtranslate.input={tmp_path}/texts")
    # only the methods listed in generate.methods, and only when generation runs
    check("generate.methods=[self_instruct]", f"flan.input={tmp_path}/missing.csv", f"backtranslate.input={tmp_path}/no")
    preflight(load_config(None, ["generate.methods=[flan]", f"flan.input={tmp_path}/missing.csv"]), ["curate"])


def test_method_configs_have_descriptions():
    for cls in (EvolConfig, OrcaConfig, BacktranslateConfig, FlanConfig):
        stack = [cls]
        while stack:
            c = stack.pop()
            for name, f in c.model_fields.items():
                assert f.description, f"{c.__name__}.{name}"
                ann = f.annotation
                if isinstance(ann, type) and issubclass(ann, Section):
                    stack.append(ann)
