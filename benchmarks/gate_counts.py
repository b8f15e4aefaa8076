"""Takes a fused model and the real data in ../shared; makes the input gate's pass/refuse counts per test set.

Sets: the run's test split (real radiographs the model never trained on), ../shared/data/external-dev, the
real DICOM files, and things that must not pass (``tests/not_chest_factory.py``): generated photographs
and drawings, the test images inverted, and the test images wrongly windowed (crushed to a narrow grey band). Prints one Markdown row per set: files, predicted, assessable, not assessable with reason
codes, the refused share with its Wilson 95% interval, and errors. Uses the runtime and the manifest reader only (no torch).

Usage: python benchmarks/gate_counts.py runs/rehearse/ensemble.onnx runs/rehearse/manifest.csv
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr.data.manifest import load_manifest  # noqa: E402
from cxr.evaluate.stats import wilson_interval  # noqa: E402
from cxr.imaging.decode import decode_gray  # noqa: E402
from cxr.runtime.predictor import Predictor  # noqa: E402
from cxr.spec import Prediction  # noqa: E402
from tests.not_chest_factory import drawings as line_drawings  # noqa: E402
from tests.not_chest_factory import photographs, windowed  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def row(name: str, preds: list[Prediction]) -> str:
    ok = [p for p in preds if p.ok]
    refused = [p for p in ok if p.assessable is False]
    codes = Counter(r.code for p in refused for r in p.reasons)
    why = ", ".join(f"{c} {n}" for c, n in sorted(codes.items())) or "-"
    ci = wilson_interval(len(refused), len(ok))
    share = f"{len(refused) / len(ok):.1%} [{ci.low:.1%}, {ci.high:.1%}]" if ok else "-"
    return (
        f"| {name} | {len(preds)} | {len(ok)} | {len(ok) - len(refused)} | {len(refused)} ({why}) | {share} "
        f"| {len(preds) - len(ok)} |"
    )


def main(argv: list[str]) -> int:
    model, manifest = Path(argv[0]), Path(argv[1])
    predictor = Predictor.from_path(model)
    table = load_manifest(manifest)
    test = [table.abspath(r) for r in table.split("test")]
    grays = [decode_gray(p) for p in test]
    photos, drawings = photographs(30), line_drawings(30)
    rows = [
        row("test split (real, unseen)", predictor.predict(test)),
        row(
            "external-dev (real, other sources)",
            predictor.predict(sorted((SHARED / "external-dev").glob("*.*"))),
        ),
        row("DICOM (4 chest, 1 dental)", predictor.predict(sorted((SHARED / "dicom").glob("*.dcm")))),
        row("generated photographs", predictor.predict_arrays(photos)),
        row("generated drawings", predictor.predict_arrays(drawings)),
        row("test split inverted", predictor.predict_arrays([255 - g for g in grays])),
        row(
            "test split wrongly windowed",
            predictor.predict_arrays(windowed(grays)),
        ),
    ]
    print("| set | files | predicted | assessable | not assessable (reasons) | refused [95% CI] | errors |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
