"""The model file a command uses: ``--model``, else ``$CXR_MODEL``, else the default paths."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cxr.errors import ModelError, ProviderError

if TYPE_CHECKING:
    from cxr.runtime.predictor_config import PredictorConfig

log = logging.getLogger(__name__)

MODEL_ENV = "CXR_MODEL"
DEFAULT_MODEL_PATHS: tuple[Path, ...] = (Path("~/.cache/cxr/ensemble.onnx"),)
"""Tried without --model and $CXR_MODEL; the demo's synthetic-data model is never picked implicitly."""

HOW_TO_GET_A_MODEL = (
    "pass --model PATH or set CXR_MODEL to the ensemble.onnx you deploy (or copy it to ~/.cache/cxr/ensemble.onnx); "
    "`cxr fuse RUN_DIR` builds one, and `make demo` a synthetic-data one at runs/demo/ensemble.onnx"
)


def resolve_model(explicit: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The model path to use: ``explicit``, else ``$CXR_MODEL``, else the first default path that exists."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return check_model_file(Path(explicit).expanduser())
    if env.get(MODEL_ENV):
        path = Path(env[MODEL_ENV]).expanduser()
        if not path.is_file():
            raise ModelError(
                f"{MODEL_ENV}={env[MODEL_ENV]} does not point to a model file",
                hint=HOW_TO_GET_A_MODEL,
                path=path,
            )
        return path
    for candidate in DEFAULT_MODEL_PATHS:
        path = candidate.expanduser()
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in DEFAULT_MODEL_PATHS)
    raise ModelError(
        f"no model given and none found (no --model, no {MODEL_ENV}, none at {tried})",
        hint=HOW_TO_GET_A_MODEL,
    )


HEATMAP_SUFFIX = ".heatmaps.onnx"


def plain_model(model: Path) -> Path:
    """The plain ``<stem>.onnx`` beside a heatmap twin ``<stem>.heatmaps.onnx`` when it is there, else ``model``."""
    model = Path(model)
    if not model.name.endswith(HEATMAP_SUFFIX):
        return model
    plain = model.with_name(model.name.removesuffix(HEATMAP_SUFFIX) + ".onnx")
    return plain if plain.is_file() else model


def check_model_file(path: Path) -> Path:
    """``path`` if it can be an ONNX model; a folder, a missing file or a text file is refused."""
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.onnx"))[:5]
        found = f"; it holds {', '.join(inside)}" if inside else "; it holds no .onnx file"
        raise ModelError(
            f"--model {path} is a folder, not a model file{found}",
            hint="pass the model file itself, e.g. --model RUN_DIR/ensemble.onnx",
            path=path,
        )
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist", hint=HOW_TO_GET_A_MODEL, path=path)
    with path.open("rb") as f:
        head = f.read(256)
    # an ONNX file is a protobuf ModelProto: binary, and nearly always opens with field 1 (ir_version)
    if head and head[0] != 0x08 and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        raise ModelError(
            f"{path} is a text file, not an ONNX model",
            hint="pass the .onnx file that `cxr fuse` or `cxr export` wrote (e.g. runs/demo/ensemble.onnx)",
            path=path,
        )
    return path


def heatmap_variant(model: Path) -> Path:
    """The heatmap graph for ``model``: itself if it is one, else ``<stem>.heatmaps.onnx`` beside it."""
    model = Path(model)
    if model.name.endswith(HEATMAP_SUFFIX):
        return model
    sibling = model.with_name(model.name.removesuffix(".onnx") + HEATMAP_SUFFIX)
    if not sibling.is_file():
        raise ModelError(
            f"no heatmap graph for {model}: {sibling.name} is not beside it",
            hint="build it with `cxr fuse RUN_DIR --heatmaps` (it writes ensemble.heatmaps.onnx next to "
            "ensemble.onnx) and copy it with the model, or pass it as --model",
            path=sibling,
        )
    return sibling


def with_heatmap_twin(
    model: Path, cfg: PredictorConfig, *, required: bool = False
) -> tuple[Path, PredictorConfig]:
    """The heatmap twin of ``model`` (when ``required``, or when it is beside it; else ``model``) and ``cfg``
    carrying the plain model's id: the twin computes the same results, so they are one model's.

    The twin is FP32 (fuse builds no INT8 one: the heatmap heads stay FP32), so it runs in fp32 or bf16 under
    auto. Asked for int8, a required twin is refused (heatmaps or INT8, not both) and an optional one (the
    DICOM node's, the DICOM writer's) is left out: the INT8 graph runs and images get no heatmap."""
    from cxr.session import file_sha256

    int8 = cfg.session.precision == "int8"
    if int8 and required:
        raise ProviderError(
            f"--precision int8 gives no heatmaps: the INT8 graph beside {model.name} has no heatmap outputs",
            hint="drop --heatmap, or use --precision auto (the FP32 heatmap graph then runs, in fp32 or bf16)",
        )
    try:
        twin = heatmap_variant(model)
    except ModelError:
        if required:
            raise
        return model, cfg
    if int8:
        log.info("precision int8: %s runs without heatmaps (%s is FP32, left out)", model.name, twin.name)
        return model, cfg
    return twin, replace(cfg, model_id=cfg.model_id or file_sha256(plain_model(model))[:16])
