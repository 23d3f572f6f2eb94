"""Self-Instruct novelty filter: ROUGE-L against a growing pool, exact decisions, no all-pairs.

A candidate is dropped when its ROUGE-L F with a pool instruction (or one kept earlier in the same
call) is > threshold, as in the Self-Instruct reference. F is rouge-score's, bit for bit
(pipelines/rouge.py); on equal F the earlier pool instruction is the most similar.

Pruning that never misses. F = 2L/(la+lb) (L = token LCS), so F >= s needs L >= alpha(lb) =
ceil(s(la+lb)/2), and L <= the multiset overlap. Tokens become a set of elements (token, k-th
occurrence), put in one total order, rarest first. Prefix lemma (PPJoin): if |A & B| >= alpha, the
t-th shared element sits at position <= |A|-alpha+t-1 in A and <= |B|-alpha+t-1 in B. Two indexes:
- element index, key (element, position j, lb): a query reads, per element at position i, only
  the key ranges with j <= lb - alpha' and i <= la - alpha' (alpha' = alpha - k1: prefixes extended
  by k1 = 0 or 1 positions; with k1 = 1 a qualifying pair has >= min(2, alpha) hits there).
- pair index (records <= _LMAX tokens, bound = threshold): every pair of elements inside a record's
  longest possible extended prefix, key (hash(e1, e2), lb, position of e2). A qualifying pair
  shares its first two shared elements as such a pair: one range per query pair, a few postings.
  A posting carries its record's 64-bit token signature (a bit per token code, novelty_jit.
  signatures): popcount(sa & sb) + min(la - |sa|, lb - |sb|) >= the multiset overlap >= L, so a
  posting below alpha is dropped before the record's tokens are read. The postings that share a
  query's pairs grow with the pool, and verifying each is a random read into the token codes: the
  one term of the bound mode that grew linearly.
Both searches are compiled loops (pipelines/novelty_jit.py); their hits are verified in one
compiled pass (pipelines/lcs_jit.py: a bit-parallel LCS). Bounds keep a 1e-9 slack (float F vs
2L/(la+lb)).
Scores: dropped rows always get the exact max (all F > threshold are found). Kept rows get, from
filter_novel, the best over the pool instructions that share two rare-prefix words at the threshold
bound and whose signatures allow F >= it (often none: 0.0 and ""): a lower bound that depends only
on the two texts and the first _FREEZE pool instructions (the element order is frozen from their
frequencies; scores before that are exact), so results do not depend on batching.
Exact kept scores are a separate pass, best_before (search at the threshold, then at the best
found, stepping down only when nothing was found): its cost per row grows about linearly with the
pool (every record sharing enough mid-frequency words with a row at F ~ 0.5 is a candidate), so it
is kept off the decisions, which are sequential; it only reads the index, so copies of it score
batches of kept rows in parallel. best() is always exact.
Storage: numpy arrays (elements, token codes, postings) plus the text per record, in static
segments merged like a binary counter (O(log N) segments; a merge is a linear merge of the two
segments' sorted postings, nothing is rebuilt).
"""
from __future__ import annotations

import zlib

import numpy as np
from rapidfuzz.distance import LCSseq

from pipelines.lcs_jit import best_of, lcs_pairs
from pipelines.novelty_jit import directory, element_search, merge_sorted, merge_sorted3, pair_search, signatures
from pipelines.rouge import fmeasure_vec, rouge_l, tokenize

__all__ = ["NoveltyIndex", "filter_novel", "kept_score_is_exact", "rouge_l", "with_exact_scores"]

_EPS = 1e-9
_LADDER = (0.5, 0.3, 0.15, 0.0)  # exact search: bounds tried when nothing was found
_CHUNK = 1024                     # candidates per vectorised pass
_FREEZE = 2048                    # the element order is frozen from the first _FREEZE records
_LMAX = 64                        # longer records are found through the element index only


class _Grow:
    """Append-only numpy array with amortised doubling."""
    def __init__(self, dtype):
        self.a, self.n = np.zeros(1024, dtype), 0

    def extend(self, x):
        m = self.n + len(x)
        if m > len(self.a):
            a = np.zeros(max(m, 2 * len(self.a)), self.a.dtype)
            a[:self.n] = self.a[:self.n]
            self.a = a
        self.a[self.n:m] = x
        self.n = m

    def view(self):
        return self.a[:self.n]


