"""Takes model files, the (provider, precision) runs and real images; makes what each file may run and how
often its reduced-precision runs agree with FP32.

``precision_refusals``: before anything is measured, every OpenVINO ``bf16`` request is checked the way
``cxr.openvino_session.choose_precision`` will check it (the CPU has BF16, the file's
``cxr.verified_precisions`` has an accepting ``openvino_bf16`` record). A refused pair is skipped with a
note (``--strict-provider``: a ``ProviderError``, exit 2), so a long run never dies at its last model. An
OpenVINO ``auto`` whose choice is also asked for explicitly is measured once, as that precision's rows
(a note says what auto chose and why).

``AgreementCheck``: top-1 agreement on real images (``--agreement-folder``, at most ``agreement_images``
spread evenly over the sorted files) between each reduced-precision run (any row whose precision is not
fp32: OpenVINO bf16, INT8 files) and the reference, the FP32 file on onnxruntime's CPU provider. Each
(file, provider, precision) is checked once, with the session its first row uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.bench.config import BenchConfig
from cxr.bench.inputs import ModelFile, list_images
from cxr.bench.measure import open_predictor
from cxr.bench.onnx_header import read_onnx_header
from cxr.errors import CxrError, ProviderError
from cxr.imaging.decode import decode_gray
from cxr.openvino_session import INSTALL_HINT, choose_precision, cpu_has_bf16, openvino_version
from cxr.runtime.predictor import Predictor

Refusals = Mapping[tuple[Path, str, str], str]


def _cpu_bf16() -> bool:
    """Whether OpenVINO can run BF16 on this CPU (imports openvino, which must be installed)."""
    import openvino as ov

    return cpu_has_bf16(ov.Core())


def precision_refusals(
    cfg: BenchConfig, files: Sequence[ModelFile], runs: Sequence[tuple[str, str]]
) -> tuple[dict[tuple[Path, str, str], str], list[str]]:
    """(path, provider, precision) -> why that run is not measured, and one note per skip: OpenVINO would
    refuse its bf16, or its ``auto`` chooses a precision that is measured anyway (no duplicate rows)."""
    ov_runs = {precision for provider, precision in runs if provider == "openvino"}
    if not ov_runs:
        return {}, []
    if openvino_version() is None:
        raise ProviderError(
            "provider 'openvino' needs the openvino package, which cannot be imported here",
            hint=f"{INSTALL_HINT}, or drop openvino from --provider",
        )
    if not ov_runs & {"bf16", "auto"}:
        return {}, []
    cpu_bf16 = _cpu_bf16()
    skipped: dict[tuple[Path, str, str], str] = {}
    notes: list[str] = []
    for mf in files:
        props = read_onnx_header(mf.path).metadata
        if "bf16" in ov_runs:
            try:
                choose_precision("bf16", cpu_bf16=cpu_bf16, props=props, model_name=mf.name)
            except ProviderError as e:
                if cfg.strict_provider:
                    raise
                skipped[(mf.path, "openvino", "bf16")] = e.message
                notes.append(f"skipped openvino bf16 for {mf.name}: {e.message}")
        if "auto" in ov_runs:
            choice = choose_precision("auto", cpu_bf16=cpu_bf16, props=props, model_name=mf.name)
            if choice.precision in ov_runs and (mf.path, "openvino", choice.precision) not in skipped:
                skipped[(mf.path, "openvino", "auto")] = f"same as {choice.precision}"
                notes.append(f"{choice.note}; measured once, as its openvino {choice.precision} rows")
    return skipped, notes


def spread(files: Sequence[Path], n: int) -> list[Path]:
    """At most ``n`` of ``files``, evenly spaced (a sorted folder is grouped by class: take from each)."""
    if len(files) <= n:
        return list(files)
    return [files[i * len(files) // n] for i in range(n)]


def top1(predictor: Predictor, grays: Sequence[np.ndarray], fixed_batch: int | None = None) -> np.ndarray:
    """The top-1 class of every image (batches of 8, or the graph's fixed batch, padded at the end)."""
    step = fixed_batch or 8
    out: list[np.ndarray] = []
    for start in range(0, len(grays), step):
        chunk = list(grays[start : start + step])
        n = len(chunk)
        if fixed_batch is not None:
            chunk += [chunk[-1]] * (step - n)
        probs = predictor.run(predictor.prepare(chunk)).probabilities[:n]
        out.append(np.argmax(probs, axis=1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


@dataclass
class AgreementCheck:
    """The real images, the FP32 reference (its top-1 computed when first needed), each run's agreement."""

    grays: tuple[np.ndarray, ...]
    fp32: ModelFile  # the reference file, run on onnxruntime's CPU provider
    reference: np.ndarray | None = None
    done: dict[tuple[str, str, str], Mapping[str, Any]] = field(default_factory=dict)

    @property
    def reference_name(self) -> str:
        return f"{self.fp32.name} fp32 on onnxruntime cpu"

    def of(
        self, key: tuple[str, str, str], predictor: Predictor, precision: str, mf: ModelFile
    ) -> Mapping[str, Any] | None:
        """Top-1 agreement of ``predictor`` with the reference (None for FP32 rows: nothing is reduced)."""
        if precision == "fp32":
            return None
        if self.reference is None:
            reference, _ = open_predictor(self.fp32.path, "cpu", None, False)
            self.reference = top1(reference, self.grays, self.fp32.fixed_batch)
        if key not in self.done:
            labels = top1(predictor, self.grays, mf.fixed_batch)
            self.done[key] = {
                "top1": float(np.mean(labels == self.reference)),
                "images": int(labels.size),
                "reference": self.reference_name,
            }
        return self.done[key]


def agreement_check(cfg: BenchConfig, files: Sequence[ModelFile], notes: list[str]) -> AgreementCheck | None:
    """Decode the agreement images (None, with a note, when no file is FP32: there is no reference)."""
    if cfg.agreement_folder is None:
        return None
    chosen = spread(list_images(cfg.agreement_folder), cfg.agreement_images)
    fp32 = next((mf for mf in files if mf.precision == "fp32"), None)
    if fp32 is None:
        notes.append("top-1 agreement not measured: none of the model files is FP32 (the reference)")
        return None
    grays: list[np.ndarray] = []
    for path in chosen:
        try:
            grays.append(decode_gray(path))
        except CxrError as e:  # one unreadable file is left out of the check, not the run
            notes.append(f"agreement: skipped {path.name}: {e.message}")
    return AgreementCheck(tuple(grays), fp32)
