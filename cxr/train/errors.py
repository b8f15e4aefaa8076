"""Errors of the training stage: what went wrong while training or loading a base model, and the fix."""

from __future__ import annotations

from cxr.errors import CxrError, ModelError


class TrainError(CxrError):
    """Training cannot go on: weights unavailable, too many unreadable images, out of memory, bad resume."""


class CheckpointError(TrainError, ModelError):
    """A checkpoint is missing, incomplete, tampered with, or written by another checkpoint format."""
