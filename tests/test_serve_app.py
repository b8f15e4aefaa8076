"""The app in-process (lifespan included): readiness gating, load failures, internal errors without leaks,
timeouts (504 while running, 503 while queued), dynamic batching, CORS, the OpenAPI schema, real images."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cxr.errors import ModelError
from cxr.runtime.predictor import Predictor
from cxr.serve.app import create_app
from cxr.serve.config import ServeConfig
from cxr.session import SessionConfig
from cxr.spec import Prediction
from tests.test_serve_support import DICOM_DIR, png_bytes

KEY = "in-process-key-0123456789"


class Wrapped:
    """A real Predictor with optional delays/failures injected (everything else delegated)."""

    def __init__(self, inner: Predictor, decode_s: float = 0.0, infer_s: float = 0.0) -> None:
        self.inner = inner
        self.decode_s = decode_s
        self.infer_s = infer_s
        self.fail_next = False
        self.batch_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def decode(self, item: Any) -> np.ndarray:
        time.sleep(self.decode_s)
        return self.inner.decode(item)

    def predict_arrays(
        self, grays: Sequence[np.ndarray], sources: Sequence[str] | None = None
    ) -> list[Prediction]:
        self.batch_sizes.append(len(grays))
        time.sleep(self.infer_s)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("secret internal state at /srv/internal/model.onnx")
        return self.inner.predict_arrays(grays, sources)


def wait_ready(client: TestClient, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready: {client.get('/readyz').text}")


@contextmanager
def app_client(
    model: Path, loader: Callable[[ServeConfig], Any] | None = None, wait: bool = True, **cfg: Any
) -> Iterator[TestClient]:
    app = create_app(ServeConfig(model=model, session=SessionConfig(threads=1), **cfg), loader=loader)
    with TestClient(app, raise_server_exceptions=False) as client:
        if wait:
            wait_ready(client)
        yield client


def test_nothing_is_loaded_until_the_lifespan_starts(fused_model: Path) -> None:
    calls: list[ServeConfig] = []
    app = create_app(
        ServeConfig(model=fused_model), loader=lambda cfg: calls.append(cfg) or Predictor.from_path(cfg.model)
    )
    assert calls == [] and app.state.cxr.status == "loading"
    with TestClient(app) as client:
        wait_ready(client)
    assert len(calls) == 1


def test_not_ready_until_loaded_and_warmed_up(fused_model: Path) -> None:
    gate = threading.Event()

    def slow_loader(cfg: ServeConfig) -> Predictor:
        gate.wait(10)
        return Predictor.from_path(cfg.model)

    with app_client(fused_model, slow_loader, wait=False) as client:
        assert client.get("/healthz").status_code == 200  # alive while loading
        ready = client.get("/readyz")
        assert (
            ready.status_code == 503 and ready.json()["status"] == "loading" and ready.headers["retry-after"]
        )
        early = client.post("/v1/predict", content=png_bytes())
        assert early.status_code == 503 and early.json()["error"]["code"] == "not_ready"
        assert client.get("/v1/model").status_code == 503
        gate.set()
        wait_ready(client)
        body = client.get("/readyz").json()
        assert body["provider"] == "cpu" and body["warmup_seconds"] is not None
        assert client.post("/v1/predict", content=png_bytes()).status_code == 200


@pytest.mark.parametrize(
    ("error", "shown", "hidden"),
    [
        (ModelError("model file {m} does not exist", hint="pass --model"), "does not exist", "{parent}"),
        (RuntimeError("boom at /srv/secret/path"), "could not be loaded", "/srv/secret"),
    ],
)
def test_a_failed_load_is_reported_without_internals(
    fused_model: Path, error: Exception, shown: str, hidden: str
) -> None:
    if isinstance(error, ModelError):
        error = ModelError(error.message.format(m=fused_model), hint=error.hint)
    hidden = hidden.format(parent=fused_model.parent)

    def failing(cfg: ServeConfig) -> Predictor:
        raise error

    with app_client(fused_model, failing, wait=False) as client:
        for _ in range(200):
            if client.get("/readyz").json()["status"] != "loading":
                break
            time.sleep(0.01)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert shown in ready.json()["message"] and hidden not in ready.text
        assert client.get("/healthz").status_code == 503
        assert client.post("/v1/predict", content=png_bytes()).status_code == 503


def test_internal_errors_are_500_without_details_and_the_server_goes_on(fused_model: Path) -> None:
    wrapped: list[Wrapped] = []

    def loader(cfg: ServeConfig) -> Wrapped:
        wrapped.append(Wrapped(Predictor.from_path(cfg.model)))
        return wrapped[0]

    with app_client(fused_model, loader) as client:
        wrapped[0].fail_next = True
        resp = client.post("/v1/predict", content=png_bytes())
        assert resp.status_code == 500
        assert resp.json() == {"error": {"code": "internal", "message": "internal server error"}}
        assert client.post("/v1/predict", content=png_bytes()).status_code == 200


def test_slow_inference_times_out_with_504_and_a_queued_request_with_503(fused_model: Path) -> None:
    wrapped: list[Wrapped] = []

    def loader(cfg: ServeConfig) -> Wrapped:
        wrapped.append(Wrapped(Predictor.from_path(cfg.model)))
        return wrapped[0]

    with app_client(fused_model, loader, request_timeout_s=0.4, max_concurrency=1, max_queue=4) as client:
        w = wrapped[0]
        w.infer_s = 1.0
        resp = client.post("/v1/predict", content=png_bytes())
        assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"
        time.sleep(0.8)  # let the slow batch finish
        w.infer_s, w.decode_s = 0.0, 1.0  # now decoding is slow: its slot stays held until it ends

        def post() -> httpx.Response:
            return client.post("/v1/predict", content=png_bytes())

        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: results.append(post())) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        assert sorted(r.status_code for r in results) == [503, 504]
        queued = next(r for r in results if r.status_code == 503)
        assert queued.json()["error"]["code"] == "overloaded" and queued.headers["retry-after"] == "1"
        w.decode_s = 0.0
        time.sleep(1.0)
        assert client.post("/v1/predict", content=png_bytes()).status_code == 200


@pytest.mark.parametrize(("max_batch", "expect_coalescing"), [(8, True), (1, False)])
def test_concurrent_requests_are_coalesced(
    fused_model: Path, max_batch: int, expect_coalescing: bool
) -> None:
    wrapped: list[Wrapped] = []

    def loader(cfg: ServeConfig) -> Wrapped:
        wrapped.append(Wrapped(Predictor.from_path(cfg.model), infer_s=0.05))
        return wrapped[0]

    cfg = ServeConfig(
        model=fused_model,
        session=SessionConfig(threads=1),
        max_batch_size=max_batch,
        max_wait_ms=20,
        max_concurrency=32,
    )
    app = create_app(cfg, loader=loader)
    n = 16

    async def scenario() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                while (await client.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.02)
                wrapped[0].batch_sizes.clear()
                images = [png_bytes(seed=i) for i in range(n)]
                return await asyncio.gather(*(client.post("/v1/predict", content=im) for im in images))

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * n
    sizes = wrapped[0].batch_sizes
    assert sum(sizes) == n and max(sizes) <= max_batch
    if expect_coalescing:
        assert max(sizes) > 1 and len(sizes) < n
        assert max(r.json()["timing"]["batch_size"] for r in responses) == max(sizes)
    else:
        assert sizes == [1] * n


def test_cors_only_for_configured_origins(fused_model: Path) -> None:
    allowed = "https://viewer.example.org"
    with app_client(fused_model, cors_origins=(allowed,)) as client:
        pre = {"Access-Control-Request-Method": "POST"}
        ok = client.options("/v1/predict", headers={"Origin": allowed, **pre})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == allowed
        bad = client.options("/v1/predict", headers={"Origin": "https://evil.example", **pre})
        assert "access-control-allow-origin" not in bad.headers


@pytest.mark.parametrize("api_key", [None, KEY])
def test_openapi_schema_describes_the_api(fused_model: Path, api_key: str | None) -> None:
    with app_client(fused_model, api_key=api_key) as client:
        schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/batch", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(
        schema["paths"]
    )
    predict = schema["paths"]["/v1/predict"]["post"]
    assert {"multipart/form-data", "image/png", "application/dicom"} <= set(predict["requestBody"]["content"])
    assert {"413", "415", "422", "503"} <= set(predict["responses"])
    schemes = schema.get("components", {}).get("securitySchemes", {})
    assert bool(schemes) == (api_key is not None)


def test_error_bodies_have_one_shape(fused_model: Path) -> None:
    with app_client(fused_model) as client:
        for resp in (
            client.get("/missing"),
            client.put("/v1/predict"),
            client.post("/v1/predict", content=b""),
            client.post("/v1/predict/batch", content=png_bytes(), headers={"content-type": "image/png"}),
        ):
            assert 400 <= resp.status_code < 500
            assert set(resp.json()) == {"error"} and set(resp.json()["error"]) <= {"code", "message", "hint"}


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("name", "statuses"),
    [
        ("nih_cxr14_dx_chest.dcm", {200}),
        ("barre_CR-MONO1-10-chest.dcm", {200}),  # no preamble: sniffed from its first tag
        ("txv_Fake_MONOCHROME1_header_edit.dcm", {200}),
        ("fodicom_CR-ModalitySequenceLUT_dental.dcm", {200, 422}),  # may need a JPEG-lossless decoder
    ],
)
def test_real_dicom_files(fused_model: Path, name: str, statuses: set[int]) -> None:
    pytest.importorskip("cxr.imaging.dicom")
    path = DICOM_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with app_client(fused_model) as client:
        resp = client.post(
            "/v1/predict", content=path.read_bytes(), headers={"content-type": "application/dicom"}
        )
    assert resp.status_code in statuses, resp.text
    if resp.status_code == 200:
        assert resp.json()["label"] in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


@pytest.mark.real_data
def test_real_chest_pngs(fused_model: Path, shared_data: Path) -> None:
    files = sorted((shared_data / "radiography-dev").glob("*/images/*.png"))[::150][:3]
    with app_client(fused_model) as client:
        resp = client.post(
            "/v1/predict/batch", files=[("files", (f.name, f.read_bytes(), "image/png")) for f in files]
        )
    assert resp.status_code == 200 and resp.json()["succeeded"] == len(files) > 0


def test_two_apps_in_one_process_keep_their_own_model_and_auth(fused_model: Path, tmp_path: Path) -> None:
    """The routers are module-level: each app reaches its own state and its own auth, never another's."""
    from tests.onnx_factory import make_fused_model

    other = make_fused_model(tmp_path / "other.onnx", seed=5)
    with app_client(fused_model, api_key=KEY) as locked, app_client(other) as open_:
        ids = Predictor.from_path(fused_model).model_id, Predictor.from_path(other).model_id
        assert ids[0] != ids[1]
        assert locked.get("/v1/model").status_code == 401
        assert locked.get("/v1/model", headers={"X-API-Key": KEY}).json()["model"]["id"] == ids[0]
        assert open_.get("/v1/model").json()["model"]["id"] == ids[1]
        assert locked.get("/healthz").status_code == 200 and open_.get("/metrics").status_code == 200
