"""Takes a fused model's member files and calibration images; makes the hand-made NNCF peer: each member
quantized to INT8 the way an engineer following NNCF's docs would (``nncf.quantize`` with its defaults),
written once as an OpenVINO IR beside the member (``<stem>.nncf-peer.xml/.bin`` and a ``.json`` record).

The engineer's flow is OpenVINO's "basic quantization flow": ``ov.convert_model("member.onnx")``, then
``nncf.quantize(model, nncf.Dataset(items, transform_fn))`` with every default (preset, subset_size=300,
fast bias correction, target device), then ``ov.save_model`` (its defaults too). The IR, not a QDQ ONNX: the
peer runs in OpenVINO, and NNCF's OpenVINO backend is the one OpenVINO's docs show for a model that runs
there. Calibration: the real images of the folder given (those the agreement check uses left out, in a
seeded shuffle, NNCF takes its first 300), each decoded and preprocessed exactly as that member expects
(its ``cxr`` metadata: size, channels, mean/std), as the benchmark feeds it; without a folder, seeded random
pixels, and the record says so. A peer whose record names another source hash or calibration is rebuilt.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.bench.inputs import ModelFile, list_images
from cxr.errors import ConfigError
from cxr.imaging.decode import decode_gray
from cxr.imaging.preprocess import to_model_input

log = logging.getLogger(__name__)

SUFFIX = ".nncf-peer"
SEED = 0
RANDOM_ITEMS = 300  # NNCF's default subset_size: what random calibration feeds when there is no folder


@dataclass(frozen=True)
class Calibration:
    """What the peer is calibrated on: image files (decoded lazily), or ``random`` seeded pixels."""

    files: tuple[Path, ...] = ()
    described: str = "random pixels (no real images given)"

    @classmethod
    def from_folder(cls, folder: Path | None, exclude: Sequence[Path] = ()) -> Calibration:
        """The folder's images but ``exclude`` (the agreement images), in a seeded shuffle."""
        if folder is None:
            return cls()
        left = [f for f in list_images(folder) if f not in set(exclude)]
        if not left:
            raise ConfigError(
                f"no calibration images left in {folder} once the {len(exclude)} agreement images are out",
                hint="give a folder with more images, or fewer --agreement-images",
            )
        order = np.random.default_rng(SEED).permutation(len(left))
        return cls(
            tuple(left[i] for i in order),
            f"{min(len(left), RANDOM_ITEMS)} of {len(left)} real images of {folder.name} "
            f"(seeded shuffle, the {len(exclude)} agreement images left out)",
        )


def peer_path(member: ModelFile) -> Path:
    """``<dir>/<stem>.nncf-peer.xml`` beside the member file."""
    return member.path.with_name(f"{member.path.stem}{SUFFIX}.xml")


def _record_path(member: ModelFile) -> Path:
    return peer_path(member).with_suffix(".json")


def cached(member: ModelFile, calibration: Calibration | None = None) -> dict[str, Any] | None:
    """The record of a peer file built from exactly this member (and ``calibration``, when given), or None."""
    xml, record = peer_path(member), _record_path(member)
    if not (xml.is_file() and xml.with_suffix(".bin").is_file() and record.is_file()):
        return None
    try:
        doc = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("source_sha256") != member.sha256:
        return None
    return None if calibration is not None and doc.get("calibration") != calibration.described else doc


def _items(member: ModelFile, calibration: Calibration) -> tuple[list[Any], Any]:
    """The calibration items and NNCF's ``transform_fn``: one preprocessed image [1, C, h, w] per item."""
    spec = member.metadata.preprocess
    if calibration.files:
        return list(calibration.files), lambda f: to_model_input([decode_gray(f)], spec, normalized=True)
    rng = np.random.default_rng(SEED)
    h, w = spec.input_size
    grays = [rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(RANDOM_ITEMS)]
    return grays, lambda g: to_model_input([g], spec, normalized=True)


def build(member: ModelFile, calibration: Calibration) -> dict[str, Any]:
    """Quantize one member with NNCF's defaults and save the IR and its record; returns the record."""
    import nncf  # the training side only: nncf and the model converter never enter cxr's runtime
    import openvino as ov

    items, transform = _items(member, calibration)
    t0 = time.perf_counter()
    quantized = nncf.quantize(ov.convert_model(str(member.path)), nncf.Dataset(items, transform))
    ov.save_model(quantized, str(peer_path(member)))
    record = {
        "source": member.name,
        "source_sha256": member.sha256,
        "how": "ov.convert_model -> nncf.quantize(model, nncf.Dataset(...)) with its defaults -> ov.save_model",
        "calibration": calibration.described,
        "nncf": nncf.__version__,
        "openvino": ov.get_version(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _record_path(member).write_text(json.dumps(record, indent=2) + "\n")
    return record


def peer_files(members: Sequence[ModelFile], calibration: Calibration, notes: list[str]) -> tuple[Path, ...]:
    """Each member's NNCF peer IR, built where missing or stale (a note says which were built, and how)."""
    built: list[str] = []
    records: list[dict[str, Any]] = []
    for member in members:
        record = cached(member, calibration)
        if record is None:
            log.warning("quantizing %s with NNCF's defaults (once; cached beside it)", member.name)
            record = build(member, calibration)
            built.append(f"{member.name} {record['seconds']} s")
        records.append(record)
    calibrated = sorted({str(r.get("calibration")) for r in records})
    notes.append(
        f"NNCF peer: the {len(members)} member files quantized by hand with nncf.quantize's defaults "
        f"(OpenVINO IR, nncf {records[0].get('nncf') if records else '?'}), calibrated on "
        f"{'; '.join(calibrated)}; {'built now: ' + ', '.join(built) if built else 'cached files reused'}"
    )
    return tuple(peer_path(m) for m in members)
