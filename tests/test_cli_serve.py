"""`cxr serve`: options and CXR_* environment variables reach ServeConfig, errors are messages with exit
code 2, `cxr --help` needs no fastapi, and the API runs with torch and the training stack blocked."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxr.serve.config import ServeConfig

REPO = Path(__file__).resolve().parents[1]
KEY = "cli-test-key-0123456789abcdef"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def _run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_serve_is_registered_with_its_options() -> None:
    from cxr.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in ("--model", "--host", "--max-body-bytes", "--max-pixels", "--max-queue", "--api-key-file"):
        assert option in result.output
    assert "CXR_MODEL" in result.output and "127.0.0.1" in result.output


def test_options_and_environment_reach_the_config(
    fused_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxr.serve.server
    from cxr.cli.serve import serve

    captured: list[ServeConfig] = []
    monkeypatch.setattr(cxr.serve.server, "run_server", lambda cfg, port_file=None: captured.append(cfg))
    import typer

    app = typer.Typer()
    app.command()(serve)
    env = {
        "CXR_MODEL": str(fused_model),
        "CXR_MAX_BATCH_SIZE": "3",
        "CXR_MAX_BODY_BYTES": "1234567",
        "CXR_API_KEY": KEY,
        "CXR_CORS_ORIGINS": "https://a.example.org,https://b.example.org",
    }
    result = CliRunner().invoke(app, ["--max-queue", "7", "--timeout", "9.5", "--provider", "cpu"], env=env)
    assert result.exit_code == 0, result.output
    cfg = captured[0]
    assert cfg.model == fused_model and cfg.max_batch_size == 3 and cfg.max_body_bytes == 1234567
    assert cfg.max_queue == 7 and cfg.request_timeout_s == 9.5 and cfg.session.provider == "cpu"
    assert cfg.api_key == KEY and cfg.cors_origins == ("https://a.example.org", "https://b.example.org")
    assert cfg.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model", "/nonexistent/model.onnx"], "does not exist"),
        (["--max-batch-size", "0"], "max_batch_size must be >= 1"),
        (["--max-wait-ms", "-3"], "max_wait_ms"),
    ],
)
def test_bad_options_exit_2_with_a_message(fused_model: Path, args: list[str], fragment: str) -> None:
    import typer

    from cxr.cli.serve import serve

    app = typer.Typer()
    app.command()(serve)
    full = (["--model", str(fused_model)] if "--model" not in args else []) + args
    result = CliRunner().invoke(app, full, env={"CXR_API_KEY": ""})
    assert result.exit_code == 2 and fragment in result.output, result.output
    assert "Traceback" not in result.output


def test_a_taken_port_is_a_clear_error(fused_model: Path) -> None:
    import typer

    from cxr.cli.serve import serve

    app = typer.Typer()
    app.command()(serve)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["--model", str(fused_model), "--port", str(port)])
    assert result.exit_code == 2 and "cannot listen on 127.0.0.1" in result.output, result.output


def test_cli_help_and_serve_hint_without_fastapi(fused_model: Path) -> None:
    proc = _run_python(
        f"""
        import sys
        for name in ("fastapi", "uvicorn", "starlette"):
            sys.modules[name] = None
        from typer.testing import CliRunner
        from cxr.cli.main import app
        assert CliRunner().invoke(app, ["--help"]).exit_code == 0
        result = CliRunner().invoke(app, ["serve", "--model", {str(fused_model)!r}])
        print(result.exit_code, result.output)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("2 ") and "pip install -e '.[serve]'" in proc.stdout


def test_api_runs_with_torch_and_the_training_stack_blocked(fused_model: Path) -> None:
    proc = _run_python(
        f"""
        import sys, time
        for name in ("torch", "torchvision", "timm", "sklearn", "onnx", "skl2onnx", "onnxscript"):
            sys.modules[name] = None
        from pathlib import Path
        from fastapi.testclient import TestClient
        from cxr.serve import ServeConfig, create_app
        from cxr.session import SessionConfig
        from tests.test_serve_support import png_bytes

        with TestClient(create_app(ServeConfig(model=Path({str(fused_model)!r}), session=SessionConfig(threads=1)))) as client:
            for _ in range(500):
                if client.get("/readyz").status_code == 200:
                    break
                time.sleep(0.02)
            resp = client.post("/v1/predict", content=png_bytes())
        print(resp.status_code, resp.json()["label"])
        loaded = [m for m in ("torch", "timm", "sklearn", "onnx") if sys.modules.get(m) is not None]
        print("loaded:", loaded)
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].startswith("200 ") and "loaded: []" in proc.stdout
