"""benchmarks/compare.py: rows of two cxr-bench reports matched on their configuration key, B/A ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr.bench.machine import MachineInfo
from cxr.bench.types import BenchReport, BenchRow, summarize
from tests.test_bench_support import benchmark

compare = benchmark("compare")
compare_reports, comparison_markdown = compare.compare_reports, compare.comparison_markdown
format_comparison = compare.format_comparison
MACHINE = MachineInfo(
    "Test CPU", 2, 2, 8.0, (), "linux", "3.11", "1.32.0", ("CPUExecutionProvider",), None, None
)


def _row(batch: int, ms: float, ips: float, precision: str = "fp32", model: str = "m.onnx") -> BenchRow:
    stats = summarize([ms / 1000] * 3)
    return BenchRow(
        kind="inference", model=model, model_kind="ensemble", precision=precision, provider_requested="cpu",
        provider="cpu", provider_ok=True, batch_size=batch, threads=2, concurrency=1, mode="session", sessions=1,
        warmup=1, iterations=3, seconds=1.0, latency_ms=stats, latency_per_image_ms=stats.scaled(1 / batch),
        throughput_ips=ips, peak_rss_mb=100.0, rss_scope="row",
    )  # fmt: skip


def _report(*rows: BenchRow) -> BenchReport:
    return BenchReport("2026-01-01T00:00:00+00:00", "0.1.0", "cxr-bench run m.onnx", MACHINE, {}, rows)


def test_ratios_are_b_over_a() -> None:
    a = _report(_row(1, 100.0, 10.0), _row(8, 400.0, 20.0), _row(1, 50.0, 20.0, precision="int8"))
    b = _report(_row(1, 50.0, 20.0), _row(8, 600.0, 13.3), _row(16, 900.0, 17.0))
    c = compare_reports(a, b, "old.json", "new.json")
    by_batch = {p.a.batch_size: p for p in c.pairs}
    assert set(by_batch) == {1, 8}
    assert by_batch[1].p50_ratio == pytest.approx(0.5) and by_batch[1].throughput_ratio == pytest.approx(2.0)
    assert by_batch[8].p50_ratio == pytest.approx(1.5) and by_batch[8].p99_ratio == pytest.approx(1.5)
    assert [r.precision for r in c.only_a] == ["int8"] and [r.batch_size for r in c.only_b] == [16]
    text = format_comparison(c)
    assert "0.50x" in text and "2.00x" in text and "1.50x" in text
    assert "A = old.json" in text and "B = new.json" in text
    assert "only in A: inference|ensemble|int8|cpu|b1|t2|c1|session" in text
    assert "only in B: inference|ensemble|fp32|cpu|b16|t2|c1|session" in text
    assert comparison_markdown(c).count("\n| ") == 1 + 2


def test_no_common_rows_is_said() -> None:
    c = compare_reports(_report(_row(1, 10.0, 100.0)), _report(_row(2, 10.0, 200.0)))
    assert not c.pairs and "no configuration appears in both" in format_comparison(c)


def test_duplicate_keys_are_told_apart_by_file_name() -> None:
    a = _report(_row(1, 10.0, 100.0, model="x.onnx"), _row(1, 20.0, 50.0, model="y.onnx"))
    c = compare_reports(a, a)
    assert len(c.pairs) == 2 and all(p.p50_ratio == pytest.approx(1.0) for p in c.pairs)


def test_zero_baseline_gives_no_ratio() -> None:
    c = compare_reports(_report(_row(1, 10.0, 0.0)), _report(_row(1, 10.0, 5.0)))
    assert c.pairs[0].throughput_ratio is None
    line = next(ln for ln in format_comparison(c).splitlines() if ln.startswith("m.onnx"))
    assert line.split()[-1] == "-" and "1.00x" in line


def test_the_script_compares_two_files_and_refuses_a_json_that_is_no_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, other = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "x.json"
    a.write_text(json.dumps(_report(_row(1, 100.0, 10.0)).to_dict()))
    b.write_text(json.dumps(_report(_row(1, 50.0, 20.0), _row(2, 60.0, 30.0)).to_dict()))
    other.write_text(json.dumps({"rows": []}))
    assert compare.main([str(a), str(b), "--markdown", str(tmp_path / "c.md")]) == 0
    out = capsys.readouterr().out
    assert "0.50x" in out and out.count("only in B") == 1
    assert (tmp_path / "c.md").read_text().startswith("# cxr-bench comparison")
    assert compare.main([str(a), str(other)]) == 2
    assert "not a cxr-bench report" in capsys.readouterr().err
