"""Novelty filter: scores equal rouge-score's, decisions equal an exhaustive rouge-score reference."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rouge_score import rouge_scorer  # noqa: E402

from pipelines import novelty  # noqa: E402
from pipelines.novelty import NoveltyIndex, filter_novel, rouge_l, with_exact_scores  # noqa: E402
from pipelines.rouge import tokenize  # noqa: E402
from rouge_score.tokenize import tokenize as ref_tokenize  # noqa: E402

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def ref(a: str, b: str) -> float:
    """Self-Instruct reference: scorer.score(new_instruction, pool_instruction)."""
    return SCORER.score(a, b)["rougeL"].fmeasure


TRICKY = [
    "", " ", "\n\t", "!!!", "a", "A", "a a a a", "the the the cat the", "Don't stop-believing!!",
    "C++ vs. C#: which is faster?", "e-mail: john.doe@example.com, tel. +1 (555) 010-9999",
    "Ünïcödé naïve café façade", "İstanbul ıi ß straße STRASSE", "Ελληνικά και English words",
    "日本語 and 中文 mixed in", "emoji 🙂 are separators 🙂🙂 ok", "ﬁnance ﬂow (ligatures)",
    "1234 5678 1234", "x1 y2 z3 x1", "tabs\tand\nnewlines\r\nhere", "ALL CAPS INSTRUCTION HERE",
    "Write a poem about the sea.", "Write a poem about the sea", "write A POEM about THE sea!!!",
    "Write a short poem about the deep blue sea.", "sea the about poem a Write",
    "Rewrite the following sentence in passive voice: The cat chased the mouse.",
    "Rewrite the following sentence in the passive voice: the mouse was chased.",
    "a b c d", "a b x y", "a b c d e f g h i j", "a b c d e f g x y z",
    "word " * 300, ("alpha beta gamma " * 120) + "delta", "x " * 70 + "y z",
]

WORDS = ("write generate explain list classify summarize translate describe create give find the "
         "a an of to in for and or with about following given sentence paragraph poem story email "
         "list three five ways reasons steps short long simple detailed formal friendly python code "
         "function that returns number words text article into french spanish it this each").split()


def random_text(rng: random.Random) -> str:
    n = rng.choice([0, 1, 2, 3, 5, 8, 12, 20, 40])
    parts = []
    for _ in range(n):
        w = rng.choice(WORDS + ["ÄÖÜ", "naïve", "42", "x-ray", "C++", "😀", "İ", "ß", "O'Neil"])
        if rng.random() < 0.2:
            w = w.upper()
        parts.append(w + rng.choice(["", "", "", ",", ".", "!", "?", " -", ":"]))
    return rng.choice([" ", "  ", "\n", "\t"]).join(parts)


def paraphrases(n: int, seed: int = 0) -> list[str]:
    """Instructions from templates plus near-paraphrases of earlier ones (word drops, swaps,
    insertions, case and punctuation changes), so scores spread around 0.5-1.0."""
    rng = random.Random(seed)
    out: list[str] = []
    verbs = ["Write", "Generate", "Explain", "List", "Describe", "Summarize", "Create", "Give"]
    objs = ["a poem", "a short story", "three reasons", "an email", "a recipe", "five tips",
            "a summary", "a list of steps", "a python function", "a tweet", "a riddle"]
    tops = ["the sea", "climate change", "machine learning", "a rainy day", "healthy eating",
            "job interviews", "the french revolution", "sorting numbers", "time management",
            "black holes", "learning to cook", "saving money", "the history of jazz"]
    for _ in range(n):
        if out and rng.random() < 0.55:
            w = rng.choice(out).split()
            for _ in range(rng.randint(1, 3)):
                op = rng.random()
                if op < 0.3 and len(w) > 2:
                    del w[rng.randrange(len(w))]
                elif op < 0.55:
                    w.insert(rng.randrange(len(w) + 1), rng.choice(WORDS))
                elif op < 0.75 and len(w) > 1:
                    i = rng.randrange(len(w) - 1)
                    w[i], w[i + 1] = w[i + 1], w[i]
                elif op < 0.9:
                    w[rng.randrange(len(w))] = rng.choice(WORDS)
                else:
                    w = [x.upper() if rng.random() < 0.3 else x for x in w]
            out.append(" ".join(w) + rng.choice(["", ".", "!", "?"]))
        else:
            out.append(f"{rng.choice(verbs)} {rng.choice(objs)} about {rng.choice(tops)}"
                       + rng.choice(["", " for a child", " in simple words", " in French",
                                     " using at most 50 words", " with a friendly tone"]) + ".")
    return out


def brute_force(pool: list[str], cands: list[str], thr: float) -> list[tuple[bool, float, str]]:
    """Exhaustive reference: rouge-score against pool + kept; most similar = first at the max."""
    pool, out = list(pool), []
    for c in cands:
        scores = [ref(c, p) for p in pool]
        best = max(scores, default=0.0)
        sim = pool[scores.index(best)] if pool else ""
        kept = best <= thr
        out.append((kept, best, sim))
        if kept:
            pool.append(c)
    return out


def test_tokenize_equals_rouge_score():
    rng = random.Random(1)
    for t in TRICKY + [random_text(rng) for _ in range(300)]:
        assert tokenize(t) == ref_tokenize(t, None), t


def test_rouge_l_equals_rouge_score_exactly():
    rng = random.Random(2)
    texts = TRICKY + [random_text(rng) for _ in range(120)] + paraphrases(120, seed=3)
    n = 0
    for a in texts:
        for b in rng.sample(texts, 25) + [a]:
            assert rouge_l(a, b) == ref(a, b), (a, b)
            assert rouge_l(b, a) == ref(a, b), (a, b)  # symmetric bit for bit
            n += 1
    assert n > 5000
    assert rouge_l("a b c d", "a b x y") == 0.5
    assert rouge_l("", "anything") == 0.0 and rouge_l("!!", "??") == 0.0


@pytest.mark.parametrize("freeze", [10**9, 30])
def test_best_equals_exhaustive_while_pool_grows(freeze, monkeypatch):
    """add()/best() interleaved: many small segments and merges, before and after the element order
    is frozen (freeze=30); long (>255 token) records; records past _LMAX (set to 12)."""
    monkeypatch.setattr(novelty, "_FREEZE", freeze)
    monkeypatch.setattr(novelty, "_LMAX", 12)
    rng = random.Random(4)
    texts = TRICKY + paraphrases(250, seed=5) + [random_text(rng) for _ in range(80)]
    rng.shuffle(texts)
    idx, pool = NoveltyIndex(), []
    for t in texts:
        q = rng.choice(texts)
        scores = [ref(q, p) for p in pool]
        exp = (max(scores), pool[scores.index(max(scores))]) if pool else (0.0, "")
        assert idx.best(q) == exp, q
        idx.add(t)
        pool.append(t)
    assert len(idx) == len(pool)
    assert len(idx._segs) <= 12
    assert idx._frozen == (freeze < len(pool))


def check_against_brute_force(got, expected, cands, exact):
    """Decisions always equal; scores equal where exact (and for every dropped row); otherwise a
    kept row's score is a real score of its most similar text and <= the exact best."""
    assert [g[0] for g in got] == [e[0] for e in expected]
    lower = 0
    for c, g, e in zip(cands, got, expected):
        if exact or not e[0]:
            assert g == e, c
        else:
            assert g[1] <= e[1] and (ref(c, g[2]) == g[1] if g[2] else g[1] == 0.0), c
            lower += g[1] < e[1]
    return lower


