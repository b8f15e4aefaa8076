"""The graph contract lives in cxr/spec.py alone: no module types a graph name or a cxr.* metadata key again.

Each module of cxr/ is parsed with ``ast``; a string constant that equals a graph input/output name of
``cxr.spec.GRAPH_NAMES`` or looks like a ``cxr.*`` metadata key fails the test. Docstrings, f-string pieces
and longer messages that mention a name are not exact matches and pass. A few modules use the same word for
something else (a CSV column, a CLI command, a Triton keyword); they are listed below with the reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cxr import spec

PACKAGE = Path(spec.__file__).resolve().parent
METADATA_KEY = re.compile(r"^cxr\.[a-z_]+(\.[a-z_]+)*$")

# (module, string): the same word meaning something other than a graph tensor or a metadata key
HOMONYMS: dict[tuple[str, str], str] = {
    ("cli/predict.py", "image"): "the `cxr-predict image` command's name",
    ("runtime/overlay.py", "image"): "the file stem of an overlay whose source has no name",
    ("runtime/results.py", "probabilities"): "a result field (cxr.spec.RESULT_FIELDS) flattened for the CSV",
    ("runtime/results.py", "member_probabilities"): "a result field flattened for the CSV",
    ("train/predictions.py", "label"): "a column of the predictions CSV",
    ("evaluate/methods.py", "label"): "a column of the predictions CSV",
    ("train/typed_mapping.py", "input"): "the key of a pydantic validation error",
    ("serve/config.py", "input"): "the key of a pydantic validation error",
    ("deploy/triton/pbtxt.py", "input"): "the Triton config.pbtxt block keyword",
    ("fuse/report.py", "input"): "a key of the fuse report",
    ("deploy/triton/config.py", "cxr.json"): "a file name in the Triton repository",
    ("train/checkpoint.py", "cxr.checkpoint"): "the torch checkpoint's format tag, not ONNX metadata",
    ("dicom/node.py", "cxr.audit"): "the DICOM node's audit logger",
    ("dicom/worker.py", "cxr.audit"): "the DICOM node's audit logger",
}


def _docstrings(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _is_module_path(value: str) -> bool:
    """``cxr.runtime.scan`` names a module (a lazy import table), not a metadata key."""
    rel = PACKAGE.parent.joinpath(*value.split("."))
    return rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file()


def contract_literals(source: str, module: str = "<test>") -> list[tuple[int, str]]:
    """(line, string) of every exact graph name or cxr.* metadata key written as a literal in ``source``."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # pieces of an f-string are parts of a longer text
            skip.update(id(v) for v in node.values)
    names = set(spec.GRAPH_NAMES)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in skip:
            continue
        value = node.value
        contract = value in names or (METADATA_KEY.match(value) is not None and not _is_module_path(value))
        if contract and (module, value) not in HOMONYMS:
            out.append((node.lineno, value))
    return out


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "spec.py" or p.parent != PACKAGE)


def test_no_module_outside_spec_types_a_graph_name_or_metadata_key() -> None:
    found = [
        f"cxr/{rel}:{line}: {value!r}"
        for path in _modules()
        for rel in [path.relative_to(PACKAGE).as_posix()]
        for line, value in contract_literals(path.read_text(encoding="utf-8"), rel)
    ]
    assert not found, "import these from cxr.spec instead:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ('sess.run(["probabilities"], {"image": x})', ["probabilities", "image"]),
        ('props["cxr.verified_precisions"]', ["cxr.verified_precisions"]),
        ('KEY = "cxr.something_new"', ["cxr.something_new"]),
        ('names = ("ood_score", "heatmap", "class_heatmaps")', ["ood_score", "heatmap", "class_heatmaps"]),
        ('"""probabilities"""', []),  # a docstring
        ('raise ValueError("no probabilities output")', []),  # inside a sentence
        ('f"{prefix}probabilities"', []),  # a piece of an f-string
        ('LAZY = {"Predictor": "cxr.runtime.predictor"}', []),  # a module path
        ('x = "probability"', []),
    ],
)
def test_the_scan_flags_exact_contract_literals_only(source: str, flagged: list[str]) -> None:
    assert [v for _, v in contract_literals(source)] == flagged


def test_homonyms_name_modules_that_exist() -> None:
    missing = [m for m, _ in HOMONYMS if not (PACKAGE / m).is_file()]
    assert not missing, f"drop these stale entries: {missing}"


def test_graph_names_are_distinct() -> None:
    assert len(set(spec.GRAPH_NAMES)) == len(spec.GRAPH_NAMES)
