"""Compiled (numba) verification of novelty candidates: ROUGE-L F from a bit-parallel LCS on
token codes (Hyyro 2004: a query of <= 64 tokens in one machine word; its token-match masks in a
table indexed by token code). Queries of more than 64 tokens are left to the caller (rapidfuzz).

best_of folds a batch's candidates into each query's best score in one pass: a counting sort by
query, a hash-set dedupe per query and the LCS, instead of np.unique, lexsort and three numpy
passes over all candidates (bound-mode probe at a 200k pool: ~18 us per instruction for those).
The records are random reads into the pool's token codes: they are prefetched a few candidates
ahead, which with the hash set (sorting each query's candidates took a third of the pass) took
best_of from ~7.5 to ~4 us per instruction there. A 64-bit token signature per record that
skipped candidates which could not beat the best so far was tried here and left out: it saved 3%
in the bound mode and 4% with exact scores (read from a per-record array it is one more random
read; read from the postings, slower at a 200k pool in a one-off A/B, as the loose bound rarely
falls below the best so far). The bound mode checks it in pair_search instead, against the threshold.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from pipelines.prefetch import prefetch

_M1, _M2, _M4 = np.uint64(0x5555555555555555), np.uint64(0x3333333333333333), np.uint64(0x0F0F0F0F0F0F0F0F)
_H01, _ONE, _ALL = np.uint64(0x0101010101010101), np.uint64(1), ~np.uint64(0)
_AHEAD = 8  # candidates whose record offsets are prefetched ahead of the LCS loop


@njit(cache=True, inline="always")
def _popcount(x):
    x = x - ((x >> _ONE) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return np.int64((x * _H01) >> np.uint64(56))


@njit(cache=True, inline="always")
def _f(lcs, lb, la):
    """rouge-score's F of an LCS: (2p)r / (p+r), p = lcs / lb (the pool side), r = lcs / la."""
    p, rc = lcs / lb, lcs / la
    return 2.0 * p * rc / (p + rc)


@njit(cache=True)
def _masks(pm, codes, a, m, on):
    """Set (on) or clear the match masks of query codes[a:a+m] in pm (m <= 64)."""
    for j in range(a, a + m):
        if codes[j] >= 0:
            pm[codes[j]] = (pm[codes[j]] | (_ONE << np.uint64(j - a))) if on else np.uint64(0)


@njit(cache=True, inline="always")
def _lcs(pm, m, pcodes, b, e):
    """LCS of the query whose masks are in pm (m <= 64 tokens) and pcodes[b:e]; codes < 0 or past
    pm (tokens the query does not have) match nothing."""
    v = _ALL
    for j in range(b, e):
        c = pcodes[j]
        if 0 <= c < len(pm):
            u = v & pm[c]
            v = (v + u) | (v - u)
    mask = _ALL if m == 64 else (_ONE << np.uint64(m)) - _ONE
    return m - _popcount(v & mask)


@njit(cache=True)
def lcs_pairs(q, r, qcodes, qoff, pcodes, poff):
    """LCS of (query q[k], record r[k]) pairs, q sorted; -1 where the query has > 64 tokens."""
    pm = np.zeros(max(qcodes.max(), 0) + 1 if len(qcodes) else 1, np.uint64)
    out = np.empty(len(q), np.int64)
    cur = -1
    for k in range(len(q)):
        m = qoff[q[k] + 1] - qoff[q[k]]
        if m > 64:
            out[k] = -1
            continue
        if q[k] != cur:
            if cur >= 0:
                _masks(pm, qcodes, qoff[cur], qoff[cur + 1] - qoff[cur], False)
            cur = q[k]
            _masks(pm, qcodes, qoff[cur], m, True)
        out[k] = _lcs(pm, m, pcodes, poff[r[k]], poff[r[k] + 1])
    return out


@njit(cache=True)
def _by_query(pk, nq):
    """Records of pk (query << 32 | record) grouped by query (a counting sort): (records, starts)."""
    cnt = np.zeros(nq + 1, np.int64)
    for k in range(len(pk)):
        cnt[(pk[k] >> 32) + 1] += 1
    for i in range(nq):
        cnt[i + 1] += cnt[i]
    rs, fill = np.empty(len(pk), np.int64), cnt[:nq].copy()
    for k in range(len(pk)):
        i = pk[k] >> 32
        rs[fill[i]] = pk[k] & 0xFFFFFFFF
        fill[i] += 1
    return rs, cnt


@njit(cache=True)
def best_of(pk, nq, qcodes, qoff, pcodes, poff, best, arg):
    """Fold candidates pk = query << 32 | record (any order, repeats allowed) into best/arg: per
    query the highest F, then the lowest record, where it beats them (so the order of a query's
    candidates does not matter; repeats are skipped through a small hash set, not a sort: sorting
    each query's candidates took ~a third of the time). Returns the candidates whose query has
    more than 64 tokens, sorted, for the caller's fallback."""
    rs, cnt = _by_query(pk, nq)
    pm = np.zeros(max(qcodes.max(), 0) + 1 if len(qcodes) else 1, np.uint64)
    rest = np.empty(0, np.int64)
    most = 1
    for i in range(nq):
        most = max(most, cnt[i + 1] - cnt[i])
    bits = 4
    while (1 << bits) < 2 * most:
        bits += 1
    seen, stamp = np.empty(1 << bits, np.int64), np.zeros(1 << bits, np.int64)  # slot valid iff stamp = query + 1
    for i in range(nq):
        b, e = cnt[i], cnt[i + 1]
        if b == e:
            continue
        a, m = qoff[i], qoff[i + 1] - qoff[i]
        if m > 64:
            rest = np.concatenate((rest, (np.int64(i) << 32) | np.sort(rs[b:e])))
            continue
        _masks(pm, qcodes, a, m, True)
        for k in range(b, min(b + _AHEAD, e)):
            prefetch(poff, rs[k])
        for k in range(b, e):
            if k + _AHEAD < e:  # the offsets _AHEAD candidates ahead, the codes half as far
                prefetch(poff, rs[k + _AHEAD])
            if k + _AHEAD // 2 < e:
                prefetch(pcodes, poff[rs[k + _AHEAD // 2]])
            r = rs[k]
            h = np.int64((np.uint64(r) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits))
            while stamp[h] == i + 1 and seen[h] != r:
                h = (h + 1) & ((1 << bits) - 1)
            if stamp[h] == i + 1:
                continue  # a repeat
            stamp[h], seen[h] = i + 1, r
            lcs = _lcs(pm, m, pcodes, poff[r], poff[r + 1])
            if lcs > 0:
                f = _f(lcs, poff[r + 1] - poff[r], m)
                if f > best[i] or (f == best[i] and r < arg[i]):
                    best[i], arg[i] = f, r
        _masks(pm, qcodes, a, m, False)
    return rest
