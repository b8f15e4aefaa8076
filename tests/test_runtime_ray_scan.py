"""Scans on a local Ray instance (2 CPUs): the rows equal the single-machine scan's, in both read modes.

Covers: synthetic folders with unreadable files (path reads, Ray byte reads, file:// URLs), the real sample in
../shared/data (skipped when absent), resume, the CLI's `--engine ray`, manifest input, a model that differs
on a node, actor/GPU sizing, and the bad inputs: an unreachable address and Ray not installed (exit 2).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxr.errors import ConfigError, CxrError
from cxr.runtime import Predictor, PredictorConfig, ScanConfig, find_images, scan_folder
from cxr.runtime.ray.cluster import RayConnection
from cxr.runtime.ray.inputs import find_images_at_url
from cxr.runtime.ray.scan import RayScanConfig, RayScanResult, _actor_count, _gpus_per_actor, ray_scan
from cxr.session import SessionConfig
from tests.dataset_factory import make_dataset
from tests.onnx_factory import make_fused_model, write_gray_pngs

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")]
REPO = Path(__file__).resolve().parents[1]
BATCH = 3


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray instance (2 CPUs) for the module; scans reuse it instead of starting their own."""
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level=logging.ERROR,
            object_store_memory=256 * 1024 * 1024,
        )
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fused_model(tmp_path_factory.mktemp("m") / "fused.onnx")


