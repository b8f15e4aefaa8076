"""Takes a cxr ONNX file, a folder and a ``TritonConfig``; makes the Triton model folder and a KServe
InferenceService that serves it with Triton."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr import __version__
from cxr.deploy.triton.config import CXR_JSON, KSERVE_FILE, LABELS_FILE, MODEL_FILE, TritonConfig
from cxr.deploy.triton.pbtxt import render_config, resolve_trt_precision
from cxr.deploy.triton.signature import (
    ModelSignature,
    check_contract,
    is_int8,
    open_session,
    read_model,
    signature_of,
)
from cxr.errors import ModelError
from cxr.labels import NOTICE
from cxr.onnx_header import read_onnx_header
from cxr.session import file_sha256
from cxr.spec import ModelMetadata

log = logging.getLogger(__name__)


def _dns_name(name: str) -> str:
    """A DNS-1035 label for Kubernetes: lowercase letters, digits and '-', starting with a letter."""
    s = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not s.startswith("cxr"):
        s = f"cxr-{s}".rstrip("-")
    return s[:45].rstrip("-")


def kserve_resources(model_bytes: int, cfg: TritonConfig) -> dict[str, dict[str, str]]:
    """A starting point: every instance holds the weights once; ONNX Runtime needs about as much again."""
    instances = cfg.gpu_instances * max(len(cfg.gpus), 1) + cfg.cpu_instances
    gib = model_bytes / 2**30
    limit = max(2, math.ceil(2 + 2 * gib * instances))
    cpus = max(2, (cfg.cpu_threads or 2) * max(cfg.cpu_instances, 1))
    limits = {"cpu": str(cpus), "memory": f"{limit}Gi"}
    requests = {"cpu": str(max(1, cpus // 2)), "memory": f"{max(1, limit // 2)}Gi"}
    if cfg.gpu_instances:
        limits["nvidia.com/gpu"] = str(max(len(cfg.gpus), 1))
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"]
    return {"limits": limits, "requests": requests}


def render_kserve(name: str, model_bytes: int, cfg: TritonConfig) -> str:
    """A KServe ``InferenceService`` (serving.kserve.io/v1beta1) that serves the repository with Triton."""
    res = kserve_resources(model_bytes, cfg)
    j = json.dumps

    def block(key: str, d: dict[str, str]) -> list[str]:
        return [f"        {key}:"] + [f"          {j(k)}: {j(v)}" for k, v in d.items()]

    lines = [
        f"# Written by cxr {__version__} (`cxr export-triton`) for the Triton model repository beside it.",
        f"# {NOTICE}",
        "# Upload this folder (the repository root, which holds the model folder) to object storage and",
        "# set storageUri to it; KServe downloads it to /mnt/models and starts Triton on it.",
        "# Resources are a starting point sized from the model file: measure and adjust.",
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        "metadata:",
        f"  name: {j(_dns_name(name))}",
        "  annotations:",
        f"    cxr/model-name: {j(name)}",
        f"    cxr/notice: {j(NOTICE)}",
        "spec:",
        "  predictor:",
        "    triton:",
        f"      storageUri: {j(cfg.storage_uri)}",
        '      protocolVersion: "v2"',
        "      resources:",
    ]
    lines += block("requests", res["requests"]) + block("limits", res["limits"])
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TritonExportResult:
    repository: Path
    model_name: str
    model_dir: Path
    config_path: Path
    model_path: Path
    cxr_json: Path
    kserve_path: Path | None
    signature: ModelSignature
    metadata: ModelMetadata
    max_batch_size: int
    sha256: str
    linked: bool
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _Source:
    """The model being written: its file, signature, cxr metadata, raw metadata props and sha256."""

    path: Path
    sig: ModelSignature
    meta: ModelMetadata
    props: dict[str, str]
    sha256: str


def _model_readme(
    name: str, sig: ModelSignature, meta: ModelMetadata, cfg: TritonConfig, max_batch: int
) -> str:
    inp = sig.inputs[0]
    outs = ", ".join(f"`{o.name}` {o.wire_type} {list(o.config_dims(sig.batched))}" for o in sig.outputs)
    return (
        f"# Triton model `{name}` (written by cxr {__version__})\n\n"
        f"**{NOTICE}**\n\n"
        f"- Input `{inp.name}`: {inp.wire_type} {list(inp.config_dims(sig.batched))} per image "
        f"(batch axis first, up to {max_batch} per request; 0 means no batching).\n"
        f"- Outputs: {outs}.\n"
        f"- Classes, in output order: {', '.join(meta.classes)} (also in `{LABELS_FILE}`).\n"
        f"- Preprocessing the client must apply: decode to 8-bit grayscale, resize to "
        f"{meta.preprocess.input_size[0]}x{meta.preprocess.input_size[1]} with Pillow's bilinear filter"
        + (
            ", send uint8 pixels (the graph normalises).\n"
            if meta.input_format == "uint8_gray"
            else f", scale to [0, 1], replicate to {meta.preprocess.channels} channels, normalise with "
            f"mean {list(meta.preprocess.mean)} and std {list(meta.preprocess.std)}.\n"
        )
        + f"- `{CXR_JSON}` holds the full cxr metadata; `examples/triton_client.py` in the cxr repository reads "
        "it and preprocesses exactly as `cxr-predict` does.\n"
        f"- Version folder: `{cfg.version}/{MODEL_FILE}`.\n"
    )


def default_model_name(model: Path) -> str:
    """The model file's stem as a Triton model name: letters, digits, ``_.-``, starting alphanumeric."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).stem).strip("._-") or "cxr_model"
    if not stem[0].isalnum():
        stem = "cxr_" + stem
    return stem[:63]


