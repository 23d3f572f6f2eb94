"""Exact and near-duplicate removal on Ray Data: datasets in, datasets out.

Every grouping step is "hash-shuffle by a key, then one vectorised function per block" (`by_key`):
Ray's hash shuffle puts all rows of a key into one block, and each block function sorts what it
gets, so no result depends on how the input was split into blocks. The driver only sees counts,
per-block stats and object refs, never rows or signatures.

Order: rows carry `_h` (16-byte blake2b of the normalised text columns) and `_key` = id + NUL +
hex of the first 8 bytes of _h. "Smallest id" means smallest `_key`: id first, ties broken by
the text hash (and, in exact dedup, by a hash of the whole row), so every choice is deterministic.

Exact dedup: shuffle rows by `_h`; the smallest key of each group is kept.

Near dedup (MinHash LSH) over rows whose normalised text is non-empty:
 1. signatures and band keys per row (map_batches, pipelines.minhash);
 2. buckets: (band key, text hash) rows shuffled by band key; a bucket of >= 2 rows is a candidate
    group, named by a hash of its member set, so that the several bands two rows share give the
    same (bucket, member) rows;
 3. members get their keys and signatures (a shuffle join by text hash; rows with identical texts
    share a hash and all join); the join drops repeated (bucket, member) rows, which all meet there
    (they share the text hash). With verification (cfg.verify), each bucket is then split
    into the connected components of "estimated Jaccard >= threshold" among
    its members (minhash.bucket_roots, identical signatures collapsed first). Each member is linked
    to the smallest key of its in-bucket component: a star, never a pair list, and the union of
    these stars has exactly the components of all-pairs verification of the candidates (linking
    members to the bucket's smallest key and verifying only that pair would split such
    components). A bucket with more than `max_exact_bucket` distinct signatures is verified by
    star peeling instead (the smallest unassigned row anchors all rows that verify against it,
    for at most 64 anchors); the stats count such buckets. Without verification each member is
    linked to its bucket's smallest key, which keeps the components of all candidate pairs.
    The links of a block are contracted to stars (local connected components) before leaving it;
 4. connected components: large-star / small-star rounds (Kiveris et al. 2014), each a pair of
    shuffles of edge rows, until every component is a star around its smallest key;
 5. that smallest key is kept, the rest are rejected with duplicate_of = its id (the duplicate
    labels, sorted by key hash per block, are broadcast as object refs to a map over the rows).
"""
from __future__ import annotations

import hashlib
import json
import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import Dataset
from ray.data._internal.execution import backpressure_policy as bp
from ray.data.context import ShuffleStrategy
from ray.data.expressions import col

from pipelines import minhash
from pipelines.config import MinHashConfig

_CC_MAX_ROUNDS = 64


# ---- Ray Data helpers ---------------------------------------------------------------------------

def _non_empty(t: pa.Table, fn, kwargs):
    if t.num_rows:
        yield fn(t, **kwargs)


def each_block(ds, fn, batch_size: int | None = None, **kwargs):
    """fn(table, **kwargs) per pyarrow batch (a whole block by default); empty batches give nothing."""
    return ds.map_batches(_non_empty, batch_size=batch_size, batch_format="pyarrow",
                          fn_kwargs={"fn": fn, "kwargs": kwargs})


def by_key(ds, key: str, fn, partitions: int, **kwargs):
    """Hash-shuffle `ds` on `key`, then call fn(block, **kwargs) once per whole block."""
    if ds.context.shuffle_strategy not in (ShuffleStrategy.HASH_SHUFFLE, ShuffleStrategy.SHUFFLE_V2):
        raise RuntimeError("dedup needs Ray Data's hash shuffle (DataContext.shuffle_strategy)")
    return each_block(ds.repartition(partitions, keys=[key]), fn, **kwargs)


