"""Takes the export and fuse stages' results; makes one console line per verification (numbers and verdict)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cxr.export.run_export import MemberReport, RunExportResult
    from cxr.export.verify import VerifyReport
    from cxr.fuse import FuseResult

INDENT = "  "


def _judged_agreement(r: VerifyReport) -> float:
    """Top-1 agreement as the verdict counts it: exact ties in the reference are not held against it."""
    return 1.0 - (r.n_disagree - r.n_ties) / r.n if r.n else 1.0


def _ties(r: VerifyReport) -> str:
    return f", {r.n_ties} exact tie(s) not counted" if r.n_ties else ""


def _fp32_line(m: MemberReport, width: int) -> str:
    head = f"{INDENT}{m.name:<{width}}  ONNX fp32 vs PyTorch"
    p = m.parity
    if p is None:  # the exporter's own check refused the graph before parity could be measured
        return f"{head}: FAIL ({m.error})"
    verdict = "PASS" if m.passed else f"FAIL ({'; '.join(p.reasons) or m.error})"
    bar = f" <= {p.atol:g}" if p.atol is not None else ""
    return (
        f"{head} on {p.n} inputs: max |dp| {p.max_abs:.1e}{bar}, "
        f"top-1 agreement {p.top1_agreement:.1%}{_ties(p)} -> {verdict}"
    )


def _variant_lines(m: MemberReport, width: int) -> list[str]:
    lines = []
    for v in m.variants:
        head = f"{INDENT}{m.name:<{width}}  {v.precision.upper()}"
        r = v.report
        if r is None:
            lines.append(f"{head}: refused ({v.reason})")
            continue
        judged = _judged_agreement(r)
        relation = ">=" if judged >= r.min_top1 else "<"
        numbers = (
            f"top-1 agreement with FP32 {judged:.1%} {relation} bar {r.min_top1:.0%} on {r.n} images"
            f"{_ties(r)}, max |dp| {r.max_abs:.1e}"
        )
        lines.append(f"{head}: {numbers} -> {'accepted' if v.usable else 'refused (not used)'}")
    return lines


def export_verdicts(result: RunExportResult) -> list[str]:
    """Per member: FP32 parity with PyTorch, then each variant's decision; then what follows from them."""
    width = max((len(m.name) for m in result.members), default=0)
    lines: list[str] = []
    for m in result.members:
        lines.append(_fp32_line(m, width))
        lines += _variant_lines(m, width)
    refused: dict[str, list[str]] = {}
    for m in result.members:
        for v in m.variants:
            if not v.usable:
                refused.setdefault(v.precision, []).append(m.name)
    for precision, names in refused.items():
        follows = (
            f"{'it runs' if len(names) == 1 else 'they run'} in FP32 inside the INT8 ensemble"
            if precision == "int8"
            else f"the {precision.upper()} ensemble needs every member, so it will not be built"
        )
        lines.append(f"{INDENT}{precision.upper()} refused for {', '.join(names)}: {follows}")
    failed = result.failed
    passed = len(result.members) - len(failed)
    summary = f"{passed} of {len(result.members)} members match PyTorch"
    lines.append(f"{INDENT}{summary}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return lines


def fuse_verdicts(result: FuseResult) -> list[str]:
    """The fused graph (each precision) vs the separate pipeline, skipped variants, and the end-to-end check."""
    lines = []
    for f in result.files.values():
        p = f.parity
        worst = max(p.max_abs_diff_probabilities, p.max_abs_diff_member_probabilities)
        ok = worst <= p.tolerance and p.labels_equal
        relation = "<=" if worst <= p.tolerance else ">"
        batches = ", ".join(str(b) for b in p.batches)
        lines.append(
            f"{INDENT}fused {f.precision} vs separate members + meta-learner (batches {batches}): "
            f"max |dp| {worst:.1e} {relation} {p.tolerance:g}, labels {'identical' if p.labels_equal else 'DIFFER'} "
            f"-> {'PASS' if ok else 'FAIL'}"
        )
    for precision, why in result.skipped_variants.items():
        lines.append(f"{INDENT}fused {precision}: not built ({why})")
    hm = result.heatmaps
    if hm is not None:
        left_out = f"; left out: {', '.join(hm.excluded)} (no spatial map)" if hm.excluded else ""
        lines.append(
            f"{INDENT}heatmaps ({', '.join(hm.mapped)}{left_out}): class-map mean = member logits within "
            f"{hm.max_abs_logit_identity:.1e}, ensemble map = numpy rule within {hm.max_abs_diff_vs_numpy:.1e} -> PASS"
        )
    e = result.end_to_end
    if e is not None:
        top1 = "top-1 identical" if e.top1_identical else f"top-1 differs on {len(e.mismatches)}"
        lines.append(
            f"{INDENT}fused fp32 vs PyTorch members + scikit-learn meta-learner on {e.n} test images: "
            f"{top1}, max |dp| {e.max_abs_diff_probabilities:.1e} -> {'PASS' if e.top1_identical else 'FAIL'}"
        )
    return lines
