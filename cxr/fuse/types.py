"""``FuseConfig`` in, one ``FusedFile`` per precision, ``FuseResult`` out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr.errors import ConfigError
from cxr.fuse.members import VARIANT_SUFFIXES
from cxr.fuse.verify import EndToEndReport, ParityReport


@dataclass(frozen=True)
class FuseConfig:
    out: Path
    variants: tuple[str, ...] = ()  # "fp16", "int8": built from <name>.<variant>.onnx beside each member
    input_size: tuple[int, int] | None = None  # None: the largest member input size
    simplify: bool = True
    run_dir: Path | None = None  # given: verify end to end against the PyTorch test predictions
    e2e_max_images: int | None = None
    e2e_strict: bool = True
    batches: tuple[int, ...] = (1, 8)
    tolerance: float = 1e-5
    variant_tolerance: float = 1e-3
    external_data_threshold: int = 1_800_000_000  # weight bytes above which the weights go to external data
    benchmark_runs: int = 0  # > 0: measure fused vs separate latency at batch 1
    threads: int | None = None
    seed: int = 0
    report: bool = True
    bf16_check: bool = True  # given run_dir and openvino: verify OpenVINO BF16 on real images, record it
    min_agreement: float = 0.99  # the BF16 and INT8 bar: top-1 agreement with FP32 (as INT8's at export)
    bf16_check_images: int = 200
    check_images: Path | None = None  # real images for the BF16 check (a folder or run dir); None: run_dir
    int8_check: bool = (
        True  # given run_dir and an int8 variant: its verdict on the test split (cxr.fuse.int8_check)
    )
    int8_sensitivity_points: float = (
        1.0  # INT8's second bar: no class's operating-point sensitivity moves more
    )
    heatmaps: bool = False  # also build <stem>.heatmaps.onnx (cxr.fuse.heatmap_file)
    ood: bool = True  # given run_dir: fit the out-of-distribution score (cxr.fuse.ood), output ood_score
    ood_max_train: int = 2000  # training images it is fitted on at most (a seeded sample)
    ood_quantile: float = 0.97  # its threshold: this quantile of held-out scores (cxr.fuse.ood.fit_scores)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANT_SUFFIXES]
        if unknown:
            raise ConfigError(
                f"unknown variant(s) {', '.join(unknown)}", hint=f"use any of {', '.join(VARIANT_SUFFIXES)}"
            )
        if self.input_size is not None and min(self.input_size) < 8:
            raise ConfigError(f"input_size {self.input_size} is too small", hint="use at least 8x8")
        if not 0.0 < self.min_agreement <= 1.0:
            raise ConfigError(
                f"min_agreement {self.min_agreement} must be in (0, 1]", hint="for example 0.99"
            )
        if not 0.5 <= self.ood_quantile < 1.0:
            raise ConfigError(
                f"ood_quantile {self.ood_quantile} must be in [0.5, 1)",
                hint="for example 0.97 (about 3 in 100 ordinary radiographs refused)",
            )
        if not self.batches or min(self.batches) < 1:
            raise ConfigError(f"batches {self.batches} must be positive", hint="for example 1 8")


@dataclass(frozen=True)
class FusedFile:
    precision: str
    path: Path
    sha256: str
    bytes: int
    external_data: bool
    simplified: bool
    simplify_note: str
    parity: ParityReport
    drift_vs_fp32: dict[str, float] | None = None
    float_members: dict[str, str] | None = None  # INT8: {member run in FP32: why}; None for other precisions


@dataclass(frozen=True)
class HeatmapFile:
    path: Path
    sha256: str
    parity: ParityReport
    mapped: tuple[str, ...]
    excluded: dict[str, str]
    max_abs_logit_identity: float  # max |mean(class map) - logit| over mapped members
    max_abs_diff_vs_numpy: float  # fused heatmaps vs the numpy reference


@dataclass(frozen=True)
class FuseResult:
    path: Path
    input_size: tuple[int, int]
    member_order: tuple[str, ...]
    files: dict[str, FusedFile]  # "fp32", and each built variant
    skipped_variants: dict[str, str]
    end_to_end: EndToEndReport | None
    latency: dict[str, Any] | None
    resizes: tuple[dict[str, Any], ...]
    verified_precisions: dict[str, dict[str, Any]] = field(default_factory=dict)  # "openvino_bf16": record
    report_json: Path | None = None
    report_md: Path | None = None
    warnings: tuple[str, ...] = field(default=())
    heatmaps: HeatmapFile | None = None
    ood: dict[str, Any] | None = None  # the out-of-distribution score's card entry, when fitted

    @property
    def parity(self) -> ParityReport:
        return self.files["fp32"].parity
