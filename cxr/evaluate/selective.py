"""Selective prediction on the evaluated split: accuracy of the images kept against the share kept.

Takes: each image's correctness under the stacked ensemble and its confidence (the top calibrated
probability), and, where the fused graph exists, the input gate's verdict on the same images. Makes a
``SelectiveReport``: the risk-coverage curve (the most confident images kept first) with Wilson intervals,
and the point where the gate sits (the share it keeps, and the accuracy on those).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.evaluate.stats import Interval, wilson_interval
from cxr.markdown import table

COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


@dataclass(frozen=True)
class CoveragePoint:
    """``kept`` of ``n`` images kept, ``correct`` of them right, with the accuracy's Wilson interval."""

    n: int
    kept: int
    correct: int
    accuracy_ci: Interval

    @property
    def coverage(self) -> float:
        return self.kept / self.n if self.n else 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.kept if self.kept else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "coverage": self.coverage,
            "kept": self.kept,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "accuracy_ci": self.accuracy_ci.to_list(),
        }


@dataclass(frozen=True)
class SelectiveReport:
    curve: tuple[CoveragePoint, ...]  # by confidence, from all images kept down
    gate: CoveragePoint | None = None  # None: no fused graph to run the gate with (``note`` says why)
    refused_by: Mapping[str, int] = field(default_factory=dict)  # reason code -> images refused for it
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranked_by": "the stacked ensemble's top calibrated probability",
            "curve": [p.to_dict() for p in self.curve],
            "gate": None
            if self.gate is None
            else {**self.gate.to_dict(), "refused_by": dict(self.refused_by)},
            "note": self.note,
        }


def kept_point(correct: np.ndarray, kept: np.ndarray, level: float = 0.95) -> CoveragePoint:
    """The point of the images where ``kept`` (bool [N]) is true; ``correct`` (bool [N]) is per image."""
    correct, kept = np.asarray(correct, bool), np.asarray(kept, bool)
    k, right = int(kept.sum()), int(correct[kept].sum())
    return CoveragePoint(int(correct.size), k, right, wilson_interval(right, k, level))


def risk_coverage(
    correct: np.ndarray, confidence: np.ndarray, coverages: Sequence[float] = COVERAGES, level: float = 0.95
) -> tuple[CoveragePoint, ...]:
    """One point per coverage: the round(coverage * N) most confident images kept (ties: the split's order)."""
    order = np.argsort(-np.asarray(confidence, np.float64), kind="stable")
    n = len(order)
    points = []
    for c in coverages:
        kept = np.zeros(n, bool)
        kept[order[: max(1, int(round(c * n)))]] = True
        points.append(kept_point(correct, kept, level))
    return tuple(points)


def gate_verdicts(fused: Path, paths: Sequence[Path], batch: int = 16) -> tuple[np.ndarray, Counter[str]]:
    """The input gate of the fused graph ``fused`` on ``paths``: (assessable [N] bool, reason code counts);
    the rules the runtime applies (DICOM header, grey range, out-of-distribution score over the card's
    threshold), from the same graph."""
    from cxr.export.onnx_files import read_metadata
    from cxr.imaging.decode import decode_gray
    from cxr.imaging.gate import dicom_file_reasons, grey_range_reason, ood_reason, ood_threshold
    from cxr.imaging.preprocess import to_model_input
    from cxr.session import cpu_session
    from cxr.spec import INPUT_IMAGE, OUTPUT_OOD_SCORE, Reason

    meta = read_metadata(fused)
    threshold = ood_threshold(meta.card)
    sess = cpu_session(fused, None)
    has_score = OUTPUT_OOD_SCORE in {o.name for o in sess.get_outputs()}
    reasons: list[list[str]] = []
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        grays = [decode_gray(p) for p in chunk]
        scores = [None] * len(chunk)
        if has_score and threshold is not None:
            images = to_model_input(
                grays, meta.preprocess, normalized=meta.input_format == "float_normalized"
            )
            scores = list(sess.run([OUTPUT_OOD_SCORE], {INPUT_IMAGE: images})[0])
        for path, gray, score in zip(chunk, grays, scores, strict=True):
            dicom = Path(path).suffix.lower() == ".dcm"
            found: list[Reason | None] = list(dicom_file_reasons(Path(path).read_bytes()) if dicom else ())
            found += [grey_range_reason(gray), None if score is None else ood_reason(float(score), threshold)]
            reasons.append(sorted({r.code for r in found if r is not None}))
    return np.array([not r for r in reasons], bool), Counter(c for r in reasons for c in r)


def selective_report(
    correct: np.ndarray,
    confidence: np.ndarray,
    fused: Path | None,
    paths: Sequence[Path],
    level: float = 0.95,
) -> SelectiveReport:
    """The curve, and the gate's point when ``fused`` (the run's fused graph) exists."""
    curve = risk_coverage(correct, confidence, level=level)
    if fused is None or not Path(fused).is_file():
        return SelectiveReport(
            curve, note="no fused graph (run `cxr fuse` first): the gate's point is left out"
        )
    assessable, refused_by = gate_verdicts(Path(fused), paths)
    return SelectiveReport(
        curve, kept_point(correct, assessable, level), dict(refused_by), note=f"gate of {Path(fused).name}"
    )


def selective_markdown(report: SelectiveReport, split: str) -> list[str]:
    """The report's section: the curve as a table, then the gate's point in a sentence."""
    rows = [[f"{p.coverage:.0%}", f"{p.kept}", f"{p.accuracy:.1%}", _ci(p.accuracy_ci)] for p in report.curve]
    lines = [
        "",
        "## Selective prediction",
        "",
        f"Accuracy of the stacked ensemble on the {split} images it is most confident about, against the share "
        "kept (95% Wilson intervals). An image the input gate marks not assessable is one the ensemble should "
        "not be read on (not a chest radiograph, wrongly windowed, or unlike the training images); the "
        "result is still shown, marked.",
        "",
        *table(["kept", "images", "accuracy", "95% CI"], rows),
        "",
    ]
    g = report.gate
    if g is None:
        return [*lines, f"Input gate: {report.note}.", ""]
    why = ", ".join(f"{code} {n}" for code, n in sorted(report.refused_by.items())) or "none"
    return [
        *lines,
        f"Input gate ({report.note}): keeps {g.kept} of {g.n} images ({g.coverage:.1%}; refused: {why}); "
        f"accuracy on the kept images {g.accuracy:.1%} (95% CI {_ci(g.accuracy_ci)}) "
        f"vs {report.curve[0].accuracy:.1%} on all.",
        "",
    ]


def _ci(i: Interval) -> str:
    return "-" if i.low is None or i.high is None else f"{i.low:.1%}-{i.high:.1%}"
