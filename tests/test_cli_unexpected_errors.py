"""An unexpected exception in a CLI command: one line, the traceback in a log file, exit 2; ``--debug`` raises."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxr.cli import main as cxr_main
from cxr.cli import predict as predict_cli
from cxr.errors import ModelError


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("disk on fire\nsecond line")


@pytest.mark.parametrize(
    "app, argv",
    [
        (predict_cli.app, ["image", "x.png", "--model", "m.onnx"]),
        (cxr_main.app, ["predict", "image", "x.png", "--model", "m.onnx"]),
    ],
)
def test_unexpected_error_is_one_line_and_a_log_file(
    app: object, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predict_cli, "open_predictor", _boom)
    monkeypatch.setenv("CXR_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("CXR_DEBUG", "0")
    result = CliRunner().invoke(app, argv)  # type: ignore[arg-type]
    assert result.exit_code == 2, result.output
    assert "image failed unexpectedly: RuntimeError: disk on fire" in result.output
    assert "Traceback" not in result.output and "second line" not in result.output
    (log,) = (tmp_path / "logs").iterdir()
    assert log.name in result.output and "Traceback" in log.read_text() and "_boom" in log.read_text()


@pytest.mark.parametrize(
    "app, argv",
    [
        (predict_cli.app, ["--debug", "image", "x.png", "--model", "m.onnx"]),
        (cxr_main.app, ["--debug", "predict", "image", "x.png", "--model", "m.onnx"]),
        (cxr_main.app, ["predict", "--debug", "image", "x.png", "--model", "m.onnx"]),
    ],
)
def test_debug_lets_the_traceback_through(
    app: object, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predict_cli, "open_predictor", _boom)
    result = CliRunner().invoke(app, argv)  # type: ignore[arg-type]
    assert isinstance(result.exception, RuntimeError) and result.exit_code != 0


def test_cxr_errors_keep_their_own_message_and_code(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise ModelError("model m.onnx is not a cxr model", hint="export it with cxr")

    monkeypatch.setattr(predict_cli, "open_predictor", refuse)
    result = CliRunner().invoke(predict_cli.app, ["image", "x.png", "--model", "m.onnx"])
    assert result.exit_code == ModelError("x").exit_code
    assert "error: model m.onnx is not a cxr model" in result.output and "unexpectedly" not in result.output
