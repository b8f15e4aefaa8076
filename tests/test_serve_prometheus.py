"""GET /metrics read back with prometheus-client's own parser: the expected families and types, a predict
request counted and timed, refusals counted by reason, and two apps in one process never sharing counts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from cxr.serve.app import create_app
from cxr.serve.config import ServeConfig
from cxr.session import SessionConfig
from tests.test_serve_support import png_bytes

PREDICT_200 = {"method": "POST", "path": "/v1/predict", "status": "200"}
FAMILIES = {  # parser names: a counter's family drops its _total
    "cxr_http_requests": "counter",
    "cxr_http_request_duration_seconds": "histogram",
    "cxr_batch_size": "histogram",
    "cxr_inference_duration_seconds": "histogram",
    "cxr_rejected_requests": "counter",
    "cxr_queue_depth": "gauge",
    "cxr_requests_in_progress": "gauge",
    "cxr_model_ready": "gauge",
}


@contextmanager
def serving(model: Path, **cfg: Any) -> Iterator[TestClient]:
    app = create_app(ServeConfig(model=model, session=SessionConfig(threads=1), **cfg))
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.02)
        yield client


def scrape(client: TestClient) -> dict[str, Any]:
    """Family name -> its metric family, from one GET /metrics."""
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"] == CONTENT_TYPE_LATEST
    return {f.name: f for f in text_string_to_metric_families(resp.text)}


def value(families: dict[str, Any], sample: str, **labels: str) -> float:
    """The value of one sample (0 when that label set was never seen)."""
    for family in families.values():
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    return 0.0


def test_the_exposed_families_and_their_types(fused_model: Path) -> None:
    with serving(fused_model) as client:
        families = scrape(client)
    assert {name: families[name].type for name in FAMILIES} == FAMILIES
    assert value(families, "cxr_model_ready") == 1.0 and value(families, "cxr_queue_depth") == 0.0
    assert families["cxr_http_requests"].documentation == "HTTP requests by method, path and status."


def test_a_predict_request_is_counted_and_timed(fused_model: Path) -> None:
    with serving(fused_model) as client:
        before = scrape(client)
        assert client.post("/v1/predict", content=png_bytes()).status_code == 200
        after = scrape(client)

    def grew(sample: str, **labels: str) -> float:
        return value(after, sample, **labels) - value(before, sample, **labels)

    timing = "cxr_http_request_duration_seconds"
    assert grew("cxr_http_requests_total", **PREDICT_200) == 1
    assert grew(f"{timing}_count", path="/v1/predict") == 1 and grew(f"{timing}_sum", path="/v1/predict") > 0
    buckets = [
        s for s in after[timing].samples if s.name == f"{timing}_bucket" and s.labels["path"] == "/v1/predict"
    ]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf" and counts[-1] == 1
    assert grew("cxr_batch_size_count") == 1 and grew("cxr_inference_duration_seconds_count") == 1
    # the first scrape was itself counted by the time of the second
    assert grew("cxr_http_requests_total", method="GET", path="/metrics", status="200") == 1


def test_refusals_are_counted_by_reason(fused_model: Path) -> None:
    with serving(fused_model, max_body_bytes=1000) as client:
        assert client.post("/v1/predict", content=b"x" * 5000).status_code == 413
        families = scrape(client)
    assert value(families, "cxr_rejected_requests_total", reason="body_too_large") == 1
    assert value(families, "cxr_http_requests_total", method="POST", path="/v1/predict", status="413") == 1


def test_two_apps_in_one_process_do_not_share_counts(fused_model: Path) -> None:
    with serving(fused_model) as a, serving(fused_model) as b:
        for _ in range(2):
            assert a.post("/v1/predict", content=png_bytes()).status_code == 200
        assert b.post("/v1/predict", content=png_bytes()).status_code == 200
        seen_a, seen_b = scrape(a), scrape(b)
    assert value(seen_a, "cxr_http_requests_total", **PREDICT_200) == 2
    assert value(seen_b, "cxr_http_requests_total", **PREDICT_200) == 1
    assert value(seen_a, "cxr_batch_size_count") == 2 and value(seen_b, "cxr_batch_size_count") == 1
    assert not any(m.name.startswith("cxr_") for m in REGISTRY.collect())  # nothing on the global registry
