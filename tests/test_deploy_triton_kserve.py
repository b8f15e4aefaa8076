"""deploy/kserve/: the checked-in manifests parse and stay in step with the code they describe.

The Triton example must equal what `cxr export-triton` writes for the same model size; the `cxr serve`
manifest may only set environment variables `cxr serve` reads and probe routes the API serves.
No cluster is involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cxr.deploy.triton import TritonConfig, render_kserve
from cxr.labels import NOTICE

ROOT = Path(__file__).resolve().parents[1]
KSERVE_DIR = ROOT / "deploy" / "kserve"
FP32_ENSEMBLE_BYTES = 1_116_691_496


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((KSERVE_DIR / name).read_text())
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    assert doc["metadata"]["annotations"]["cxr/notice"] == NOTICE
    return doc


def test_triton_example_is_what_the_generator_writes() -> None:
    doc = load("triton-inferenceservice.example.yaml")
    assert doc == yaml.safe_load(render_kserve("cxr_ensemble", FP32_ENSEMBLE_BYTES, TritonConfig()))
    res = doc["spec"]["predictor"]["triton"]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "1" and res["limits"]["memory"] == "5Gi"


@pytest.mark.parametrize(
    ("cfg", "gpu", "min_limit_gib"),
    [
        (TritonConfig(), "1", 4),
        (TritonConfig(gpus=(0, 1)), "2", 6),
        (TritonConfig(gpu_instances=0, cpu_instances=3), None, 8),
    ],
)
def test_resources_follow_instances(cfg: TritonConfig, gpu: str | None, min_limit_gib: int) -> None:
    res = yaml.safe_load(render_kserve("m", FP32_ENSEMBLE_BYTES, cfg))["spec"]["predictor"]["triton"][
        "resources"
    ]
    assert res["limits"].get("nvidia.com/gpu") == gpu
    assert int(res["limits"]["memory"].removesuffix("Gi")) >= min_limit_gib


def test_cxr_serve_manifest_uses_real_settings_and_routes() -> None:
    from cxr.serve.config import API_KEY_ENV
    from cxr.serve.state import ROUTES

    doc = load("cxr-serve-inferenceservice.yaml")
    pred = doc["spec"]["predictor"]
    assert 1 <= pred["minReplicas"] <= pred["maxReplicas"]
    (c,) = pred["containers"]
    assert c["name"] == "kserve-container" and c["command"] == ["cxr", "serve"]
    import typer

    from cxr.cli.serve import serve

    app = typer.Typer()
    app.command()(serve)
    known = {p.envvar for p in typer.main.get_command(app).params if p.envvar} | {API_KEY_ENV}
    env = {e["name"]: e.get("value") for e in c["env"]}
    unknown = {k for k in env if k.startswith("CXR_")} - known
    assert not unknown, f"cxr serve does not read {sorted(unknown)}"
    assert "STORAGE_URI" in env and env["CXR_MODEL"].startswith("/mnt/models/")
    port = int(env["CXR_PORT"])
    assert [p["containerPort"] for p in c["ports"]] == [port]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert c[probe]["httpGet"] == {"path": path, "port": port} and path in ROUTES
    assert int(env["CXR_THREADS"]) <= int(c["resources"]["limits"]["cpu"])
    assert pred["scaleTarget"] <= int(env["CXR_MAX_CONCURRENCY"])