@pytest.mark.parametrize("thr", [0.5, 0.7, 0.9])
@pytest.mark.parametrize("exact", [True, False])
def test_filter_novel_equals_brute_force(thr, exact, monkeypatch):
    """Small _FREEZE / _LMAX so the pair index, the frozen order and long records are all used."""
    monkeypatch.setattr(novelty, "_FREEZE", 40)
    monkeypatch.setattr(novelty, "_LMAX", 12)
    pool = paraphrases(60, seed=10) + ["", "the the the", "Write a poem about the sea."]
    cands = paraphrases(400, seed=11)[100:] + TRICKY
    expected = brute_force(pool, cands, thr)
    kept = sum(k for k, _, _ in expected)
    assert 0 < kept < len(cands)  # the data exercises both decisions
    results = []
    for chunk in (1024, 37):  # one chunk, and many chunks (pool search + in-chunk self-join)
        monkeypatch.setattr(novelty, "_CHUNK", chunk)
        idx = NoveltyIndex(threshold=thr)
        for p in pool:
            idx.add(p)
        results.append(filter_novel(idx, cands))
        if exact:
            results[-1] = with_exact_scores(idx, results[-1], len(pool))
        check_against_brute_force(results[-1], expected, cands, exact)
        assert len(idx) == len(pool) + kept
        assert not any(s.cnt.any() for s in idx._segs)  # element_search's counts reset for the next query
    assert results[0] == results[1]


