"""A run's export contract: ``RunExportConfig`` in, a ``MemberReport`` per member, ``RunExportResult`` out.

Takes: nothing (dataclasses and the run directory's folder names). Makes: the types that
``cxr.export.run_export`` fills and ``cxr.export.report`` writes, so neither module needs the other's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr.errors import ConfigError
from cxr.export.export_types import DEFAULT_EXTERNAL_DATA_THRESHOLD, DEFAULT_OPSET, Exporter, ExportResult
from cxr.export.quantize import DEFAULT_MIN_AGREEMENT, VARIANTS, VariantResult
from cxr.export.verify import FP32_ATOL, VerifyReport

ONNX_DIR = "onnx"
MEMBERS_DIR = "members"
REJECTED_SUFFIX = ".rejected"


@dataclass(frozen=True)
class RunExportConfig:
    run_dir: Path
    models: tuple[str, ...] | None = None  # None: every member under RUN_DIR/members
    variants: tuple[str, ...] = ()  # any of VARIANTS
    simplify: bool = True
    opset: int = DEFAULT_OPSET
    exporter: Exporter = "auto"
    which: str = "best"  # which checkpoint of each member
    manifest: Path | None = None  # default: RUN_DIR/manifest.csv, else the training config's manifest
    max_val_images: int = 64
    n_random: int = 8
    n_synthetic: int = 16
    max_calib_images: int = 64
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    atol: float = FP32_ATOL
    external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD
    threads: int | None = None
    seed: int = 0
    strict: bool = True  # raise VerificationError at the end when a member failed

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ConfigError(
                f"unknown variant(s) {', '.join(bad)}", hint=f"use any of {', '.join(VARIANTS)}"
            )
        for name in ("max_val_images", "n_random", "n_synthetic", "max_calib_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_val_images + self.n_synthetic + self.n_random == 0:
            raise ConfigError("no verification inputs: raise --max-val or the random/synthetic counts")


@dataclass(frozen=True)
class MemberReport:
    name: str
    timm_name: str
    path: Path | None  # the FP32 file, None when it was not written or was rejected
    export: ExportResult | None = None
    parity: VerifyReport | None = None
    variants: tuple[VariantResult, ...] = ()
    error: str | None = None  # why the FP32 model failed (None: it passed)
    notes: tuple[str, ...] = ()
    card: Mapping[str, Any] = field(default_factory=dict)  # the FP32 file's metadata card (verify runs)

    @property
    def passed(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "timm_name": self.timm_name,
            "path": None if self.path is None else str(self.path),
            "passed": self.passed,
            "error": self.error,
            "export": None if self.export is None else self.export.to_dict(),
            "parity": None if self.parity is None else self.parity.to_dict(),
            "variants": [v.to_dict() for v in self.variants],
            "notes": list(self.notes),
            **({"card": dict(self.card)} if self.card else {}),
        }


@dataclass(frozen=True)
class RunExportResult:
    kind: str  # "export" or "verify"
    members: tuple[MemberReport, ...]
    report_json: Path
    report_md: Path
    inputs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members if not m.passed)
