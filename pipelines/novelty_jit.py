"""Compiled (numba) index searches of the novelty index (pipelines/novelty.py): the pair index
(pair_search) and the element index (element_search). The verification of their candidates is in
pipelines/lcs_jit.py; tests/test_novelty.py checks both against rouge-score by brute force.

Why compiled: the numpy versions made several passes over every posting (repeat, gather, mask,
np.unique to count hits); here one loop walks the postings. The pair search finds a range in a
directory run of a few postings and prefetches the runs of the look-ups a few steps ahead: at a
200k pool the postings are ~50 MB, past this box's 32 MB L3, and the misses are what grew with
the pool. The element search gallops from one range to the next of the same element and counts
a query's hits per record in a dense array instead of sorting them: it serves exact scores, whose
searches below the threshold read long postings of common words (bench/novelty.py, 200k
probe-exact: 2220 -> ~690 us per instruction, with best_of).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from pipelines.lcs_jit import _popcount
from pipelines.prefetch import prefetch

_AHEAD = 8  # look-ups whose postings are prefetched ahead


@njit(cache=True)
def pair_search(key, rid, sig, d, shift, lo, hi, rq, i2, lam, s, qsig):
    """Postings with lo[t] <= key <= hi[t] (look-ups sorted by lo) that pass the positional check of
    _Segment.search_pairs at bound s (alpha' = alpha - 1 for the pair's later element, position key
    & 255 in the record, i2[t] in the query) and the signature check (sig[p], the record's token
    signature, and qsig of the query leave an overlap >= alpha); returns query << 32 | record per
    passing posting. lo[t] and hi[t] share the pair hash, their top bits. A range starts in the
    directory run d[lo >> shift] (a few postings), whose bit mask (directory) tells most empty
    ranges apart without reading the postings; the run's start is prefetched _AHEAD look-ups ahead
    and its directory entry twice as far, so the cache misses of successive look-ups overlap (at a
    200k pool the postings are ~50 MB). The look-up arrays come sorted and are read in order (read
    through a permutation they cost ~10% more)."""
    out = np.empty(max(64, 2 * len(lo)), np.int64)
    n, nk, nl = 0, len(key), len(lo)
    for t in range(min(2 * _AHEAD, nl)):
        prefetch(d, lo[t] >> shift)
    for t in range(nl):
        if t + 2 * _AHEAD < nl:
            prefetch(d, lo[t + 2 * _AHEAD] >> shift)
        if t + _AHEAD < nl and _may_hold(d, lo[t + _AHEAD], shift):
            y = d[lo[t + _AHEAD] >> shift] & 0xFFFFFFFF
            prefetch(key, y)
            prefetch(rid, y)
            prefetch(sig, y)
        x = lo[t]
        if not _may_hold(d, x, shift):  # no key of the run shares x's next hash bits: empty range
            continue
        b = x >> shift  # the first key >= x is in the run
        p = _lower_bound(key, d[b] & 0xFFFFFFFF, d[b + 1] & 0xFFFFFFFF, x)
        if p < nk and key[p] <= hi[t]:
            q, la, i = rq[t], lam[t], i2[t]
            sq = qsig[q]
            pq = _popcount(sq)
            while p < nk and key[p] <= hi[t]:
                lb = (key[p] >> 8) & 0xFFFF  # the record's length is in its key: no random read
                al = _alpha(s, la, lb, 1)
                # the signatures bound the overlap, so the LCS: most postings stop here, before
                # best_of reads the record's tokens (a random read)
                sr = sig[p]
                if (key[p] & 255) <= lb - al and i <= la - al and \
                        _popcount(sq & sr) + min(la - pq, lb - _popcount(sr)) >= _alpha(s, la, lb, 0):
                    if n == len(out):
                        out = np.concatenate((out, np.empty(n, np.int64)))
                    out[n] = (q << 32) | np.int64(rid[p])
                    n += 1
                p += 1
    return out[:n]


@njit(cache=True, inline="always")
def _may_hold(d, x, shift):
    """False when run x >> shift of directory d has no key with x's next 5 bits (then it has no
    key with x's top bits, the pair hash, at all: ~3/4 of the look-ups find nothing, so most skip
    the read of the postings, a cache miss)."""
    return (d[x >> shift] >> (32 + ((x >> (shift - 5)) & 31))) & 1 == 1


@njit(cache=True, inline="always")
def _alpha(s, la, lb, k1):
    """novelty._alpha for one pair: least LCS giving F >= s, less the prefix extension k1."""
    return max(1, np.int64(np.ceil(s * (la + lb) / 2)) - k1)


@njit(cache=True, inline="always")
def _gallop(key, p, x):
    """First index >= p with key >= x (key sorted, key[p - 1] < x): doubling steps, then a
    binary search; a few cache lines when the answer is near p."""
    nk, step = len(key), 1
    while p + step <= nk and key[p + step - 1] < x:
        step *= 2
    return _lower_bound(key, p + step // 2, min(p + step, nk), x)


@njit(cache=True, inline="always")
def _lower_bound(key, a, b, x):
    """First index in [a, b] with key >= x (b when none; key sorted)."""
    while a < b:
        m = (a + b) // 2
        if key[m] < x:
            a = m + 1
        else:
            b = m
    return a


@njit(cache=True)
def element_search(key, rid, rq, re_, sg, lam, lbmin, lbhi, jmax, k1, sigq, laq, L, cnt, r0, before):
    """_Segment.search's range lookups and hit counting, compiled: per row (query rq, element re_,
    rows grouped by query) and record position j <= jmax, the key range of partner lengths lblo..lbhi;
    records hit >= min(alpha, k1 + 1) times are returned as query << 32 | record, sorted. The same
    float operations as the numpy bounds, so the ranges are the same. cnt[r - r0] counts a query's
    hits per record (the segment's records r0..): zeros on entry, zeros again on return. Records
    r >= before[q] are passed over (best_before: only the records before a row count)."""
    out, touched = np.empty(256, np.int64), np.empty(256, np.int64)
    n, t, nr = 0, 0, len(rq)
    while t < nr:
        q, nt = rq[t], 0
        lim = before[q]
        while t < nr and rq[t] == q:
            s, la, p = sg[t], lam[t], -1
            for j in range(jmax[t] + 1):
                x = np.int64(max(max(lbmin[t], j + 1), np.floor((j - k1 + s * la / 2) / (1 - s / 2)) - 1))
                for _ in range(4):  # novelty._fix, up
                    if not _alpha(s, la, x, k1) <= x - j:
                        x += 1
                lo, hi = min(x, 65535), min(lbhi[t], 65535)
                if lo > hi:
                    continue
                base = (re_[t] << 24) | (np.int64(j) << 16)
                # the ranges of one row come in key order: gallop on from the previous one's end
                p = np.searchsorted(key, base | lo, "left") if p < 0 else _gallop(key, p, base | lo)
                while p < len(key) and key[p] <= base | hi:
                    r = rid[p]
                    p += 1
                    if r >= lim:
                        continue
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


@njit(cache=True)
def signatures(codes, off):
    """64-bit token signature per text codes[off[i]:off[i+1]]: for each token code >= 0, the bit
    given by the top 6 bits of a multiplicative hash. c tokens of a text on one bit set it once,
    so its popcount falls short of its length by the repeats: hence the bound's
    min(la - |sa|, lb - |sb|) on top of popcount(sa & sb)."""
    out = np.zeros(len(off) - 1, np.uint64)
    for i in range(len(off) - 1):
        x = np.uint64(0)
        for j in range(off[i], off[i + 1]):
            c = codes[j]
            if c >= 0:
                x |= np.uint64(1) << ((np.uint64(c) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(58))
        out[i] = x
    return out


@njit(cache=True)
def merge_sorted(ka, kb, va, vb):
    """Two sorted key runs with their values merged into one (a's first on equal keys): one pass,
    where a stable argsort of the concatenation made three (sort, two gathers)."""
    key, val = np.empty(len(ka) + len(kb), ka.dtype), np.empty(len(ka) + len(kb), va.dtype)
    i = j = 0
    for k in range(len(key)):
        if j == len(kb) or (i < len(ka) and ka[i] <= kb[j]):
            key[k], val[k] = ka[i], va[i]
            i += 1
        else:
            key[k], val[k] = kb[j], vb[j]
            j += 1
    return key, val


@njit(cache=True)
def merge_sorted3(ka, kb, va, vb, wa, wb):
    """merge_sorted with a second value array (the pair postings' records and signatures)."""
    n = len(ka) + len(kb)
    key, val, w = np.empty(n, ka.dtype), np.empty(n, va.dtype), np.empty(n, wa.dtype)
    i = j = 0
    for k in range(len(key)):
        if j == len(kb) or (i < len(ka) and ka[i] <= kb[j]):
            key[k], val[k], w[k] = ka[i], va[i], wa[i]
            i += 1
        else:
            key[k], val[k], w[k] = kb[j], vb[j], wb[j]
            j += 1
    return key, val, w


@njit(cache=True)
def directory(key, shift, nb):
    """d[b] = m << 32 | s for b = 0..nb: s, the first index of key (sorted, >= 0) with
    key >> shift >= b; m, bit k set iff a key of run b has (key >> (shift - 5)) & 31 == k. One pass."""
    d = np.empty(nb + 1, np.int64)
    b = 0
    for p in range(len(key)):
        k = key[p] >> shift
        while b <= k:
            d[b] = p
            b += 1
        d[k] |= np.int64(1) << (32 + ((key[p] >> (shift - 5)) & 31))
    d[b:] = len(key)
    return d