def test_freeze_crossed_during_filtering(monkeypatch):
    """Pool below _FREEZE at the start: exact scores until the pool reaches it, then the default
    scores; results equal across chunk sizes and batch splits."""
    monkeypatch.setattr(novelty, "_FREEZE", 80)
    pool, cands = paraphrases(20, seed=30), paraphrases(500, seed=31)
    expected = brute_force(pool, cands, 0.7)
    results = []
    for chunk, splits in [(1024, [500]), (33, [500]), (1024, [3, 90, 91, 400, 500]), (7, [250, 500])]:
        monkeypatch.setattr(novelty, "_CHUNK", chunk)
        idx = NoveltyIndex()
        for p in pool:
            idx.add(p)
        got, a = [], 0
        for b in splits:
            got += filter_novel(idx, cands[a:b])
            a = b
        results.append(got)
        assert idx._frozen
    assert all(r == results[0] for r in results)
    assert check_against_brute_force(results[0], expected, cands, exact=False) > 0
    n, k = len(pool), 0  # exact while the pool (before the candidate) is below _FREEZE
    while n < 80:
        assert results[0][k] == expected[k]
        n, k = n + expected[k][0], k + 1


@pytest.mark.parametrize("thr", [-0.1, 0.0, 0.3, 1.0])
def test_extreme_thresholds(thr, monkeypatch):
    monkeypatch.setattr(novelty, "_FREEZE", 20)
    pool, cands = paraphrases(25, seed=40), paraphrases(120, seed=41)[40:] + TRICKY[:12]
    expected = brute_force(pool, cands, thr)
    for exact in (True, False):
        idx = NoveltyIndex(thr)
        for p in pool:
            idx.add(p)
        got = filter_novel(idx, cands)
        check_against_brute_force(with_exact_scores(idx, got, len(pool)) if exact else got, expected, cands, exact)


@pytest.mark.parametrize("freeze", [10**9, 30])
def test_best_before_equals_exhaustive_over_each_prefix(freeze, monkeypatch):
    """best_before(texts, before) against rouge-score over the first before[i] pool records, for
    positions across segments and inside them, 0, past the end, and texts the pool has not seen."""
    monkeypatch.setattr(novelty, "_FREEZE", freeze)
    monkeypatch.setattr(novelty, "_LMAX", 12)
    rng = random.Random(7)
    pool = paraphrases(300, seed=8) + TRICKY
    idx = NoveltyIndex()
    for k, t in enumerate(pool):
        if k in (200, 290):
            idx.best("flush")  # index what is there: the pool ends up in several segments
        idx.add(t)
    idx.best("flush")
    assert len(idx._segs) >= 3
    texts = [rng.choice(pool) for _ in range(60)] + paraphrases(40, seed=9) + ["zz qq unseen words", ""]
    before = [rng.choice([0, 1, 2, 37, 150, 299, len(pool), len(pool) + 5, rng.randrange(len(pool))]) for _ in texts]
    got = idx.best_before(texts, before)
    for t, b, g in zip(texts, before, got):
        prefix = pool[:b]
        scores = [ref(t, p) for p in prefix]
        assert g == ((max(scores), prefix[scores.index(max(scores))]) if prefix else (0.0, "")), (t, b)
    assert sum(0 < g[0] < 1 for g in got) > 20 and any(g[0] == 1.0 for g in got)  # the data spreads
    assert idx.best_before([], []) == []


def test_empty_pool_and_empty_candidates():
    idx = NoveltyIndex()
    assert idx.best("anything") == (0.0, "")
    got = filter_novel(idx, ["", "Write a poem.", "Write a poem.", "zzz", "!!"])
    assert got == brute_force([], ["", "Write a poem.", "Write a poem.", "zzz", "!!"], 0.7)
    assert got[2] == (False, 1.0, "Write a poem.")
    assert got[1] == (True, 0.0, "")


def test_large_vocabulary_codes_past_surrogates():
    """More than 0xD800 distinct tokens: token codes skip the surrogate block and stay exact."""
    rng = random.Random(6)
    idx, pool = NoveltyIndex(), []
    for k in range(580):
        t = " ".join(f"w{k}x{i}" for i in range(100))
        idx.add(t)
        pool.append(t)
    assert len(idx._ids) > 0xD800
    for k in rng.sample(range(580), 8):
        words = pool[k].split()
        q = " ".join(words[:60] + ["new", "words"] + words[70:])
        assert idx.best(q) == (ref(q, pool[k]), pool[k])
    got = filter_novel(idx, [pool[3] + " extra", "fresh text here"])
    assert got == brute_force(pool, [pool[3] + " extra", "fresh text here"], 0.7)


