"""MinHash equals datasketch; exact and near dedup equal a brute-force computation on a real Ray cluster."""
import random

import numpy as np
import pyarrow as pa
import pytest
import ray
from datasketch import MinHash, MinHashLSH

from pipelines import dedup, minhash
from pipelines.config import MinHashConfig

COLS = ["instruction", "input", "output"]



def _texts(rng: random.Random, n: int) -> list[str]:
    words = ["alpha", "Beta", "gamma,", "délta", "ε", "naïve", "zoë!", "co-op", "x", "42", "the", "The", "a."]
    out = ["", "   ", "!!", "one", "Two words", "three little words", "über", "a b c d"]
    # shingles of 55, 56 and 64+ bytes: SHA-1 of one block, and of two (the padding spills over)
    out += ["x" * 55, "y" * 56, "z" * 63, "w" * 64, " ".join(["ü" * 20] * 5), "q" * 200]
    out += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(n)]
    return out


@pytest.mark.parametrize("unit,n,num_perm,seed,scheme", [
    ("word", 3, 128, 1, None), ("word", 1, 64, 7, None), ("word", 5, 256, 1, None),
    ("char", 5, 128, 1, None), ("char", 1, 32, 3, None), ("word", 3, 128, 1, "legacy"), ("char", 4, 64, 2, "legacy")])
@pytest.mark.parametrize("impl", ["signatures", "signatures_numpy"])
def test_signatures_equal_datasketch(unit, n, num_perm, seed, scheme, impl):
    texts = _texts(random.Random(seed * 31 + n), 300)
    sigs = getattr(minhash, impl)(texts, num_perm, seed, unit, n, scheme)
    for text, sig in zip(texts, sigs):
        m = MinHash(num_perm=num_perm, seed=seed, **({"scheme": scheme} if scheme else {}))
        for s in minhash.shingles(minhash.normalize(text), unit, n):
            m.update(s)
        assert np.array_equal(m.hashvalues, sig), text


def test_shingles_of_short_and_empty_texts():
    assert minhash.shingles("", "word", 3) == []
    assert minhash.shingles("hi there", "word", 3) == [b"hi there"]
    assert minhash.shingles("a b c d", "word", 3) == [b"a b c", b"b c d"]
    assert minhash.shingles("ab", "char", 5) == [b"ab"]
    assert minhash.normalize("  Hello,\tWORLD!  ") == "hello world"


def test_fast_normalize_paths_equal_the_unicode_definition():
    """The ASCII fast paths (bytes.translate; numba over a batch) give exactly casefold + removal of
    Unicode P* + str.split() whitespace, including the \x1c-\x1f separators str.split() splits on."""
    import random

    def ref(t):
        return " ".join(t.casefold().translate(minhash._PUNCT).split())

    rng = random.Random(0)
    alphabet = "".join(map(chr, range(128))) + "      \t\nÉé—“”"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(20_000)]
    texts += ["", "   ", "a\x1fb", "  Hello,\tWORLD!  ", "x - y", "İstanbul ÀB, c", "--", "a.b"]
    want = [ref(t) for t in texts]
    assert [minhash.normalize(t) for t in texts] == want
    assert minhash.normalize_batch(texts) == want
    assert minhash.normalize("a\x1fb") == "a b" and minhash.normalize("x - y") == "x y"


@pytest.mark.parametrize("threshold,num_perm", [(0.7, 128), (0.5, 64), (0.9, 256)])
def test_lsh_params_equal_datasketch(threshold, num_perm):
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    assert minhash.lsh_params(threshold, num_perm) == (lsh.b, lsh.r)
    assert minhash.lsh_params(threshold, num_perm, 4, 8) == (4, 8)
    recall_first = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.3, 0.7))
    assert minhash.lsh_params(threshold, num_perm, fn_weight=0.7) == (recall_first.b, recall_first.r)


# ---- a corpus with planted near duplicates --------------------------------------------------------

