"""Checkpoints that never execute code on load: ``<which>.safetensors`` + ``<which>.json`` (with the
weights' SHA-256), ``last.state.pt`` while a run is unfinished, and the provenance they carry."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import cxr
from cxr.data.manifest import Manifest
from cxr.data.synthetic import MARKER_FILE
from cxr.errors import CheckpointError, ModelError
from cxr.session import file_sha256
from cxr.spec import PreprocessSpec

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cxr.checkpoint"
CHECKPOINT_VERSION = 1
WHICH = ("best", "last")
RESUME_STATE = "last.state.pt"


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``<which>.json`` says about the weights beside it."""

    name: str
    timm_name: str
    classes: tuple[str, ...]
    preprocess: PreprocessSpec
    metrics: dict[str, Any]
    sha256: str
    epoch: int
    config: dict[str, Any]
    versions: dict[str, str]
    backbone: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: nn.Module  # eval mode, on the CPU
    info: CheckpointInfo


def versions() -> dict[str, str]:
    import numpy
    import safetensors
    import timm
    import torchvision

    libs = [cxr, torch, torchvision, timm, safetensors, numpy]
    return {v.__name__: str(v.__version__) for v in libs} | {"python": platform.python_version()}


def paths(member_dir: Path, which: str) -> tuple[Path, Path]:
    if which not in WHICH:
        raise CheckpointError(f"unknown checkpoint {which!r}", hint=f"use one of {', '.join(WHICH)}")
    return Path(member_dir) / f"{which}.safetensors", Path(member_dir) / f"{which}.json"


def _write_info(path: Path, info: CheckpointInfo) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # the file's key order: format, version, name, backbone, then the other fields in their order
    head = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "name": "", "backbone": ""}
    tmp.write_text(json.dumps(head | asdict(info), indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def save_checkpoint(member_dir: Path, which: str, model: nn.Module, info: CheckpointInfo) -> CheckpointInfo:
    """Write ``<which>.safetensors`` then ``<which>.json`` (with the weights' hash); return the info."""
    weights, meta = paths(member_dir, which)
    tmp = weights.with_name(weights.name + ".tmp")
    try:
        weights.parent.mkdir(parents=True, exist_ok=True)
        # CPU tensors in standard layout (channels-last weights are made contiguous; no copy otherwise)
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp), metadata={"format": CHECKPOINT_FORMAT, "name": info.name})
        os.replace(tmp, weights)
        info = replace(info, sha256=file_sha256(weights), extra={**info.extra, "saved_at": time.time()})
        _write_info(meta, info)
        log.debug("wrote checkpoint %s", weights)
    except (OSError, SafetensorError) as e:
        tmp.unlink(missing_ok=True)
        raise _write_error(weights, e) from e
    return info


def _write_error(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"cannot write the checkpoint {path}: {err}",
        hint="free disk space (a VGG19 checkpoint is ~560 MB, ConvNeXt-base ~350 MB) or set run_dir to a "
        "disk with room, then re-run with --resume",
        path=path,
    )


def link_checkpoint(member_dir: Path, source: str, target: str, info: CheckpointInfo) -> None:
    """``target`` becomes ``source``: a hard link (saves replace files atomically), else a copy."""
    src, _ = paths(member_dir, source)
    dst, meta = paths(member_dir, target)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    _write_info(meta, info)
    log.debug("wrote checkpoint %s (same weights as %s)", dst, src)


def read_checkpoint_info(member_dir: Path, which: str = "best") -> CheckpointInfo:
    """Read and check ``<which>.json`` (format, version, fields); the weights are not touched."""
    weights, meta = paths(member_dir, which)
    train_hint = (
        f"train the member first (`cxr train base --config CONFIG --members {Path(member_dir).name}`), "
        "or pass the folder RUN_DIR/members/<name>"
    )
    for p in (meta, weights):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p} is missing", hint=train_hint, path=p)
    try:
        d = json.loads(meta.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta} is not valid JSON: {e}", hint=train_hint, path=meta) from e
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{meta} is not a cxr checkpoint", hint=train_hint, path=meta)
    if d.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{meta} uses cxr checkpoint format {d.get('format_version')!r}; this cxr "
            f"({cxr.__version__}) reads format {CHECKPOINT_VERSION}",
            hint="re-train the member with this cxr, or install the cxr version that wrote it "
            f"(it recorded {d.get('versions', {}).get('cxr', 'unknown')})",
            path=meta,
        )
    try:
        return CheckpointInfo(
            name=str(d["name"]),
            backbone=str(d.get("backbone", "")),
            timm_name=str(d["timm_name"]),
            classes=tuple(str(c) for c in d["classes"]),
            preprocess=PreprocessSpec.from_dict(d["preprocess"]),
            metrics=dict(d["metrics"]),
            sha256=str(d["sha256"]),
            epoch=int(d["epoch"]),
            config=dict(d["config"]),
            versions={str(k): str(v) for k, v in d["versions"].items()},
            extra=dict(d.get("extra", {})),
        )
    except (KeyError, TypeError, ValueError, ModelError) as e:
        raise CheckpointError(f"{meta} is incomplete or malformed: {e}", hint=train_hint, path=meta) from e


