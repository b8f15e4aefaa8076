"""The trained members of a run directory: which folders, their checkpoints, and their export metadata.

Takes: ``RUN_DIR`` (``members/<name>/`` checkpoints written by ``cxr.train.checkpoint``) and member names.
Makes: the member folders (all, or those named, with a did-you-mean), a loaded checkpoint with errors that
say what to do, and the ``ModelMetadata`` every exported member carries (classes, preprocessing, card).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr.errors import ConfigError, CxrError, DataError, ModelError
from cxr.export.run_types import MEMBERS_DIR
from cxr.spec import ModelMetadata


def select_members(run_dir: Path, models: Sequence[str] | None) -> list[Path]:
    """The member folders of ``run_dir`` (all, or those named), with a did-you-mean for unknown names."""
    members = Path(run_dir) / MEMBERS_DIR
    if not Path(run_dir).is_dir():
        raise DataError(f"run directory {run_dir} does not exist", hint="pass the RUN_DIR of `cxr train`")
    available = sorted(p for p in members.iterdir() if p.is_dir()) if members.is_dir() else []
    if not available:
        raise DataError(
            f"no trained members in {members}",
            hint="train them first (`cxr train base --config CONFIG --all`), then export the run directory",
            path=members,
        )
    if models is None:
        return available
    by_name = {p.name: p for p in available}
    unknown = [m for m in models if m not in by_name]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(by_name), n=3)
        raise ConfigError(
            f"unknown member(s) {', '.join(unknown)} in {members}",
            hint=(f"did you mean {', '.join(close)}? " if close else "") + f"available: {', '.join(by_name)}",
        )
    return [by_name[m] for m in dict.fromkeys(models)]


def load_member(member_dir: Path, which: str = "best") -> Any:
    """``cxr.train.checkpoint.load_checkpoint`` with errors that say what to do."""
    try:
        from cxr.train.checkpoint import load_checkpoint
    except ImportError as e:
        raise ModelError(
            f"cannot load checkpoints: {e}",
            hint="install the training extra: pip install 'cxr-toolkit[train]'",
        ) from e
    try:
        return load_checkpoint(member_dir, which)
    except CxrError:
        raise
    except Exception as e:  # timm/torch/safetensors errors on a foreign or damaged checkpoint
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = "re-train the member with this cxr, or install the cxr version that wrote the checkpoint"
        if "Unknown model" in text:
            hint = f"the checkpoint names an architecture this timm ({_timm_version()}) does not know; {hint}"
        raise ModelError(
            f"cannot load the checkpoint in {member_dir}: {text}", hint=hint, path=member_dir
        ) from e


def member_metadata(info: Any, name: str) -> ModelMetadata:
    """The metadata every exported member carries, from a checkpoint's ``info``."""
    extra = dict(getattr(info, "extra", {}) or {})
    return ModelMetadata(
        classes=tuple(info.classes),
        preprocess=info.preprocess,
        input_format="float_normalized",
        card={
            "kind": "member",
            "name": name,
            "member": name,
            "timm_name": info.timm_name,
            "backbone": getattr(info, "backbone", "") or name,
            "checkpoint_sha256": info.sha256,
            "checkpoint_epoch": info.epoch,
            "val_metrics": dict(info.metrics),
            "train_versions": dict(info.versions),
            "manifest_digest": extra.get("manifest_digest"),
            "pretrained": extra.get("pretrained"),
            "dataset": extra.get("dataset"),
        },
    )


def _timm_version() -> str:
    try:
        import timm

        return str(timm.__version__)
    except ImportError:
        return "not installed"
