"""Heuristic quality filters, datatrove style: each is a plain function (row, cfg) -> None to keep the
row, or a reason string to drop it. FILTERS is the order they run in; the first failing filter
names the row's rejection (stage = the filter's name, reason = its string). A filter runs when
`cfg.enabled` and the FilterConfig switch of the same name are on.

Rows are dicts with (at least) instruction, input, output, finish_reason as strings.
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from pipelines.config import FilterConfig


@lru_cache(maxsize=32)
def _phrases(phrases: tuple[str, ...]) -> re.Pattern:
    """One regex for phrases matched on word boundaries, any case, any run of spaces."""
    alts = sorted((r"\s+".join(map(re.escape, p.split())) for p in phrases if p.strip()), key=len, reverse=True)
    return re.compile(r"(?<!\w)(" + "|".join(alts) + r")(?!\w)", re.IGNORECASE) if alts else re.compile(r"(?!x)x")


@lru_cache(maxsize=32)
def _patterns(patterns: tuple[str, ...]) -> list[re.Pattern]:
    return [re.compile(p) for p in patterns]


def _squash(text: str) -> str:
    return " ".join(text.split()).casefold()


def length(row: dict, cfg: FilterConfig) -> str | None:
    n = len(row["instruction"].split())
    if n < cfg.min_instruction_words:
        return f"instruction has {n} words (< {cfg.min_instruction_words})"
    if n > cfg.max_instruction_words:
        return f"instruction has {n} words (> {cfg.max_instruction_words})"
    if len(row["input"]) > cfg.max_input_chars:
        return f"input has {len(row['input'])} characters (> {cfg.max_input_chars})"
    n = len(row["output"].strip())
    if n < cfg.min_output_chars:
        return "output is empty" if n == 0 else f"output has {n} characters (< {cfg.min_output_chars})"
    if len(row["output"]) > cfg.max_output_chars:
        return f"output has {len(row['output'])} characters (> {cfg.max_output_chars})"
    return None


def truncated(row: dict, cfg: FilterConfig) -> str | None:
    return "generation stopped at the token limit (finish_reason=length)" if row["finish_reason"] == "length" else None


def template_markers(row: dict, cfg: FilterConfig) -> str | None:
    for field in ("instruction", "input", "output"):
        for p in _patterns(tuple(cfg.marker_patterns)):
            m = p.search(row[field])
            if m:
                return f"template marker {m.group(0).strip()!r} in {field}"
    return None


def blacklist(row: dict, cfg: FilterConfig) -> str | None:
    m = _phrases(tuple(cfg.blacklist_words)).search(row["instruction"])
    return f"blacklisted keyword {m.group(0)!r} in instruction" if m else None


def echo(row: dict, cfg: FilterConfig) -> str | None:
    out = _squash(row["output"])
    if out and out == _squash(row["input"]):
        return "output repeats the input"
    if out and out == _squash(row["instruction"]):
        return "output repeats the instruction"
    return None


def find_phrase(text: str, phrases) -> str | None:
    """The first of `phrases` in `text` as written there (word boundaries, any case, curly apostrophes
    folded), or None. Curation's refusal filter and the Evol eliminator both match refusals with it."""
    m = _phrases(tuple(phrases)).search((text or "").replace("\u2019", "'"))
    return m.group(0) if m else None


def refusals(row: dict, cfg: FilterConfig) -> str | None:
    found = find_phrase(row["output"], cfg.refusal_phrases)
    return f"refusal/boilerplate {found!r} in output" if found else None


def non_alpha(row: dict, cfg: FilterConfig) -> str | None:
    text = "".join((row["instruction"] + row["output"]).split())
    if not text:
        return None
    frac = 1 - sum(c.isalpha() for c in text) / len(text)
    return f"{frac:.2f} of the characters are not letters (> {cfg.max_non_alpha_frac})" \
        if frac > cfg.max_non_alpha_frac else None


def repetition(row: dict, cfg: FilterConfig) -> str | None:
    """Gopher (Rae et al. 2021): duplicated lines, and characters covered by the top repeated 3-gram."""
    lines = [s.strip() for s in row["output"].split("\n") if s.strip()]
    if len(lines) > 1:
        frac = 1 - len(set(lines)) / len(lines)
        if frac > cfg.max_dup_line_frac:
            return f"{frac:.2f} of the output lines are duplicates (> {cfg.max_dup_line_frac})"
    words = row["output"].casefold().split()
    if len(words) > 3:
        gram, count = Counter(zip(words, words[1:], words[2:])).most_common(1)[0]
        frac = count * sum(map(len, gram)) / sum(map(len, words))
        if count > 1 and frac > cfg.max_top_ngram_frac:
            return f"the top 3-gram {' '.join(gram)!r} covers {frac:.2f} of the output (> {cfg.max_top_ngram_frac})"
    return None


FILTERS = [
    ("length", length),
    ("truncated", truncated),
    ("template_markers", template_markers),
    ("blacklist", blacklist),
    ("echo", echo),
    ("refusals", refusals),
    ("non_alpha", non_alpha),
    ("repetition", repetition),
]


def active(cfg: FilterConfig) -> list[tuple[str, callable]]:
    """The filters that run under cfg, in order."""
    return [(name, fn) for name, fn in FILTERS if cfg.enabled and getattr(cfg, name)]


def first_failure(row: dict, cfg: FilterConfig, filters=None) -> tuple[str, str] | None:
    """(filter name, reason) of the first filter that drops the row, or None to keep it."""
    for name, fn in active(cfg) if filters is None else filters:
        reason = fn(row, cfg)
        if reason:
            return name, reason
    return None
