"""Vectorised MinHash that gives exactly the signatures of `datasketch.MinHash(num_perm, seed)`.

datasketch hashes every shingle with `sha1_hash32` (the first 4 bytes of SHA-1, little endian)
and applies num_perm permutations drawn from `np.random.RandomState(seed)`:
  - "affine32" (datasketch >= 2.0, the default): h = fmix32(h); a * h + b mod 2^32, a odd;
  - "legacy" (datasketch < 2.0): ((a * h + b) mod 2^64) mod (2^61 - 1), truncated to 32 bits.
`signatures` runs one compiled loop over a batch (pipelines.minhash_jit: SHA-1, permutations and
minimum per shingle, no Python object per shingle). `signatures_numpy`, the fallback without
numba, makes the SHA-1 calls at C speed over a whole batch (map + join) and one numpy pass per
permutation over all shingles of the batch, followed by a segmented minimum per text. Tests
assert that both equal datasketch.

Shingles are taken from `normalize(text)` (casefold, punctuation removed, whitespace collapsed):
word or character n-grams joined by one space. A text shorter than n units is one shingle (the
whole text), so short texts are still compared. An empty text has no shingles: its signature is
datasketch's empty one (all max values), and near dedup leaves it out (nothing to compare; two
empty texts are exact duplicates, which exact dedup handles).
"""
from __future__ import annotations

import hashlib
import unicodedata
import sys
from functools import lru_cache
from operator import methodcaller

import numpy as np

MAX32 = np.uint32(0xFFFFFFFF)
_MERSENNE = np.uint64((1 << 61) - 1)
_PUNCT = dict.fromkeys(i for i in range(sys.maxunicode + 1)
                       if unicodedata.category(chr(i)).startswith("P"))
_digest = methodcaller("digest")

try:  # numba ships with vLLM; without it the numpy path gives the same signatures, slower
    from pipelines import minhash_jit as _jit
except ImportError:  # pragma: no cover
    _jit = None


def default_scheme() -> str:
    """The permutation scheme `datasketch.MinHash()` uses in the installed version."""
    from datasketch import MinHash

    return getattr(MinHash(num_perm=1), "scheme", "legacy")


# ASCII fast path of normalize, in C passes over bytes (str.translate with a dict looks every
# character up in Python, and split/join makes an object per word): upper case -> lower, every
# character str.split() treats as whitespace (\t\n\v\f\r, \x1c-\x1f) -> space, punctuation
# deleted; then runs of spaces collapse by replace() and the ends are stripped.
_ASCII_DELETE = bytes(c for c in range(128) if c in _PUNCT)
_DELETE_NP = np.array([c in _PUNCT for c in range(256)], np.bool_)
_ASCII_TABLE = bytes(c + 32 if 65 <= c <= 90 else 32 if chr(c).isspace() and c < 128 else c for c in range(256))

_ASCII_NP = np.frombuffer(_ASCII_TABLE, np.uint8)


def normalize(text: str) -> str:
    """Casefold, drop punctuation (Unicode category P*), collapse whitespace."""
    if text.isascii():  # the same result, ~5x faster
        b = text.encode().translate(_ASCII_TABLE, _ASCII_DELETE)
        while b"  " in b:
            b = b.replace(b"  ", b" ")
        return b.strip(b" ").decode()
    return " ".join(text.casefold().translate(_PUNCT).split())


def normalize_batch(texts: list[str]) -> list[str]:
    """[normalize(t) for t in texts], with the ASCII texts in one compiled pass when numba imports."""
    if _jit is None:
        return [normalize(t) for t in texts]
    out = [t if t.isascii() else normalize(t) for t in texts]
    asc = [i for i, t in enumerate(texts) if t.isascii()]
    if asc:
        data = [texts[i].encode() for i in asc]
        offsets = np.zeros(len(data) + 1, np.int64)
        np.cumsum([len(d) for d in data], out=offsets[1:])
        buf, off = _jit.normalize_ascii(np.frombuffer(b"".join(data), np.uint8), offsets, _ASCII_NP, _DELETE_NP)
        raw = buf.tobytes()
        for i, a, b in zip(asc, off[:-1].tolist(), off[1:].tolist()):
            out[i] = raw[a:b].decode()
    return out


def shingles(text: str, unit: str = "word", n: int = 3) -> list[bytes]:
    """UTF-8 shingles of an already normalised text (see module doc for short/empty texts)."""
    if not text:
        return []
    if unit == "word":
        words = text.encode().split(b" ")
        if len(words) <= n:
            return [b" ".join(words)]
        return list(map(b" ".join, zip(*(words[i:] for i in range(n)))))
    if len(text) <= n:
        return [text.encode()]
    return [text[i:i + n].encode() for i in range(len(text) - n + 1)]