def load_weights(model: nn.Module, member_dir: Path, which: str, info: CheckpointInfo) -> None:
    """Load ``<which>.safetensors`` into ``model`` once its hash matches ``info``'s."""
    weights, _ = paths(member_dir, which)
    actual = file_sha256(weights)
    if actual != info.sha256:
        raise CheckpointError(
            f"{weights} does not match its {which}.json (sha256 {actual[:12]}..., recorded "
            f"{info.sha256[:12]}...): the file was changed or copied incompletely",
            hint="copy the member folder again, or re-train the member",
            path=weights,
        )
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights} cannot be read: {e}", path=weights) from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{weights} does not fit the {type(model).__name__} architecture: {str(e).splitlines()[0]}",
            hint="the checkpoint was written for another backbone or class count; re-train the member",
            path=weights,
        ) from e


def load_checkpoint(member_dir: Path, which: str = "best") -> LoadedCheckpoint:
    """Rebuild the member's model (CPU, eval mode, head for its classes) with the checkpoint's weights."""
    from cxr.train.backbones import create_backbone

    info = read_checkpoint_info(member_dir, which)
    model = create_backbone(info.timm_name, len(info.classes), pretrained=False, seed=0)
    load_weights(model, member_dir, which, info)
    model.eval()
    return LoadedCheckpoint(model=model, info=info)


def save_resume_state(member_dir: Path, state: Mapping[str, Any]) -> Path:
    """Optimiser/scheduler/RNG state (tensors and plain values) for ``train.resume``."""
    out = Path(member_dir) / RESUME_STATE
    tmp = out.with_name(out.name + ".tmp")
    try:
        torch.save(dict(state), tmp)
        os.replace(tmp, out)
        log.debug("wrote resume state %s", out)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as RuntimeError
        tmp.unlink(missing_ok=True)
        raise _write_error(out, e) from e
    return out


def load_resume_state(member_dir: Path) -> dict[str, Any]:
    path = Path(member_dir) / RESUME_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or file damaged
        raise CheckpointError(f"cannot resume: {path} is unreadable ({e})", path=path) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot resume: {path} holds no training state", path=path)
    return state


def dataset_provenance(manifest: Manifest) -> dict[str, Any]:
    """Name, digest, images per class and split, and whether the images are synthetic."""
    root = Path(manifest.root)
    synthetic = any((d / MARKER_FILE).is_file() for d in (root, *root.parents[:1]))
    counts = manifest.counts()
    return {
        "name": root.name,
        "root": str(root),
        "manifest_digest": manifest.digest(),
        "images_per_class": {c: sum(counts[s][c] for s in counts) for c in manifest.classes},
        "images_per_split": {s: sum(v.values()) for s, v in counts.items()},
        "synthetic": synthetic,
    }


def weights_provenance(timm_name: str, pretrained: bool | str | Path) -> dict[str, Any]:
    """Where the member's starting weights came from: ``random``, ``timm`` (with its tag) or ``file``."""
    if pretrained is False:
        return {"source": "random"}
    if pretrained is True:
        import timm

        cfg = timm.get_pretrained_cfg(timm_name)
        tag = getattr(cfg, "tag", None) if cfg is not None else None
        return {"source": "timm", "tag": f"{timm_name}.{tag}" if tag else timm_name}
    from cxr.train.backbones import weights_file

    source, path = weights_file(timm_name, Path(pretrained))
    if source == "local-dir":
        return {"source": "folder", "path": str(pretrained)}
    return {"source": "file", "file": path.name, "path": str(path), "sha256": file_sha256(path)}