def test_order_determinism_and_batch_splits():
    cands = paraphrases(300, seed=21)
    ids = [f"id{k:04d}" for k in range(len(cands))]
    base = NoveltyIndex()
    expected = filter_novel(base, cands)  # already in id order

    perm = list(range(len(cands)))
    random.Random(22).shuffle(perm)
    idx = NoveltyIndex()
    got = filter_novel(idx, [cands[k] for k in perm], keys=[ids[k] for k in perm])
    assert [got[perm.index(k)] for k in range(len(cands))] == expected

    idx2, got2 = NoveltyIndex(), []
    for a, b in [(0, 7), (7, 150), (150, 151), (151, 300)]:  # how Ray split the batches
        got2 += filter_novel(idx2, cands[a:b])
    assert got2 == expected
    assert idx._texts == base._texts == idx2._texts


def test_compiled_lcs_equals_rapidfuzz():
    """The bit-parallel LCS on token codes: lengths around the 64-token word (the fallback past it),
    repeated codes, codes the pool does not have (-1) on either side, empty sequences."""
    import numpy as np
    from rapidfuzz.distance import LCSseq

    from pipelines.novelty import _Queries, _verify
    from pipelines.rouge import fmeasure_vec
    rng = random.Random(7)
    qs = [[rng.randrange(-1, 12) for _ in range(n)] for n in [0, 1, 5, 31, 63, 64, 65, 130] * 3]
    ps = [[rng.randrange(0, 12) for _ in range(n)] for n in [0, 1, 2, 9, 40, 64, 65, 200]]
    ps.append([-1, 3, -1, 4])
    flat = lambda seqs: np.array([c for s in seqs for c in s], np.int32)
    Q = _Queries(None, None, np.array([len(s) for s in qs]), flat(qs))
    P = _Queries(None, None, np.array([len(s) for s in ps]), flat(ps))
    q = np.repeat(np.arange(len(qs)), len(ps))
    r = np.tile(np.arange(len(ps)), len(qs))
    f = _verify(q, r, Q, P)
    lcs = np.array([LCSseq.similarity([c if c >= 0 else -2 for c in qs[a]], [c if c >= 0 else -3 for c in ps[b]])
                    for a, b in zip(q.tolist(), r.tolist())])
    assert f.tolist() == fmeasure_vec(lcs, Q.la[q], P.la[r]).tolist()
    assert (lcs > 0).sum() > 100 and (lcs[Q.la[q] > 64] > 0).sum() > 20  # the data has real common subsequences
    # sparse codes up to 2**31 - 1 (the match-mask table is sized by the query's largest code;
    # record codes past it match nothing)
    big = {c: rng.randrange(2 ** 31 - 1) for c in range(12)} | {-1: -1}
    Q2, P2 = (_Queries(None, None, X.la, np.array([big[c] for c in X.codes.tolist()], np.int32)) for X in (Q, P))
    assert _verify(q, r, Q2, P2).tolist() == f.tolist()


def test_best_of_equals_verifying_every_candidate():
    """best_of (one compiled pass) gives the best F and lowest most similar record that verifying
    every distinct candidate gives; repeats and any order of the candidates; queries past 64 tokens
    come back for the fallback."""
    import numpy as np

    from pipelines.lcs_jit import best_of
    from pipelines.novelty import _Queries, _update, _verify
    rng = np.random.default_rng(3)
    def texts(n, vocab):  # short code sequences over a small vocabulary: many shared tokens
        lens = rng.choice([0, 1, 3, 8, 15, 30, 64, 65, 90], n, p=[.02, .05, .1, .3, .3, .15, .03, .03, .02])
        return _Queries(None, None, lens, rng.integers(-1, vocab, lens.sum()).astype(np.int32))
    for vocab in (6, 40, 300):  # many to few shared tokens
        Q, P = texts(300, vocab), texts(2000, vocab)
        pk = rng.integers(0, 300, 30000) << 32 | rng.integers(0, 2000, 30000)
        pk = np.r_[pk, pk[:5000]]  # repeats
        rng.shuffle(pk)
        best, arg = np.zeros(300), np.full(300, -1)
        rest = best_of(pk, 300, Q.codes, Q.off, P.codes, P.off, best, arg)
        assert set(rest.tolist()) == {x for x in pk.tolist() if Q.la[x >> 32] > 64}
        u = np.unique(pk)
        q, r = u >> 32, u & 0xFFFFFFFF
        f = _verify(q, r, Q, P)
        b2, a2 = np.zeros(300), np.full(300, -1)
        short = Q.la[q] <= 64
        _update(b2, a2, q[short], r[short], f[short])
        assert best.tolist() == b2.tolist() and arg.tolist() == a2.tolist()
        assert (best > 0).sum() > 200


