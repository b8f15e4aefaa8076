"""The README works from a clone: its install commands exist, its commands parse, and the cheap ones run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import tomllib
import typer
from typer.testing import CliRunner

from cxr.cli.bench import app as bench_app
from cxr.cli.main import app as cxr_app
from cxr.cli.predict import app as predict_app
from tests.dicom_factory import make_source
from tests.onnx_factory import make_fused_model, write_gray_pngs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
APPS = {"cxr": cxr_app, "cxr-predict": predict_app, "cxr-bench": bench_app}


def code_lines(path: Path) -> list[str]:
    """Every command line in ``path``'s fenced code blocks (comments cut, continuations joined)."""
    lines, inside, joined = [], False, ""
    for raw in path.read_text().splitlines():
        if raw.startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        line = joined + raw.split("  #")[0].strip()
        if line.endswith("\\"):
            joined = line[:-1] + " "
            continue
        joined = ""
        if line:
            lines.append(line.removeprefix(".venv/bin/"))
    return lines


def commands(tool: str) -> list[str]:
    return [line for line in code_lines(README) if line.split()[0] == tool]


def test_readme_opens_with_its_title_and_the_two_commands() -> None:
    text = README.read_text().splitlines()
    assert text[0].startswith("# cxr")
    block = text[text.index("```") + 1 : text.index("```", text.index("```") + 1)]
    assert [line.split()[:2] for line in block] == [["make", "demo"], ["make", "test"]]


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_every_install_command_works_from_a_clone(doc: Path) -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    text = doc.read_text()
    assert "pip install 'cxr-toolkit" not in text and "pip install cxr-toolkit" not in text  # on no index
    for spec in re.findall(r"pip install -e ['\"]?\.\[([a-z0-9,]+)\]", text):
        assert set(spec.split(",")) <= extras, f"{doc.name}: unknown extra in {spec}"


def test_make_targets_in_the_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for line in code_lines(README) + re.findall(r"`(make [a-z-]+)`", README.read_text()):
        if line.startswith("make "):
            target = line.split()[1]
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make target {target}"


def _command(tool: str, argv: list[str]) -> tuple[Any, list[str]]:
    """The (click) command ``argv`` names, and the arguments left for it."""
    command: Any = typer.main.get_command(APPS[tool])
    args = list(argv)
    while hasattr(command, "commands") and args and args[0] in command.commands:
        command = command.commands[args.pop(0)]
    return command, args


@pytest.mark.parametrize("line", [ln for tool in APPS for ln in commands(tool)])
def test_every_cli_line_in_the_readme_names_real_commands_and_options(line: str) -> None:
    argv = shlex.split(line)
    command, args = _command(argv[0], argv[1:])
    assert not hasattr(command, "commands"), f"{line!r} names no command"
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for arg in args:
        if arg.startswith("-"):
            assert arg.split("=")[0] in known, f"{line!r}: {arg} is not an option of {command.name}"


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Small real files for the README's placeholders."""
    d = tmp_path_factory.mktemp("readme")
    model = make_fused_model(d / "ensemble.onnx")
    png = write_gray_pngs(d / "xrays", 2)[0]
    (d / "study.dcm").write_bytes(make_source())
    (d / "dicom-in").mkdir()
    (d / "dicom-in" / "IM0001").write_bytes(make_source())
    return {
        "ensemble.onnx": str(model),
        "runs/demo/ensemble.onnx": str(model),
        "chest.png": str(png),
        "study.dcm": str(d / "study.dcm"),
        "/data/xrays": str(d / "xrays"),
        "results.csv": str(d / "results.csv"),
        "overlays/": str(d / "overlays"),
        "dicom/": str(d / "dicom"),
        "/data/dicom": str(d / "dicom-in"),
        "results/": str(d / "dicom-results"),
    }


RUNNABLE = [ln for ln in commands("cxr-predict") if "--heatmap" not in ln and "openvino" not in ln]


@pytest.mark.parametrize("line", RUNNABLE)
def test_cheap_readme_commands_run(line: str, stand_ins: dict[str, str]) -> None:
    argv = [stand_ins.get(a, a) for a in shlex.split(line)[1:]]
    res = CliRunner().invoke(predict_app, argv)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output


def test_the_python_example_runs(stand_ins: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    text = README.read_text()
    code = text[text.index("```python") + len("```python") : text.index("```", text.index("```python") + 3)]
    for placeholder in ("runs/demo/ensemble.onnx", "chest.png"):
        code = code.replace(f'"{placeholder}"', repr(stand_ins[placeholder]))
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example, on stand-in files
    out = capsys.readouterr().out
    assert "Decision support only" in out


def test_make_demo_installs_what_serves_its_model_afterwards() -> None:
    recipe = (ROOT / "Makefile").read_text().split("$(DEMO_STAMP):", 1)[1]
    demo_install = next(line for line in recipe.splitlines() if "pip install" in line and " -e " in line)
    assert "serve" in demo_install and "dicom" in demo_install  # cxr serve / cxr listen on the demo model


def test_the_jpeg_lossless_hint_names_the_dicom_extra() -> None:
    from cxr.imaging.dicom import DECODER_HINTS

    assert "'.[dicom]'" in DECODER_HINTS["1.2.840.10008.1.2.4.70"]
