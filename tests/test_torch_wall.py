"""The wall between training and inference: the runtime, cxr-predict, cxr-bench and the API never import
torch, timm, sklearn, onnx, skl2onnx, torchvision or nncf (not even at module level of a file they import)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.onnx_factory import write_gray_pngs

REPO = Path(__file__).resolve().parents[1]
# nncf: INT8 is built at export, on the training side
FORBIDDEN = ("torch", "timm", "sklearn", "onnx", "skl2onnx", "torchvision", "nncf")
TORCH_FREE_PACKAGES = ("cxr.runtime", "cxr.imaging", "cxr.serve", "cxr.data", "cxr.dicom")
TORCH_FREE_MODULES = (
    "cxr.cli.predict",
    "cxr.cli.bench",
    "cxr.cli.listen",
    "cxr.labels",
    "cxr.spec",
    "cxr.errors",
    "cxr.session",
    "cxr.openvino_session",
    "cxr.precision",
    "cxr.cpu_kind",
    "cxr.digest",
)


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )


def test_prediction_and_scan_run_with_training_libraries_unimportable(
    fused_model: Path, tmp_path: Path
) -> None:
    images = write_gray_pngs(tmp_path / "imgs", 4)
    out = tmp_path / "scan.csv"
    code = f"""
        import sys
        for name in {FORBIDDEN!r}:
            sys.modules[name] = None  # any import of these now raises ImportError
        import cxr.runtime
        import cxr.cli.predict
        from cxr.runtime import Predictor
        preds = Predictor.from_path({str(fused_model)!r}, provider="cpu").predict({[str(p) for p in images]!r})
        assert len(preds) == 4 and all(p.ok for p in preds), preds
        from typer.testing import CliRunner
        res = CliRunner().invoke(
            cxr.cli.predict.app, ["scan", {str(tmp_path / "imgs")!r}, "-m", {str(fused_model)!r}, "-o", {str(out)!r}]
        )
        assert res.exit_code == 0, res.output
        print("predicted", len(preds))
    """
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "predicted 4" in proc.stdout
    assert len(out.read_text().splitlines()) == 5


def test_importing_every_torch_free_module_loads_no_training_library(tmp_path: Path) -> None:
    code = f"""
        import importlib, json, pkgutil, sys
        loaded = []
        for pkg_name in {TORCH_FREE_PACKAGES!r}:
            pkg = importlib.import_module(pkg_name)
            loaded.append(pkg_name)
            for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
                if not info.name.endswith("__main__"):
                    importlib.import_module(info.name)
                    loaded.append(info.name)
        for name in {TORCH_FREE_MODULES!r}:
            importlib.import_module(name)
            loaded.append(name)
        import cxr.runtime as rt
        for attr in rt.__all__:
            getattr(rt, attr)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
        print(json.dumps({{"loaded": loaded, "bad": bad}}))
    """
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "cxr.runtime.predictor" in report["loaded"] and "cxr.cli.predict" in report["loaded"]
    assert report["bad"] == [], f"torch-free modules imported {report['bad']}"


def test_dicom_results_are_built_with_training_libraries_unimportable(tmp_path: Path) -> None:
    code = f"""
        import sys
        for name in {FORBIDDEN!r}:
            sys.modules[name] = None
        from tests.dicom_factory import ASSESSABLE, MODEL, RGB, make_source
        from cxr.dicom import dicom_results, write_dicom_results
        sr, sc = write_dicom_results(dicom_results(make_source(), ASSESSABLE, RGB, MODEL), {str(tmp_path)!r})
        print("wrote", sr.name, sc.name)
    """
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("wrote 2.25.")


def test_int8_is_chosen_and_runs_with_training_libraries_unimportable(tmp_path: Path) -> None:
    from cxr.cpu_kind import cpu_kind
    from tests.test_runtime_int8 import OK, make_pair

    fp32 = make_pair(tmp_path / "m", ov={}, ort={cpu_kind(): OK})  # verified for this machine's kind
    code = f"""
        import sys
        for name in {FORBIDDEN!r}:
            sys.modules[name] = None
        import numpy as np
        from cxr.runtime import Predictor, PredictorConfig, SessionConfig
        p = Predictor.from_path({str(fp32)!r}, PredictorConfig(session=SessionConfig("cpu", precision="int8")))
        print(p.model_path.name, p.predict_arrays([np.full((32, 32), 9, np.uint8)])[0].precision)
    """
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["fused.int8.onnx", "int8"]
