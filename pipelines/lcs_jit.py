"""Compiled (numba) verification of novelty candidates: ROUGE-L F from a bit-parallel LCS on
token codes (Hyyro 2004: a query of <= 64 tokens in one machine word; its token-match masks in a
table indexed by token code). Queries of more than 64 tokens are left to the caller (rapidfuzz).

best_of folds a batch's candidates into each query's best score in one pass: no sort of all
candidates, no per-candidate numpy passes. It skips a candidate without reading its tokens when a
64-bit signature of the record (one hash bit per token code: a Bloom filter) bounds its LCS below
what could beat the query's best so far. The bound is sound (every shared token's bit is set in
both), and F grows with the LCS, so the result is exactly that of verifying every candidate.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_M1, _M2, _M4 = np.uint64(0x5555555555555555), np.uint64(0x3333333333333333), np.uint64(0x0F0F0F0F0F0F0F0F)
_H01, _ONE, _ALL = np.uint64(0x0101010101010101), np.uint64(1), ~np.uint64(0)


@njit(cache=True, inline="always")
def _popcount(x):
    x = x - ((x >> _ONE) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return np.int64((x * _H01) >> np.uint64(56))


@njit(cache=True, inline="always")
def _bit(c):
    """The signature bit of token code c (the top 6 bits of a multiplicative hash)."""
    return (np.uint64(c) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(58)


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
def signatures(codes, off):
    """Per record (codes[off[k]:off[k+1]]) the OR of its token codes' bits."""
    out = np.zeros(len(off) - 1, np.uint64)
    for k in range(len(off) - 1):
        for j in range(off[k], off[k + 1]):
            if codes[j] >= 0:
                out[k] |= _ONE << _bit(codes[j])
    return out


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
def best_of(pk, nq, qcodes, qoff, pcodes, poff, psig, best, arg):
    """Fold candidates pk = query << 32 | record (any order, repeats allowed) into best/arg: per
    query the highest F, then the lowest record, where it beats them. Returns the candidates whose
    query has more than 64 tokens, for the caller's fallback."""
    rs, cnt = _by_query(pk, nq)
    pm = np.zeros(max(qcodes.max(), 0) + 1 if len(qcodes) else 1, np.uint64)
    qcnt, multi = np.zeros(64, np.int64), np.empty(64, np.int64)
    rest = np.empty(0, np.int64)
    for i in range(nq):
        if cnt[i + 1] == cnt[i]:
            continue
        a, m = qoff[i], qoff[i + 1] - qoff[i]
        mine = np.sort(rs[cnt[i]:cnt[i + 1]])
        if m > 64:
            rest = np.concatenate((rest, (np.int64(i) << 32) | mine))
            continue
        _masks(pm, qcodes, a, m, True)
        qcnt[:] = 0  # query tokens per signature bit; bits of repeated ones listed in multi
        qmask, nmulti = np.uint64(0), 0
        for j in range(a, a + m):
            if qcodes[j] >= 0:
                b = _bit(qcodes[j])
                qcnt[b] += 1
                qmask |= _ONE << b
                if qcnt[b] == 2:
                    multi[nmulti] = b
                    nmulti += 1
        prev = -1
        for r in mine:
            if r == prev:
                continue
            prev = r
            lb, x = poff[r + 1] - poff[r], psig[r] & qmask
            ub = _popcount(x)  # query tokens whose bit the record has: >= the LCS
            for t in range(nmulti):
                ub += (qcnt[multi[t]] - 1) * np.int64((x >> np.uint64(multi[t])) & _ONE)
            ub = min(ub, lb)
            if ub <= 0:
                continue
            fu = _f(ub, lb, m)
            if fu < best[i] or (fu == best[i] and r > arg[i]):
                continue
            lcs = _lcs(pm, m, pcodes, poff[r], poff[r + 1])
            if lcs > 0:
                f = _f(lcs, lb, m)
                if f > best[i] or (f == best[i] and r < arg[i]):
                    best[i], arg[i] = f, r
        _masks(pm, qcodes, a, m, False)
    return rest
