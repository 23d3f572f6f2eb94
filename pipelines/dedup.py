"""Exact and near-duplicate removal on Ray Data: datasets in, datasets out.

Every grouping step is "hash-shuffle by a key, then one vectorised function per block" (`by_key`):
Ray's hash shuffle puts all rows of a key into one block, and each block function sorts what it
gets, so no result depends on how the input was split into blocks. The driver only sees counts,
per-block stats and object refs, never rows or signatures.

Order: rows carry `_h` (16-byte blake2b of the normalised text columns) and `_key` = id + NUL +
hex(_h). "Smallest id" means smallest `_key`: id first, ties broken by the text hash (and, among
rows equal in both, by a hash of the whole row), so the choice is total and deterministic.

Exact dedup: shuffle rows by `_h`; the smallest key of each group is kept.

Near dedup (MinHash LSH) over rows whose normalised text is non-empty:
 1. signatures and band keys per row (map_batches, pipelines.minhash);
 2. buckets: (band key, row key) rows shuffled by band key; buckets of >= 2 rows are candidates;
 3. verification (cfg.verify): bucket members get their signatures (a shuffle join by row key),
    then each bucket is split into the connected components of "estimated Jaccard >= threshold"
    among its members, identical signatures collapsed first. Each member is linked to the smallest
    key of its in-bucket component: a star, never a pair list, and the union of these stars has
    exactly the components of all-pairs verification of the candidates. (Linking members to the
    bucket's smallest key and verifying only that pair would split such components.) A bucket with
    more than `max_exact_bucket` distinct signatures is verified by star peeling instead: the
    smallest unassigned key anchors everything that verifies against it, for at most
    PEEL_ANCHORS anchors; the stats count such buckets. Without verification every member is
    linked to its bucket's smallest key, which keeps the components of all candidate pairs;
 4. connected components of the links: large-star / small-star rounds (Kiveris et al. 2014), each
    a shuffle of edge rows, until every component is a star around its smallest key;
 5. that smallest key is kept, the rest are rejected with duplicate_of = its id (the duplicate
    labels are broadcast to a map over the rows as object refs, sorted by key hash per block).
"""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.context import ShuffleStrategy
from ray.data.expressions import col

from pipelines import minhash
from pipelines.config import MinHashConfig

PEEL_ANCHORS = 64
_CC_MAX_ROUNDS = 64


def _partitions(ds, target_bytes: int = 64 << 20) -> int:
    """Shuffle partitions for a materialized dataset: ~64 MiB each (only speed depends on it)."""
    return max(2, min(256, math.ceil((ds.size_bytes() or 0) / target_bytes)))


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


def _codes(*arrays):
    """Order-preserving int codes of string columns, and the sorted distinct values."""
    uniq = pc.unique(pa.chunked_array([c for a in arrays for c in pa.chunked_array(a).chunks],
                                      type=pa.string()))
    uniq = uniq.take(pc.array_sort_indices(uniq))
    return [pc.index_in(a, value_set=uniq).to_numpy(zero_copy_only=False).astype(np.int64)
            for a in arrays], uniq


def sig_matrix(col, num_perm: int) -> np.ndarray:
    """A fixed_size_binary signature column as a (rows, num_perm) uint32 matrix."""
    arr = pa.chunked_array(col).combine_chunks() if not isinstance(col, pa.Array) else col
    if len(arr) == 0:
        return np.zeros((0, num_perm), np.uint32)
    width = 4 * num_perm
    return np.frombuffer(arr.buffers()[1], np.uint32, len(arr) * num_perm,
                         arr.offset * width).reshape(-1, num_perm)


# ---- row keys ---------------------------------------------------------------------------------

def add_keys(t: pa.Table, columns: list[str]) -> pa.Table:
    """Append `_h` and `_key` (see module doc) to a batch that has `id` and the text columns."""
    texts = zip(*(t[c].to_pylist() for c in columns))
    hs = [hashlib.blake2b("\x1f".join(minhash.normalize(v or "") for v in vals).encode(),
                          digest_size=16).digest() for vals in texts]
    keys = [f"{i}\x00{h.hex()}" for i, h in zip(t["id"].to_pylist(), hs)]
    return t.append_column("_h", pa.array(hs, pa.binary(16))).append_column("_key", pa.array(keys, pa.string()))


