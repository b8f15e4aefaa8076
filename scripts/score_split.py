"""Score a fused cxr model on one split of a manifest with the torch-free runtime (torch made unimportable).

Takes: MODEL MANIFEST [SPLIT]. Prints accuracy and macro-F1 of the ensemble on that split's images and
writes nothing. Used by scripts/rehearse.sh to show the shipped graph itself on images it never saw.
"""

from __future__ import annotations

import sys

for blocked in ("torch", "timm", "sklearn", "onnx", "skl2onnx"):
    sys.modules[blocked] = None  # type: ignore[assignment]

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from cxr.data.manifest import load_manifest  # noqa: E402
from cxr.labels import NOTICE  # noqa: E402
from cxr.metrics import macro_f1_from_labels  # noqa: E402
from cxr.runtime.predictor import Predictor  # noqa: E402


def main(model: str, manifest_path: str, split: str = "test") -> int:
    manifest = load_manifest(Path(manifest_path))
    rows = manifest.split(split)
    predictor = Predictor.from_path(model)
    preds = predictor.predict([str(manifest.abspath(r)) for r in rows])
    classes = list(manifest.classes)
    y = np.array([classes.index(r.label) for r in rows])
    p = np.array([classes.index(x.label) if x.ok else -1 for x in preds])
    acc = float(np.mean(p == y))  # an unreadable image counts as wrong
    ok = p >= 0
    f1 = macro_f1_from_labels(y[ok], p[ok], len(classes))
    failed = int(np.sum(~ok))
    print(
        f"torch-free {Path(model).name} on the {split} split ({y.size} images, {failed} unreadable): "
        f"accuracy {acc:.1%}, macro-F1 {'undefined' if f1 is None else format(f1, '.1%')} "
        f"(provider {predictor.provider}; torch, timm, sklearn, onnx not importable)"
    )
    print(NOTICE)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
