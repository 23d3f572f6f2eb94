"""ROUGE-L F-measure exactly as the `rouge-score` package computes it (no stemming).

rouge_score 0.1.2, `RougeScorer(["rougeL"], use_stemmer=False).score(target, prediction)`:
- tokenize: `text.lower()`, every run of characters outside [a-z0-9] becomes a space, split, keep
  non-empty tokens (so "Don't" -> ["don", "t"]; non-ASCII letters are separators).
- empty target or prediction -> fmeasure 0; else L = LCS length of the token lists,
  precision = L / len(prediction), recall = L / len(target),
  fmeasure = 2 * precision * recall / (precision + recall) (0.0 when L == 0).
The F-measure is symmetric bit for bit: (2p)r == (2r)p and p+r == r+p in IEEE arithmetic.
We compute L with rapidfuzz's compiled LCS over token codes and apply the same float formula, so
values are identical to rouge-score's (tests/test_novelty.py checks ==).
"""
from __future__ import annotations

import re

import numpy as np
from rapidfuzz.distance import LCSseq

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """rouge_score.tokenize.tokenize(text, stemmer=None): after the substitution only [a-z0-9] and
    spaces remain, so str.split() equals its regex split + valid-token filter."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def fmeasure(lcs: int, len_target: int, len_prediction: int) -> float:
    """rouge_score's `_score_lcs` F-measure from an LCS length and the two token counts."""
    if not len_target or not len_prediction:
        return 0.0
    precision = lcs / len_prediction
    recall = lcs / len_target
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def fmeasure_vec(lcs: np.ndarray, len_target: np.ndarray, len_prediction: np.ndarray) -> np.ndarray:
    """Vectorised `fmeasure`: same IEEE operations in the same order ((2*p)*r / (p+r))."""
    lcs = np.asarray(lcs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = lcs / len_prediction
        r = lcs / len_target
        f = 2.0 * p * r / (p + r)
    f[~(lcs > 0)] = 0.0  # L == 0 or an empty side
    return f


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure of two texts, equal to rouge-score's `score(a, b)["rougeL"].fmeasure`."""
    ta, tb = tokenize(a), tokenize(b)
    if not ta or not tb:
        return 0.0
    codes: dict[str, int] = {}
    sa = [codes.setdefault(t, len(codes)) for t in ta]
    sb = [codes.setdefault(t, len(codes)) for t in tb]
    return fmeasure(int(LCSseq.similarity(sa, sb)), len(ta), len(tb))