def budgeted(ds, on: bool):
    """ds with its own DataContext, with or without Ray Data's resource-budget backpressure.

    Why off: in Ray 2.60 an execution's resource limits read 0 CPUs until the autoscaling
    coordinator first answers (about a second; they are refreshed once a second), and a zero
    budget admits one task at a time, so each short execution on a small cluster ran its first
    second or more one task at a time. Off where a stage's output is materialized whole anyway
    (the read and signatures, the component rounds, labelling the rows): Ray core still runs at
    most one task per CPU. The bucket shuffles and what callers get back keep it: with it off
    there too, near dedup alone on the 1M-row bench corpus peaked ~1.5 GiB higher (7.65 against
    6.13 GiB, a one-off measurement, not a bench/ output)."""
    out = Dataset.copy(ds, _deep_copy=True)  # deep: its own context, so ds keeps its policies
    policies = [p for p in out.context.get_config(bp.ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
                                                  bp.ENABLED_BACKPRESSURE_POLICIES)
                if p is not bp.ResourceBudgetBackpressurePolicy]
    out.context.set_config(bp.ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
                           policies + [bp.ResourceBudgetBackpressurePolicy] * on)
    return out


def spread(ds, rows_per_block: int = 20_000):
    """Materialize ds in enough blocks to keep every CPU busy (a small read is often one block)."""
    ds = ds.materialize()
    want = max(2 * int(ray.cluster_resources().get("CPU", 1)), math.ceil(ds.count() / rows_per_block))
    return ds.repartition(want).materialize() if ds.num_blocks() < want else ds


def _partitions(ds, target_bytes: int = 64 << 20) -> int:
    """Shuffle partitions for a materialized dataset: ~64 MiB each (only speed depends on it)."""
    return max(2, min(256, math.ceil((ds.size_bytes() or 0) / target_bytes)))


def _runs(arr) -> np.ndarray:
    """Start of every run of equal values in a sorted column, and its length as the last entry."""
    n = len(arr)
    if n == 0:
        return np.zeros(1, np.int64)
    if isinstance(arr, np.ndarray):
        diff = arr[1:] != arr[:-1]
    else:
        diff = pc.not_equal(arr[1:], arr[:-1]).to_numpy(zero_copy_only=False) if n > 1 else np.zeros(0, bool)
    return np.concatenate([[0], np.flatnonzero(diff) + 1, [n]]).astype(np.int64)


def _array(x, type=pa.string()) -> pa.Array:
    if isinstance(x, pa.ChunkedArray):
        return x.combine_chunks() if x.num_chunks else pa.array([], type)
    return x if isinstance(x, pa.Array) else pa.array(x, type)


def _codes(*arrays):
    """Order-preserving int codes of string columns, and the sorted distinct values."""
    uniq = pc.unique(pa.concat_arrays([_array(a) for a in arrays]))
    uniq = uniq.take(pc.array_sort_indices(uniq))
    return [pc.index_in(a, value_set=uniq).to_numpy(zero_copy_only=False).astype(np.int64)
            for a in arrays], uniq


# ---- row keys and exact dedup -------------------------------------------------------------------

def add_keys(t: pa.Table, columns: list[str]) -> pa.Table:
    """Append `_h` and `_key` (see module doc) to a batch that has `id` and the text columns."""
    texts = zip(*(minhash.normalize_batch([v or "" for v in t[c].to_pylist()]) for c in columns))
    hs = [hashlib.blake2b("\x1f".join(vals).encode(), digest_size=16).digest() for vals in texts]
    keys = [f"{i}\x00{h[:8].hex()}" for i, h in zip(t["id"].to_pylist(), hs)]
    return t.append_column("_h", pa.array(hs, pa.binary(16))).append_column("_key", pa.array(keys, pa.string()))


