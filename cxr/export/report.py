"""Write the export/verification report of a run: JSON for machines, a Markdown table for people.

Takes: a ``RunExportResult`` and the ``RunExportConfig`` that produced it. Makes:
``RUN_DIR/onnx/export_report.{json,md}`` (or ``verify_report.*``). ``format_table`` gives the same table as
plain text for the CLI.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from cxr.labels import NOTICE

if TYPE_CHECKING:
    from cxr.export.run_types import MemberReport, RunExportConfig, RunExportResult


def report_dict(result: RunExportResult, cfg: RunExportConfig) -> dict[str, Any]:
    settings = json.loads(json.dumps(asdict(cfg), default=str))
    return {
        "kind": result.kind,
        "run_dir": str(cfg.run_dir),
        "settings": settings,
        "inputs": dict(result.inputs),
        "passed": not result.failed,
        "failed": list(result.failed),
        "members": [m.to_dict() for m in result.members],
        "notice": NOTICE,
    }


def write_run_report(result: RunExportResult, cfg: RunExportConfig) -> None:
    result.report_json.parent.mkdir(parents=True, exist_ok=True)
    result.report_json.write_text(
        json.dumps(report_dict(result, cfg), indent=2, default=str), encoding="utf-8"
    )
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


FP32_HEADER = [
    "member",
    "timm",
    "exporter",
    "opset",
    "simplified",
    "MiB",
    "GFLOP/img",
    "export s",
    "batches ok",
    "n",
    "max abs",
    "max rel",
    "top-1",
    "verdict",
]
VARIANT_HEADER = ["member", "precision", "n", "top-1 vs fp32", "max prob drift", "MiB", "seconds", "status"]


def _variant_rows(m: MemberReport) -> list[list[str]]:
    rows = []
    for v in m.variants:
        r = v.report
        rows.append(
            [
                m.name,
                v.precision,
                str(r.n) if r else "-",
                f"{r.top1_agreement:.2%}" if r else "-",
                f"{r.max_abs:.1e}" if r else "-",
                f"{v.size_bytes / 2**20:.1f}" if v.usable else "-",
                f"{v.seconds:.1f}",
                "usable" if v.usable else f"NOT USABLE: {v.reason}",
            ]
        )
    return rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), *(fmt.format(*r) for r in rows)])


def format_table(result: RunExportResult) -> str:
    """Plain-text tables (FP32 parity, then variants) and any errors, for the terminal."""
    parts = [_text_table(FP32_HEADER, [_fp32_row(m) for m in result.members])]
    vrows = [r for m in result.members for r in _variant_rows(m)]
    if vrows:
        parts.append(_text_table(VARIANT_HEADER, vrows))
    parts += [f"{m.name}: {m.error}" for m in result.members if m.error]
    parts += [f"{m.name}: {note}" for m in result.members for note in m.notes]
    parts += [
        f"{m.name}: not simplified: {m.export.simplify_reason}"
        for m in result.members
        if m.export and not m.export.simplified
    ]
    return "\n\n".join(parts)


def format_markdown(result: RunExportResult) -> str:
    title = "Export report" if result.kind == "export" else "Verification report"
    inputs = result.inputs
    lines = [
        f"# {title}",
        "",
        "FP32: onnxruntime (CPU) vs PyTorch (eval) on the same preprocessed inputs; class probabilities "
        "(softmax of the logits). Pass: top-1 agrees on every image and max abs difference <= the tolerance.",
        f"Inputs: {json.dumps(dict(inputs), default=str)}",
        "",
        _markdown_table(FP32_HEADER, [_fp32_row(m) for m in result.members]),
    ]
    vrows = [r for m in result.members for r in _variant_rows(m)]
    if vrows:
        lines += [
            "",
            "## Variants (vs the FP32 ONNX model, onnxruntime CPU, on images only)",
            "",
            _markdown_table(VARIANT_HEADER, vrows),
        ]
    notes = [f"- {m.name}: {m.error}" for m in result.members if m.error]
    notes += [f"- {m.name}: {n}" for m in result.members for n in m.notes]
    notes += [
        f"- {m.name}: exporter {m.export.exporter}: {m.export.exporter_reason}"
        for m in result.members
        if m.export
    ]
    notes += [
        f"- {m.name}: not simplified: {m.export.simplify_reason}"
        for m in result.members
        if m.export and not m.export.simplified
    ]
    if notes:
        lines += ["", "## Notes", "", *notes]
    lines += ["", f"_{NOTICE}_", ""]
    return "\n".join(lines)