def _alpha(sig, la, lb, k1=0):
    """Least LCS giving F >= bound (sig = bound - slack), less the prefix extension k1 (>= 1)."""
    return np.maximum(1, np.ceil(sig * (la + lb) / 2) - k1).astype(np.int64)


def _fix(x, ok, up: bool):
    """Step x (within 3 of the answer) to the least (up) / largest x with ok(x)."""
    for _ in range(4):
        x = np.where(ok(x), x, x + 1 if up else x - 1)
    return x


def _starts(cnt):
    return np.repeat(np.cumsum(cnt) - cnt, cnt)


def _lbmin(sg, la):
    """Least partner length with alpha <= it (LCS <= length)."""
    est = np.maximum(1, np.ceil(sg * la / (2 - sg)) - 1).astype(np.int64)
    return _fix(est, lambda x: _alpha(sg, la, x) <= x, up=True)


def _lbhi(sg, la, i, k1, cap):
    """Largest partner length (<= cap) with alpha'(lb) <= la - i."""
    with np.errstate(divide="ignore"):
        est = np.minimum(np.floor(2 * (la - i + k1) / sg - la) + 1, cap).astype(np.int64)
    return _fix(est, lambda x: (_alpha(sg, la, x, k1) <= la - i) | (x < 1), up=False)


def _pairs(els, start, npos, selfp):
    """Pair signatures (owner, position of the later element, hash) over each owner's first npos
    sorted elements, plus (e, e) ones for owners with selfp (alpha can be 1: one shared token)."""
    c = np.maximum(npos - 1, 0)
    o1 = np.repeat(np.arange(len(npos)), c)
    i2 = np.arange(len(o1)) - _starts(c) + 1
    own = np.repeat(o1, i2)
    i1 = np.arange(len(own)) - _starts(i2)
    i2 = np.repeat(i2, i2)
    so = np.repeat(np.flatnonzero(selfp), npos[selfp])
    si = np.arange(len(so)) - _starts(npos[selfp])
    own, i1, i2 = np.r_[own, so], np.r_[i1, si], np.r_[i2, si]
    e1, e2 = els[start[own] + i1].astype(np.uint64), els[start[own] + i2].astype(np.uint64)
    h = (e1 * np.uint64(0x9E3779B97F4A7C15) + e2) * np.uint64(0xBF58476D1CE4E5B9)
    return own, i2, (h >> np.uint64(25)).astype(np.int64)  # 39-bit hash: collisions only add hits


def _npos(sig, n):
    """Positions of an n-token text that can be in an extended (k1 = 1) prefix for some partner."""
    return n - np.maximum(1, np.ceil(sig * n / (2 - sig) - 1e-9) - 1).astype(np.int64) + 1


class _Order:
    """Total order on elements, rarest first: elements absent from `counts` by a content hash, then
    by ascending count; ties (hash collisions) by element id."""
    def __init__(self, counts, hashes: _Grow):
        rank = np.full(len(counts), -1, np.int64)
        known = np.flatnonzero(counts)
        rank[known[np.lexsort((hashes.a[known], counts[known]))]] = np.arange(len(known))
        self.rank, self.h = rank, hashes

    def keys(self, e):
        r = self.rank[np.minimum(e, len(self.rank) - 1)] if len(self.rank) else np.full(len(e), -1)
        return np.where((e < len(self.rank)) & (r >= 0), (1 << 62) + r, self.h.a[e])

    def positions(self, els, qid, nq):
        """(query, position, element) rows, each query's elements in this order, and starts."""
        o = np.lexsort((els, self.keys(els), qid))
        cnt = np.bincount(qid, minlength=nq)
        return (qid[o], np.arange(len(o)) - _starts(cnt), els[o]), np.cumsum(cnt) - cnt


