"""Compiled (numba) index searches of the novelty index (pipelines/novelty.py): the pair index
(pair_search) and the element index (element_search). The verification of their candidates is in
pipelines/lcs_jit.py; tests/test_novelty.py checks both against rouge-score by brute force.

Why compiled: the numpy versions made several passes over every posting (repeat, gather, mask,
np.unique to count hits); here one loop walks the postings. The pair search gallops over sorted
needles (a few cache lines per range start, not a fresh binary search). The element search counts
a query's hits per record in a dense array instead of sorting them: it serves exact scores, whose
searches below the threshold read long postings of common words (bench/novelty.py, 200k
probe-exact: 2220 -> ~850 us per instruction, with best_of).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def pair_search(key, rid, lo, hi, rq, i2, lam, s):
    """Postings with lo[t] <= key <= hi[t] (look-ups sorted by lo) that pass the positional check
    of _Segment.search_pairs at bound s (alpha' = alpha - 1 for the pair's later element, position
    key & 255 in the record, i2[t] in the query); returns query << 32 | record per passing
    posting. Each range start is found by galloping from the previous one (a few cache lines, not
    a fresh binary search); the range is then scanned to hi. The look-up arrays come sorted, read
    in order (read through a permutation they cost ~10% more at a 200k pool)."""
    out = np.empty(max(64, 2 * len(lo)), np.int64)
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
        p0 = p = a
        if p < nk and key[p] <= hi[t]:
            q, la, i = rq[t], lam[t], i2[t]
            while p < nk and key[p] <= hi[t]:
                lb = (key[p] >> 8) & 0xFFFF  # the record's length is in its key: no random read
                al = _alpha(s, la, lb, 1)
                if (key[p] & 255) <= lb - al and i <= la - al:
                    if n == len(out):
                        out = np.concatenate((out, np.empty(n, np.int64)))
                    out[n] = (q << 32) | np.int64(rid[p])
                    n += 1
                p += 1
    return out[:n]


@njit(cache=True, inline="always")
def _alpha(s, la, lb, k1):
    """novelty._alpha for one pair: least LCS giving F >= s, less the prefix extension k1."""
    return max(1, np.int64(np.ceil(s * (la + lb) / 2)) - k1)


@njit(cache=True)
def element_search(key, rid, rq, re_, sg, lam, lbmin, lbhi, jmax, k1, sigq, laq, L, cnt, r0):
    """_Segment.search's range lookups and hit counting, compiled: per row (query rq, element re_,
    rows grouped by query) and record position j <= jmax, the key range of partner lengths lblo..lbhi;
    records hit >= min(alpha, k1 + 1) times are returned as query << 32 | record, sorted. The same
    float operations as the numpy bounds, so the ranges are the same. cnt[r - r0] counts a query's
    hits per record (the segment's records r0..): zeros on entry, zeros again on return."""
    out, touched = np.empty(256, np.int64), np.empty(256, np.int64)
    n, t, nr = 0, 0, len(rq)
    while t < nr:
        q, nt = rq[t], 0
        while t < nr and rq[t] == q:
            s, la = sg[t], lam[t]
            for j in range(jmax[t] + 1):
                x = np.int64(max(max(lbmin[t], j + 1), np.floor((j - k1 + s * la / 2) / (1 - s / 2)) - 1))
                for _ in range(4):  # novelty._fix, up
                    if not _alpha(s, la, x, k1) <= x - j:
                        x += 1
                lo, hi = min(x, 65535), min(lbhi[t], 65535)
                if lo > hi:
                    continue
                base = (re_[t] << 24) | (np.int64(j) << 16)
                a = np.searchsorted(key, base | lo, "left")
                b = np.searchsorted(key, base | hi, "right")
                for p in range(a, b):
                    r = rid[p]
                    if cnt[r - r0] == 0:
                        if nt == len(touched):
                            touched = np.concatenate((touched, np.empty(nt, np.int64)))
                        touched[nt] = r
                        nt += 1
                    cnt[r - r0] += 1
            t += 1
        m = 0
        for k in range(nt):  # keep the records hit often enough, reset the counts
            r = touched[k]
            if cnt[r - r0] >= min(_alpha(sigq[q], laq[q], L[r], 0), k1 + 1):
                touched[m] = r
                m += 1
            cnt[r - r0] = 0
        keep = np.sort(touched[:m])
        if n + m > len(out):
            out = np.concatenate((out, np.empty(n + m, np.int64)))
        for k in range(m):
            out[n + k] = (q << 32) | keep[k]
        n += m
    return out[:n]
