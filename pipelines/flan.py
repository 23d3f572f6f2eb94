"""FLAN-style templating (Wei et al., 2021; Longpre et al., 2023): labelled rows to instruction rows, no model.

Per input row (all choices seeded by the run seed and the row's content id, so runs repeat):
one forward row, zero-shot or few-shot (up to k exemplars of the same family, same template, as many
as fit max_instruction_words);
a chain-of-thought row when the row has a rationale and `cot` is on; an input-inverted row with
probability `inversion_rate` when `inversion` is on. `template` is "{family}/{index}" (inverted
templates are numbered after the forward ones) and `operation` is zero_shot, few_shot, cot or inverted.
"""
from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

from pipelines import schema
from pipelines.flan_templates import (COT_CUES, INVERT_OUTPUT, INVERTED, LABEL_FAMILIES, REQUIRED, TEMPLATES,
                                      options_block)
from pipelines.method_config import FlanConfig

METHOD = "flan"
STAGE = "flan_input"
ROLES = ("family", "text", "text2", "label", "rationale")


def _input_file(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"flan.input: {path}: no such file")
    if p.suffix not in (".csv", ".jsonl", ".parquet"):
        raise ValueError(f"flan.input: {path}: unsupported file type (use .csv, .jsonl or .parquet)")
    return p


