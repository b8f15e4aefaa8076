"""OpenVINO BF16 for a fused graph, verified: takes the FP32 file and real images, makes the metadata record.

BF16 runs the FP32 file with ``INFERENCE_PRECISION_HINT=bf16``; it is offered only when its top-1 agrees with
onnxruntime FP32 on real images (the run's train and val splits, or a folder) at ``min_agreement``. The
record goes under ``cxr.verified_precisions``; without OpenVINO nothing is recorded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cxr.errors import DataError, DecodeError, ProviderError
from cxr.fuse.verify import session
from cxr.openvino_session import BF16_RECORD, cpu_has_bf16, import_openvino
from cxr.spec import INPUT_IMAGE, META_VERIFIED_PRECISIONS, OUTPUT_PROBABILITIES, PreprocessSpec

log = logging.getLogger(__name__)

CHECK_SPLITS = ("train", "val")


def image_files(source: Path) -> list[Path]:
    """A run directory's train and val images (its ``manifest.csv``), or every image under a folder."""
    from cxr.data.manifest import load_manifest
    from cxr.imaging.decode import READABLE_SUFFIXES

    source = Path(source)
    if (source / "manifest.csv").is_file():
        manifest = load_manifest(source / "manifest.csv", check_files=False)
        return [manifest.abspath(r) for r in manifest.rows if r.split in CHECK_SPLITS]
    return sorted(p for p in source.rglob("*") if p.suffix.lower() in READABLE_SUFFIXES)


def real_images(source: Path, spec: PreprocessSpec, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` readable images of ``source`` (see ``image_files``) as the fused graph's uint8 input."""
    from cxr.imaging.decode import decode_gray
    from cxr.imaging.preprocess import to_model_input

    files = image_files(source)
    grays: list[np.ndarray] = []
    for i in np.random.default_rng(seed).permutation(len(files)):
        if len(grays) >= n:
            break
        try:
            grays.append(decode_gray(files[int(i)]))
        except (DecodeError, OSError) as e:
            log.warning("BF16 check: skipping %s: %s", files[int(i)], e)
    if not grays:
        raise DataError(
            f"no readable image in {source} for the BF16 check",
            hint="give a run directory with a manifest, or a folder of real chest X-rays",
        )
    return to_model_input(grays, spec, normalized=False)


def check_openvino_bf16(
    fp32: Path, images: np.ndarray, *, min_agreement: float, threads: int | None, batch: int = 16
) -> dict[str, Any] | None:
    """The ``openvino_bf16`` record for ``fp32`` on ``images``; None when OpenVINO is not installed."""
    try:
        ov = import_openvino()
    except ProviderError:
        log.info(
            "BF16 check skipped: openvino is not installed (pip install -e '.[openvino]' in a clone of cxr)"
        )
        return None
    record: dict[str, Any] = {"bar": min_agreement, "openvino": ov.__version__, "images": 0}
    core = ov.Core()
    if not cpu_has_bf16(core):
        reason = (
            "not checked: the CPU that ran `cxr fuse` has no BF16; re-fuse on a CPU with AVX512-BF16 or AMX"
        )
        return {**record, "accepted": False, "agreement": None, "reason": reason}
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(str(fp32), "CPU", config)
    ref = session(fp32, threads)
    got, want = [], []
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        want.append(ref.run([OUTPUT_PROBABILITIES], {INPUT_IMAGE: x})[0])
        got.append(compiled({INPUT_IMAGE: x})[OUTPUT_PROBABILITIES])
    a, b = np.concatenate(want), np.concatenate(got)
    agreement = float(np.mean(a.argmax(1) == b.argmax(1)))
    accepted = agreement >= min_agreement
    verdict = "reaches" if accepted else "is below"
    reason = (
        f"top-1 agreement with FP32 {agreement:.4f} on {len(a)} real images {verdict} the bar {min_agreement}"
    )
    return {
        **record,
        "accepted": accepted,
        "agreement": agreement,
        "images": len(a),
        "max_abs_diff_probabilities": float(np.max(np.abs(a - b))),
        "reason": reason,
    }


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Add (or replace) the ``openvino_bf16`` record in ``path``'s metadata; weights stay where they are."""
    write_records(path, {BF16_RECORD: record})


def write_records(path: Path, new: Mapping[str, dict[str, Any]]) -> None:
    """Add (or replace) ``new``'s records in ``path``'s ``cxr.verified_precisions``; the others stay."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    records = json.loads(props.get(META_VERIFIED_PRECISIONS, "{}"))
    records.update(new)
    props[META_VERIFIED_PRECISIONS] = json.dumps(records, sort_keys=True)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
