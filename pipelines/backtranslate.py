"""Instruction back-translation (Li et al., 2023): self-augmentation, then self-curation.

Unlabelled texts (a folder or files of Parquet, JSONL or .txt; for .txt the paragraphs separated by
blank lines are the units) become outputs; the model writes the instruction each text answers, then
rates every (instruction, text) pair on a 1-5 rubric. Pairs rated below `min_score`, or whose rating
cannot be parsed, are rejected with a reason; the rating is stored in `score`.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from pipelines import schema
from pipelines.llm import request, sampling_json
from pipelines.method_config import BacktranslateConfig

METHOD = "backtranslate"
SUFFIXES = (".parquet", ".jsonl", ".txt")

AUGMENT_TEMPLATE = """The text below was written as the answer to a request someone made to an AI assistant. Write the request they most likely made: one clear instruction or question for which this text would be an excellent answer. Reply with the instruction only.

Text:
{text}"""

CURATE_TEMPLATE = """Rate how well the answer below serves as an AI assistant's reply to the instruction, on a scale of 1 to 5:
1: The answer is off-topic, incomplete, or does not address the instruction.
2: The answer covers part of what the instruction asks but misses or misreads a key part of it.
3: The answer is useful but reads like general web text (personal anecdotes, ads, asides) rather than a reply to the instruction.
4: The answer is a clear, complete and helpful reply written for the instruction, with only minor room to be more focused.
5: The answer is an excellent, expert and focused reply to the instruction, with nothing irrelevant in it.

Instruction:
{instruction}

Answer:
{output}

