"""The selective-prediction report: the risk-coverage curve and the gate's point, counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.evaluate.selective import SelectiveReport, kept_point, risk_coverage, selective_markdown

# ten images; by confidence, most first: 7 T, 3 T, 0 T, 5 T, 1 F, 2 T, 9 T, 4 F, 8 F, 6 T
CORRECT = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], bool)
CONFIDENCE = np.array([0.9, 0.8, 0.7, 0.95, 0.6, 0.85, 0.5, 0.99, 0.55, 0.65])


@pytest.mark.parametrize(
    ("coverage", "kept", "correct"),
    [(1.0, 10, 7), (0.9, 9, 6), (0.8, 8, 6), (0.7, 7, 6), (0.6, 6, 5), (0.5, 5, 4), (0.1, 1, 1)],
)
def test_risk_coverage_keeps_the_most_confident(coverage: float, kept: int, correct: int) -> None:
    (point,) = risk_coverage(CORRECT, CONFIDENCE, coverages=(coverage,))
    assert (point.n, point.kept, point.correct) == (10, kept, correct)
    assert point.coverage == pytest.approx(kept / 10) and point.accuracy == pytest.approx(correct / kept)
    assert point.accuracy_ci.low is not None and point.accuracy_ci.high is not None
    assert point.accuracy_ci.low <= point.accuracy <= point.accuracy_ci.high


def test_ties_keep_the_split_order() -> None:
    (point,) = risk_coverage(np.array([0, 1, 1], bool), np.array([0.5, 0.5, 0.5]), coverages=(1 / 3,))
    assert point.correct == 0  # the first image of the tie, not the luckiest


def test_gate_point_and_report_section() -> None:
    assessable = np.array([1, 1, 0, 1, 1, 1, 1, 1, 0, 1], bool)  # refuses images 2 (right) and 8 (wrong)
    gate = kept_point(CORRECT, assessable)
    assert (gate.kept, gate.correct, gate.coverage) == (8, 6, 0.8)
    report = SelectiveReport(
        risk_coverage(CORRECT, CONFIDENCE), gate, {"out_of_distribution": 2}, "gate of m.onnx"
    )
    text = "\n".join(selective_markdown(report, "test"))
    assert "| 100% | 10 | 70.0% |" in text and "| 50% | 5 | 80.0% |" in text
    assert "keeps 8 of 10 images (80.0%; refused: out_of_distribution 2)" in text
    assert "accuracy on the kept images 75.0%" in text and "vs 70.0% on all" in text
    js = report.to_dict()
    assert js["gate"]["kept"] == 8 and js["gate"]["refused_by"] == {"out_of_distribution": 2}
    assert [p["kept"] for p in js["curve"]] == [10, 10, 9, 8, 7, 6, 5]  # round(0.95 * 10) = 10


def test_without_a_fused_graph_the_gate_is_left_out_and_said() -> None:
    from pathlib import Path

    from cxr.evaluate.selective import selective_report

    report = selective_report(CORRECT, CONFIDENCE, Path("/nonexistent/ensemble.onnx"), [])
    assert report.gate is None and "cxr fuse" in report.note
    assert "Input gate: no fused graph" in "\n".join(selective_markdown(report, "test"))
