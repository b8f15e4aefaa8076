"""Exceptions that say what was given and how to fix it (the CLI exits with ``exit_code``; the API answers
4xx)."""

from __future__ import annotations

from pathlib import Path


class CxrError(Exception):
    """Base class: ``message`` says what was wrong, ``hint`` says what to do."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, path: Path | str | None = None) -> None:
        self.message = message
        self.hint = hint
        self.path = None if path is None else str(path)
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")

    @property
    def one_line(self) -> str:
        """``message (hint: hint)`` on one line: what a result row or a status field carries."""
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(CxrError, ValueError):
    """A configuration value or option is wrong (unknown key, wrong type, out of range)."""


class DataError(CxrError):
    """The data set, a manifest or a prediction file is missing, malformed or inconsistent."""


class DecodeError(DataError):
    """One image file cannot be decoded (corrupt, truncated, not an image, too large, multi-frame...)."""


class ModelError(CxrError):
    """A model file is missing, lacks cxr metadata, or does not fit what was asked of it."""


class ProviderError(ModelError):
    """An execution provider was asked for but is not usable (or silently fell back, with strict mode)."""


class VerificationError(CxrError):
    """An exported or fused graph does not reproduce its reference within tolerance."""

    exit_code = 1


class TrainError(CxrError):
    """Training cannot go on: weights unavailable, too many unreadable images, out of memory, bad resume."""


class CheckpointError(TrainError, ModelError):
    """A checkpoint is missing, incomplete, tampered with, or written by another checkpoint format."""


def first_line(e: BaseException, limit: int = 400) -> str:
    """The first line of a third-party exception's message (its type name when empty), for one-line reports."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]