def sha1_hash32(items: list[bytes]) -> np.ndarray:
    """datasketch.hashfunc.sha1_hash32 of every item, as a uint32 array."""
    if not items:
        return np.empty(0, np.uint32)
    raw = np.frombuffer(b"".join(map(_digest, map(hashlib.sha1, items))), np.uint8)
    return raw.reshape(-1, 20)[:, :4].copy().view("<u4").ravel().astype(np.uint32)


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) exactly as datasketch's MinHash._init_permutations draws them."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        ab = np.array([(gen.randint(1, _MERSENNE, dtype=np.uint64), gen.randint(0, _MERSENNE, dtype=np.uint64))
                       for _ in range(num_perm)], dtype=np.uint64).T
        return ab[0], ab[1]
    if scheme != "affine32":
        raise ValueError(f"unsupported MinHash scheme {scheme!r} (affine32 or legacy)")
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures(texts: list[str], num_perm: int = 128, seed: int = 1, unit: str = "word", n: int = 3,
               scheme: str | None = None, normalized: bool = False) -> np.ndarray:
    """MinHash signatures (len(texts), num_perm) uint32 of the texts' shingle sets: compiled
    (pipelines.minhash_jit, ~4x faster) when numba imports, else `signatures_numpy`."""
    scheme = scheme or default_scheme()
    if _jit is None:
        return signatures_numpy(texts, num_perm, seed, unit, n, scheme, normalized)
    if unit not in ("word", "char"):
        raise ValueError(f"unknown shingle unit {unit!r} (word or char)")
    a, b = permutations(num_perm, seed, scheme)
    data = [(t if normalized else normalize(t)).encode() for t in texts]
    offsets = np.zeros(len(data) + 1, np.int64)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    buf = np.frombuffer(b"".join(data), np.uint8)
    return _jit.signatures(buf, offsets, n, unit == "word", a.astype(np.uint64), b.astype(np.uint64),
                           scheme == "legacy")


def signatures_numpy(texts: list[str], num_perm: int = 128, seed: int = 1, unit: str = "word", n: int = 3,
                     scheme: str | None = None, normalized: bool = False) -> np.ndarray:
    """`signatures` with hashlib and one numpy pass per permutation (no numba needed)."""
    scheme = scheme or default_scheme()
    a, b = permutations(num_perm, seed, scheme)
    sh, counts = [], np.empty(len(texts), np.int64)
    for i, t in enumerate(texts):
        s = shingles(t if normalized else normalize(t), unit, n)
        counts[i] = len(s)
        sh.extend(s)
    out = np.full((len(texts), num_perm), MAX32, np.uint32)
    nonempty = counts > 0
    if not nonempty.any():
        return out
    h = sha1_hash32(sh)
    starts = (np.cumsum(counts) - counts)[nonempty]
    res = np.empty((num_perm, len(starts)), np.uint32)
    if scheme == "legacy":
        h64, tmp = h.astype(np.uint64), np.empty(len(h), np.uint64)
        for k in range(num_perm):
            np.multiply(h64, a[k], out=tmp)
            tmp += b[k]
            tmp %= _MERSENNE
            res[k] = np.minimum.reduceat(tmp & np.uint64(0xFFFFFFFF), starts).astype(np.uint32)
    else:
        h, tmp = _fmix32(h), np.empty(len(h), np.uint32)
        for k in range(num_perm):
            np.multiply(h, a[k], out=tmp)
            tmp += b[k]
            res[k] = np.minimum.reduceat(tmp, starts)
    out[nonempty] = res.T
    return out


def lsh_params(threshold: float, num_perm: int, bands: int | None = None,
               rows: int | None = None, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows): given ones, else datasketch MinHashLSH's optimum for
    weights=(1 - fn_weight, fn_weight) (false positive, false negative)."""
    if bands and rows:
        if bands * rows > num_perm:
            raise ValueError(f"bands * rows = {bands * rows} > num_perm = {num_perm}")
        return bands, rows
    if bands or rows:
        return (bands, num_perm // bands) if bands else (num_perm // rows, rows)
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 1.0 - fn_weight, fn_weight)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) int64 keys: a 64-bit mix of each band's `rows` values and the band index.

    Equal bands give equal keys; different bands collide with probability ~2^-64 per pair (a
    collision only makes a candidate, which verification then checks).
    """
    n = sigs.shape[0]
    keys = np.empty((n, bands), np.uint64)
    m1, m2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
    with np.errstate(over="ignore"):
        for i in range(bands):
            h = np.full(n, np.uint64(0x9E3779B97F4A7C15) * np.uint64(i + 1), np.uint64)
            for v in sigs[:, i * rows:(i + 1) * rows].T.astype(np.uint64):
                h = (h ^ v) * m1
                h ^= h >> np.uint64(31)
            h = (h ^ (h >> np.uint64(30))) * m2
            keys[:, i] = h ^ (h >> np.uint64(31))
    return keys.view(np.int64)