def _row_hash(row: dict) -> str:
    return hashlib.blake2b(json.dumps(row, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def _exact_block(t: pa.Table) -> pa.Table:
    t = t.sort_by([("_h", "ascending"), ("_key", "ascending")])
    n = t.num_rows
    ties = np.flatnonzero(pc.equal(t["_key"][1:], t["_key"][:-1]).to_numpy(zero_copy_only=False)) if n > 1 else []
    if len(ties):  # identical id and text: order by a hash of the whole row
        tie = np.full(n, "", object)
        idx = np.union1d(ties, ties + 1)
        for i, r in zip(idx, t.take(idx).drop_columns(["_h", "_key"]).to_pylist()):
            tie[i] = _row_hash(r)
        t = t.append_column("_tie", pa.array(tie, pa.string()))
        t = t.sort_by([("_h", "ascending"), ("_key", "ascending"), ("_tie", "ascending")]).drop_columns(["_tie"])
    starts = _runs(t["_h"])
    first = np.repeat(starts[:-1], np.diff(starts))
    return t.append_column("_dup", pc.if_else(pa.array(first == np.arange(n)), "", t["id"].take(first)))


def exact_dedup(ds, partitions: int | None = None):
    """(kept, duplicates) of a dataset with `_h`/`_key` (materialized here: partitions are sized from it);
    duplicates carry `_dup`."""
    ds = ds.materialize()
    marked = by_key(ds, "_h", _exact_block, partitions or _partitions(ds)).materialize()
    return marked.filter(expr=col("_dup") == "").drop_columns(["_dup"]), marked.filter(expr=col("_dup") != "")


# ---- near dedup: signatures, buckets, verification ----------------------------------------------

def _sig_array(sigs: np.ndarray) -> pa.Array:
    n, width = sigs.shape[0], 4 * sigs.shape[1]
    offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int32) * width).tobytes())
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(sigs.tobytes())])


def sig_matrix(col, num_perm: int) -> np.ndarray:
    """A binary signature column (4 * num_perm bytes a value, no nulls) as a (rows, num_perm) uint32 matrix."""
    arr = pa.chunked_array(col).combine_chunks() if not isinstance(col, pa.Array) else col
    if len(arr) == 0:
        return np.zeros((0, num_perm), np.uint32)
    off = np.frombuffer(arr.buffers()[1], np.int32, len(arr) + 1, arr.offset * 4)
    if off[-1] - off[0] != len(arr) * 4 * num_perm:
        raise ValueError("signatures of unequal length")
    return np.frombuffer(arr.buffers()[2], np.uint32, len(arr) * num_perm, int(off[0])).reshape(-1, num_perm)


def _sign(t: pa.Table, columns, cfg: MinHashConfig, bands: int, rows: int, scheme: str) -> pa.Table:
    """Signature rows (kh, key, sig, bands) of the rows with a non-empty normalised text."""
    docs = minhash.normalize_batch([" ".join(v or "" for v in vals) for vals in zip(*(t[c].to_pylist() for c in columns))])
    keep = np.array([bool(d) for d in docs], bool)
    sigs = minhash.signatures([d for d in docs if d], cfg.num_perm, cfg.seed, cfg.shingle, cfg.ngram, scheme,
                              normalized=True)
    keys = minhash.band_keys(sigs, bands, rows)
    return pa.table({"kh": _key_hash(t["_h"])[keep].view(np.int64), "key": t["_key"].filter(pa.array(keep)),
                     "sig": _sig_array(sigs), "bands": pa.FixedSizeListArray.from_arrays(pa.array(keys.ravel()), bands)})


def _explode_bands(t: pa.Table) -> pa.Table:
    bands = t["bands"].combine_chunks()
    return pa.table({"bkey": bands.flatten(), "kh": np.repeat(t["kh"].to_numpy(), bands.type.list_size)})


