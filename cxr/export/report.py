"""A run's export contract and report: ``RunExportConfig``, ``MemberReport``, ``RunExportResult``, and
their JSON and Markdown.

Takes: the reports ``cxr.export.run_export`` fills and its ``RunExportConfig``. Makes:
``RUN_DIR/onnx/export_report.{json,md}`` (or ``verify_report.*``); ``format_table`` gives the tables as
plain text for the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr.errors import ConfigError
from cxr.export.export_types import (
    DEFAULT_EXTERNAL_DATA_THRESHOLD,
    DEFAULT_INT8_MAX_PROBABILITY_CHANGE,
    DEFAULT_OPSET,
    Exporter,
)
from cxr.export.quantize import DEFAULT_MIN_AGREEMENT, VARIANTS
from cxr.export.verify import FP32_ATOL
from cxr.labels import NOTICE
from cxr.markdown import table

if TYPE_CHECKING:
    from cxr.export.export_types import ExportResult
    from cxr.export.quantize import VariantResult
    from cxr.export.verify import VerifyReport

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
    max_calib_images: int = 300  # INT8 calibration: train images (NNCF's subset_size)
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    int8_fast_bias_correction: bool = False  # NNCF's fast bias correction (cxr.export.quantize.Int8Config)
    int8_max_probability_change: float = DEFAULT_INT8_MAX_PROBABILITY_CHANGE  # INT8 accuracy control's bar
    int8_accuracy_control: bool = True  # INT8: NNCF's accuracy control (cxr.export.quantize.Int8Config)
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
        """Every field (the export, parity and variant reports too) and the verdict, as plain values."""
        return {**asdict(self), "passed": self.passed}


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


def write_run_report(result: RunExportResult, cfg: RunExportConfig) -> None:
    report = {
        "kind": result.kind,
        "run_dir": str(cfg.run_dir),
        "settings": json.loads(json.dumps(asdict(cfg), default=str)),
        "inputs": dict(result.inputs),
        "passed": not result.failed,
        "failed": list(result.failed),
        "members": [m.to_dict() for m in result.members],
        "notice": NOTICE,
    }
    result.report_json.parent.mkdir(parents=True, exist_ok=True)
    result.report_json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    result.report_md.write_text(format_markdown(result), encoding="utf-8")


def _fp32_row(m: MemberReport) -> list[str]:
    e, p, card = m.export, m.parity, m.card
    size = e.size_bytes if e else None
    if e is None and m.path is not None and m.path.is_file():
        size = m.path.stat().st_size
    flops = e.flops_per_image if e else card.get("flops_per_image")
    simplified = e.simplified if e else card.get("simplified")
    return [
        m.name,
        m.timm_name,
        str(e.exporter if e else card.get("exporter", "-")),
        str(e.opset if e else card.get("opset", "-")),
        "-" if simplified is None else ("yes" if simplified else "no"),
        "-" if size is None else f"{size / 2**20:.1f}",
        "-" if flops is None else f"{float(flops) / 1e9:.3g}",
        f"{e.seconds:.1f}" if e else "-",
        "/".join(str(c.batch) for c in e.batch_checks if c.passed) if e else "-",
        str(p.n) if p else "-",
        f"{p.max_abs:.1e}" if p else "-",
        f"{p.max_rel:.1e}" if p else "-",
        f"{p.top1_agreement:.2%}" if p else "-",
        "PASS" if m.passed else "FAIL",
    ]


FP32_HEADER = (
    "member,timm,exporter,opset,simplified,MiB,GFLOP/img,export s,batches ok,n,max abs,max rel,top-1,verdict"
).split(",")
VARIANT_HEADER = ["member", "precision", "n", "top-1 vs fp32", "max prob drift", "MiB", "seconds", "status"]


def _variant_rows(result: RunExportResult) -> list[list[str]]:
    return [
        [
            m.name,
            v.precision,
            str(v.report.n) if v.report else "-",
            f"{v.report.top1_agreement:.2%}" if v.report else "-",
            f"{v.report.max_abs:.1e}" if v.report else "-",
            f"{v.size_bytes / 2**20:.1f}" if v.usable else "-",
            f"{v.seconds:.1f}",
            "usable" if v.usable else f"NOT USABLE: {v.reason}",
        ]
        for m in result.members
        for v in m.variants
    ]


def _notes(result: RunExportResult, exporters: bool) -> list[str]:
    """Errors, notes, (with ``exporters``) why each exporter was chosen, and why a graph was not simplified."""
    ms = result.members
    notes = [f"{m.name}: {m.error}" for m in ms if m.error] + [f"{m.name}: {n}" for m in ms for n in m.notes]
    if exporters:
        notes += [
            f"{m.name}: exporter {m.export.exporter}: {m.export.exporter_reason}" for m in ms if m.export
        ]
    notes += [
        f"{m.name}: not simplified: {m.export.simplify_reason}"
        for m in ms
        if m.export and not m.export.simplified
    ]
    return notes


def format_table(result: RunExportResult) -> str:
    """Plain-text tables (FP32 parity, then variants) and any errors, for the terminal."""
    tables = [(FP32_HEADER, [_fp32_row(m) for m in result.members]), (VARIANT_HEADER, _variant_rows(result))]
    parts = []
    for i, (header, rows) in enumerate(tables):
        if rows or i == 0:
            widths = [
                max(len(h), *(len(r[j]) for r in rows)) if rows else len(h) for j, h in enumerate(header)
            ]
            fmt = "  ".join(f"{{:<{w}}}" for w in widths)
            parts.append("\n".join([fmt.format(*header), *(fmt.format(*r) for r in rows)]))
    return "\n\n".join(parts + _notes(result, exporters=False))


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(table(header, ([cell.replace("|", "/") for cell in row] for row in rows)))


def format_markdown(result: RunExportResult) -> str:
    title = "Export report" if result.kind == "export" else "Verification report"
    lines = [
        f"# {title}",
        "",
        "FP32: onnxruntime (CPU) vs PyTorch (eval) on the same preprocessed inputs; class probabilities "
        "(softmax of the logits). Pass: top-1 agrees on every image and max abs difference <= the tolerance.",
        f"Inputs: {json.dumps(dict(result.inputs), default=str)}",
        "",
        _markdown_table(FP32_HEADER, [_fp32_row(m) for m in result.members]),
    ]
    vrows = _variant_rows(result)
    if vrows:
        lines += ["", "## Variants (vs the FP32 ONNX model, onnxruntime CPU, on images only)", ""]
        lines.append(_markdown_table(VARIANT_HEADER, vrows))
    notes = _notes(result, exporters=True)
    if notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join([*lines, "", f"_{NOTICE}_", ""])
