"""Takes the model, variant paths, batch sizes and image folder; makes ``ModelFile``s, checked before
measuring.

Variants belong together when their ``fp32_sha256`` roots match or their cards name the same trained
weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.errors import ConfigError, DataError, ModelError
from cxr.imaging.decode import READABLE_SUFFIXES
from cxr.onnx_header import InputInfo, read_onnx_header
from cxr.session import file_sha256, files_sha256
from cxr.spec import ModelMetadata


@dataclass(frozen=True)
class ModelFile:
    path: Path
    sha256: str  # of the .onnx file
    metadata: ModelMetadata
    input: InputInfo
    content_sha256: str = ""  # of the .onnx then its external data file (equals sha256 without one)

    @property
    def card(self) -> Mapping[str, Any]:
        return self.metadata.card

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def precision(self) -> str:
        """``card["precision"]``; files without it are FP32 exports."""
        return str(self.card.get("precision") or "fp32")

    @property
    def kind(self) -> str:
        kind = self.card.get("kind")
        if kind in ("ensemble", "member"):
            return str(kind)
        return "ensemble" if self.metadata.input_format == "uint8_gray" else "member"

    @property
    def member_name(self) -> str | None:
        name = self.card.get("name")
        return None if name is None else str(name)

    @property
    def member_order(self) -> tuple[str, ...]:
        return tuple(str(n) for n in self.card.get("member_order", ()))

    @property
    def root_sha256(self) -> frozenset[str]:
        """The hashes of the FP32 file this one derives from (its own for a file without ``fp32_sha256``)."""
        fp32 = self.card.get("fp32_sha256")
        return frozenset({str(fp32)} if fp32 else {self.sha256, self.content_sha256 or self.sha256})

    @property
    def weights_identity(self) -> tuple[Any, ...] | None:
        """What trained weights this file was built from, when its card says so completely."""
        if self.kind == "member":
            ckpt = self.card.get("checkpoint_sha256")
            return ("member", str(ckpt)) if ckpt else None
        entries = [e for e in self.card.get("members", ()) or () if isinstance(e, Mapping)]
        ckpts = tuple(e.get("checkpoint_sha256") for e in entries)
        meta = self.card.get("meta")
        meta_sha = meta.get("onnx_sha256") if isinstance(meta, Mapping) else None
        if not entries or not all(ckpts) or not meta_sha:
            return None
        return ("ensemble", self.member_order, ckpts, str(meta_sha))

    @property
    def flops_per_image(self) -> float | None:
        value = self.card.get("flops_per_image")
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None

    @property
    def fixed_batch(self) -> int | None:
        dim = self.input.shape[0] if self.input.shape else None
        return dim if isinstance(dim, int) and dim > 0 else None


def inspect_model(path: Path | str) -> ModelFile:
    """Read ``path``'s cxr metadata and its single input from the file header (no session is built)."""
    path = Path(path)
    header = read_onnx_header(path)
    metadata = ModelMetadata.from_props(header.metadata, source=str(path))
    if len(header.inputs) != 1:
        raise ModelError(
            f"{path} has {len(header.inputs)} graph inputs; a cxr model has exactly one",
            hint="pass a model exported by `cxr export` or fused by `cxr fuse`",
            path=path,
        )
    sha = file_sha256(path)
    data = path.with_name(path.name + ".data")
    content = files_sha256((path, data)) if data.is_file() else sha
    return ModelFile(path, sha, metadata, header.inputs[0], content)


def check_variants(main: ModelFile, variants: Sequence[ModelFile]) -> None:
    """All files must be precisions of the same model (same FP32 root or same trained weights), with the same
    classes, input and members."""
    seen = {main.sha256: main.path}
    for v in variants:
        if v.sha256 in seen:
            raise ConfigError(
                f"{v.path} is the same file as {seen[v.sha256]} (sha256 {v.sha256[:12]})",
                hint="pass each precision variant once",
            )
        seen[v.sha256] = v.path
        same_weights = v.weights_identity is not None and v.weights_identity == main.weights_identity
        if not (main.root_sha256 & v.root_sha256 or same_weights):
            raise ModelError(
                f"variant {v.path} ({v.precision}) does not belong to the same model as {main.path} "
                f"({main.precision}): it derives from the FP32 file with sha256 {_short(v.root_sha256)}, "
                f"{main.name} from {_short(main.root_sha256)}, and their cards do not name the same trained "
                "weights (metadata hash mismatch: fp32_sha256 / checkpoint_sha256)",
                hint="pass FP16/INT8 files converted from this very FP32 model (re-run the conversion on it), "
                "or benchmark the other model in a separate run",
                path=v.path,
            )
        for what, a, b in (
            ("classes", main.metadata.classes, v.metadata.classes),
            ("input format", main.metadata.input_format, v.metadata.input_format),
            ("preprocessing", main.metadata.preprocess, v.metadata.preprocess),
            ("member order", main.member_order, v.member_order),
        ):
            if a != b:
                raise ModelError(
                    f"variant {v.path} has {what} {b!r}, but {main.path} has {a!r}",
                    hint="variants must be conversions of the same model; re-convert from the FP32 file",
                    path=v.path,
                )


def _short(hashes: frozenset[str]) -> str:
    return " / ".join(sorted(h[:12] for h in hashes))


def check_batch_sizes(model: ModelFile, batch_sizes: Sequence[int]) -> None:
    """Refuse batch sizes a graph with a fixed batch dimension cannot take."""
    fixed = model.fixed_batch
    bad = [b for b in batch_sizes if fixed is not None and b != fixed]
    if bad:
        raise ModelError(
            f"{model.path} takes batch size {fixed} only (its input '{model.input.name}' has shape "
            f"{list(model.input.shape)}); asked for {', '.join(map(str, bad))}",
            hint=f"use --batch-sizes {fixed}, or re-export with a dynamic batch dimension (trace with batch >= 2)",
            path=model.path,
        )


def list_images(folder: Path | str) -> tuple[Path, ...]:
    """Image files under ``folder`` (recursively, by suffix, sorted); ``DataError`` when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"image folder {folder} does not exist or is not a folder",
            hint="pass a folder of PNG/JPEG/DICOM files with --folder",
            path=folder,
        )
    files = tuple(
        sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in READABLE_SUFFIXES)
    )
    if not files:
        raise DataError(
            f"image folder {folder} holds no image files ({', '.join(sorted(READABLE_SUFFIXES))})",
            hint="point --folder at a folder with images, e.g. one made by `cxr data synth`",
            path=folder,
        )
    return files
