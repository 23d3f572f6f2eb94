"""Compiled (numba) MinHash signatures, equal to `minhash.signatures_numpy` and to datasketch's.

Why: the numpy path makes one Python `hashlib.sha1` call and one shingle `bytes` object per
shingle, then 128 passes over all shingles of a batch; at ~100 shingles a row that is most of
near dedup's time. Here one compiled loop takes the normalised texts as one UTF-8 buffer, finds
the shingles as byte ranges inside it (a word n-gram of a normalised text is exactly the slice
from its first word to its last: words are joined by one space), hashes each range with SHA-1
(first 4 digest bytes, little endian: datasketch's sha1_hash32) and folds it into the text's
signature with the num_perm permutations, without leaving the loop.
"""
from __future__ import annotations

import numpy as np
from numba import njit

M32 = np.uint64(0xFFFFFFFF)
_MERSENNE = np.uint64((1 << 61) - 1)


@njit(cache=True, inline="always")
def _rotl(x, n):
    return ((x << np.uint64(n)) | (x >> np.uint64(32 - n))) & M32


@njit(cache=True, inline="always")
def _sha1_hash32(buf, start, end, w, block):
    """datasketch.hashfunc.sha1_hash32(buf[start:end]): SHA-1 (FIPS 180-4), first word byte-swapped."""
    n = end - start
    h0, h1, h2 = np.uint64(0x67452301), np.uint64(0xEFCDAB89), np.uint64(0x98BADCFE)
    h3, h4 = np.uint64(0x10325476), np.uint64(0xC3D2E1F0)
    nblocks = (n + 8) // 64 + 1  # message + 0x80 + 8 length bytes, rounded up to 64
    for blk in range(nblocks):
        lo = blk * 64  # this block of the padded message, in `block`
        for p in range(64):
            q = lo + p
            block[p] = buf[start + q] if q < n else (0x80 if q == n else 0)
        if blk == nblocks - 1:  # 64-bit big-endian bit length (< 2^32 here)
            bits = n * 8
            for j in range(4):
                block[63 - j] = (bits >> (8 * j)) & 0xFF
        for i in range(16):
            w[i] = (np.uint64(block[4 * i]) << np.uint64(24)) | (np.uint64(block[4 * i + 1]) << np.uint64(16)) \
                | (np.uint64(block[4 * i + 2]) << np.uint64(8)) | np.uint64(block[4 * i + 3])
        for i in range(16, 80):
            w[i] = _rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1)
        a, b, c, d, e = h0, h1, h2, h3, h4
        for i in range(20):
            t = (_rotl(a, 5) + ((b & c) | ((b ^ M32) & d)) + e + np.uint64(0x5A827999) + w[i]) & M32
            e, d, c, b, a = d, c, _rotl(b, 30), a, t
        for i in range(20, 40):
            t = (_rotl(a, 5) + (b ^ c ^ d) + e + np.uint64(0x6ED9EBA1) + w[i]) & M32
            e, d, c, b, a = d, c, _rotl(b, 30), a, t
        for i in range(40, 60):
            t = (_rotl(a, 5) + ((b & c) | (b & d) | (c & d)) + e + np.uint64(0x8F1BBCDC) + w[i]) & M32
            e, d, c, b, a = d, c, _rotl(b, 30), a, t
        for i in range(60, 80):
            t = (_rotl(a, 5) + (b ^ c ^ d) + e + np.uint64(0xCA62C1D6) + w[i]) & M32
            e, d, c, b, a = d, c, _rotl(b, 30), a, t
        h0, h1 = (h0 + a) & M32, (h1 + b) & M32
        h2, h3, h4 = (h2 + c) & M32, (h3 + d) & M32, (h4 + e) & M32
    # the first 4 digest bytes are h0 big endian; datasketch reads them little endian
    return ((h0 & np.uint64(0xFF)) << np.uint64(24)) | ((h0 & np.uint64(0xFF00)) << np.uint64(8)) \
        | ((h0 >> np.uint64(8)) & np.uint64(0xFF00)) | (h0 >> np.uint64(24))


@njit(cache=True, inline="always")
def _fmix32(h):
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & M32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & M32
    return h ^ (h >> np.uint64(16))


@njit(cache=True, inline="always")
def _fold(out, row, hv, a, b, legacy):
    if legacy:  # ((a * h + b) mod 2^64) mod (2^61 - 1), low 32 bits, as datasketch < 2.0
        for k in range(a.shape[0]):
            v = ((a[k] * hv + b[k]) % _MERSENNE) & M32
            if v < out[row, k]:
                out[row, k] = v
    else:  # affine32: a * fmix32(h) + b mod 2^32
        hv = _fmix32(hv)
        for k in range(a.shape[0]):
            v = (a[k] * hv + b[k]) & M32
            if v < out[row, k]:
                out[row, k] = v


@njit(cache=True)
def signatures(buf, offsets, n, word, a, b, legacy):
    """(texts, num_perm) uint32 signatures of texts buf[offsets[i]:offsets[i+1]] (normalised UTF-8)."""
    m = offsets.shape[0] - 1
    out = np.full((m, a.shape[0]), 0xFFFFFFFF, np.uint64)
    w, block = np.empty(80, np.uint64), np.empty(64, np.uint8)
    starts = np.empty(offsets[-1] - offsets[0] + 1, np.int64)  # unit starts of one text
    for row in range(m):
        lo, hi = offsets[row], offsets[row + 1]
        if hi == lo:
            continue  # no shingles: datasketch's empty signature
        units = 0  # words (after each space) or characters (UTF-8 lead bytes)
        for p in range(lo, hi):
            if (p == lo or buf[p - 1] == 32) if word else (buf[p] & 0xC0) != 0x80:
                starts[units] = p
                units += 1
        if units <= n:  # shorter than one shingle: the whole text is the shingle
            _fold(out, row, _sha1_hash32(buf, lo, hi, w, block), a, b, legacy)
            continue
        starts[units] = hi + 1 if word else hi  # a sentinel: the end of the last unit (+ its space)
        for s in range(units - n + 1):
            end = starts[s + n] - 1 if word else starts[s + n]
            _fold(out, row, _sha1_hash32(buf, starts[s], end, w, block), a, b, legacy)
    return out.astype(np.uint32)


@njit(cache=True)
def normalize_ascii(buf, offsets, table, delete):
    """minhash.normalize of ASCII texts packed in buf (text i = buf[offsets[i]:offsets[i+1]]):
    bytes mapped through `table` (lower case; whitespace -> space), bytes with delete[c] dropped,
    runs of spaces collapsed to one, none at either end. Returns (out, out_offsets)."""
    out = np.empty(len(buf), np.uint8)
    out_off = np.zeros(len(offsets), np.int64)
    j = 0
    for i in range(len(offsets) - 1):
        start, pending = j, False
        for k in range(offsets[i], offsets[i + 1]):
            c = buf[k]
            if delete[c]:
                continue
            c = table[c]
            if c == 32:
                pending = j > start  # a space only between two kept characters
                continue
            if pending:
                out[j] = 32
                j += 1
                pending = False
            out[j] = c
            j += 1
        out_off[i + 1] = j
    return out[:j], out_off