def estimated_jaccard(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """datasketch's MinHash.jaccard (share of equal values) along the last axis."""
    return (x == y).mean(axis=-1)


# ---- components of "estimated Jaccard >= threshold" inside LSH buckets ---------------------------

PEEL_ANCHORS = 64
_SMALL = 16  # buckets up to this size are verified all at once per size


def _similar(x: np.ndarray, y: np.ndarray, threshold: float) -> np.ndarray:
    return (x == y).sum(axis=-1) / x.shape[-1] >= threshold


def _small_buckets(S: np.ndarray, first: np.ndarray, k: int, threshold: float) -> np.ndarray:
    """Component roots (row index) of many buckets of k rows starting at `first`: (len(first), k)."""
    out = np.empty((len(first), k), np.int64)
    step = max(1, (1 << 24) // (k * k * S.shape[1]))
    for s in range(0, len(first), step):
        idx = first[s:s + step, None] + np.arange(k)
        M = S[idx]
        adj = _similar(M[:, :, None, :], M[:, None, :, :], threshold)  # (b, k, k), diagonal True
        lab = np.broadcast_to(np.arange(k), idx.shape)
        for _ in range(k - 1):  # min-label propagation; k - 1 steps reach across any component
            new = np.where(adj, lab[:, None, :], k).min(axis=2)
            if np.array_equal(new, lab):
                break
            lab = new
        out[s:s + step] = first[s:s + step, None] + lab
    return out


def _big_bucket(S: np.ndarray, threshold: float, max_exact: int) -> tuple[np.ndarray, bool]:
    """Component root (row index) per row of one bucket; identical signatures are collapsed first."""
    S = np.ascontiguousarray(S)
    _, first_of, inv = np.unique(S.view(np.dtype((np.void, S.strides[0]))).ravel(),
                                 return_index=True, return_inverse=True)
    order = np.argsort(first_of)  # distinct signatures in row (= key) order
    U, rank = S[first_of[order]], np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    m = len(U)
    label = np.arange(m)
    if m > max_exact:  # star peeling from the smallest unassigned row, at most PEEL_ANCHORS anchors
        label[:] = -1
        for _ in range(PEEL_ANCHORS):
            free = np.flatnonzero(label < 0)
            if not len(free):
                break
            label[free[_similar(U[free], U[free[0]], threshold)]] = free[0]
        label = np.where(label < 0, np.arange(m), label)
    elif m > 1:
        from scipy.sparse.csgraph import connected_components

        adj = np.zeros((m, m), bool)
        for s in range(0, m, 64):
            adj[s:s + 64] = _similar(U[s:s + 64, None, :], U[None, :, :], threshold)
        _, comp = connected_components(adj, directed=False)
        root = np.full(comp.max() + 1, m)
        np.minimum.at(root, comp, np.arange(m))
        label = root[comp]
    return first_of[order][label][rank[inv.ravel()]], m > max_exact


def bucket_roots(S: np.ndarray, starts: np.ndarray, threshold: float, max_exact: int):
    """For key-sorted rows S grouped into buckets at `starts` (plus the end): the root of each row,
    i.e. the first row of its component of "estimated Jaccard >= threshold" within its bucket,
    and the number of buckets verified by star peeling (more than max_exact distinct signatures)."""
    roots, peeled = np.arange(len(S)), 0
    sizes = np.diff(starts)
    if threshold <= 0:  # no verification: every row's root is its bucket's first row
        return np.repeat(starts[:-1], sizes), 0
    for k in np.unique(sizes[sizes > 1]):
        first = starts[:-1][sizes == k]
        if k <= _SMALL:
            roots[first[:, None] + np.arange(k)] = _small_buckets(S, first, int(k), threshold)
            continue
        for s in first:
            roots[s:s + k], big = _big_bucket(S[s:s + k], threshold, max_exact)
            roots[s:s + k] += s
            peeled += big
    return roots, peeled
