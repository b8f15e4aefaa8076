"""A tiny end-to-end cxr-bench run through the library: rows, JSON schema, Markdown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr.bench.report import format_markdown, format_terminal, load_report, write_outputs
from cxr.bench.run import BenchConfig, run_bench
from cxr.bench.types import REQUIRED_ROW_KEYS, SCHEMA, SCHEMA_VERSION, BenchReport, validate_report
from cxr.errors import ConfigError, DataError, ModelError
from cxr.session import SessionConfig
from tests.onnx_factory import write_gray_pngs
from tests.test_bench_support import baked_reshape, variant_of

FAST = {"warmup": 1, "iterations": 4}
PEAKS = {"fp32": 100.0, "int8": 800.0}


@pytest.fixture(scope="module")
def full_report(fused_model: Path, tmp_path_factory: pytest.TempPathFactory) -> BenchReport:
    tmp = tmp_path_factory.mktemp("bench")
    int8 = variant_of(fused_model, tmp / "tiny_fused.int8.onnx", "int8")

    write_gray_pngs(tmp / "imgs", 5)
    cfg = BenchConfig(
        model=fused_model,
        variants=(int8,),
        batch_sizes=(1, 3),
        threads=(1,),
        concurrency=(1, 2),
        folder=tmp / "imgs",
        peak_gflops=PEAKS,
        **FAST,
    )
    seen: list[str] = []
    report = run_bench(cfg, on_row=lambda r: seen.append(r.key()))
    assert seen == [r.key() for r in report.rows]
    return report


def test_rows_cover_every_combination(full_report: BenchReport) -> None:
    kinds = [(r.kind, r.precision, r.batch_size, r.concurrency, r.mode) for r in full_report.rows]
    for precision in ("fp32", "int8"):
        for b in (1, 3):
            assert ("inference", precision, b, 1, "session") in kinds
            assert ("inference", precision, b, 2, "session") in kinds
            assert ("inference", precision, b, 2, "pool") in kinds
            assert ("end_to_end", precision, b, 1, "session") in kinds
    assert len(kinds) == 2 * 2 * 4


def test_row_values_are_consistent(full_report: BenchReport) -> None:
    for r in full_report.rows:
        lat = r.latency_ms
        assert lat.min <= lat.p50 <= lat.p90 <= lat.p95 <= lat.p99 <= lat.max
        assert r.latency_per_image_ms.mean == pytest.approx(lat.mean / r.batch_size)
        assert lat.count == r.iterations >= FAST["iterations"] * r.concurrency
        assert r.throughput_ips == pytest.approx(r.batch_size * r.iterations / r.seconds)
        assert r.provider == "cpu" and r.provider_ok and r.providers_used[0] == "cpu"
        assert r.peak_rss_mb > 10 and r.rss_scope in ("row", "process")
        assert r.session_create_s is not None and r.session_create_s > 0
        assert r.peak_gflops == PEAKS[r.precision]  # efficiency against the peak of the precision that ran
        assert r.efficiency_pct == pytest.approx(
            100 * r.flops_per_image * r.throughput_ips / 1e9 / r.peak_gflops
        )
        assert r.sessions == (r.concurrency if r.mode == "pool" else 1)


def test_end_to_end_rows_split_time_into_stages(full_report: BenchReport) -> None:
    e2e = [r for r in full_report.rows if r.kind == "end_to_end"]
    for r in e2e:
        assert r.stages_ms is not None and set(r.stages_ms) == {"decode", "preprocess", "inference"}
        # the stages are parts of each timed call: never more than the whole, and most of it (a busy CPU adds
        # scheduling time between them: a 3 ms row read 1.9 ms of stages on a 2-core host at load 4)
        assert 0.5 * r.latency_ms.mean <= sum(r.stages_ms.values()) <= 1.05 * r.latency_ms.mean
        assert all(v > 0 for v in r.stages_ms.values())
    assert "decode" in format_terminal(full_report) and "pure inference" in format_terminal(full_report)


def test_json_schema_and_round_trip(full_report: BenchReport, tmp_path: Path) -> None:
    (path,) = write_outputs(full_report, json_path=tmp_path / "out" / "r.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == SCHEMA and doc["schema_version"] == SCHEMA_VERSION
    for key in ("cpu_model", "logical_cores", "usable_cores", "gpus", "onnxruntime", "onnxruntime_providers"):
        assert key in doc["machine"]
    assert doc["machine"]["peaks"] == PEAKS and doc["machine"]["peak_source"] == "option"
    assert doc["config"]["batch_sizes"] == [1, 3]
    for row in doc["rows"]:
        assert set(REQUIRED_ROW_KEYS) <= set(row)
        assert set(row["latency_ms"]) == {
            "count",
            "mean",
            "std",
            "min",
            "p50",
            "p90",
            "p95",
            "p99",
            "max",
            "outliers",
            "outlier_fence",
        }
        assert row["key"].startswith(row["kind"])
    validate_report(doc)
    back = load_report(path)
    assert back.rows == full_report.rows
    assert back.machine == full_report.machine


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(schema="other"), "not a cxr-bench report"),
        (lambda d: d.update(schema_version=99), "schema version"),
        (lambda d: d.pop("rows"), "rows"),
        (lambda d: d["rows"][0].pop("throughput_ips"), "lacks throughput_ips"),
        (lambda d: d["rows"][0].update(kind="magic"), "unknown kind"),
    ],
)
def test_validate_report_names_the_problem(full_report: BenchReport, mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(json.dumps(full_report.to_dict()))
    mutate(doc)
    with pytest.raises(DataError, match=match):
        validate_report(doc)


def test_markdown_has_every_column_and_its_legend(full_report: BenchReport, tmp_path: Path) -> None:
    (md_path,) = write_outputs(full_report, markdown=tmp_path / "r.md")
    md = md_path.read_text()
    assert "| configuration | provider | batch |" in md and full_report.machine.cpu_model in md
    assert "Hyndman-Fan type 7" in md and md.count("\n| ") == len(full_report.rows) + 1
    assert "outl = calls above Q3 + 1.5 IQR" in md and "load s = seconds to create" in md
    assert format_markdown(full_report).startswith("# cxr-bench results")


def test_provider_fallback_is_reported_not_hidden(member_model: Path) -> None:
    # this onnxruntime has no CUDA: the row says so (strict mode raises instead)
    report = run_bench(BenchConfig(model=member_model, providers=("cuda",), **FAST))
    (row,) = report.rows
    assert (row.provider_requested, row.provider, row.provider_ok) == ("cuda", "cpu", False)
    assert row.warnings and "PROVIDER FALLBACK" in format_terminal(report)
    with pytest.raises(ModelError):
        strict = SessionConfig(strict_provider=True)
        run_bench(BenchConfig(model=member_model, providers=("cuda",), session=strict, **FAST))


def test_batch_the_graph_cannot_run_is_a_model_error(member_model: Path, tmp_path: Path) -> None:
    baked = baked_reshape(member_model, tmp_path / "baked.onnx")
    run_bench(BenchConfig(model=baked, batch_sizes=(1,), **FAST))
    with pytest.raises(ModelError, match="batch size 2"):
        run_bench(BenchConfig(model=baked, batch_sizes=(2,), **FAST))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"providers": ("gpu",)},
        {"providers": ()},
        {"batch_sizes": (0,)},
        {"batch_sizes": (1, 1)},
        {"threads": (0,)},
        {"concurrency": (0,)},
        {"iterations": 0},
        {"warmup": -1},
        {"min_seconds": -1.0},
        {"peak_gflops": -5.0},
    ],
)
def test_bad_config_is_refused(fused_model: Path, kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError):
        run_bench(BenchConfig(model=fused_model, **kwargs))


@pytest.mark.real_data
def test_end_to_end_on_real_files(fused_model: Path, shared_data: Path) -> None:
    """Real clinical files (224 px to ~2500 px, JPEG/PNG, gray/RGB/RGBA): decoding dominates a tiny model."""
    folder = shared_data / "external-dev"
    report = run_bench(
        BenchConfig(model=fused_model, batch_sizes=(2,), folder=folder, warmup=1, iterations=4)
    )
    pure, e2e = report.rows
    assert (pure.kind, e2e.kind) == ("inference", "end_to_end")
    assert e2e.stages_ms is not None and e2e.stages_ms["decode"] > e2e.stages_ms["inference"]
    assert e2e.latency_ms.mean > pure.latency_ms.mean
