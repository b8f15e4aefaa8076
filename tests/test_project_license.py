"""The LICENSE file, pyproject.toml's licence and CITATION.cff say the same thing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
SPDX_HEADINGS = {"Apache-2.0": "Apache License\n                           Version 2.0, January 2004"}


def test_license_file_matches_pyproject_and_citation() -> None:
    spdx = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    text = (REPO / "LICENSE").read_text()
    assert SPDX_HEADINGS[spdx] in text and "[yyyy]" not in text
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["license"] == spdx and citation["cff-version"] == "1.2.0"
    assert any("Radiography Database" in r["title"] for r in citation["references"])