def read_header(path: str) -> list[str]:
    """The column names of a CSV, JSONL (its first row) or Parquet file, without reading the rows."""
    p = _input_file(path)
    try:
        if p.suffix == ".csv":
            with open(p, newline="", encoding="utf-8") as f:
                return next(csv.reader(f), [])
        if p.suffix == ".jsonl":
            with open(p, encoding="utf-8") as f:
                first = next((line for line in f if line.strip()), "")
            return list(json.loads(first)) if first else []
        import pyarrow.parquet as pq
        return pq.read_schema(p).names
    except OSError as e:
        raise ValueError(f"flan.input: {path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"flan.input: {path}: cannot parse its header ({e})") from None


def check_columns(present: set[str], cfg: FlanConfig) -> None:
    """Raise naming the config key when a column a role needs is missing (family only without flan.family)."""
    cols = cfg.columns.model_dump()
    for role in ("text", "label") if cfg.family else ("family", "text", "label"):
        if cols[role] not in present:
            hint = " (or set flan.family)" if role == "family" else ""
            raise ValueError(f"flan.columns.{role}: column {cols[role]!r} not in {cfg.input} "
                             f"(has {sorted(present)}){hint}")


def check_input(cfg: FlanConfig) -> None:
    """Preflight: the input exists and its header has the mapped columns (no rows are read)."""
    check_columns(set(read_header(cfg.input)), cfg)


def read_table(path: str) -> list[dict]:
    """Rows of a CSV, JSONL or Parquet file as dicts."""
    p = _input_file(path)
    if p.suffix == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if p.suffix == ".jsonl":
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    import pyarrow.parquet as pq
    return pq.read_table(p).to_pylist()


def map_columns(raw: list[dict], cfg: FlanConfig) -> list[dict]:
    """Input rows to role dicts (family, text, text2, label, rationale); optional roles default to ''.
    An empty family becomes flan.family; a label listed in flan.label_names is renamed."""
    cols = cfg.columns.model_dump()
    if raw:
        check_columns(set(raw[0]), cfg)
    out = []
    for r in raw:
        d = {role: ("" if r.get(cols[role]) is None else str(r.get(cols[role]))).strip() for role in ROLES}
        d["family"] = d["family"] or cfg.family or ""
        d["label"] = cfg.label_names.get(d["label"], d["label"])
        out.append(d)
    return out


def source_id(r: dict) -> str:
    return schema.make_id("flan_source", *(r[k] for k in ROLES))


def _rng(seed: int, sid: str, what: str) -> random.Random:
    return random.Random(int(schema.make_id("flan", seed, sid, what)[:8], 16))


def render(template: str, r: dict, options: list[str], cfg: FlanConfig) -> str:
    return template.format(text=r["text"], text2=r["text2"], label=r["label"], options=options_block(options),
                           src=cfg.source_language, tgt=cfg.target_language)


def fit_shots(shot_parts: list[str], query: str, max_words: int) -> list[str]:
    """The leading exemplars that keep the few-shot prompt within max_words (the last drawn go first):
    curation drops longer instructions, so a prompt over budget would be generated only to be thrown away."""
    budget = max_words - len(query.split())
    kept, used = [], 0
    for part in shot_parts:
        used += len(part.split())
        if used > budget:
            break
        kept.append(part)
    return kept


def few_shot_query(prompt: str) -> str:
    """A prompt with an answer cue: its own trailing "...:" cue, else "\nAnswer:"."""
    return prompt if prompt.rstrip().endswith(":") else f"{prompt}\nAnswer:"


def cot_output(rationale: str, label: str) -> str:
    """Chain-of-thought target: the rationale, then "So the answer is X."."""
    rationale = rationale.strip()
    if rationale and rationale[-1] not in ".!?":
        rationale += "."
    return f"{rationale} So the answer is {label}."


def row_failure(r: dict, options: dict[str, list[str]]) -> str | None:
    if r["family"] not in REQUIRED:
        return f"unknown_family: {r['family']!r}"
    missing = [k for k in REQUIRED[r["family"]] if not r[k]]
    if missing:
        return f"missing_value: {', '.join(missing)}"
    if r["family"] in LABEL_FAMILIES and r["label"] not in options[r["family"]]:
        return f"label_not_in_options: {r['label']!r}"
    return None


def run_flan(cfg: FlanConfig, seed: int):
    """Template cfg.input into instruction rows; returns (rows, rejected rows, stats)."""
    rows = map_columns(read_table(cfg.input), cfg)[: cfg.max_rows or None]
    options = {f: list(cfg.label_options.get(f) or sorted({r["label"] for r in rows if r["family"] == f and r["label"]}))
               for f in LABEL_FAMILIES}
    good, rejected, reasons = [], [], Counter()
    for i, r in enumerate(rows):
        sid = source_id(r)
        why = row_failure(r, options)
        if why:
            bad = schema.row(id=sid, input=r["text"], output=r["label"], method=METHOD,
                             meta=json.dumps({"source_row": i, **r}))
            rejected.append(schema.reject(bad, STAGE, why))
            reasons[why.split(":")[0]] += 1
        else:
            good.append((i, sid, r))
    by_family = {}
    for i, sid, r in good:
        by_family.setdefault(r["family"], []).append((i, sid, r))
    out, counts, capped = [], Counter(), 0

    def emit(i, sid, r, instruction, output, index, op, extra=None):
        fam = r["family"]
        meta = {"source_id": sid, "source_row": i, "family": fam, **(extra or {})}
        iid = schema.make_id(METHOD, instruction)
        out.append(schema.row(id=schema.make_id(METHOD, sid, index, op, instruction, output), instruction=instruction,
                              output=output, method=METHOD, instruction_id=iid, operation=op,
                              is_classification=fam in LABEL_FAMILIES if op != "inverted" else False,
                              template=f"{fam}/{index}", meta=json.dumps(meta, sort_keys=True)))
        counts[(fam, op)] += 1

    where = {x[0]: k for fam_rows in by_family.values() for k, x in enumerate(fam_rows)}  # source row -> slot
    for i, sid, r in good:
        fam, opts = r["family"], options.get(r["family"], [])
        index = _rng(seed, sid, "template").randrange(len(TEMPLATES[fam]))
        tpl = TEMPLATES[fam][index]
        fam_rows, me = by_family[fam], where[i]
        n_other, shots = len(fam_rows) - 1, []
        if n_other and _rng(seed, sid, "few_shot").random() < cfg.few_shot_rate:
            # exemplars: a sample of the family without this row, drawn by index (O(k), not O(n))
            picks = _rng(seed, sid, "exemplars").sample(range(n_other), min(cfg.k, n_other))
            shots = [fam_rows[j + (j >= me)] for j in picks]
            query = few_shot_query(render(tpl, r, opts, cfg))
            parts = fit_shots([f"{few_shot_query(render(tpl, x, opts, cfg))} {x['label']}" for _, _, x in shots],
                              query, cfg.max_instruction_words)
            capped += len(parts) < len(shots)
            shots = shots[: len(parts)]
        if shots:
            prompt = "\n\n".join(parts + [query])
            emit(i, sid, r, prompt, r["label"], index, "few_shot", {"exemplars": [s for _, s, _ in shots]})
        else:  # zero-shot by draw, or no exemplar fits the word budget
            emit(i, sid, r, render(tpl, r, opts, cfg), r["label"], index, "zero_shot")
        if cfg.cot and r["rationale"]:
            ci = _rng(seed, sid, "cot_template").randrange(len(TEMPLATES[fam]))
            cue = _rng(seed, sid, "cot_cue").randrange(len(COT_CUES))
            prompt = f"{render(TEMPLATES[fam][ci], r, opts, cfg)}\n\n{COT_CUES[cue]}"
            emit(i, sid, r, prompt, cot_output(r["rationale"], r["label"]), ci, "cot", {"cot_cue": cue})
        if cfg.inversion and _rng(seed, sid, "invert").random() < cfg.inversion_rate:
            j = _rng(seed, sid, "inv_template").randrange(len(INVERTED[fam]))
            emit(i, sid, r, render(INVERTED[fam][j], r, opts, cfg), r[INVERT_OUTPUT[fam]],
                 len(TEMPLATES[fam]) + j, "inverted")
    stats = {"input_rows": len(rows), "kept": len(out), "rejected": len(rejected), "rejected_reasons": dict(reasons),
             "by_family": {f: {op: n for (ff, op), n in sorted(counts.items()) if ff == f}
                           for f in sorted({f for f, _ in counts})},
             "options": {f: o for f, o in options.items() if o},
             "few_shot_capped": capped}  # few-shot rows that lost exemplars to max_instruction_words
    return out, rejected, stats
