"""``fuse_report.json`` and ``fuse_report.md``: what `cxr fuse` built and how it was verified."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr import __version__
from cxr.labels import NOTICE
from cxr.markdown import table
from cxr.spec import (
    CARD_CALIBRATION,
    INPUT_IMAGE,
    OUTPUT_LABEL,
    OUTPUT_MEMBER_PROBABILITIES,
    OUTPUT_PROBABILITIES,
)

if TYPE_CHECKING:
    from cxr.fuse.members import MemberModel
    from cxr.fuse.types import FusedFile, FuseResult, HeatmapFile


def false_refusal_text(card: dict[str, Any]) -> str:
    """How many held-out radiographs a card's threshold refuses, with the 95% interval, in words."""
    fr = card.get("false_refusal") or {}
    if not fr.get("of"):
        return "false-refusal rate not estimated"
    lo, hi = fr["ci95"]
    return (
        f"refuses {fr['refused']} of {fr['of']} held-out radiographs, {fr['estimate']:.1%} "
        f"(95% CI {lo:.1%}-{hi:.1%})"
    )


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _file_dict(f: FusedFile | HeatmapFile) -> dict[str, Any]:
    """A built file's fields, its ``parity`` named ``parity_vs_separate``."""
    return {("parity_vs_separate" if k == "parity" else k): v for k, v in asdict(f).items()}


def fuse_report_dict(
    result: FuseResult, meta_info: Mapping[str, Any], members: Sequence[MemberModel]
) -> dict[str, Any]:
    return {
        "notice": NOTICE,
        "cxr_version": __version__,
        "ensemble": str(result.path),
        "input": {"name": INPUT_IMAGE, "dtype": "uint8", "shape": ["N", 1, *result.input_size]},
        "outputs": {
            OUTPUT_PROBABILITIES: ["N", "K"],
            OUTPUT_LABEL: ["N"],
            OUTPUT_MEMBER_PROBABILITIES: ["N", "M", "K"],
        },
        "member_order": list(result.member_order),
        "members": [
            {
                "name": m.name,
                "path": str(m.path),
                "onnx_sha256": m.sha256,
                "input_size": list(m.input_size),
                "timm_name": m.card.get("timm_name"),
                "checkpoint_sha256": m.card.get("checkpoint_sha256"),
            }
            for m in members
        ],
        "meta": {
            k: meta_info.get(k) for k in ("type", "params", "cv_score", "cv_metric", "val_metrics", "source")
        },
        "calibration": meta_info.get(CARD_CALIBRATION),
        "files": {p: _file_dict(f) for p, f in result.files.items()},
        "skipped_variants": result.skipped_variants,
        "verified_precisions": dict(result.verified_precisions),
        "resizes_in_graph": list(result.resizes),
        "end_to_end": None if result.end_to_end is None else asdict(result.end_to_end),
        "latency": result.latency,
        "heatmaps": None if result.heatmaps is None else _file_dict(result.heatmaps),
        "ood": result.ood,
        "warnings": list(result.warnings),
    }


def fuse_report_markdown(d: Mapping[str, Any]) -> str:
    """The Markdown report from ``fuse_report_dict``'s dictionary."""
    lines = [*_summary_lines(d), *_files_table(d)]
    for v, why in d["skipped_variants"].items():
        lines.append(f"\n{v} ensemble not built: {why}.")
    for f in d["files"].values():
        if in_float := f.get("float_members"):
            lines.append(f"\n`{Path(f['path']).name}` runs these members in FP32:")
            lines += [f"- {name}: {why}" for name, why in in_float.items()]
    for name, rec in (d.get("verified_precisions") or {}).items():
        if "kinds" in rec:  # an INT8 record (cxr.fuse.int8_check): a verdict per CPU kind
            lines.append(f"\n{name} (`{rec['file']}` vs FP32 on {rec['images']} {rec['split']} images):")
            lines += [
                f"- {kind}: {'accepted' if e['accepted'] else 'refused'}: {e['reason']}"
                for kind, e in rec["kinds"].items()
            ]
            continue
        verdict = "accepted" if rec.get("accepted") else "refused"
        lines.append(f"\n{name} (the FP32 file run by OpenVINO in BF16): {verdict}: {rec.get('reason')}.")
    if hm := d.get("heatmaps"):
        left_out = "; ".join(f"{n}: {why}" for n, why in hm["excluded"].items()) or "none"
        lines.append(
            f"\nHeatmaps: `{hm['path']}` maps {', '.join(hm['mapped'])} (left out: {left_out}); each class map's "
            f"spatial mean equals the member's logit within {hm['max_abs_logit_identity']:.2g}, the heatmaps "
            f"equal the numpy rule within {hm['max_abs_diff_vs_numpy']:.2g}."
        )
    if ood := d.get("ood"):
        lines.append(
            f"\nOut-of-distribution score (output `ood_score`): fitted on {ood['n_train']} training images, "
            f"threshold {ood['threshold']:.3g} = the {ood['quantile']:.0%} quantile of held-out scores "
            f"({false_refusal_text(ood)}; {ood['val_flagged']} of {ood['n_val']} validation images above it). "
            f"Rule: {ood['rule']}."
        )
    lines.append("")
    lines += _end_to_end_lines(d.get("end_to_end"))
    lines += _latency_lines(d.get("latency"))
    if d["resizes_in_graph"]:
        lines += ["", "Per-member resize inside the graph:"]
        lines += [
            f"- {r['member']}: {r['from']} -> {r['to']} (Pillow pass order {r['pass_order']})"
            for r in d["resizes_in_graph"]
        ]
    if d["warnings"]:
        lines += ["", "Warnings:"] + [f"- {w}" for w in d["warnings"]]
    return "\n".join(lines) + "\n"


