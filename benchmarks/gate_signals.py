"""Takes a fused model and its run's manifest; makes the measurement behind dropping ``members_disagree``.

For the val and test splits: the accuracy of the images kept when each signal decides which to keep first
(the calibrated confidence, the share of members voting against the ensemble's class, that share weighted
by each member's validation accuracy, the out-of-distribution score), at several coverages, and the area
under the risk-coverage curve (lower: the signal sorts errors away better). Runtime only (no torch).

Usage: python benchmarks/gate_signals.py runs/rehearse/ensemble.onnx runs/rehearse/manifest.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cxr.data.manifest import load_manifest
from cxr.runtime.predictor import Predictor

COVERAGES = (1.0, 0.98, 0.95, 0.9, 0.8)


def arrays(predictor: Predictor, table, split: str) -> dict[str, np.ndarray]:
    rows = list(table.split(split))
    preds = predictor.predict([table.abspath(r) for r in rows])
    classes = list(preds[0].probabilities)
    return {
        "y": np.array([classes.index(r.label) for r in rows]),
        "p": np.array([list(p.probabilities.values()) for p in preds]),
        "m": np.array([[list(v.values()) for v in p.member_probabilities.values()] for p in preds]),
        "ood": np.array([p.ood_score for p in preds], float),
    }


def main(argv: list[str]) -> int:
    predictor = Predictor.from_path(Path(argv[0]))
    table = load_manifest(Path(argv[1]))
    val = arrays(predictor, table, "val")
    weights = (val["m"].argmax(2) == val["y"][:, None]).mean(0)  # each member's validation accuracy
    print("| split | signal | AURC (error) | " + " | ".join(f"acc @ {c:.0%}" for c in COVERAGES) + " |")
    print("|---|---|---|" + "---|" * len(COVERAGES))
    for split in ("val", "test"):
        d = val if split == "val" else arrays(predictor, table, split)
        label = d["p"].argmax(1)
        right = label == d["y"]
        against = d["m"].argmax(2) != label[:, None]
        signals = {
            "1 - calibrated confidence": 1 - d["p"].max(1),
            "members voting against": against.mean(1),
            "... weighted by val accuracy": (against * weights).sum(1) / weights.sum(),
            "out-of-distribution score": d["ood"],
        }
        for name, s in signals.items():
            order = np.argsort(s, kind="stable")  # lowest first: kept first
            kept = [right[order[: max(1, int(round(c * len(order))))]].mean() for c in COVERAGES]
            aurc = 1 - np.mean([right[order[:i]].mean() for i in range(1, len(order) + 1)])
            print(
                f"| {split} ({len(order)}) | {name} | {aurc:.3f} | "
                + " | ".join(f"{a:.1%}" for a in kept)
                + " |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
