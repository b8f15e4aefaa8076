"""The house's import graph (read from the source with ``ast``): data flows one way through the stages.

Takes: every module under ``cxr/``. Checks: no package imports one after it in the pipeline order, the
runtime side (runtime, bench, serve, deploy, and the runtime CLI commands) imports no training-side package
and no torch, timm, sklearn, onnx or skl2onnx even inside a function, and no two modules import
each other, directly or around a longer circle. The checker itself is tested on small made-up graphs.
Each stage package names its entry points in ``__all__`` and loads them only when first used.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cxr"

ORDER = (
    "shared",  # cxr/*.py: labels, spec, errors, metrics, calibration, session, progress
    "imaging",
    "data",
    "train",
    "export",
    "stack",
    "fuse",
    "evaluate",
    "runtime",
    "bench",
    "serve",
    "dicom",
    "deploy",
    "demo",
    "cli",
)
TRAINING_SIDE = frozenset({"train", "export", "stack", "fuse", "evaluate", "demo"})
RUNTIME_SIDE = frozenset({"runtime", "bench", "serve", "dicom", "deploy"})
# the wall's libraries: no import of them anywhere in a runtime-side module, not even inside a function
BANNED = frozenset(
    {"torch", "torchvision", "timm", "sklearn", "onnx", "skl2onnx", "onnxscript", "onnxsim", "nncf"}
)
RUNTIME_CLI = frozenset(
    {"cxr.cli.predict", "cxr.cli.predict_output", "cxr.cli.bench", "cxr.cli.serve", "cxr.cli.listen"}
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    """The package a module belongs to; ``__main__`` modules are entry points, on the CLI's level."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "cli"
    if len(parts) == 1 or not (ROOT / parts[1]).is_dir():
        return "shared"
    return parts[1]


def import_graph() -> dict[str, set[str]]:
    """Module -> the cxr modules it imports anywhere in its body (function-level imports included)."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in files:
                targets.add(node.module)
                targets.update(
                    f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in files
                )
        # a module's own package __init__ is where it lives, not a dependency
        graph[module] = {t for t in targets if t != module and not module.startswith(t + ".")}
    return graph


def external_imports() -> dict[str, set[str]]:
    """Module -> the top-level non-cxr packages it imports anywhere in its body."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        graph[module_name(path)] = names - {"cxr"}
    return graph


def wall_breaches(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Runtime-side modules (and the runtime CLI commands) that import a library behind the wall."""
    return [
        f"{m} (runtime side) imports {lib}"
        for m, libs in sorted(graph.items())
        if stage_of(m) in RUNTIME_SIDE or m in RUNTIME_CLI
        for lib in sorted(set(libs) & BANNED)
    ]


def upward_imports(graph: Mapping[str, Iterable[str]]) -> list[str]:
    rank = {stage: i for i, stage in enumerate(ORDER)}
    return [
        f"{m} ({stage_of(m)}) imports {t} ({stage_of(t)}), which comes after it"
        for m, targets in sorted(graph.items())
        for t in sorted(targets)
        if rank[stage_of(t)] > rank[stage_of(m)]
    ]


def runtime_to_training(graph: Mapping[str, Iterable[str]]) -> list[str]:
    return [
        f"{m} ({stage_of(m)}, runtime side) imports {t} ({stage_of(t)}, training side)"
        for m, targets in sorted(graph.items())
        for t in sorted(targets)
        if stage_of(m) in RUNTIME_SIDE and stage_of(t) in TRAINING_SIDE
    ]


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_package_is_a_known_stage() -> None:
    unknown = sorted({stage_of(m) for m in import_graph()} - set(ORDER))
    assert not unknown, f"packages missing from the pipeline order: {unknown} (add them to ORDER)"


def test_no_package_imports_one_after_it() -> None:
    assert upward_imports(import_graph()) == []


def test_the_runtime_side_imports_no_training_side_package() -> None:
    assert runtime_to_training(import_graph()) == []


def test_the_runtime_side_imports_no_library_behind_the_wall() -> None:
    assert wall_breaches(external_imports()) == []


@pytest.mark.parametrize(
    ("graph", "breaches"),
    [
        ({"cxr.bench.torch_best": {"numpy", "torch"}}, 1),
        ({"cxr.cli.predict": {"typer", "onnx"}}, 1),
        ({"cxr.train.torch_reference": {"torch"}, "cxr.serve.app": {"fastapi"}}, 0),
    ],
)
def test_the_wall_check_catches_a_banned_import(graph: dict[str, set[str]], breaches: int) -> None:
    assert len(wall_breaches(graph)) == breaches


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(
    ("graph", "upward", "wall", "circles"),
    [
        ({"cxr.train.run": {"cxr.data.manifest", "cxr.errors"}}, 0, 0, 0),
        ({"cxr.train.run": {"cxr.metrics"}, "cxr.metrics": set()}, 0, 0, 0),
        ({"cxr.train.meta": {"cxr.evaluate.metrics"}}, 1, 0, 0),
        ({"cxr.serve.__main__": {"cxr.cli.serve"}}, 0, 0, 0),
        ({"cxr.serve.app": {"cxr.cli.serve"}}, 1, 0, 0),
        ({"cxr.bench.run": {"cxr.evaluate.stats"}}, 0, 1, 0),
        ({"cxr.errors": {"cxr.runtime.session"}}, 1, 0, 0),
        ({"cxr.fuse.a": {"cxr.fuse.b"}, "cxr.fuse.b": {"cxr.fuse.a"}}, 0, 0, 1),
        (
            {"cxr.x.a": {"cxr.x.b"}, "cxr.x.b": {"cxr.x.c"}, "cxr.x.c": {"cxr.x.a"}, "cxr.x.d": {"cxr.x.a"}},
            0,
            0,
            1,
        ),
    ],
)
def test_the_checks_catch_what_they_are_for(
    graph: dict[str, set[str]], upward: int, wall: int, circles: int
) -> None:
    found = (len(upward_imports(graph)), len(runtime_to_training(graph)), len(cycles(graph)))
    assert found == (upward, wall, circles)


# Each stage's public surface: its package's __all__, loaded lazily (``import cxr.fuse`` stays free).
STAGES = ("data", "train", "export", "stack", "fuse", "evaluate", "deploy", "demo")
ENTRY_POINTS = {
    "data": "build_manifest",
    "train": "train_all",
    "export": "export_run",
    "stack": "fit_meta",
    "fuse": "fuse",
    "evaluate": "evaluate",
    "deploy": "write_triton_repository",
    "demo": "run_demo",
}


def test_importing_the_stage_packages_loads_no_library() -> None:
    code = (
        "import sys; before = set(sys.modules)\n"
        + "".join(f"import cxr.{s}\n" for s in STAGES)
        + "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - {'cxr', 'typing', '_typing', "
        "'collections'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent
    )
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_package_exports_its_entry_point(stage: str) -> None:
    for lib in ("torch", "timm", "sklearn", "onnx", "skl2onnx"):
        pytest.importorskip(lib)
    package = importlib.import_module(f"cxr.{stage}")
    assert ENTRY_POINTS[stage] in package.__all__
    for name in package.__all__:
        value = getattr(package, name)
        assert value.__module__.startswith(f"cxr.{stage}."), (name, value.__module__)
        assert callable(value), name
    assert sorted(package.__all__) == sorted(set(package.__all__))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # noqa: B018