def test_merged_segments_equal_a_rebuild(monkeypatch):
    """A merge (linear merge of the sorted postings) gives the arrays a fresh build of the same
    records gives, pair index included."""
    monkeypatch.setattr(novelty, "_FREEZE", 50)
    calls, merged = [], novelty._Segment.merged
    monkeypatch.setattr(novelty._Segment, "merged", classmethod(lambda cls, a, b: calls.append(1) or merged(a, b)))
    idx = NoveltyIndex()
    for k, t in enumerate(paraphrases(400, seed=50) + TRICKY):
        idx.add(t)
        if k % 37 == 0:
            idx._flush()  # many small segments, merged as the counter carries
    idx._flush()
    assert idx._frozen and len(idx._segs) >= 2
    for s in idx._segs:
        fresh = idx._segment(s.lo, s.hi)
        assert (s.key == fresh.key).all() and (s.rid == fresh.rid).all()
        assert (s.pkey == fresh.pkey).all() and (s.prid == fresh.prid).all() and (s.psig == fresh.psig).all()
        assert (s.pdir == fresh.pdir).all() and s.pshift == fresh.pshift
        assert s.maxlen == fresh.maxlen
    assert len(calls) >= 5


def test_signature_bound_is_at_least_the_lcs():
    """The pair search drops a candidate when its token signatures leave too small an overlap:
    popcount(sa & sb) + min(la - popcount(sa), lb - popcount(sb)) must be >= the LCS for every
    pair (repeated tokens, unknown tokens (-1), bit collisions), and it must prune (the bound is
    not vacuous)."""
    import numpy as np

    from pipelines.lcs_jit import _popcount
    from pipelines.novelty import _Queries
    from rapidfuzz.distance import LCSseq
    rng = np.random.default_rng(5)
    for vocab in (4, 60, 5000):  # many repeats, bit collisions, mostly distinct bits
        lens = rng.integers(0, 40, 400)
        codes = rng.integers(-1, vocab, lens.sum()).astype(np.int32)
        Q = _Queries(None, None, lens, codes)
        for i in range(400):  # a bit per distinct known code at most; -1 (unknown) sets none
            known = {c for c in codes[Q.off[i]:Q.off[i + 1]].tolist() if c >= 0}
            assert 0 < _popcount(np.uint64(Q.sig[i])) <= len(known) or (not known and Q.sig[i] == 0)
        below = 0
        for _ in range(3000):
            a, b = rng.integers(0, 400, 2)
            x, y = codes[Q.off[a]:Q.off[a + 1]].tolist(), codes[Q.off[b]:Q.off[b + 1]].tolist()
            lcs = LCSseq.similarity(x, [c if c >= 0 else -2 for c in y])  # -1 matches nothing
            sa, sb = np.uint64(Q.sig[a]), np.uint64(Q.sig[b])
            ub = _popcount(sa & sb) + min(lens[a] - _popcount(sa), lens[b] - _popcount(sb))
            assert ub >= lcs, (x, y)
            below += ub < min(lens[a], lens[b])
        assert vocab == 4 or below > 1000


def test_exact_scores_in_ray_tasks_equal_local(ray_session, monkeypatch):
    """The pipeline's exact kept-row scores as Ray tasks (self_instruct.exact_scores_async: one
    object-store copy of the index, read-only in the workers) equal best_before in this process."""
    from pipelines import self_instruct

    monkeypatch.setattr(self_instruct, "SCORE_BATCH", 70)  # several tasks
    idx = NoveltyIndex()
    for k, t in enumerate(paraphrases(3000, seed=50)):
        if k in (2100, 2700):
            idx.best("flush")  # past _FREEZE: frozen order, pair postings, several segments
        idx.add(t)
    n = len(idx)
    assert idx._frozen and len(idx._segs) >= 2
    texts = [idx._texts[k] for k in range(n - 300, n)] + paraphrases(20, seed=51)
    before = list(range(n - 300, n)) + [n] * 20
    got = self_instruct.exact_scores_async(idx, texts, before)()
    assert got == idx.best_before(texts, before)
    assert len(got) == 320 and sum(0.3 < f < 1 for f, _ in got) > 100