@pytest.fixture(scope="module")
def predictor(model: Path) -> Predictor:
    return Predictor.from_path(model, PredictorConfig(batch_size=BATCH))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images, a subfolder, and files a scan must turn into error rows (not an image, empty, fake DICOM)."""
    root = tmp_path_factory.mktemp("xrays")
    write_gray_pngs(root, 7)
    write_gray_pngs(root / "sub", 2, seed=1)
    (root / "notes.txt").write_text("not selected")
    (root / "broken.png").write_text("definitely not a png")
    (root / "zero.png").write_bytes(b"")
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(root / "UPPER.JPG")
    (root / "IM000001").write_bytes(bytes.fromhex("0800050043530000") + bytes(200))
    return root


def _rows(path: Path) -> list[dict[str, Any]]:
    """Rows without the timing column (the only one that may differ between two scans)."""
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.open()]


def _local_rows(
    predictor: Predictor, folder: Path, out: Path, recursive: bool = True
) -> list[dict[str, Any]]:
    scan_folder(predictor, ScanConfig(folder, recursive=recursive, output=out))
    return _rows(out)


def _ray_cfg(model: Path, source: str | Path, out: Path | None, **kw: Any) -> RayScanConfig:
    return RayScanConfig(
        model=model, source=source, predictor=PredictorConfig(batch_size=BATCH), output=out, **kw
    )


@pytest.mark.parametrize(
    "read,suffix", [("path", ".csv"), ("bytes", ".jsonl"), ("url", ".csv")], ids=["path", "bytes", "file-url"]
)
def test_rows_equal_the_local_scan(
    ray_local: None, model: Path, predictor: Predictor, folder: Path, tmp_path: Path, read: str, suffix: str
) -> None:
    local = _local_rows(predictor, folder, tmp_path / f"local{suffix}")
    source: str | Path = f"file://{folder}" if read == "url" else folder
    out = tmp_path / f"ray{suffix}"
    res = ray_scan(_ray_cfg(model, source, out, recursive=True, read="auto" if read == "url" else read))
    rows = _rows(out)
    if read == "url":  # same rows, named by their URL
        rows = [json.loads(json.dumps(r).replace(f"file://{folder}", str(folder))) for r in rows]
    assert rows == local and len(rows) == 13
    assert [r["error"] for r in rows].count("") + [r["error"] for r in rows].count(None) == 10
    assert res.read == ("bytes" if read == "url" else read) and res.actors == 2 and res.nodes == 1
    s = res.scan
    assert (s.found, s.predicted, s.failed, s.skipped, s.provider, s.model_id, res.exit_code) == (
        13, 10, 3, 0, "cpu", predictor.model_id, 1,
    )  # fmt: skip


@pytest.mark.real_data
@pytest.mark.parametrize("read", ["path", "bytes"])
def test_real_sample_rows_equal_the_local_scan(
    ray_local: None, shared_data: Path, model: Path, predictor: Predictor, tmp_path: Path, read: str
) -> None:
    """Every real file under ../shared/data (PNG, JPEG, RGBA, DICOM incl. one without preamble, one that
    cannot be decoded here): the same row, same error text, same probabilities to the last digit."""
    local = _local_rows(predictor, shared_data, tmp_path / "local.csv")
    res = ray_scan(_ray_cfg(model, shared_data, tmp_path / "ray.csv", recursive=True, read=read))
    assert _rows(tmp_path / "ray.csv") == local
    assert res.scan.found == len(local) > 400 and res.scan.predicted > 400


def test_resume_completes_an_interrupted_scan(
    ray_local: None, model: Path, predictor: Predictor, folder: Path, tmp_path: Path
) -> None:
    full = _local_rows(predictor, folder, tmp_path / "full.csv")
    out = tmp_path / "r.csv"
    lines = (tmp_path / "full.csv").read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:30])  # header + 4 rows, killed in the middle of a line
    res = ray_scan(_ray_cfg(model, folder, out, recursive=True, resume=True))
    assert res.scan.skipped == 4 and res.scan.predicted + res.scan.failed == 9
    assert _rows(out) == full


def test_cli_engine_ray_writes_the_local_rows(
    ray_local: None, model: Path, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxr.cli.predict import app

    monkeypatch.delenv("CXR_MODEL", raising=False)
    runner = CliRunner()
    base = ["scan", str(folder), "-r", "-m", str(model), "-b", "4"]
    local = runner.invoke(app, [*base, "-o", str(tmp_path / "local.jsonl")])
    res = runner.invoke(app, [*base, "-o", str(tmp_path / "ray.jsonl"), "--engine", "ray", "--json"])
    assert (local.exit_code, res.exit_code) == (1, 1), res.output
    assert _rows(tmp_path / "ray.jsonl") == _rows(tmp_path / "local.jsonl")
    summary = json.loads(res.stdout)
    assert summary["engine"] == "ray" and summary["failed"] == 3 and summary["ray"]["actors"] == 2
    assert summary["model"]["provider"] == "cpu" and summary["model"]["classes"]
    stdout_run = runner.invoke(app, [*base, "--engine", "ray", "--quiet"])  # rows on stdout, no summary
    lines = stdout_run.stdout.splitlines()
    assert stdout_run.exit_code == 1 and lines[0].startswith("source,label") and len(lines) == 14


def test_manifest_split(ray_local: None, model: Path, predictor: Predictor, tmp_path: Path) -> None:
    from cxr.data.manifest import SplitConfig, build_manifest

    data = make_dataset(tmp_path / "ds", counts=10)  # 8 / 1 / 1 per class
    m = build_manifest(SplitConfig(data_dir=data, out=tmp_path / "manifest.csv")).manifest
    expected = [str(m.abspath(r)) for r in m.split("val")]
    out = tmp_path / "val.csv"
    res = ray_scan(_ray_cfg(model, data, out, manifest=tmp_path / "manifest.csv", split="val"))
    rows = _rows(out)
    assert [r["source"] for r in rows] == expected and res.scan.found == len(expected) > 0
    direct = {p.source: p for p in predictor.predict(expected)}
    for r in rows:
        assert r["probabilities.COVID"] == repr(direct[r["source"]].probabilities["COVID"])


def test_a_different_model_on_a_node_fails_with_its_message(
    ray_local: None, model: Path, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxr.runtime.ray.scan as rs

    real = rs._model_header

    def other_driver_model(cfg: RayScanConfig) -> tuple[tuple[str, ...], str, dict[str, Any]]:
        classes, _, info = real(cfg)
        return classes, "0123456789abcdef", info

    monkeypatch.setattr(rs, "_model_header", other_driver_model)
    with pytest.raises(CxrError) as e:
        ray_scan(_ray_cfg(model, folder, tmp_path / "r.csv"))
    assert "the Ray job failed" in e.value.message and "0123456789abcdef" in e.value.message
    assert e.value.exit_code == 2 and "same path on every node" in (e.value.hint or "")


def test_file_url_listing_matches_find_images(folder: Path) -> None:
    for recursive in (False, True):
        for include, exclude in [((), ()), (("*.png",), ("img_00[2-4]*",)), (("sub/*",), ())]:
            local = [
                str(p) for p in find_images(folder, recursive=recursive, include=include, exclude=exclude)
            ]
            urls = find_images_at_url(
                f"file://{folder}", recursive=recursive, include=include, exclude=exclude
            )
            assert [u.removeprefix("file://") for u in urls] == local


def _conn(cpus: float, gpus: float) -> RayConnection:
    return RayConnection("head:6379", False, cpus, gpus, 1)


@pytest.mark.parametrize(
    "provider,cpus,gpus,actors,expected",
    [
        ("cpu", 16, 2, None, (0.0, 16)),  # CPU provider: GPUs stay free, one actor per CPU
        ("auto", 16, 2, None, (1.0, 2)),  # auto on a GPU cluster: one GPU per actor
        ("cuda", 16, 4, None, (1.0, 4)),
        ("cuda", 8, 0, None, (0.0, 8)),  # no GPU anywhere: never ask Ray for one (it would wait forever)
        ("auto", 8, 0, 3, (0.0, 3)),
    ],
)
def test_actor_pool_sizing(
    provider: str, cpus: float, gpus: float, actors: int | None, expected: tuple[float, int]
) -> None:
    cfg = RayScanConfig(
        model=Path("m.onnx"),
        source=".",
        predictor=PredictorConfig(session=SessionConfig(provider=provider)),
        actors=actors,
    )
    per_actor = _gpus_per_actor(cfg, _conn(cpus, gpus))
    assert (per_actor, _actor_count(cfg, _conn(cpus, gpus), per_actor)) == expected


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"actors": 0}, "actors must be >= 1"),
        ({"read": "mmap"}, "unknown read mode"),
        ({"split": "test"}, "--manifest"),
        ({"cpus_per_actor": 0}, "cpus per actor"),
        ({"resume": True, "overwrite": True}, "contradict"),
    ],
)
def test_bad_config_is_refused(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RayScanConfig(model=Path("m.onnx"), source=".", **kw)


def _cli(args: list[str], cwd: Path, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(f"""
        import sys
        {prelude}
        from typer.testing import CliRunner
        from cxr.cli.predict import app
        res = CliRunner().invoke(app, {args!r})
        sys.stderr.write(res.stderr)
        raise SystemExit(res.exit_code)
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_unreachable_address_exits_2_quickly(model: Path, folder: Path, tmp_path: Path, address: str) -> None:
    out = tmp_path / "r.csv"
    args = ["scan", str(folder), "-m", str(model), "--engine", "ray", "--address", address, "-o", str(out)]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"cannot reach the Ray cluster at '{address}'" in proc.stderr and "ray start --head" in proc.stderr
    assert not out.exists()  # nothing written before the cluster answered


