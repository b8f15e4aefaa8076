"""cxr metadata in an exported ONNX file: the member card an export writes, and reading it back.

Takes: an ``onnx.ModelProto`` (or a path) and a ``ModelMetadata``. Makes: the proto's ``metadata_props``
(JSON values, ``ModelMetadata.to_props()``), with the card of an FP32 member recording exporter, opset,
FLOPs and package versions; ``read_metadata`` gives the ``ModelMetadata`` of a file without its weights.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnx
import torch

from cxr.errors import ModelError, first_line
from cxr.export.export_types import INPUT_NAME, OUTPUT_NAME, ExportConfig, ExporterChoice
from cxr.spec import ModelMetadata


def export_versions() -> dict[str, str]:
    """Versions of the packages that shaped an exported file."""
    import importlib.metadata as md

    out: dict[str, str] = {"torch": torch.__version__, "onnx": onnx.__version__}
    for dist, key in (
        ("onnxruntime", "onnxruntime"),
        ("timm", "timm"),
        ("onnxsim", "onnxsim"),
        ("onnxscript", "onnxscript"),
        ("cxr-toolkit", "cxr"),
    ):
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            out[key] = "not installed"
    return out


def write_member_metadata(
    proto: onnx.ModelProto,
    cfg: ExportConfig,
    choice: ExporterChoice,
    flops: int,
    simplified: bool,
    reason: str | None,
) -> None:
    """The FP32 member's metadata: ``cfg.metadata`` plus what the export did, and its doc string."""
    card = {
        **dict(cfg.metadata.card),
        "precision": "fp32",
        "exporter": choice.exporter,
        "exporter_reason": choice.reason,
        "opset": opset_of(proto),
        "ir_version": int(proto.ir_version),
        "flops_per_image": flops,
        "simplified": simplified,
        "simplify_note": reason,
        "export_versions": export_versions(),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "output_kind": OUTPUT_NAME,
    }
    set_metadata(proto, replace(cfg.metadata, card=card))
    proto.producer_name = "cxr"
    proto.doc_string = (
        "cxr member classifier: input normalised float32 [batch, C, H, W], output logits [batch, K]"
    )


def set_metadata(proto: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Replace ``proto``'s metadata_props with cxr's metadata (JSON values)."""
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata.to_props())


def read_metadata(path: Path) -> ModelMetadata:
    """The cxr metadata of an ONNX file (weights are not loaded)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError as e:
        raise ModelError(f"{path} does not exist", hint="run `cxr export RUN_DIR` first", path=path) from e
    except Exception as e:  # onnx raises DecodeError and others on garbage
        raise ModelError(f"{path} is not a readable ONNX file: {first_line(e)}", path=path) from e
    return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props}, source=str(path))


def opset_of(proto: onnx.ModelProto) -> int:
    """The default-domain opset of ``proto`` (0 when it imports none)."""
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def card_str(metadata: ModelMetadata, key: str) -> str | None:
    """``metadata.card[key]`` as a string, None when absent."""
    value = metadata.card.get(key)
    return str(value) if value is not None else None