def _row_hash(row: dict) -> str:
    return hashlib.blake2b(json.dumps(row, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


# ---- exact dedup ------------------------------------------------------------------------------

def _exact_block(t: pa.Table) -> pa.Table:
    t = t.sort_by([("_h", "ascending"), ("_key", "ascending")])
    n = t.num_rows
    if n > 1:
        ties = np.flatnonzero(pc.equal(t["_key"][1:], t["_key"][:-1]).to_numpy(zero_copy_only=False))
        if len(ties):  # identical id and text: order by a hash of the whole row
            tie = np.full(n, "", object)
            idx = np.union1d(ties, ties + 1)
            for i, r in zip(idx, t.take(idx).drop_columns(["_h", "_key"]).to_pylist()):
                tie[i] = _row_hash(r)
            t = t.append_column("_tie", pa.array(tie, pa.string()))
            t = t.sort_by([("_h", "ascending"), ("_key", "ascending"), ("_tie", "ascending")]).drop_columns(["_tie"])
    starts = _runs(t["_h"])
    first = np.repeat(starts[:-1], np.diff(starts))
    dup = pc.if_else(pa.array(first == np.arange(n)), "", t["id"].take(first)) if n else pa.array([], pa.string())
    return t.append_column("_dup", dup)


def exact_dedup(ds, partitions: int | None = None):
    """(kept, duplicates) of a materialized dataset with `_h`/`_key`; duplicates carry `_dup`."""
    marked = by_key(ds, "_h", _exact_block, partitions or _partitions(ds)).materialize()
    kept = marked.filter(expr="_dup == ''").drop_columns(["_dup"])
    return kept, marked.filter(expr="_dup != ''")


# ---- near dedup: signatures and buckets ---------------------------------------------------------

def _sign(t: pa.Table, columns, cfg: MinHashConfig, bands: int, rows: int, scheme: str) -> pa.Table:
    docs = [minhash.normalize(" ".join(v or "" for v in vals)) for vals in zip(*(t[c].to_pylist() for c in columns))]
    keep = np.array([bool(d) for d in docs], bool)
    docs = [d for d in docs if d]
    sigs = minhash.signatures(docs, cfg.num_perm, cfg.seed, cfg.shingle, cfg.ngram, scheme, normalized=True)
    keys = minhash.band_keys(sigs, bands, rows)
    sig_col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * cfg.num_perm), len(docs),
                                                   [None, pa.py_buffer(sigs.tobytes())])
    return pa.table({"key": t["_key"].filter(pa.array(keep)), "sig": sig_col,
                     "bands": pa.FixedSizeListArray.from_arrays(pa.array(keys.ravel()), bands)})


def _explode_bands(t: pa.Table) -> pa.Table:
    bands = t["bands"].combine_chunks()
    per = bands.type.list_size
    return pa.table({"bkey": bands.flatten(), "key": pc.take(t["key"], np.repeat(np.arange(t.num_rows), per))})


def _buckets(t: pa.Table, members: bool, sig_type=None) -> pa.Table:
    """Buckets of >= 2 rows: their (bkey, key, null sig) rows, or star edges to the bucket's smallest key."""
    t = t.sort_by([("bkey", "ascending"), ("key", "ascending")])
    starts = _runs(t["bkey"])
    size = np.diff(starts)
    first = np.repeat(starts[:-1], size)
    in_big = np.repeat(size >= 2, size)
    if members:
        t = t.filter(pa.array(in_big))
        return t.append_column("sig", pa.nulls(t.num_rows, sig_type))
    sel = np.flatnonzero(in_big & (first != np.arange(t.num_rows)))
    return pa.table({"a": t["key"].take(sel), "b": t["key"].take(first[sel])})


def _sig_rows(t: pa.Table) -> pa.Table:
    return pa.table({"bkey": pa.nulls(t.num_rows, pa.int64()), "key": t["key"], "sig": t["sig"]})


def _attach_sigs(t: pa.Table, num_perm: int) -> pa.Table:
    """A block of member rows (bkey set) and signature rows (bkey null) of the same keys."""
    is_member = pc.is_valid(t["bkey"])
    mem, sigs = t.filter(is_member), t.filter(pc.invert(is_member))
    idx = pc.index_in(mem["key"], value_set=sigs["key"])
    return pa.table({"bkey": mem["bkey"], "key": mem["key"], "sig": sigs["sig"].take(idx)})