def test_ray_not_installed_exits_2_naming_the_extra(model: Path, folder: Path, tmp_path: Path) -> None:
    args = ["scan", str(folder), "-m", str(model), "--engine", "ray", "-o", str(tmp_path / "r.csv")]
    proc = _cli(args, tmp_path, prelude="sys.modules['ray'] = None")
    assert proc.returncode == 2 and "Ray is not installed" in proc.stderr
    assert "pip install -e '.[ray]'" in proc.stderr


def test_local_engine_refuses_ray_options(model: Path, folder: Path) -> None:
    from cxr.cli.predict import app

    res = CliRunner().invoke(app, ["scan", str(folder), "-m", str(model), "--address", "auto"])
    assert res.exit_code == 2 and "--address needs --engine ray" in res.stderr


def test_importing_the_ray_engine_does_not_import_ray(tmp_path: Path) -> None:
    code = """
        import sys
        import cxr.runtime, cxr.cli.predict
        import cxr.runtime.ray.scan, cxr.runtime.ray.pipeline, cxr.runtime.ray.cluster, cxr.runtime.ray.inputs
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "pyarrow", "pandas")))
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_result_dict_says_engine_and_cluster(
    ray_local: None, model: Path, folder: Path, tmp_path: Path
) -> None:
    buf = io.StringIO()
    res = ray_scan(_ray_cfg(model, folder, None, include=("img_00[01].png",)), stream=buf)
    assert isinstance(res, RayScanResult) and len(buf.getvalue().splitlines()) == 3  # header + 2 rows
    d = res.to_dict()
    assert d["engine"] == "ray" and d["found"] == 2 and d["ray"]["actors"] == 1  # 2 files: one block
    assert d["ray"]["read"] == "path" and d["output"] is None
