"""Compiled (numba) inner loops of the novelty index: the pair-index search and the LCS of
candidate pairs (tests/test_novelty.py checks them against rapidfuzz and brute force).

Why: past ~100k pool instructions the candidates per query grow with the pool (texts sharing two
rare words in their prefixes). The numpy version of the search made several passes over every
posting (repeat, gather, mask) and the verification one rapidfuzz call per query; here one loop
walks the postings and one bit-parallel LCS (Hyyro 2004: 64 tokens in one machine word, the
query's token-match masks in a scratch table indexed by token code) runs per pair. At a 200k
pool this took the pair search from 37 to 19 us and verification from 19 to 9 us per instruction.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_M1, _M2, _M4 = np.uint64(0x5555555555555555), np.uint64(0x3333333333333333), np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@njit(cache=True, inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return (x * _H01) >> np.uint64(56)


@njit(cache=True)
def pair_search(key, rid, lo, hi, row, rq, i2, lam, s, L):
    """Postings with lo[t] <= key <= hi[t], lo sorted, that pass the positional check of
    _Segment.search_pairs at bound s (alpha' = alpha - 1 for the pair's later element, position key & 255);
    returns query << 32 | record per passing posting. Each range start is found by galloping from
    the previous one (sorted needles: a few cache lines, not a fresh binary search); the range is
    then scanned to hi."""
    out = np.empty(64, np.int64)
    n, p0, nk = 0, 0, len(key)
    for t in range(len(lo)):
        x, step = lo[t], 1
        while p0 + step <= nk and key[p0 + step - 1] < x:  # key[p0 - 1] < x already holds
            step *= 2
        a, b = p0 + step // 2, min(p0 + step, nk)   # first key >= x is in [a, b]
        while a < b:
            m = (a + b) // 2
            if key[m] < x:
                a = m + 1
            else:
                b = m
        p0 = a
        w = row[t]
        q, la, i = rq[w], lam[w], i2[w]
        p = a
        while p < nk and key[p] <= hi[t]:
            r = np.int64(rid[p])
            lb = L[r]
            al = max(1, np.int64(np.ceil(s * (la + lb) / 2)) - 1)  # _alpha(s, la, lb, 1)
            if (key[p] & 255) <= lb - al and i <= la - al:
                if n == len(out):
                    out = np.concatenate((out, np.empty(n, np.int64)))
                out[n] = (q << 32) | r
                n += 1
            p += 1
    return out[:n]


@njit(cache=True)
def lcs_pairs(q, r, qcodes, qoff, pcodes, poff, vocab):
    """LCS of (query q[k], record r[k]) token-code sequences, q sorted; -1 where the query has more
    than 64 tokens (the caller falls back). Codes < 0 (tokens the pool does not have) match nothing."""
    pm = np.zeros(vocab, np.uint64)
    out = np.empty(len(q), np.int64)
    cur = -1
    for k in range(len(q)):
        if q[k] != cur:
            if cur >= 0:
                for j in range(qoff[cur], qoff[cur + 1]):
                    if qcodes[j] >= 0:
                        pm[qcodes[j]] = 0
            cur = q[k]
            for j in range(qoff[cur], min(qoff[cur + 1], qoff[cur] + 64)):
                if qcodes[j] >= 0:
                    pm[qcodes[j]] |= np.uint64(1) << np.uint64(j - qoff[cur])
        m = qoff[cur + 1] - qoff[cur]
        if m > 64:
            out[k] = -1
            continue
        v = ~np.uint64(0)
        for j in range(poff[r[k]], poff[r[k] + 1]):
            if pcodes[j] < 0:
                continue
            u = v & pm[pcodes[j]]
            v = (v + u) | (v - u)
        mask = ~np.uint64(0) if m == 64 else (np.uint64(1) << np.uint64(m)) - np.uint64(1)
        out[k] = m - np.int64(_popcount(v & mask))
    return out
