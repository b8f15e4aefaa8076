"""The Docker image's recipe without Docker: scripts/container_smoke.sh installs core + serve extras into a
fresh venv with docker/install.sh, starts the server through docker/entrypoint.sh on loopback, waits for
/readyz, predicts one image, runs the HEALTHCHECK command and stops it with SIGTERM."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_container_recipe_installs_starts_and_predicts(fused_model: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "container_smoke.sh"), str(fused_model)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"predicted \S.* with model [0-9a-f]{16} on cpu", out), out[-2000:]
    assert "container smoke test passed" in out


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_dockerfile_targets_run_the_shared_scripts(target: str) -> None:
    """The image builds with the same install script and starts with the same entry point the smoke test
    runs; it runs as a non-root user, has a HEALTHCHECK on /healthz and a model volume."""
    text = (REPO / "Dockerfile").read_text()
    stage = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
    build = text.split(f" AS {target}-build\n", 1)[1].split("\nFROM ", 1)[0]
    assert f"docker/install.sh /opt/venv {target} /src" in build
    assert f"--from={target}-build /opt/venv /opt/venv" in stage
    assert 'ENTRYPOINT ["/opt/cxr/entrypoint.sh"]' in stage and "USER 10001" in stage
    assert "HEALTHCHECK" in stage and "healthcheck.py" in stage and 'VOLUME ["/models"]' in stage
    assert "torch" not in text.lower().replace("no torch", "")
    for path in ("docker/install.sh", "docker/entrypoint.sh", "docker/healthcheck.py"):
        assert (REPO / path).is_file()


def test_entrypoint_refuses_to_start_without_a_model(tmp_path: Path) -> None:
    if Path("/models").is_dir() or Path("/opt/cxr/models").is_dir():
        pytest.skip("this machine has a /models folder")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env["CXR_VENV"] = str(tmp_path / "no-venv")  # never reached
    proc = subprocess.run(
        ["sh", str(REPO / "docker" / "entrypoint.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "no model" in proc.stderr