Give a one-sentence justification, then write the rating on the last line as "Score: N" with N from 1 to 5."""

SCORE_CHOICES = [f"Score: {i}" for i in range(1, 6)]

_LABEL = re.compile(r"^\s*[*_#]*\s*(?:instruction|request|question|prompt|user)\s*[*_]*\s*:\s*[*_]*\s*", re.I)
_SCORE = re.compile(r"score\W{0,3}(?:of|is|=)?\W{0,3}(\d+(?:\.\d+)?)", re.I)
_OUT_OF_5 = re.compile(r"(?<![\d.])(\d(?:\.\d+)?)\s*(?:/|out of)\s*5\b", re.I)


# -- input ----------------------------------------------------------------------------------------
def input_files(paths: str | list[str]) -> list[Path]:
    """The input files: each path a file, or a folder searched recursively for .parquet/.jsonl/.txt."""
    out = []
    for p in [paths] if isinstance(paths, str) else list(paths):
        path = Path(p)
        if path.is_dir():
            out += sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in SUFFIXES
                          and not f.name.startswith("."))
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise ValueError(f"backtranslate.input: {p}: unsupported file type (use {', '.join(SUFFIXES)})")
            out.append(path)
        else:
            raise FileNotFoundError(f"backtranslate.input: {p}: no such file or folder")
    if not out:
        raise ValueError(f"backtranslate.input: no {', '.join(SUFFIXES)} files in {paths}")
    return out


def check_input(cfg: BacktranslateConfig) -> None:
    """Preflight: every input file exists and can be opened (its contents are read later)."""
    for f in input_files(cfg.input):
        try:
            with open(f, "rb"):
                pass
        except OSError as e:
            raise ValueError(f"backtranslate.input: {f}: cannot read ({e.strerror or e})") from None


def split_paragraphs(text: str) -> list[str]:
    """Plain-text units: paragraphs separated by blank lines, trimmed, empty ones dropped."""
    return [p.strip() for p in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")) if p.strip()]


def read_texts(paths: str | list[str], column: str = "text") -> list[tuple[str, int, str]]:
    """(source file, unit index, text) for every unit of the input, in file order."""
    units = []
    for f in input_files(paths):
        if f.suffix == ".txt":
            texts = split_paragraphs(f.read_text(encoding="utf-8"))
        elif f.suffix == ".jsonl":
            texts = []
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    obj = json.loads(line)
                    if column not in obj:
                        raise ValueError(f"{f}:{n}: no column {column!r} (set backtranslate.column)")
                    texts.append(str(obj[column] or ""))
        else:
            import pyarrow.parquet as pq
            names = pq.read_schema(f).names
            if column not in names:
                raise ValueError(f"{f}: no column {column!r} (set backtranslate.column); columns: {names}")
            texts = [str(t or "") for t in pq.read_table(f, columns=[column]).column(column).to_pylist()]
        units += [(str(f), i, t.strip()) for i, t in enumerate(texts)]
    return units


# -- prompts and parsers --------------------------------------------------------------------------
def build_augment_prompt(text: str) -> str:
    return AUGMENT_TEMPLATE.format(text=text.strip())


def build_curate_prompt(instruction: str, output: str) -> str:
    return CURATE_TEMPLATE.format(instruction=instruction.strip(), output=output.strip())


def parse_instruction(text: str) -> str:
    """The instruction from the augmentation reply: a leading preamble line, label and quotes removed."""
    t = (text or "").strip()
    lines = t.split("\n")
    if len(lines) > 1 and lines[0].rstrip().endswith(":") and not _LABEL.match(lines[0]):
        t = "\n".join(lines[1:]).strip()  # "Here is the instruction:" on its own line
    t = _LABEL.sub("", t, count=1).strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`":
        t = t[1:-1].strip()
    return t


def parse_score(text: str) -> float | None:
    """The 1-5 rating from the curation reply ("Score: N", "N/5", or a bare number); None if absent."""
    t = (text or "").strip()
    for pattern in (_SCORE, _OUT_OF_5):
        found = pattern.findall(t)
        if found:
            v = float(found[-1])  # the final rating line wins over numbers quoted earlier
            return v if 1 <= v <= 5 else None
    return float(t) if re.fullmatch(r"[1-5](?:\.\d+)?", t) else None


# -- the stage ------------------------------------------------------------------------------------
def _seed(*parts) -> int:
    return int(schema.make_id(*parts)[:8], 16)


def run_backtranslate(engine, cfg: BacktranslateConfig, model_name: str, seed: int):
    """Back-translate cfg.input; returns (kept rows, rejected rows, stats)."""
    units = read_texts(cfg.input, cfg.column)[: cfg.max_texts or None]
    rejected, reqs = [], []
    for k, (src, i, text) in enumerate(units):
        n = len(text.split())
        why = (f"too_short: {n} words < {cfg.min_words}" if n < cfg.min_words else
               f"too_long: {n} words > {cfg.max_words}" if n > cfg.max_words else None)
        if why:
            r = schema.row(id=schema.make_id(METHOD, "text", text), output=text, method=METHOD,
                           meta=json.dumps({"source": src, "unit": i}))
            rejected.append(schema.reject(r, "backtranslate_input", why))
            continue
        s = sampling_json(cfg.sampling.augment, seed=_seed("bt_augment", seed, text))
        reqs.append(request(messages=[{"role": "user", "content": build_augment_prompt(text)}], sampling=s, _k=k, _s=s))
    cands = []
    for o in engine.generate(reqs):
        src, i, text = units[int(o["_k"])]
        ins = parse_instruction(o.get("text") or "")
        iid = schema.make_id(METHOD, "instruction", ins, text)
        r = schema.row(id=schema.make_id(METHOD, ins, text), instruction=ins, output=text, method=METHOD,
                       instruction_id=iid, operation="self_augment", model=model_name, template="backtranslate/augment",
                       sampling_params=o["_s"], finish_reason=o.get("finish_reason") or "",
                       prompt_tokens=int(o.get("prompt_tokens") or 0), output_tokens=int(o.get("output_tokens") or 0),
                       meta=json.dumps({"source": src, "unit": i}))
        why = (f"engine_error: {o['error']}" if o.get("error") else "empty_instruction" if not ins else
               "instruction_truncated" if o.get("finish_reason") == "length" else None)
        (rejected.append(schema.reject(r, "backtranslate_augment", why)) if why else cands.append(r))
    extra = {"choice": SCORE_CHOICES} if cfg.structured_score else {}
    reqs = [request(messages=[{"role": "user", "content": build_curate_prompt(r["instruction"], r["output"])}],
                    sampling=sampling_json(cfg.sampling.curate, n=1, seed=_seed("bt_curate", seed, r["id"]), **extra),
                    _k=k) for k, r in enumerate(cands)]
    kept, scores = [], Counter()
    for o in engine.generate(reqs):  # n=1: one reply per candidate
        r, reply = cands[int(o["_k"])], (o.get("text") or "").strip()
        r["meta"] = json.dumps({**json.loads(r["meta"]), "curation": reply[-300:]})
        if o.get("error"):
            rejected.append(schema.reject(r, "backtranslate_curate", f"engine_error: {o['error']}"))
            continue
        score = parse_score(reply)
        if score is None:
            rejected.append(schema.reject(r, "backtranslate_curate", f"unparseable_score: {reply[-60:]!r}"))
            continue
        r["score"] = score
        scores[str(score)] += 1
        if score < cfg.min_score:
            rejected.append(schema.reject(r, "backtranslate_curate", f"score {score:g} < min_score {cfg.min_score:g}"))
        else:
            kept.append(r)
    reasons = Counter(r["reason"].split(":")[0].split(" ")[0] for r in rejected)
    stats = {"files": len({u[0] for u in units}), "texts": len(units), "candidates": len(cands), "kept": len(kept),
             "rejected": len(rejected), "rejected_reasons": dict(reasons), "scores": dict(sorted(scores.items()))}
    return kept, rejected, stats
