"""Exact and near-duplicate detection (rust/SPEC.md, "Dedup"); mirrors rust/src/dedup.rs.

numpy uint64 arithmetic wraps modulo 2**64, which is what the hash functions specify.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np

from components.processing.config import DedupConfig
from components.processing.signals import words

MASK64 = (1 << 64) - 1


def mix64(z):
    """splitmix64's finalizer, on a Python int or a uint64 array."""
    if isinstance(z, int):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@lru_cache(maxsize=1 << 18)
def token_hash(token: str) -> int:
    """FNV-1a 64 over the ASCII-lowercased UTF-8 bytes."""
    h = 0xCBF29CE484222325
    for b in token.encode("utf-8").lower():
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def rotl23(x: np.ndarray) -> np.ndarray:
    return (x << np.uint64(23)) | (x >> np.uint64(41))


def shingles(text: str, k: int) -> np.ndarray:
    """The set: sorted distinct h >> 32 (uint32) of the word k-shingle hashes h (one shingle of
    all words if fewer than k), h = mix64 of the token hashes combined by x = rotl(x, 23) ^ t."""
    th = np.array([token_hash(w) for w in words(text)], dtype=np.uint64)
    if th.size == 0:
        return np.zeros(0, dtype=np.uint32)
    w = min(k, th.size)
    n = th.size - w + 1
    x = np.zeros(n, dtype=np.uint64)
    for j in range(w):
        x = rotl23(x) ^ th[j:j + n]
    return np.unique((mix64(x) >> np.uint64(32)).astype(np.uint32))


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """a_i (odd), b_i: the low 32 bits of a splitmix64 stream, drawn a_0, b_0, a_1, b_1, ..."""
    state = seed
    draws = []
    for _ in range(2 * num_perm):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        draws.append(mix64(state) & 0xFFFFFFFF)
    a = np.array([d | 1 for d in draws[0::2]], dtype=np.uint32)
    b = np.array(draws[1::2], dtype=np.uint32)
    return a, b


def signature(shingle_set: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min over the set's x of (a * x + b) mod 2**32 (uint32 arithmetic wraps)."""
    if shingle_set.size == 0:
        return np.full(a.size, 0xFFFFFFFF, dtype=np.uint32)
    x = shingle_set[:, None]
    return (a[None, :] * x + b[None, :]).min(axis=0)


def band_keys(sigs: np.ndarray, bands: int) -> np.ndarray:
    """(texts, bands) keys: per band, key = mix64(key ^ v) folded over the band's values from 0."""
    rows = sigs.shape[1] // bands
    keys = np.zeros((sigs.shape[0], bands), dtype=np.uint64)
    for band in range(bands):
        for col in range(band * rows, (band + 1) * rows):
            keys[:, band] = mix64(keys[:, band] ^ sigs[:, col].astype(np.uint64))
    return keys


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - inter
    return inter / union if union else 0.0


def exact_representatives(texts: list[str]) -> list[int]:
    first: dict[str, int] = {}
    return [first.setdefault(t, i) for i, t in enumerate(texts)]


def _find(parent: list[int], x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def near_representatives(texts: list[str], cfg: DedupConfig) -> list[int]:
    """Union-find components of LSH candidate pairs whose exact shingle Jaccard reaches the
    threshold; each text maps to the smallest index in its component."""
    a, b = permutations(cfg.num_perm, cfg.seed)
    sets = [shingles(t, cfg.shingle_size) for t in texts]
    eligible = [i for i, s in enumerate(sets) if s.size]
    parent = list(range(len(texts)))
    if not eligible:
        return parent
    sigs = np.stack([signature(sets[i], a, b) for i in eligible])
    keys = band_keys(sigs, cfg.bands)
    pairs: set[tuple[int, int]] = set()
    for band in range(cfg.bands):
        buckets: dict[int, list[int]] = {}
        for i, key in zip(eligible, keys[:, band].tolist()):
            buckets.setdefault(key, []).append(i)
        for members in buckets.values():
            pairs.update(combinations(members, 2))
    for i, j in sorted(pairs):
        if jaccard(sets[i], sets[j]) >= cfg.threshold:
            ri, rj = _find(parent, i), _find(parent, j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    return [_find(parent, i) for i in range(len(texts))]