def _summary_lines(d: Mapping[str, Any]) -> list[str]:
    return [
        "# cxr fused ensemble",
        "",
        f"> {NOTICE}",
        "",
        f"- Graph: `{d['ensemble']}`; input `image` uint8 {d['input']['shape']}; outputs `probabilities` [N, K], "
        "`label` [N], `member_probabilities` [N, M, K]",
        f"- Members (feature order): {', '.join(d['member_order'])}",
        f"- Meta-learner: {d['meta'].get('type')} {json.dumps(d['meta'].get('params'))}, "
        f"cross-validated {d['meta'].get('cv_metric')} {_fmt(d['meta'].get('cv_score'))}",
        f"- Calibration: {_calibration_line(d.get('calibration'))}",
        "",
    ]


def _calibration_line(cal: Any) -> str:
    """The temperature built into the graph and what it was fitted on, or why there is none."""
    if not isinstance(cal, Mapping):
        return "not recorded (a meta-learner made before cxr recorded calibration)"
    if cal.get("skipped"):
        return f"{cal['skipped']}; T = 1"
    if cal.get("method") != "temperature":
        return "none (T = 1)"
    return f"temperature T = {_fmt(cal.get('temperature'))} fitted on {cal.get('n')} validation predictions"


def _files_table(d: Mapping[str, Any]) -> list[str]:
    """One row per fused file: size, simplification, parity with the separate pipeline, drift vs FP32."""
    rows = []
    for f in d["files"].values():
        par, drift = f["parity_vs_separate"], f["drift_vs_fp32"]
        diff = max(par["max_abs_diff_probabilities"], par["max_abs_diff_member_probabilities"])
        drift_s = "-"
        if drift:
            drift_s = (
                f"max {_fmt(drift['max_abs_diff_probabilities'])}, top-1 agree {drift['top1_agreement']:.0%}"
            )
        name = f"`{Path(f['path']).name}`"
        size = f"{f['bytes'] / 2**20:.1f}"
        parity = [f"{_fmt(diff)} (tol {par['tolerance']:g})", str(par["labels_equal"])]
        rows.append(
            [name, f["precision"], size, str(f["external_data"]), f["simplify_note"], *parity, drift_s]
        )
    head = ("file", "precision", "MiB", "external data", "simplified", "max abs diff vs separate")
    return table((*head, "labels equal", "drift vs FP32"), rows)


def _end_to_end_lines(e2e: Mapping[str, Any] | None) -> list[str]:
    if e2e is None:
        return ["End-to-end check against PyTorch: not run (no run directory given)."]
    lines = [
        f"End to end on {e2e['n']} test images (decoded and resized by cxr.imaging, fused graph) vs the members' "
        f"PyTorch test predictions + the scikit-learn meta-learner: top-1 "
        f"{'identical' if e2e['top1_identical'] else 'differs on ' + str(len(e2e['mismatches'])) + ' images'}; "
        f"max abs probability difference {_fmt(e2e['max_abs_diff_probabilities'])}.",
        "",
    ]
    agreement = [(name, f"{a:.1%}") for name, a in e2e["member_top1_agreement"].items()]
    return lines + table(("member", "top-1 agreement with PyTorch"), agreement)


def _latency_lines(lat: Mapping[str, Any] | None) -> list[str]:
    if not lat:
        return []
    return [
        "",
        f"Batch-1 CPU latency (median of {lat['runs']}, intra-op spinning off; shared machine, compare the ratio): "
        f"fused {lat['fused_ms_median']:.1f} ms, separate sessions {lat['separate_ms_median']:.1f} ms "
        f"(separate / fused = {_fmt(lat['separate_over_fused'])}).",
    ]


def write_fuse_report(
    result: FuseResult, out_dir: Path, meta_info: Mapping[str, Any], members: Sequence[MemberModel]
) -> tuple[Path, Path]:
    d = fuse_report_dict(result, meta_info, members)
    out_dir = Path(out_dir)
    js, md = out_dir / "fuse_report.json", out_dir / "fuse_report.md"
    js.write_text(json.dumps(d, indent=2, default=str), encoding="utf-8")
    md.write_text(fuse_report_markdown(d), encoding="utf-8")
    return js, md