def _check_destination(repo: Path, model_dir: Path, model: Path, sha: str, force: bool) -> None:
    if repo.exists() and not repo.is_dir():
        raise ModelError(
            f"output {repo} exists and is not a folder",
            hint="pass a folder for the model repository",
            path=repo,
        )
    if (repo / "config.pbtxt").exists():
        raise ModelError(
            f"{repo} holds a config.pbtxt: it is a Triton model folder, not a model repository",
            hint=f"pass its parent ({repo.parent}) as OUT, or another folder",
            path=repo,
        )
    if not model_dir.exists():
        return
    if not model_dir.is_dir():
        raise ModelError(
            f"{model_dir} exists and is not a folder", hint="remove it or choose --name", path=model_dir
        )
    if model.resolve().is_relative_to(model_dir.resolve()):
        raise ModelError(
            f"the model {model} lies inside the folder to be written ({model_dir})",
            hint="pass another OUT folder or --name",
            path=model_dir,
        )
    existing = None
    info = model_dir / CXR_JSON
    if info.is_file():
        try:
            existing = json.loads(info.read_text(encoding="utf-8")).get("model_sha256")
        except (json.JSONDecodeError, OSError, AttributeError):
            existing = None
    if existing == sha or not any(model_dir.iterdir()):
        return  # the same model again (or an empty folder): rewriting it is safe
    what = f"another model (sha256 {existing[:16]}…)" if existing else "files cxr did not write"
    if not force:
        raise ModelError(
            f"{model_dir} already holds {what}",
            hint="choose another --name or OUT folder, or pass --force to replace that model folder",
            path=model_dir,
        )
    log.warning("replacing %s, which held %s", model_dir, what)


