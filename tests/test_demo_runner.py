"""Resumable demo stages: skip when nothing changed, rerun what depends on a change, --force."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.demo.runner import Stage, run_stages
from cxr.errors import ConfigError


def _pipeline(tmp_path: Path, calls: list[str], param: int = 1) -> list[Stage]:
    src = tmp_path / "src.txt"
    a_out = tmp_path / "a.txt"
    b_out = tmp_path / "b.txt"

    def run_a() -> dict:
        calls.append("a")
        a_out.write_text(src.read_text().upper())
        return {"n": 1}

    def run_b() -> dict:
        calls.append("b")
        b_out.write_text(a_out.read_text() * 2)
        return {"n": 2}

    return [
        Stage("a", run_a, params={"p": param}, inputs=lambda: [src], outputs=lambda: [a_out]),
        Stage("b", run_b, inputs=lambda: [a_out], outputs=lambda: [b_out]),
    ]


def test_second_run_skips_everything(tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("x")
    calls: list[str] = []
    recs = run_stages(_pipeline(tmp_path, calls), tmp_path / "run")
    assert calls == ["a", "b"] and all(r.ran for r in recs)
    recs = run_stages(_pipeline(tmp_path, calls), tmp_path / "run")
    assert calls == ["a", "b"] and not any(r.ran for r in recs)
    assert recs[1].summary == {"n": 2}  # cached summary is returned


@pytest.mark.parametrize("change", ["param", "input", "deleted_output"])
def test_a_change_reruns_the_stage_and_what_follows(tmp_path: Path, change: str) -> None:
    (tmp_path / "src.txt").write_text("x")
    calls: list[str] = []
    run_stages(_pipeline(tmp_path, calls), tmp_path / "run")
    calls.clear()
    param = 1
    if change == "param":
        param = 2
    elif change == "input":
        (tmp_path / "src.txt").write_text("longer input")
    else:
        (tmp_path / "b.txt").unlink()
    run_stages(_pipeline(tmp_path, calls, param), tmp_path / "run")
    assert calls == (["b"] if change == "deleted_output" else ["a", "b"])


def test_force(tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("x")
    calls: list[str] = []
    run_stages(_pipeline(tmp_path, calls), tmp_path / "run")
    calls.clear()
    run_stages(_pipeline(tmp_path, calls), tmp_path / "run", force=["b"])
    assert calls == ["b"]
    with pytest.raises(ConfigError, match="no such stage"):
        run_stages(_pipeline(tmp_path, calls), tmp_path / "run", force=["nope"])
