"""`seedforge report`: report.html from a small hand-made run directory, and that Chromium renders it."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines import io, schema
from pipelines.report import funnel, reason_kind, verb_object, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ["funnel", "lengths", "verbs", "rouge", "tokens", "train", "kept", "rejected"]
XSS = 'Rewrite the sentence <script>alert("x")</script> & keep it short.'

INSTRUCTIONS = [
    ("Write a short story about a dragon who is afraid of fire.", 0.21),
    ("Write a poem about the ocean at night.", 0.33),
    ("Write a Python function that reverses a string.", 0.41),
    ("Give me three reasons to learn a second language.", 0.18),
    ("Give an example of a renewable energy source.", 0.27),
    ("Given a list of integers, find the largest number.", 0.52),
    ("Find the capital city of the given country.", 0.44),
    ("Classify the following sentence as positive or negative.", 0.61),
    ("Classify the animal as a mammal, bird or fish.", 0.38),
    ("Generate a list of five names for a coffee shop.", 0.29),
    ("Generate a title for the following article.", 0.35),
    ("Summarize the paragraph in one sentence.", 0.47),
    ("Translate the sentence into French.", 0.55),
    ("Explain why the sky is blue.", 0.25),
    ("What is the capital of France?", 0.40),
    ("Please come up with a few ideas for a birthday party.", 0.15),
    (XSS, 0.31),
]


def _rows():
    kept = []
    for i, (ins, rl) in enumerate(INSTRUCTIONS):
        for k in range(2):  # two instances per instruction, as Self-Instruct makes
            kept.append(schema.row(id=f"k{i}-{k}", instruction=ins, input="" if k else f"input {i}",
                                   output=" ".join(["word"] * (5 + 7 * i + k)), method="self_instruct",
                                   rouge_l=rl, prompt_tokens=150, output_tokens=40, round=1 + i % 2))
    rej = []
    for i in range(6):
        r = schema.row(id=f"n{i}", instruction=f"Write a short story about a dragon number {i}.", method="self_instruct",
                       rouge_l=0.75 + i * 0.03, most_similar="Write a short story about a dragon who is afraid of fire.")
        rej.append(schema.reject(r, "self_instruct/novelty", f"rouge_l_above_threshold: {r['rouge_l']:.4f} > 0.7"))
    for i in range(4):
        r = schema.row(id=f"e{i}", instruction="Copy the input.", input="same", output="same", method="self_instruct")
        rej.append(schema.reject(r, "self_instruct/instance_filter", "input_equals_output"))
    cur = [schema.reject(schema.row(id="c0", instruction="Hi there", output="Hello"), "length", "instruction has 2 words (< 3)"),
           schema.reject(schema.row(id="c1", instruction="Refuse", output="As an AI language model I cannot"),
                         "refusals", "refusal phrase 'as an ai language model' in output"),
           schema.reject(kept[0] | {"id": "c2"}, "exact_dedup", "exact duplicate of the normalised text", "k0-0"),
           schema.reject(kept[2] | {"id": "c3"}, "near_dedup", "near duplicate: word 3-gram MinHash", "k1-0")]
    return kept, rej, cur


def make_run(d: Path, with_curate=True, with_train=True) -> Path:
    kept, rej, cur = _rows()
    generated = kept + [r for r in cur]
    io.write_rows(generated, d / "stages" / "generate" / "part-00000.parquet")
    io.write_rows(rej, d / "rejected" / "generate-00000.parquet", rejected=True)
    stages = {"generate": {"status": "done", "rows": len(generated), "rejected_rows": len(rej),
                           "methods": {"self_instruct": {"rows": len(generated)}}, "prompt_tokens": 20000,
                           "output_tokens": 4000, "requests": 100, "output_tokens_per_s": 50.5}}
    if with_curate:
        io.write_rows(kept, d / "data" / "part-00000.parquet")
        io.write_rows(cur, d / "rejected" / "curate-00000.parquet", rejected=True)
        stages["curate"] = {"status": "done", "rows_in": len(generated), "rows_out": len(kept),
                            "dropped": {"length": 1, "refusals": 1, "truncated": 0, "exact_dedup": 1, "near_dedup": 1}}
    if with_train:
        stages["train"] = {"status": "done", "steps": 3, "first_loss": 2.5, "final_loss": 2.1,
                           "history": [{"step": s, "loss": 2.5 - 0.2 * s, "eval_loss": None} for s in range(3)]}
    io.write_json({"config": {"model": "smollm2-135m", "generate": {"methods": ["self_instruct"], "rouge_threshold": 0.7}},
                   "stages": stages, "status": "done", "files": {"data_rows": len(kept) if with_curate else 0}},
                  d / "manifest.json")
    return d


@pytest.mark.parametrize("instruction, expected", [
    ("Write a short story about a dragon.", ("write", "story")),
    ("Give me three reasons to learn Python.", ("give", "reason")),
    ("Given a list of integers, find the largest number.", ("find", "number")),
    ("Classify the following sentence as positive or negative.", ("classify", "sentence")),
    ("Write a Python function that reverses a string.", ("write", "function")),
    ("Please come up with a few ideas for a birthday party.", ("come up with", "idea")),
    ("Generate a list of five names.", ("generate", "list")),
    ("You are given an array of numbers. Sort the numbers in ascending order.", ("sort", "number")),
    ("Explain why the sky is blue.", ("explain", "")),
    ("What is the capital of France?", None),
    ("A bat and a ball cost $1.10 in total.", None),
    ("", None),
])
def test_verb_object(instruction, expected):
    assert verb_object(instruction) == expected


def test_reason_kind_groups_particulars():
    assert reason_kind("rouge_l_above_threshold: 0.8123 > 0.7") == "rouge_l_above_threshold"
    assert reason_kind("rouge_l 0.769 > 0.7") == "rouge_l N > N"
    assert reason_kind("instruction has 2 words (< 3)") == "instruction has N words (< N)"
    assert reason_kind("") == "(no reason)"


def test_funnel_handles_missing_keys():
    import pandas as pd

    no_rej = pd.DataFrame({"stage": [], "kind": [], "_src": []})
    # generate counted its rejects but wrote no rejected/ files; curate wrote only rows_out
    steps = funnel({"stages": {"generate": {"rows": 10, "rejected_rows": 4}, "curate": {"rows_out": 7}}}, no_rej, None, None)
    assert [(s["label"], s["n"], s["out"]) for s in steps] == [
        ("generate: rows in", 14, 14), ("generate − unaccounted", 4, 10), ("generate: rows out", 10, 10),
        ("curate: rows in", 7, 7), ("curate: rows out", 7, 7)]
    assert funnel({}, no_rej, None, None) == []


def _pngs(run: Path) -> list[Path]:
    return sorted((run / "report").glob("*.png"))


def test_report_full_run(tmp_path):
    run = make_run(tmp_path / "run")
    path = Path(write_report(run))
    assert path == run / "report.html"
    page = path.read_text()
    for s in SECTIONS:
        assert f'id="{s}"' in page
    assert 'class="note"' not in page  # nothing is missing in this run
    names = {p.stem for p in _pngs(run)}
    assert names == {"funnel", "lengths", "verbs", "rouge", "tokens", "train"}
    for p in _pngs(run):
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, p
    assert page.count('src="data:image/png;base64,') == len(names)  # the page stands alone
    # the funnel counts every step; reasons of both stages appear
    for reason in ["self_instruct/novelty: rouge_l_above_threshold", "self_instruct/instance_filter: input_equals_output",
                   "curate − length", "curate − refusals", "curate − exact_dedup", "curate − near_dedup",
                   "instruction has 2 words (&lt; 3)", "input_equals_output", "exact duplicate of the normalised text"]:
        assert reason in page, reason
    assert "curate − truncated" not in page and "unaccounted" not in page
    assert "<td>write</td><td>3</td><td>story (1), poem (1), function (1)</td>" in page
    assert "<td>come up with</td><td>1</td><td>idea (1)</td>" in page  # zero drops are not steps
    assert re.search(r"<td>curate: rows out</td><td></td><td>34</td>", page)
    assert re.search(r"<td>generate: rows in</td><td></td><td>48</td>", page)  # 38 generated + 10 rejected
    # escaping: the instruction with markup shows as text
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; keep" in page
    # tokens per kept row: (20000 + 4000) / 34
    assert "<td>tokens per kept row (34)</td><td>705.9</td>" in page


def test_report_missing_pieces(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = Path(write_report(empty)).read_text()
    for s in SECTIONS:
        assert f'id="{s}"' in page
    assert "No train stage in this run." in page and "No kept rows yet." in page and "No rejected rows." in page
    assert _pngs(empty) == []

    gen_only = make_run(tmp_path / "gen", with_curate=False, with_train=False)
    page = Path(write_report(gen_only)).read_text()
    assert "No curated data yet" in page and "not curated yet" in page and "No train stage in this run." in page
    assert {p.stem for p in _pngs(gen_only)} == {"funnel", "lengths", "verbs", "rouge", "tokens"}

    shutil.rmtree(gen_only / "stages")  # a rerun that has less to plot leaves no stale PNGs behind
    (gen_only / "rejected" / "generate-00000.parquet").unlink()
    write_report(gen_only)
    assert {p.stem for p in _pngs(gen_only)} == {"funnel", "tokens"}

    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nope")


CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")
def test_report_renders_in_chromium(tmp_path):
    from PIL import Image

    run = make_run(tmp_path / "run")
    path = Path(write_report(run))
    # a copy of the page that records each image's natural width in the DOM once loaded
    probe = path.with_name("probe.html")
    probe.write_text(path.read_text().replace("</body>", "<script>window.addEventListener('load', () => "
                     "document.body.setAttribute('data-widths', [...document.images].map(i => i.naturalWidth).join(',')))"
                     "</script></body>"))

    def chromium(*args) -> str:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
        out = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,3000", path.as_uri())
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 3000)
    colours = img.resize((300, 750)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # not blank: text, tables and plots

    dom = chromium("--dump-dom", "--virtual-time-budget=5000", probe.as_uri())
    widths = re.search(r'data-widths="([^"]*)"', dom)
    assert widths, dom[:500]
    assert [int(w) > 0 for w in widths.group(1).split(",")] == [True] * 6


def test_run_summary_shows_eval_scores_and_only_folders_that_exist(tmp_path, capsys):
    from pipelines.run import summary

    m = {"status": "done", "wall_seconds": 3, "files": {"data_rows": 0, "rejected_rows": 0},
         "stages": {"train": {"steps": 2, "first_loss": 4.0, "final_loss": 2.5, "tokens_per_s": 10,
                              "eval_loss": 3.25, "rouge_l": 0.1284}}}
    summary(m, tmp_path)  # a train-only output_dir: no data/ nor rejected/
    out = capsys.readouterr().out
    assert "loss 4.000 -> 2.500, 10 tok/s; eval loss 3.250, held-out ROUGE-L 0.128" in out
    assert "data:" not in out and "rejected:" not in out
    (tmp_path / "data").mkdir()
    summary(dict(m, files={"data_rows": 7}), tmp_path)
    out = capsys.readouterr().out
    assert f"data:     {tmp_path / 'data'} (7 rows)" in out and "rejected:" not in out
