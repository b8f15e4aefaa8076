"""Near-duplicate groups: takes decoded radiographs, makes groups of perceptually equal ones (pHash, union-find)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from cxr.errors import ConfigError, DataError
from cxr.imaging.decode import decode_gray

HASH_SIZE = 16  # imagehash.phash: the 16x16 lowest DCT frequencies of a 64x64 thumbnail, one bit each
HASH_BITS = HASH_SIZE * HASH_SIZE
HASH_WORDS = HASH_BITS // 64
HASH_NAME = f"imagehash.phash/{HASH_BITS}"
DEFAULT_THRESHOLD = (
    24  # bits (of 256) two copies of one radiograph may differ in (benchmarks/near_duplicates.md)
)
MAX_THRESHOLD = 64  # above this, grouping reaches into the distances of unrelated radiographs
BLOCK = 256  # rows compared per step

_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass(frozen=True)
class NearDuplicates:
    """``groups``: connected components (2+ indices, sorted) of the ``pairs`` (i < j, distance) graph."""

    threshold: int
    groups: tuple[tuple[int, ...], ...]
    pairs: tuple[tuple[int, int, int], ...]


def check_threshold(threshold: int | None) -> None:
    """Refuse a threshold that is not None (grouping off) or an integer from 1 to ``MAX_THRESHOLD``."""
    if threshold is None:
        return
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | np.integer)
        or not (1 <= threshold <= MAX_THRESHOLD)
    ):
        raise ConfigError(
            f"near-duplicate threshold {threshold!r} must be an integer from 1 to {MAX_THRESHOLD} "
            f"(bits of the {HASH_BITS}-bit perceptual hash that may differ)",
            hint=f"the default is {DEFAULT_THRESHOLD}; to turn grouping off use None "
            "(`cxr data split --no-near-dups`)",
        )


def require_imagehash() -> ModuleType:
    """The ``imagehash`` module, or a ``DataError`` that says how to install it or turn grouping off."""
    try:
        import imagehash
    except ImportError as e:
        raise DataError(
            "near-duplicate grouping needs the imagehash package, which is not installed",
            hint="pip install imagehash (or pip install -e '.[train]'); or skip grouping with "
            "`cxr data split --no-near-dups` / SplitConfig(near_duplicate_threshold=None)",
        ) from e
    return imagehash


def perceptual_hash(gray: np.ndarray) -> np.ndarray:
    """The pHash of a uint8 [H, W] image as ``HASH_WORDS`` uint64 words (bit order: imagehash's, row-major)."""
    from PIL import Image

    imagehash = require_imagehash()
    bits = np.asarray(imagehash.phash(Image.fromarray(np.asarray(gray, dtype=np.uint8)), HASH_SIZE).hash)
    return np.packbits(bits.reshape(-1).astype(np.uint8)).view(">u8").astype(np.uint64)


def hash_file(path: Path | str) -> np.ndarray:
    """Decode ``path`` with the project's decoder (``decode_gray``) and hash it; ``DecodeError`` on failure."""
    return perceptual_hash(decode_gray(path))


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element (numpy >= 2 has ``bitwise_count``; older numpy counts bytes)."""
    count: Callable[[np.ndarray], np.ndarray] | None = getattr(np, "bitwise_count", None)
    x = np.ascontiguousarray(x, dtype=np.uint64)
    if count is not None:
        return count(x)
    return _BYTE_POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between hash rows: a [m, W] and b [n, W] uint64 -> [m, n] uint16."""
    a, b = np.atleast_2d(a).astype(np.uint64), np.atleast_2d(b).astype(np.uint64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"hashes of {a.shape[1]} and {b.shape[1]} words cannot be compared")
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.uint16)
    for w in range(a.shape[1]):
        out += popcount(a[:, w, None] ^ b[None, :, w])
    return out


def close_pairs(hashes: np.ndarray, threshold: int, block: int = BLOCK) -> np.ndarray:
    """All (i, j, distance) with i < j and distance <= threshold, int64 [k, 3] sorted by (i, j); block-wise."""
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    found: list[np.ndarray] = []
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        d = hamming(h[i0:i1], h[i0:])
        d[np.tril_indices(i1 - i0, m=n - i0)] = np.iinfo(np.uint16).max  # j <= i: not a pair
        ii, jj = np.nonzero(d <= threshold)
        if len(ii):
            found.append(np.stack([ii + i0, jj + i0, d[ii, jj].astype(np.int64)], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 3), dtype=np.int64)


def connected_groups(n: int, pairs: Sequence[Sequence[Any]] | np.ndarray) -> tuple[tuple[int, ...], ...]:
    """Union-find over ``n`` items joined by ``pairs`` (i, j, ...): components of 2+ items, sorted, by first index."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pair in pairs:
        ri, rj = find(int(pair[0])), find(int(pair[1]))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = {}
    for x in range(n):
        members.setdefault(find(x), []).append(x)
    return tuple(tuple(m) for m in members.values() if len(m) > 1)


def find_near_duplicates(hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> NearDuplicates:
    """Group hashes (rows of ``HASH_WORDS`` uint64) that are within ``threshold`` bits, transitively."""
    check_threshold(threshold)
    h = np.asarray(hashes, dtype=np.uint64).reshape(-1, HASH_WORDS)
    pairs = close_pairs(h, threshold)
    groups = connected_groups(len(h), pairs)
    return NearDuplicates(threshold, groups, tuple((int(i), int(j), int(d)) for i, j, d in pairs))


def group_paths(
    paths: Sequence[str], hashes: Sequence[np.ndarray], threshold: int = DEFAULT_THRESHOLD
) -> tuple[tuple[str, ...], ...]:
    """Near-duplicate groups of ``paths`` (one hash each) as sorted path tuples, ordered by first path."""
    if len(paths) != len(hashes):
        raise ValueError(f"{len(paths)} paths but {len(hashes)} hashes")
    if not paths:
        return ()
    found = find_near_duplicates(np.stack([np.asarray(h, dtype=np.uint64) for h in hashes]), threshold)
    return tuple(sorted(tuple(sorted(paths[i] for i in g)) for g in found.groups))