def _mix64(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _buckets(t: pa.Table) -> pa.Table:
    """Buckets of >= 2 rows as (bucket, kh) rows; `bucket` hashes the member set, so the several
    bands that two rows share give the same (bucket, kh) rows (`_attach_sigs` drops the repeats)."""
    bkey, kh = t["bkey"].to_numpy(), t["kh"].to_numpy()
    o = np.lexsort((kh, bkey))
    bkey, kh = bkey[o], kh[o]
    starts = _runs(bkey)
    size = np.diff(starts)
    big = np.repeat(size >= 2, size)
    bkey, kh = bkey[big], kh[big]
    starts = _runs(bkey)
    with np.errstate(over="ignore"):
        mixed = _mix64(kh.view(np.uint64))
        bucket = _mix64(np.add.reduceat(mixed, starts[:-1]) + np.diff(starts).astype(np.uint64)) if len(kh) else mixed
    return pa.table({"bucket": np.repeat(bucket, np.diff(starts)).view(np.int64), "kh": kh,
                     "key": pa.nulls(len(kh), pa.string()), "sig": pa.nulls(len(kh), pa.binary())})


def _sig_rows(t: pa.Table) -> pa.Table:
    return pa.table({"bucket": pa.nulls(t.num_rows, pa.int64()), "kh": t["kh"], "key": t["key"], "sig": t["sig"]})


def _attach_sigs(t: pa.Table) -> pa.Table:
    """Member rows (bucket set) and signature rows (bucket null) of the same text hashes -> (bucket,
    key, sig) for every row of every member hash (rows of identical texts share a hash). A member
    row repeats once per band its bucket's rows share: one of each is kept."""
    is_member = pc.is_valid(t["bucket"])
    mem, sigs = t.filter(is_member), t.filter(pc.invert(is_member)).sort_by("kh")
    u = np.unique(np.stack([mem["bucket"].to_numpy(), mem["kh"].to_numpy()], 1), axis=0).reshape(-1, 2)
    mb, mk = pa.array(u[:, 0]), u[:, 1]
    sk = sigs["kh"].to_numpy()
    lo, hi = np.searchsorted(sk, mk, "left"), np.searchsorted(sk, mk, "right")
    take_mem = np.repeat(np.arange(len(mk)), hi - lo)
    take_sig = np.arange(int((hi - lo).sum())) - np.repeat(np.cumsum(hi - lo) - (hi - lo), hi - lo) + np.repeat(lo, hi - lo)
    return pa.table({"bucket": mb.take(take_mem), "key": sigs["key"].take(take_sig),
                     "sig": sigs["sig"].take(take_sig)})


def _verify(t: pa.Table, threshold: float, num_perm: int, max_exact: int) -> pa.Table:
    t = t.sort_by([("bucket", "ascending"), ("key", "ascending")])
    roots, peeled = minhash.bucket_roots(sig_matrix(t["sig"], num_perm), _runs(t["bucket"].to_numpy()),
                                         threshold, max_exact)
    sel = np.flatnonzero(roots != np.arange(t.num_rows))
    a, b = _contract(t["key"].take(sel), t["key"].take(roots[sel]))
    return _with_stats(a, b, peeled=peeled, links=len(a))


def _contract(a, b):
    """Links of a block -> star links (key, smallest key of its component among these links)."""
    if len(a) == 0:
        return a, b
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    (ca, cb), vals = _codes(a, b)
    n = len(vals)
    _, comp = connected_components(coo_matrix((np.ones(len(ca), bool), (ca, cb)), shape=(n, n)), directed=False)
    root = np.full(comp.max() + 1, n)
    np.minimum.at(root, comp, np.arange(n))
    nodes = np.flatnonzero(root[comp] != np.arange(n))
    return vals.take(nodes), vals.take(root[comp][nodes])


# ---- edge tables: (a, b) rows plus one stats row per block --------------------------------------

def _with_stats(a, b, **stats) -> pa.Table:
    """Edge rows (a, b) plus one row with a = b = null that carries the block's stats."""
    cols = {"a": pa.concat_arrays([_array(a), pa.nulls(1, pa.string())]),
            "b": pa.concat_arrays([_array(b), pa.nulls(1, pa.string())])}
    for k, v in stats.items():
        cols[k] = pa.array(np.r_[np.zeros(len(a), np.int64), v])
    return pa.table(cols)


def _stats_rows(t: pa.Table) -> pa.Table:
    return t.filter(pc.is_null(t["a"])).drop_columns(["a", "b"])


def _stats(ds) -> dict:
    """Sum the stats rows of a materialized edge dataset (one small row per block)."""
    rows = each_block(ds, _stats_rows).take_all()
    return {k: int(sum(r[k] for r in rows)) for k in (rows[0] if rows else {})}


def _edges(ds):
    return ds.filter(expr=col("a").is_not_null()).select_columns(["a", "b"])


# ---- connected components: large-star / small-star ----------------------------------------------

def _directed(t: pa.Table, both: bool) -> pa.Table:
    """Edges as directed (u, v) rows: both directions, or larger -> smaller."""
    t = t.filter(pc.not_equal(t["a"], t["b"]))  # also drops the stats rows
    a, b = _array(t["a"]), _array(t["b"])
    if both:
        return pa.table({"u": pa.concat_arrays([a, b]), "v": pa.concat_arrays([b, a])})
    return pa.table({"u": _array(pc.max_element_wise(a, b)), "v": _array(pc.min_element_wise(a, b))})


def _grouped(t: pa.Table):
    """Distinct directed edges as sorted int codes (u, v), run starts of u, and the code table."""
    (u, v), vals = _codes(t["u"], t["v"])
    o = np.lexsort((v, u))
    u, v = u[o], v[o]
    new = np.ones(len(u), bool)
    new[1:] = (u[1:] != u[:-1]) | (v[1:] != v[:-1])
    u, v = u[new], v[new]
    return u, v, _runs(u), vals


def _large_star(t: pa.Table) -> pa.Table:
    """Link every larger neighbour of u to the smallest of u's closed neighbourhood; count the nodes
    that are neither a centre (all neighbours larger) nor a leaf (one, smaller neighbour)."""
    u, v, starts, vals = _grouped(t)
    size = np.diff(starts)
    gu, gmin = u[starts[:-1]], v[starts[:-1]]  # v is sorted within a group: the first is the smallest
    m = np.repeat(np.minimum(gu, gmin), size)
    sel = v > u
    star = (gmin > gu) | ((size == 1) & (gmin < gu))
    a, b = _unique_pairs(v[sel], m[sel])
    return _with_stats(vals.take(a), vals.take(b), bad=int((~star).sum()))


def _small_star(t: pa.Table) -> pa.Table:
    """Link u and its smaller neighbours to the smallest of them."""
    u, v, starts, vals = _grouped(t)
    size = np.diff(starts)
    m = np.repeat(v[starts[:-1]], size)
    a, b = _unique_pairs(np.concatenate([u[starts[:-1]], v[v != m]]), np.concatenate([v[starts[:-1]], m[v != m]]))
    return _with_stats(vals.take(a), vals.take(b))


def _unique_pairs(a: np.ndarray, b: np.ndarray):
    if not len(a):
        return a, b
    p = np.unique(np.stack([a, b], 1), axis=0)
    return p[:, 0], p[:, 1]


def connected_components(edges, partitions: int | None = None):
    """Links (a, b) -> (dataset of (a = key, b = smallest key of its component), rounds): one row per
    key that is not the smallest of its component. A round is a large-star then a small-star step.
    When the large-star step found every node a centre or a leaf, its input was already stars and
    its output is those stars (each leaf linked to its centre): the small-star step is skipped."""
    edges = edges.materialize()
    p = partitions or _partitions(edges)
    for rounds in range(1, _CC_MAX_ROUNDS + 1):
        large = by_key(each_block(edges, _directed, both=True), "u", _large_star, p).materialize()
        if _stats(large).get("bad", 0) == 0:
            return _edges(large), rounds
        edges = by_key(each_block(large, _directed, both=False), "u", _small_star, p).materialize()
    raise RuntimeError("connected components did not converge")


# ---- near dedup: the pipeline -------------------------------------------------------------------

def _key_hash(h) -> np.ndarray:
    """uint64 of the first 8 bytes (big endian) of the `_h` text hashes."""
    arr = pa.chunked_array(h).combine_chunks() if not isinstance(h, pa.Array) else h
    raw = np.frombuffer(arr.buffers()[1], np.uint8, len(arr) * 16, arr.offset * 16)
    return raw.reshape(-1, 16)[:, :8].copy().view(">u8").ravel().astype(np.uint64)


def _label_block(t: pa.Table) -> pa.Table:
    """Duplicate labels sorted by key hash, with the id of the component's kept row."""
    kh = np.array([int(k[-16:], 16) for k in t["a"].to_pylist()], np.uint64)
    o = np.argsort(kh, kind="stable")
    dup = pa.array([r.split("\x00", 1)[0] for r in t["b"].to_pylist()], pa.string())
    return pa.table({"kh": kh[o], "key": t["a"].take(o), "dup": dup.take(o)})


def _mark_near(t: pa.Table, label_refs: list) -> pa.Table:
    """Add `_dup`: '' for kept rows, else the id of the kept row of the row's component."""
    kh, keys = _key_hash(t["_h"]), t["_key"].to_pylist()
    dup = [""] * t.num_rows
    for labels in ray.get(list(label_refs)):
        if not labels.num_rows:
            continue
        lk = labels["kh"].to_numpy()
        pos = np.minimum(np.searchsorted(lk, kh), len(lk) - 1)
        lkeys, ldup = labels["key"], labels["dup"]
        for i in np.flatnonzero(lk[pos] == kh):
            j = int(pos[i])
            while j < len(lk) and lk[j] == kh[i]:  # equal text hashes: compare the whole key
                if lkeys[j].as_py() == keys[i]:
                    dup[i] = ldup[j].as_py()
                j += 1
    return t.append_column("_dup", pa.array(dup, pa.string()))


def near_dedup(ds, cfg: MinHashConfig, columns: list[str], partitions: int | None = None):
    """(kept, duplicates, stats) of a dataset with `_h`/`_key`; duplicates carry `_dup`."""
    t0, secs = time.time(), {}
    ds = spread(budgeted(ds, False))
    bands, rows = minhash.lsh_params(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows, cfg.fn_weight)
    sigs = each_block(ds, _sign, cfg.batch_size, columns=columns, cfg=cfg, bands=bands, rows=rows,
                      scheme=minhash.default_scheme()).materialize()
    n = sigs.count()
    stats = {"bands": bands, "rows": rows, "signed_rows": n}
    secs["signatures"], t0 = time.time() - t0, time.time()
    p = partitions or max(2, min(256, math.ceil(n * bands * 48 / (64 << 20))))
    sigs = budgeted(sigs, True)
    members = by_key(each_block(sigs, _explode_bands), "bkey", _buckets, p)
    joined = by_key(members.union(each_block(sigs, _sig_rows)), "kh", _attach_sigs, partitions or _partitions(sigs))
    links = by_key(joined, "bucket", _verify, p, threshold=cfg.threshold if cfg.verify else 0.0,
                   num_perm=cfg.num_perm, max_exact=cfg.max_exact_bucket).materialize()
    got = _stats(links)
    stats.update(buckets_peeled=got.get("peeled", 0), links=got.get("links", 0))
    del sigs
    secs["buckets"], t0 = time.time() - t0, time.time()
    label_refs, stats["cc_rounds"] = [], 0
    if stats["links"]:
        labels, stats["cc_rounds"] = connected_components(budgeted(_edges(links), False), partitions)
        label_refs = each_block(labels, _label_block).materialize().to_arrow_refs()
    secs["components"], t0 = time.time() - t0, time.time()
    marked = budgeted(each_block(ds, _mark_near, label_refs=label_refs).materialize(), True)  # callers shuffle it
    secs["split"] = time.time() - t0
    stats["seconds"] = {k: round(v, 2) for k, v in secs.items()}
    return marked.filter(expr=col("_dup") == "").drop_columns(["_dup"]), marked.filter(expr=col("_dup") != ""), stats
