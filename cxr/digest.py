"""Takes files; makes their SHA-256 (the identity results, caches and verification records carry)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of one file (``sha256sum``)."""
    return files_sha256([path], chunk)


def files_sha256(paths: Iterable[Path], chunk: int = 1 << 20) -> str:
    """One SHA-256 over the files' bytes, one after the other (a model and its external data, say)."""
    h = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()
