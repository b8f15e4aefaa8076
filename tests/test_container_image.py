"""The real image: scripts/container_build.sh builds the Dockerfile with buildah on a debootstrap base, and
scripts/container_run.sh runs its ENTRYPOINT with a model mounted and checks it from outside (readiness,
predictions on a real radiograph, 413s, HEALTHCHECK, user 10001, no torch, latency); needs root + buildah."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr.labels import CLASSES
from cxr.session import file_sha256
from tests.conftest import SHARED_DATA
from tests.onnx_factory import write_gray_pngs

REPO = Path(__file__).resolve().parents[1]
# the build's own settings pass through; the server's CXR_* settings from this shell must not
KEEP = {"CXR_CONTAINER_CACHE", "CXR_BASE_SUITE", "CXR_DEBIAN_MIRROR", "CXR_BUILD_CA", "CXR_REBUILD_BASE"}


def _requirements() -> str | None:
    """Why the image cannot be built here, or None."""
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: apt-get install -y --no-install-recommends buildah debootstrap"
    if os.geteuid() != 0:
        return "buildah --isolation chroot and debootstrap need root"
    return None


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CXR_") or k in KEEP}


def _run(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
    return proc, seconds


def _radiograph(tmp_path: Path) -> Path:
    """A real chest X-ray from the shared sample when it is there, else a synthetic gray PNG."""
    real = sorted((SHARED_DATA / "radiography-dev" / "Normal").rglob("*.png"))
    return real[0] if real else write_gray_pngs(tmp_path / "png", 1, size=256)[0]


@pytest.mark.slow
def test_image_builds_runs_and_serves(
    fused_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    build = ["bash", str(REPO / "scripts" / "container_build.sh")]

    first, first_s = _run(build, timeout=3600)  # cold on a fresh machine: debootstrap + pip install
    base = re.search(
        r"base image: \S+ \((built by debootstrap|built from the cached root filesystem|cached)", first.stdout
    )
    assert base, first.stdout[-2000:]
    second, second_s = _run(build, timeout=600)  # nothing changed: every step from the layer cache
    assert "(cached in local storage" in second.stdout, second.stdout[-2000:]
    assert "Using cache" in second.stdout + second.stderr
    size = re.search(r"^image: localhost/cxr-serve:ci size (.+) \(\d+s\)$", second.stdout, re.M)
    assert size, second.stdout[-2000:]

    radiograph = _radiograph(tmp_path)
    report = tmp_path / "run.json"
    run_cmd = ["bash", str(REPO / "scripts" / "container_run.sh"), "--json", str(report), "--requests", "20"]
    run, run_s = _run([*run_cmd, str(fused_model), str(radiograph)], timeout=600)
    out = json.loads(report.read_text())

    assert all(out["checks"].values()), out["checks"]
    assert out["config_user"] == "10001" and out["uid_inside"] == 10001 and out["server_uid"] == 10001
    assert out["torch_import_exit"] != 0
    assert out["healthcheck_exit"] == 0 and out["healthcheck_after_stop_exit"] != 0
    assert out["readyz"]["status"] == "ready" and out["readyz"]["provider"] == "cpu"
    pred = out["prediction"]
    assert pred["label"] in CLASSES and pred["provider"] == "cpu" and pred["notice"]
    assert pred["source"] == radiograph.name and pred["model_id"] == file_sha256(fused_model)[:16]
    assert out["oversized_body"]["status"] == 413
    assert out["oversized_body"]["body"]["error"]["code"] == "payload_too_large"
    assert out["oversized_pixels"]["status"] == 413
    assert out["oversized_pixels"]["body"]["error"]["code"] == "image_too_large"
    assert out["graceful_shutdown"]
    latency = out["latency_ms"]
    assert latency["requests"] == 20 and 0 < latency["p50"] < 5000

    summary = (
        f"container image: first build {first_s:.0f} s (base {base.group(1)}), "
        f"cached rebuild {second_s:.0f} s, size {size.group(1)} (venv {out['venv_size']}); "
        f"run + checks {run_s:.0f} s, ready {out['ready_s']} s after start; POST /v1/predict of "
        f"{radiograph.name} from outside: p50 {latency['p50']} ms, p90 {latency['p90']} ms over 20 requests"
    )
    with capsys.disabled():
        sys.stderr.write(f"\n{summary}\n")


def test_dockerfile_default_base_is_the_official_python_image() -> None:
    """CI builds on a local Debian base through the PYTHON_IMAGE argument; a user's build pulls the official one."""
    text = (REPO / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm\n" in text
    assert '--build-arg "PYTHON_IMAGE=$base_image"' in (REPO / "scripts" / "container_build.sh").read_text()
    install = (REPO / "docker" / "install.sh").read_text()
    assert (
        "python=${PYTHON:-python3}" in install
    )  # /usr/local/bin/python3 (official) and /usr/bin/python3 (Debian)


@pytest.mark.parametrize("script", ["container_build.sh", "container_run.sh"])
def test_container_scripts_parse_and_explain_themselves(script: str) -> None:
    path = REPO / "scripts" / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    proc = subprocess.run(["bash", str(path), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "usage: scripts/" + script in proc.stdout