def _corpus(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    rows = []

    def add(text):
        rows.append({"id": f"{rng.randrange(16 ** 8):08x}", "instruction": "", "input": "", "output": text})

    for _ in range(150):
        sents = [" ".join(rng.choice(vocab) for _ in range(rng.randint(15, 22))) + "." for _ in range(4)]
        base = " ".join(sents)
        add(base)
        kind = rng.randrange(4)
        if kind == 1:  # one word edited, twice (a chain)
            w = base.split()
            w[rng.randrange(len(w))] = "edited"
            add(" ".join(w))
            w[rng.randrange(len(w))] = "again"
            add(" ".join(w))
        elif kind == 2:  # case and punctuation
            add(base.upper().replace(".", "!"))
        elif kind == 3:  # two sentences swapped
            add(" ".join([sents[1], sents[0], *sents[2:]]))
    for text in ["Hello world", "hello, WORLD!", "hello there", "", "ok"]:  # short and empty texts
        add(text)
    return rows


def _brute_force(rows, threshold, unit="word", n=3) -> dict:
    """Exact Jaccard of shingle sets >= threshold -> connected components -> keep the smallest id."""
    sets = {r["id"]: set(minhash.shingles(minhash.normalize(" ".join(r[c] for c in COLS)), unit, n)) for r in rows}
    ids = sorted(i for i in sets if sets[i])
    parent = {i: i for i in ids}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x
    sims = []
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            j = len(sets[a] & sets[b]) / len(sets[a] | sets[b])
            sims.append(j)
            if j >= threshold:
                ra, rb = find(a), find(b)
                parent[max(ra, rb)] = min(ra, rb)
    assert not [j for j in sims if 0.5 < j < 0.8], "test data must keep clear of the threshold"
    return {i: find(i) for i in ids if find(i) != i}


def _near(rows, cfg, blocks=3, partitions=None) -> dict:
    ds = ray.data.from_items(rows).repartition(blocks)
    ds = ds.map_batches(dedup.add_keys, fn_kwargs={"columns": COLS}, batch_format="pyarrow").materialize()
    kept, dups, stats = dedup.near_dedup(ds, cfg, COLS, partitions)
    out = {r["id"]: r["_dup"] for r in dups.take_all()}
    assert kept.count() + len(out) == len(rows)
    return out


@pytest.mark.parametrize("verify", [True, False])
def test_near_dedup_equals_brute_force(ray_session, verify):
    rows = _corpus()
    truth = _brute_force(rows, 0.7)
    assert len(truth) > 100
    cfg = MinHashConfig(threshold=0.7, bands=32, rows=4, verify=verify)  # misses at J >= 0.8: < 1e-9
    assert _near(rows, cfg) == truth


def test_near_dedup_is_independent_of_blocks_and_partitions(ray_session):
    rows = _corpus(1)
    cfg = MinHashConfig(bands=32, rows=4)
    first = _near(rows, cfg, blocks=1)
    assert first == _near(rows, cfg, blocks=7, partitions=3) == _brute_force(rows, 0.7)


def test_many_copies_link_to_the_smallest_id(ray_session):
    text = "the quick brown fox jumps over the lazy dog near the river bank"
    rows = [{"id": f"r{i:05d}", "instruction": "", "input": "", "output": text + ("." * (i % 3))}
            for i in range(3000)]
    rows.append({"id": "zzz", "instruction": "", "input": "", "output": "something else entirely, really"})
    got = _near(rows, MinHashConfig())
    assert len(got) == 2999 and set(got.values()) == {"r00000"}


def test_budgeted_changes_only_the_copy(ray_session):
    from ray.data._internal.execution import backpressure_policy as bp

    def policies(d):
        return d.context.get_config(bp.ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, bp.ENABLED_BACKPRESSURE_POLICIES)

    ds = ray.data.range(100, override_num_blocks=4).materialize()
    off = dedup.budgeted(ds, False)
    on = dedup.budgeted(off.map_batches(lambda b: b), True)
    assert bp.ResourceBudgetBackpressurePolicy not in policies(off)
    assert bp.ResourceBudgetBackpressurePolicy in policies(on) and bp.ResourceBudgetBackpressurePolicy in policies(ds)
    assert policies(off) == [p for p in policies(ds) if p is not bp.ResourceBudgetBackpressurePolicy]
    assert sorted(r["id"] for r in on.take_all()) == list(range(100))  # same rows, materialized blocks reused


def test_exact_dedup_keeps_smallest_id(ray_session):
    rows = [{"id": "b", "instruction": "Say hi", "input": "", "output": "Hi!", "model": ""},
            {"id": "a", "instruction": "say   HI.", "input": "", "output": "hi", "model": ""},
            {"id": "c", "instruction": "Say hi", "input": "x", "output": "Hi!", "model": ""},
            {"id": "a", "instruction": "SAY hi", "input": "", "output": "hi", "model": "m2"}]
    ds = ray.data.from_items(rows).map_batches(dedup.add_keys, fn_kwargs={"columns": COLS}, batch_format="pyarrow")
    kept, dups = dedup.exact_dedup(ds.materialize(), 2)
    assert sorted(r["id"] for r in kept.take_all()) == ["a", "c"]
    assert sorted((r["id"], r["_dup"]) for r in dups.take_all()) == [("a", "a"), ("b", "a")]


def test_bucket_components_are_those_of_all_pairs():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2 ** 32, (2, 128), dtype=np.uint32)
    c = b.copy()
    c[:10] = a[:10]  # B~C (0.92); A shares 10 values with C and none with B
    roots, peeled = minhash.bucket_roots(np.stack([a, b, c]), np.array([0, 3]), 0.7, 100)
    assert roots.tolist() == [0, 1, 1] and peeled == 0  # a star on A would have split B and C
    # a small bucket (vectorised path) and a large one (all pairs, or star peeling) agree
    S = np.stack([a, b, b, a, c] + [b] * 20 + [a, c])
    for max_exact, n_peeled in ((100, 0), (1, 1)):
        roots, peeled = minhash.bucket_roots(S, np.array([0, 5, 27]), 0.7, max_exact)
        assert roots.tolist() == [0, 1, 1, 0, 1] + [5] * 20 + [25, 5] and peeled == n_peeled


def test_connected_components_large_small_star(ray_session):
    rng = random.Random(3)
    nodes = [f"n{i:04d}" for i in range(400)]
    edges = set()
    for _ in range(300):
        x, y = rng.sample(nodes, 2)
        edges.add((max(x, y), min(x, y)))
    chain = [f"c{i:03d}" for i in range(60)]  # a long path: many rounds of label propagation
    edges |= {(chain[i + 1], chain[i]) for i in range(59)}
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x
    for x, y in edges:
        rx, ry = find(x), find(y)
        parent[max(rx, ry)] = min(rx, ry)
    truth = {x: find(x) for x in list(parent) if find(x) != x}
    ds = ray.data.from_items([{"a": x, "b": y} for x, y in sorted(edges)]).repartition(4)
    labels, rounds = dedup.connected_components(ds.materialize(), 3)
    assert {r["a"]: r["b"] for r in labels.take_all()} == truth
    assert rounds < 20
    # Links that are already stars around their smallest key converge in one large-star step.
    stars = ray.data.from_items([{"a": x, "b": y} for x, y in sorted(truth.items())]).repartition(3)
    labels, rounds = dedup.connected_components(stars.materialize(), 2)
    assert {r["a"]: r["b"] for r in labels.take_all()} == truth and rounds == 1