def _components_in_bucket(S: np.ndarray, threshold: float, max_exact: int) -> tuple[np.ndarray, bool]:
    """Component label (index of its first member) per row of a bucket's key-sorted signatures."""
    k, num_perm = S.shape
    S = np.ascontiguousarray(S)
    _, first_of, inv = np.unique(S.view(np.dtype((np.void, S.strides[0]))).ravel(),
                                 return_index=True, return_inverse=True)
    order = np.argsort(first_of)  # distinct signatures in key order
    U, rank = S[first_of[order]], np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    inv = rank[inv.ravel()]
    m = len(U)
    label = np.arange(m)
    if m > max_exact:  # star peeling, bounded
        label[:] = -1
        for _ in range(PEEL_ANCHORS):
            free = np.flatnonzero(label < 0)
            if not len(free):
                break
            a = free[0]
            ok = free[(U[free] == U[a]).sum(1) / num_perm >= threshold]
            label[ok] = a
        label = np.where(label < 0, np.arange(m), label)
    elif m > 1:
        from scipy.sparse.csgraph import connected_components

        adj = np.zeros((m, m), bool)
        for s in range(0, m, 64):
            adj[s:s + 64] = (U[s:s + 64, None, :] == U[None, :, :]).sum(-1) / num_perm >= threshold
        _, comp = connected_components(adj, directed=False)
        first = np.full(comp.max() + 1, m)
        np.minimum.at(first, comp, np.arange(m))
        label = first[comp]
    # back to member rows: a member's label is the first member row with that distinct signature
    return first_of[order][label][inv], m > max_exact


def _verify(t: pa.Table, threshold: float, num_perm: int, max_exact: int) -> pa.Table:
    t = t.sort_by([("bkey", "ascending"), ("key", "ascending")])
    S = sig_matrix(t["sig"], num_perm)
    starts = _runs(t["bkey"])
    size = np.diff(starts)
    a_idx, b_idx, peeled = [], [], 0
    pair = starts[:-1][size == 2]  # the common case, vectorised
    ok = (S[pair] == S[pair + 1]).sum(1) / num_perm >= threshold
    a_idx.append(pair[ok] + 1)
    b_idx.append(pair[ok])
    for s, k in zip(starts[:-1][size > 2], size[size > 2]):
        label, big = _components_in_bucket(S[s:s + k], threshold, max_exact)
        peeled += big
        sel = np.flatnonzero(label != np.arange(k))
        a_idx.append(s + sel)
        b_idx.append(s + label[sel])
    a, b = np.concatenate(a_idx).astype(np.int64), np.concatenate(b_idx).astype(np.int64)
    return _with_stats(t["key"].take(a), t["key"].take(b), peeled=peeled)


def _with_stats(a, b, **stats) -> pa.Table:
    """Edge rows (a, b) plus one row with a = b = null that carries the block's stats."""
    cols = {"a": pa.concat_arrays([pa.array(a, pa.string()), pa.nulls(1, pa.string())]),
            "b": pa.concat_arrays([pa.array(b, pa.string()), pa.nulls(1, pa.string())])}
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
    """Edge rows as directed (u, v) rows: both directions, or larger -> smaller."""
    t = t.filter(pc.not_equal(t["a"], t["b"]))
    if both:
        return pa.table({"u": pa.concat_arrays([t["a"].combine_chunks(), t["b"].combine_chunks()]),
                         "v": pa.concat_arrays([t["b"].combine_chunks(), t["a"].combine_chunks()])})
    return pa.table({"u": pc.max_element_wise(t["a"], t["b"]), "v": pc.min_element_wise(t["a"], t["b"])})


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
    """Link every larger neighbour of u to the smallest of u's closed neighbourhood."""
    u, v, starts, vals = _grouped(t)
    size = np.diff(starts)
    gu, gmin = u[starts[:-1]], v[starts[:-1]]  # v sorted within a group: first is the smallest
    m = np.repeat(np.minimum(gu, gmin), size)
    sel = v > u
    star = (gmin > gu) | ((size == 1) & (gmin < gu))  # u is a centre or a leaf
    a, b = _unique_pairs(v[sel], m[sel])
    return _with_stats(vals.take(a), vals.take(b), bad=int((~star).sum()))