class _Segment:
    """Records lo..hi-1. Element postings sorted by key element<<24 | min(j,255)<<16 | min(lb,65535)
    (clipped values are lower bounds: they only let more through); pair postings if psig is set,
    each with its record's token signature (sigs: one per record of the segment)."""
    def __init__(self, els, lens, lo, order: _Order, psig=None, sigs=None):
        self.lo, self.hi, self.order = lo, lo + len(lens), order
        rid = np.repeat(np.arange(len(lens)), lens)
        start = np.cumsum(lens) - lens
        els = els[np.lexsort((els, order.keys(els), rid))]
        j = np.arange(len(els)) - start[rid]
        key = (els << 24) | (np.minimum(j, 255) << 16) | np.minimum(lens, 65535)[rid]
        o = np.argsort(key, kind="stable")
        self.key, self.rid = key[o], (rid[o] + lo).astype(np.int32)
        self.maxlen = int(lens.max()) if len(lens) else 0
        self.cnt = np.zeros(len(lens), np.int32)  # element_search's hit counts, kept at zero
        if psig is not None:
            npos = np.where(lens <= _LMAX, _npos(psig, lens), 0)
            own, i2, h = _pairs(els, start, npos, (lens <= _LMAX) & (psig * (lens + 1) <= 2))
            pkey = (h << 24) | (lens[own] << 8) | i2
            o = np.argsort(pkey, kind="stable")
            self.pkey, self.prid, self.psig = pkey[o], (own[o] + lo).astype(np.int32), sigs[own[o]]
            self._directory()

    @classmethod
    def merged(cls, a: "_Segment", b: "_Segment") -> "_Segment":
        """a + b (adjacent, same order) without rebuilding: the keys of a record do not depend on
        its segment, so the postings are the two sorted runs merged in one pass (merge_sorted; on
        equal keys a's records, the lower ids, stay first)."""
        s = cls.__new__(cls)
        s.lo, s.hi, s.order, s.maxlen = a.lo, b.hi, a.order, max(a.maxlen, b.maxlen)
        s.key, s.rid = merge_sorted(a.key, b.key, a.rid, b.rid)
        s.cnt = np.zeros(s.hi - s.lo, np.int32)
        if hasattr(a, "pkey"):
            s.pkey, s.prid, s.psig = merge_sorted3(a.pkey, b.pkey, a.prid, b.prid, a.psig, b.psig)
            s._directory()
        return s

    def __getstate__(self):  # cnt is scratch: a copy gets its own (writable) one, see __setstate__
        return {k: v for k, v in self.__dict__.items() if k != "cnt"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.cnt = np.zeros(self.hi - self.lo, np.int32)

    def _directory(self):
        """Where each run of pair keys with the same top bits starts (~8 postings a run; keys are
        hashes, so the runs are even), and which values of the next 5 bits the run holds:
        pair_search finds a range in one run, not by a search over the whole segment, and skips
        most empty ones unread. int64: 1-2 bytes per posting."""
        bits = max(1, int(np.ceil(np.log2(max(len(self.pkey), 2) / 8))))
        assert 63 - bits - 5 >= 24, "the mask bits must lie in the pair hash (key >> 24)"
        assert len(self.pkey) < 2 ** 32, "run starts are 32 bits (the mask takes the other 32)"
        self.pshift = 63 - bits
        self.pdir = directory(self.pkey, self.pshift, 2 ** bits)

    def search(self, en: "_ElemNeedles", L, before=None):
        """(query, record) candidates, sorted: records sharing >= min(k1+1, alpha) elements with
        the query inside both prefixes extended by k1, among the look-ups' partner lengths, and
        before before[query] (default: all)."""
        lbhi = np.minimum(en.lbhi, self.maxlen)  # lbhi is monotone in the cap
        jmax = np.minimum(lbhi - _alpha(en.sg, en.lam, lbhi, en.k1), 255)  # lb - alpha'(lb) grows with lb
        ok = np.flatnonzero((lbhi >= en.lbmin) & (jmax >= 0))
        pk = element_search(self.key, self.rid, en.rq[ok], en.re[ok], en.sg[ok], en.lam[ok], en.lbmin[ok],
                            lbhi[ok], jmax[ok], en.k1, en.sig, en.la, L, self.cnt, self.lo,
                            np.full(len(en.la), self.hi, np.int64) if before is None else before)
        return pk >> 32, pk & 0xFFFFFFFF

    def search_pairs(self, pn: "_PairNeedles"):
        """query << 32 | record per posting (repeats included) among records <= _LMAX tokens: a
        shared pair signature whose later element is inside both prefixes extended by one position."""
        hi = np.minimum(pn.lbhi, min(self.maxlen, _LMAX))  # lbhi is monotone in the cap
        hi = (pn.h << 24) | (hi << 8) | 255  # below lo (an empty range) where hi < lbmin
        return pair_search(self.pkey, self.prid, self.psig, self.pdir, self.pshift, pn.lo, hi, pn.rq, pn.i2, pn.lam,
                           pn.sg, pn.qsig)

    def candidates_raw(self, prow, erow, L):
        """search_pairs, plus the element index (erow) for records over _LMAX tokens (bound mode)."""
        pk = self.search_pairs(prow)
        if self.maxlen > _LMAX:
            q2, r2 = self.search(erow, L)
            pk = np.r_[pk, (q2 << 32) | r2]
        return pk

    def candidates(self, prow, erow, L):
        """Sorted unique (query, record): the element index (prow None) or candidates_raw."""
        if prow is None:
            return self.search(erow, L)
        pk = np.unique(self.candidates_raw(prow, erow, L))
        return pk >> 32, pk & 0xFFFFFFFF


def _verify(q, r, Q: "_Queries", P: "_Queries"):
    """ROUGE-L F of (query, record) pairs sorted by query: compiled bit-parallel LCS; queries of
    more than 64 tokens through rapidfuzz, pair by pair (rare for instructions)."""
    lcs = lcs_pairs(q, r, Q.codes, Q.off, P.codes, P.off)
    for k in np.flatnonzero(lcs < 0).tolist():
        a, b = Q.off[q[k]], P.off[r[k]]
        rec = P.codes[b:b + P.la[r[k]]]
        lcs[k] = LCSseq.similarity(Q.codes[a:a + Q.la[q[k]]].tolist(), np.where(rec < 0, -2, rec).tolist())
    return fmeasure_vec(lcs, Q.la[q], P.la[r])


def _update(best, arg, q, r, f):
    """Keep per query the highest F, then the lowest record; (q, r) sorted."""
    if len(q):
        start = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
        top = np.flatnonzero(f == np.repeat(np.maximum.reduceat(f, start), np.diff(np.r_[start, len(q)])))
        top = top[np.r_[True, q[top][1:] != q[top][:-1]]]
        q, r, f = q[top], r[top], f[top]
        better = (f > best[q]) | ((f == best[q]) & (r < arg[q]))
        best[q[better]], arg[q[better]] = f[better], r[better]


class _PairNeedles:
    """A chunk's query pair signatures prepared once for every segment: partner length range
    (lbhi for the largest cap, _LMAX), empty ranges dropped, all sorted by range start (lo), so
    pair_search reads them in order."""
    def __init__(self, prow, la, sg, qsig):
        rq, i2, h = prow
        self.qsig = qsig
        lam, self.sg = la[rq], float(sg)
        lbmin, lbhi = _lbmin(sg, lam), _lbhi(sg, lam, i2, 1, _LMAX)
        lo = (h << 24) | (lbmin << 8)
        o = np.flatnonzero(lbhi >= lbmin)
        o = o[np.argsort(lo[o])]
        self.lo, self.h, self.lbhi, self.rq, self.i2, self.lam = lo[o], h[o], lbhi[o], rq[o], i2[o], lam[o]


class _ElemNeedles:
    """A search's element look-ups (rows of _Order.positions: query, position, element; bound sig
    per query; prefix extension k1), prepared once for every segment: the partner lengths
    lbmin..lbhi (lbhi uncapped: each segment caps it by its longest record), rows that reach no
    partner length dropped (in the bound mode, which looks for records over _LMAX tokens here,
    nearly all of them)."""
    def __init__(self, rows, la, sig, k1, lbfloor=1):
        rq, ri, re_ = rows
        lam, sg = la[rq], sig[rq]
        lbmin = np.maximum(_lbmin(sg, lam), lbfloor)
        lbhi = _lbhi(sg, lam, ri, k1, 65535)
        ok = np.flatnonzero(lbhi >= lbmin)
        assert not len(ok) or (np.diff(rq[ok]) >= 0).all(), "rows must be grouped by query"
        self.rq, self.re, self.lam, self.sg = rq[ok], re_[ok], lam[ok], sg[ok]
        self.lbmin, self.lbhi, self.k1, self.sig, self.la = lbmin[ok], lbhi[ok], k1, sig, la


class _Queries:
    """Encoded texts: flat elements with their query number, token counts, and the token codes
    (a token's first element id; -1 for a token the pool does not have) flat with offsets."""
    def __init__(self, els, qid, la, codes, off=None):
        self.els, self.qid, self.la, self.codes = els, qid, la, codes
        self.off = np.r_[0, np.cumsum(la)] if off is None else off
        self.sig = signatures(codes, self.off) if off is None else None


class NoveltyIndex:
    """Pool of instructions for ROUGE-L novelty checks (see the module docstring).
    threshold is fixed at construction (the pair index is built for it)."""

    def __init__(self, threshold: float = 0.7):
        self.threshold = float(threshold)
        self._bound = min(max(self.threshold, 0.0), 1.0)
        self._ids: dict[str, int] = {}  # token, or "token k" for its k-th occurrence -> element id
        self._h = _Grow(np.int64)       # content hash per element
        self._texts: list[str] = []
        self._codes = _Grow(np.int32)   # token codes of the records, flat (offsets: self._off)
        self._els, self._off, self._len = _Grow(np.int32), _Grow(np.int64), _Grow(np.int64)
        self._sig = _Grow(np.uint64)   # 64-bit token signature per record (novelty_jit.signatures)
        self._off.extend([0])
        self._segs: list[_Segment] = []
        self._order, self._frozen = _Order(np.zeros(0, np.int64), self._h), False

    def __len__(self) -> int:
        return len(self._texts)

    def __getstate__(self):  # a copy (a Ray task's) gets every record indexed: it only reads
        self._flush()
        return self.__dict__

    def _encode(self, texts, grow: bool) -> _Queries:
        ids, els, qid, la, codes, new = self._ids, [], [], [], [], []
        for k, text in enumerate(texts):
            toks, occ = tokenize(text), {}
            for t in toks:
                c = occ[t] = occ.get(t, 0) + 1
                key = t if c == 1 else f"{t} {c}"
                e = ids.get(key)
                if e is None and grow:
                    e = ids[key] = len(ids)
                    b = key.encode()
                    new.append((zlib.crc32(b) << 30) ^ zlib.adler32(b))  # < 2**62
                if e is not None:
                    els.append(e)
                    qid.append(k)
                e = e if c == 1 else ids.get(t)  # a token's code is its first element's id
                codes.append(-1 if e is None else e)
            la.append(len(toks))
        if new:  # (a copy of the index in a Ray task has read-only arrays and grows nothing)
            self._h.extend(new)
        return _Queries(np.array(els, np.int64), np.array(qid, np.int64), np.array(la, np.int64),
                        np.array(codes, np.int32))

    def _append(self, texts, q: _Queries, keep) -> None:
        self._texts += texts
        self._codes.extend(q.codes[np.repeat(keep, q.la)])
        self._els.extend(q.els[keep[q.qid]])
        self._len.extend(q.la[keep])
        self._sig.extend(q.sig[keep])
        self._off.extend(self._off.a[self._off.n - 1] + np.cumsum(q.la[keep]))

    def _psig(self):
        return max(self._bound - _EPS, 0.0) if self._frozen else None

    def _flush(self) -> None:
        """Index the records added since the last query; keep O(log N) segments. At _FREEZE
        records the order is frozen from their element counts and everything is rebuilt."""
        n, lo = len(self), (self._segs[-1].hi if self._segs else 0)
        if not self._frozen and n >= _FREEZE:
            counts = np.bincount(self._els.a[:self._off.a[_FREEZE]], minlength=len(self._ids))
            self._order, self._frozen, self._segs, lo = _Order(counts, self._h), True, [], 0
        elif lo == n:
            return
        elif not self._frozen:
            self._order = _Order(np.bincount(self._els.view(), minlength=len(self._ids)), self._h)
        self._segs.append(self._segment(lo, n))
        while len(self._segs) > 1 and self._segs[-2].hi - self._segs[-2].lo < 2 * (n - self._segs[-1].lo):
            a, b = self._segs[-2], self._segs.pop()
            self._segs[-1] = _Segment.merged(a, b) if a.order is b.order else self._segment(a.lo, b.hi)

    def _segment(self, lo, hi) -> _Segment:
        off = self._off.a
        els = self._els.a[off[lo]:off[hi]].astype(np.int64)
        return _Segment(els, self._len.a[lo:hi], lo, self._order, self._psig(), self._sig.a[lo:hi])

    def _bound_needles(self, q: _Queries):
        """The bound mode's look-ups of q (frozen: one order, bound = threshold): pair needles and
        element needles for records over _LMAX tokens. The same for the pool and for the chunk's
        own search, so filter_novel makes them once."""
        (rows, start), sg, la = self._order.positions(q.els, q.qid, len(q.la)), self._psig(), q.la
        npos = np.where(sg * la / (2 - sg) <= _LMAX, _npos(sg, la), 0)
        prow = _PairNeedles(_pairs(rows[2], start, npos, sg * (la + 1) <= 2), la, sg, q.sig)
        return prow, _ElemNeedles(rows, la, np.full(len(la), sg), 1, lbfloor=_LMAX + 1)

    def _pool_best(self, q: _Queries, exact: bool, needles=None, before=None):
        """(best F, record) per query vs the pool: exact against records [0, before) (default: all),
        or the default lower bound (module doc; needles: _bound_needles(q), which filter_novel makes
        once per chunk)."""
        self._flush()
        nq, n, L = len(q.la), len(self), self._len.view()
        pool = _Queries(None, None, L, self._codes.view(), self._off.view())
        # record 0 when every score is 0 (exact, or a zero bound: then all F > 0 are found); -1: none
        best, arg = np.zeros(nq), np.full(nq, 0 if n and (exact or self._bound <= 0) else -1, np.int64)
        if not exact:  # frozen: one order, one search at the threshold
            prow, erow = needles
            self._best_of(np.concatenate([np.zeros(0, np.int64)] + [s.candidates_raw(prow, erow, L)
                                                                     for s in self._segs]), q, pool, best, arg)
            return best, arg
        before = np.full(nq, n, np.int64) if before is None else np.minimum(before, n)
        arg[before <= 0] = -1
        orders = {id(s.order): s.order for s in self._segs}  # one before the freeze: several
        rows = {k: o.positions(q.els, q.qid, nq) for k, o in orders.items()}
        bound, active, k1 = np.full(nq, self._bound), (q.la > 0) & (before > 0), 0
        while active.any():  # k1 = 0 first: every prefix pair verified, a high lower bound early
            sig = np.maximum(bound - _EPS, 0.0)
            ens = {}
            for k, ((rq, ri, re_), _) in rows.items():
                m = active[rq]
                ens[k] = _ElemNeedles((rq[m], ri[m], re_[m]), q.la, sig, k1)
            for s in self._segs:  # in record order: on equal F the earlier record stays
                if s.lo >= before[active].max():
                    break
                qq, rr = s.search(ens[id(s.order)], L, before)
                self._best_of((qq << 32) | rr, q, pool, best, arg)
            done = (best >= bound) | (bound <= 0)
            step = np.array([next((x for x in _LADDER if x < b), 0.0) for b in bound])
            bound, active, k1 = np.where(done, bound, np.where(best > 0, best, step)), active & ~done, 1
        return best, arg

    def _best_of(self, pk, q: _Queries, pool: _Queries, best, arg) -> None:
        """Fold candidates pk (query << 32 | record) into best/arg: one compiled pass (best_of),
        rapidfuzz for queries of more than 64 tokens."""
        rest = best_of(pk, len(q.la), q.codes, q.off, pool.codes, pool.off, best, arg)
        qq, rr = rest >> 32, rest & 0xFFFFFFFF
        _update(best, arg, qq, rr, _verify(qq, rr, q, pool))

    def add(self, text: str) -> None:
        """Add to the pool unconditionally (seeds, committed rounds)."""
        self._append([text], self._encode([text], grow=True), np.ones(1, bool))

    def best(self, text: str) -> tuple[float, str]:
        """(max ROUGE-L F vs pool, most similar pool text), exact; (0.0, "") for an empty pool."""
        return self.best_before([text], [len(self)])[0]

    def best_before(self, texts: list[str], before) -> list[tuple[float, str]]:
        """Exact (max ROUGE-L F, most similar text) of each text against the pool records before
        position before[i] ((0.0, "") when that is 0). At a kept row's own position: its exact
        score, where filter_novel gave a lower bound (module doc). Reads the index only, so copies
        of it can score batches in parallel (pipelines/self_instruct)."""
        if not len(texts):
            return []
        f, a = self._pool_best(self._encode(texts, grow=False), True, before=np.asarray(before, np.int64))
        return [(float(x), self._texts[k] if k >= 0 else "") for x, k in zip(f.tolist(), a.tolist())]


def with_exact_scores(index: NoveltyIndex, results: list, n0: int, score=None) -> list:
    """filter_novel's results (on an index that held n0 records before them) with every kept row's
    score and most similar text made exact: best_before at the row's own position, n0 + its rank
    among the kept (score: a stand-in for index.best_before, e.g. one run in other processes)."""
    kept = [k for k, r in enumerate(results) if r and r[0]]
    pos = [n0 + j for j in range(len(kept))]
    out = list(results)
    for k, (f, sim) in zip(kept, (score or index.best_before)([index._texts[p] for p in pos], pos)):
        out[k] = (True, f, sim)
    return out


def kept_score_is_exact(position: int) -> bool:
    """Whether filter_novel's score of a row kept at this pool position is the exact best (it is
    while the pool before it is under _FREEZE records; else a lower bound, see best_before)."""
    return position < _FREEZE


def filter_novel(index: NoveltyIndex, candidates: list[str], keys=None,
                 max_keep: int | None = None) -> list[tuple[bool, float, str] | None]:
    """In the given order (or sorted by `keys`, e.g. ids, so Ray batching does not matter): keep iff
    best score <= threshold against pool + already kept candidates; kept ones are added to the
    index. Returns (kept, score, most_similar) per candidate, aligned with `candidates`.
    Decisions are exact. Scores are exact for dropped rows; for kept rows while the pool is under
    _FREEZE records, else the lower bound of the module docstring (most_similar "" and 0.0 when no
    instruction shares two rare words; NoveltyIndex.best_before gives the exact ones). With
    max_keep, filtering stops once that many are kept: later candidates get None and are not added
    to the index."""
    order = sorted(range(len(candidates)), key=lambda k: keys[k]) if keys is not None else range(len(candidates))
    out: list = [None] * len(candidates)
    c0, nkept = 0, 0
    while c0 < len(order) and (max_keep is None or nkept < max_keep):
        n0 = len(index)  # below _FREEZE records scores are exact; a chunk does not cross it
        pos = order[c0:c0 + (_CHUNK if n0 >= _FREEZE else min(_CHUNK, _FREEZE - n0))]
        c0 += len(pos)
        texts = [candidates[k] for k in pos]
        nc, q = len(texts), index._encode(texts, grow=True)
        exact = n0 < _FREEZE
        needles = None
        if not exact:
            index._flush()  # the freeze, if due, comes before the look-ups are made in its order
            needles = index._bound_needles(q)
        best, arg = index._pool_best(q, exact, needles)
        # within the chunk: pairs (earlier r, later c) with F(c, r) > the pool's best for c, found
        # by the same search as the pool's (exact: at that best; else at the threshold, same look-ups)
        seg = _Segment(q.els, q.la, 0, index._order, None if exact else index._psig(), q.sig)
        if exact:
            rows, _ = index._order.positions(q.els, q.qid, nc)
            needles = None, _ElemNeedles(rows, q.la, np.maximum(best - _EPS, 0.0), 1)
        pq, pr = seg.candidates(*needles, q.la)
        pf = _verify(pq, pr, q, q)
        m = (pr < pq) & (pf > best[pq])
        pq, pr, pf = pq[m], pr[m], pf[m]  # sorted by (pq, pr)
        cut = np.searchsorted(pq, np.arange(nc + 1))
        kept = np.zeros(nc, bool)
        first_kept = -1
        for i in range(nc):
            if max_keep is not None and nkept >= max_keep:
                break
            f, src = float(best[i]), int(arg[i])
            for r, fr in zip(pr[cut[i]:cut[i + 1]].tolist(), pf[cut[i]:cut[i + 1]].tolist()):
                if kept[r] and fr > f:
                    f, src = fr, n0 + r
            if src < 0 and exact and first_kept >= 0:
                src = n0 + first_kept  # empty pool: every score is 0, the first record wins
            kept[i] = f <= index.threshold
            nkept += int(kept[i])
            if kept[i] and first_kept < 0:
                first_kept = i
            out[pos[i]] = (bool(kept[i]), f, "" if src < 0 else index._texts[src] if src < n0 else texts[src - n0])
        index._append([t for t, k in zip(texts, kept) if k], q, kept)
    return out