def _place(src: Path, dst: Path, link: bool) -> bool:
    """Copy (or hard-link) ``src`` to ``dst``; returns True when it was linked."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return True
        except OSError as e:
            log.warning("cannot hard-link %s (%s); copying instead", src, e)
    shutil.copy2(src, dst)
    return False


def _copy_model(model: Path, version_dir: Path, link: bool) -> tuple[bool, int]:
    """Place the model and its external-data files; returns (linked, total bytes)."""
    linked = _place(model, version_dir / MODEL_FILE, link)
    total = model.stat().st_size
    for loc in read_onnx_header(model).external_data:  # read from the protobuf, without onnx
        rel = Path(loc)
        if rel.is_absolute() or ".." in rel.parts:
            raise ModelError(
                f"{model}: external-data location {loc!r} points outside the model's folder",
                hint="re-save the model with its data file beside it (onnx.save(..., location='x.data'))",
                path=model,
            )
        src = model.parent / rel
        if not src.is_file():
            raise ModelError(
                f"{model}: external-data file {src} is missing",
                hint="keep it beside the .onnx file",
                path=src,
            )
        _place(src, version_dir / rel, link)
        total += src.stat().st_size
    return linked, total


def _export_warnings(src: _Source, cfg: TritonConfig) -> list[str]:
    """What the user should know about this export (logged and returned in the result)."""
    warnings: list[str] = []
    if not src.sig.batched:
        warnings.append(
            f"{src.path.name} has no variable batch axis on every input and output: max_batch_size is 0 and "
            "dynamic batching is off"
        )
    if cfg.tensorrt and is_int8(src.meta) and resolve_trt_precision(cfg, src.meta) != "int8":
        warnings.append(
            "an INT8 (QDQ) model with TensorRT precision other than INT8: TensorRT may refuse its Q/DQ"
        )
    return warnings


def _cxr_info(src: _Source, cfg: TritonConfig, max_batch: int) -> dict[str, Any]:
    """The contents of ``cxr.json``: the model's cxr metadata, signature, sha256 and the notice."""
    return {
        "notice": NOTICE,
        "written_by": f"cxr {__version__}",
        "source": str(src.path),
        "model_sha256": src.sha256,
        "version": cfg.version,
        "max_batch_size": max_batch,
        "precision": str(src.meta.card.get("precision", "fp32")),
        "input_format": src.meta.input_format,
        "signature": src.sig.to_dict(),
        "metadata_props": src.props,
    }


def _install_model_folder(
    repo: Path, model_dir: Path, src: _Source, cfg: TritonConfig, max_batch: int
) -> tuple[bool, int]:
    """Write the model (checked), config.pbtxt, labels, cxr.json and README in a staging folder under
    ``repo``, then move it into place as ``model_dir``; returns (linked, model bytes)."""
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.", suffix=".tmp", dir=repo))
    name = model_dir.name
    try:
        linked, model_bytes = _copy_model(src.path, staging / str(cfg.version), cfg.link)
        copied = staging / str(cfg.version) / MODEL_FILE
        if signature_of(open_session(copied), copied) != src.sig:  # reopened: the copy must be the source
            raise ModelError(
                f"the copied model {copied} does not have the source's signature",
                hint="check the disk and the external-data files, then retry",
                path=copied,
            )
        for file, text in (
            ("config.pbtxt", render_config(name, src.sig, src.meta, cfg, src.sha256, str(src.path))),
            (LABELS_FILE, "\n".join(src.meta.classes) + "\n"),
            (CXR_JSON, json.dumps(_cxr_info(src, cfg, max_batch), indent=2, sort_keys=True) + "\n"),
            ("README.md", _model_readme(name, src.sig, src.meta, cfg, max_batch)),
        ):
            (staging / file).write_text(text, encoding="utf-8")
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.rename(model_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return linked, model_bytes


def write_triton_repository(model: Path, out: Path, cfg: TritonConfig = TritonConfig()) -> TritonExportResult:
    """Read ``model``, check it, and write its Triton model folder (and a KServe manifest) under ``out``."""
    model, repo = Path(model), Path(out)
    sig, meta, props = read_model(model)
    check_contract(sig, meta, model)
    name = cfg.model_name or default_model_name(model)
    model_dir = repo / name
    src = _Source(model, sig, meta, props, file_sha256(model))
    _check_destination(repo, model_dir, model, src.sha256, cfg.force)
    warnings = _export_warnings(src, cfg)
    max_batch = cfg.max_batch_size if sig.batched else 0
    linked, model_bytes = _install_model_folder(repo, model_dir, src, cfg, max_batch)

    kserve_path = None
    if cfg.kserve:
        kserve_path = repo / KSERVE_FILE
        kserve_path.write_text(render_kserve(name, model_bytes, cfg), encoding="utf-8")
    for w in warnings:
        log.warning("%s", w)
    return TritonExportResult(
        repository=repo,
        model_name=name,
        model_dir=model_dir,
        config_path=model_dir / "config.pbtxt",
        model_path=model_dir / str(cfg.version) / MODEL_FILE,
        cxr_json=model_dir / CXR_JSON,
        kserve_path=kserve_path,
        signature=sig,
        metadata=meta,
        max_batch_size=max_batch,
        sha256=src.sha256,
        linked=linked,
        warnings=tuple(warnings),
    )