def _small_star(t: pa.Table) -> pa.Table:
    """Link u and its smaller neighbours to the smallest of them."""
    u, v, starts, vals = _grouped(t)
    size = np.diff(starts)
    m = np.repeat(v[starts[:-1]], size)
    a = np.concatenate([u[starts[:-1]], v[v != m]])
    b = np.concatenate([v[starts[:-1]], m[v != m]])
    a, b = _unique_pairs(a, b)
    return _with_stats(vals.take(a), vals.take(b))


def _unique_pairs(a: np.ndarray, b: np.ndarray):
    if not len(a):
        return a, b
    p = np.unique(np.stack([a, b], 1), axis=0)
    return p[:, 0], p[:, 1]


def connected_components(edges, partitions: int | None = None):
    """Links (a, b) -> (materialized dataset of (a = key, b = smallest key of its component), rounds).

    One row per key that is not the smallest of its component."""
    rounds = 0
    while True:
        rounds += 1
        if rounds > _CC_MAX_ROUNDS:
            raise RuntimeError("connected components did not converge")
        p = partitions or _partitions(edges)
        both = each_block(edges, _directed, both=True)
        large = by_key(both, "u", _large_star, p).materialize()
        if _stats(large).get("bad", 0) == 0:
            return _edges(large).materialize(), rounds
        one = each_block(_edges(large), _directed, both=False)
        edges = _edges(by_key(one, "u", _small_star, p)).materialize()


# ---- near dedup: the pipeline -------------------------------------------------------------------

def _key_hash(h) -> np.ndarray:
    """uint64 of the first 8 bytes (big endian) of the `_h` text hashes."""
    arr = pa.chunked_array(h).combine_chunks() if not isinstance(h, pa.Array) else h
    raw = np.frombuffer(arr.buffers()[1], np.uint8, len(arr) * 16, arr.offset * 16)
    return raw.reshape(-1, 16)[:, :8].copy().view(">u8").ravel().astype(np.uint64)


def _label_block(t: pa.Table) -> pa.Table:
    """Duplicate labels sorted by key hash, with the id of the component's kept row."""
    keys = t["a"].to_pylist()
    kh = np.array([int(k[-32:-16], 16) for k in keys], np.uint64)
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
    ds = ds.materialize()
    bands, rows = minhash.lsh_params(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows)
    sigs = each_block(ds, _sign, cfg.batch_size, columns=columns, cfg=cfg, bands=bands, rows=rows,
                      scheme=minhash.default_scheme()).materialize()
    n = sigs.count()
    p = partitions or max(2, min(256, math.ceil(n * bands * 56 / (64 << 20))))
    band_rows = each_block(sigs, _explode_bands)
    stats = {"bands": bands, "rows": rows, "signed_rows": n}
    if cfg.verify:
        sig_type = pa.binary(4 * cfg.num_perm)
        members = by_key(band_rows, "bkey", _buckets, p, members=True, sig_type=sig_type)
        sig_rows = each_block(sigs, _sig_rows)
        joined = by_key(members.union(sig_rows), "key", _attach_sigs, partitions or _partitions(sigs),
                         num_perm=cfg.num_perm)
        links = by_key(joined, "bkey", _verify, p, threshold=cfg.threshold, num_perm=cfg.num_perm,
                        max_exact=cfg.max_exact_bucket).materialize()
        stats["buckets_peeled"] = _stats(links).get("peeled", 0)
    else:
        links = by_key(band_rows, "bkey", _buckets, p, members=False).materialize()
    del sigs
    links = _edges(links).materialize()
    stats["links"] = links.count()
    label_refs, stats["cc_rounds"] = [], 0
    if stats["links"]:
        labels, stats["cc_rounds"] = connected_components(links, partitions)
        labels = each_block(labels, _label_block).materialize()
        label_refs = labels.to_arrow_refs()
    marked = each_block(ds, _mark_near, label_refs=label_refs).materialize()
    kept = marked.filter(expr=col("_dup") == "").drop_columns(["_dup"])
    return kept, marked.filter(expr=col("_dup") != ""), stats
