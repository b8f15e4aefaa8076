"""The API's parts on their own: config checks, API keys, content sniffing, metrics text, the admission gate,
the dynamic batcher and the body-size middleware."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxr.errors import ConfigError
from cxr.serve.app import _digest, key_matches
from cxr.serve.config import ServeConfig, load_api_key
from cxr.serve.limits import AdmissionGate, BodyLimitMiddleware, Overloaded
from cxr.serve.pipeline import safe_name, sniff
from cxr.serve.prometheus import ServeMetrics
from cxr.serve.state import BatcherStopped, DynamicBatcher
from cxr.session import SessionConfig
from cxr.spec import Prediction
from tests.test_serve_support import bomb_png, dicom_bytes, png_bytes, tiff_frames

KEY = "0123456789abcdef-key"

# ---- config and keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"session": {"provider": "gpu"}},
        {"session": {"provider": "cpu", "precision": "bf16"}},
        {"port": 70000},
        {"max_batch_size": 0},
        {"max_body_bytes": 0},
        {"max_pixels": 0},
        {"max_concurrency": 0},
        {"max_queue": -1},
        {"max_wait_ms": -1},
        {"max_wait_ms": 5000},
        {"request_timeout_s": 0},
        {"session": {"threads": 0}},
        {"threads": 1},  # a session setting, given flat
        {"max_queue": "many"},
        {"api_key": "short"},
        {"api_key": "has a space in it, sixteen+"},
        {"cors_origins": ("",)},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        ServeConfig(model=Path("m.onnx"), **kwargs)
    assert err.value.message


def test_config_defaults_are_safe() -> None:
    cfg = ServeConfig(model=Path("m.onnx"), api_key=KEY)
    assert cfg.host == "127.0.0.1" and cfg.max_body_bytes == 64 * 1024 * 1024 and cfg.cors_origins == ()
    assert cfg.max_batch_size == 8 and cfg.max_queue == 64
    assert KEY not in repr(cfg)


SERVE_ENV = {
    "CXR_MODEL": "from-env.onnx",
    "CXR_MAX_QUEUE": "7",
    "CXR_REQUEST_TIMEOUT": "9.5",
    "CXR_CORS_ORIGINS": "https://a.example.org,https://b.example.org",
    "CXR_PROVIDER": "cpu",
    "CXR_THREADS": "2",
    "CXR_STRICT_PROVIDER": "true",
    "CXR_API_KEY": KEY,
}


def test_config_reads_the_cxr_environment_and_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SERVE_ENV.items():
        monkeypatch.setenv(name, value)
    cfg = ServeConfig()
    assert cfg.model == Path("from-env.onnx") and cfg.max_queue == 7 and cfg.request_timeout_s == 9.5
    assert cfg.cors_origins == ("https://a.example.org", "https://b.example.org") and cfg.api_key == KEY
    assert cfg.session == SessionConfig(provider="cpu", threads=2, strict_provider=True)
    given = ServeConfig(model=Path("m.onnx"), max_queue=3, session=SessionConfig(threads=1))
    assert (
        given.model == Path("m.onnx") and given.max_queue == 3 and given.session == SessionConfig(threads=1)
    )
    monkeypatch.setenv("CXR_THREADS", "0")
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        ServeConfig()


def test_config_without_a_model_says_which_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_MODEL", raising=False)
    with pytest.raises(ConfigError, match="no model given") as err:
        ServeConfig()
    assert "CXR_MODEL" in (err.value.hint or "")


def test_key_file_wins_over_the_key_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n")
    monkeypatch.setenv("CXR_API_KEY", "another-key-0123456789")
    monkeypatch.setenv("CXR_API_KEY_FILE", str(key_file))
    assert ServeConfig(model=Path("m.onnx")).api_key == KEY
    monkeypatch.setenv("CXR_API_KEY_FILE", "")
    monkeypatch.setenv("CXR_API_KEY", "")
    assert ServeConfig(model=Path("m.onnx")).api_key is None  # empty: authentication off


def test_create_app_without_a_config_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    from cxr.serve import create_app

    for name, value in SERVE_ENV.items():
        monkeypatch.setenv(name, value)
    state = create_app().state.cxr
    assert state.cfg == ServeConfig() and state.cfg.max_queue == 7 and state.cfg.session.threads == 2


def test_uvicorn_options_keep_the_hardening() -> None:
    uvicorn = pytest.importorskip("uvicorn")
    from cxr.serve import uvicorn_options

    cfg = ServeConfig(model=Path("m.onnx"), max_concurrency=10, max_queue=20, request_timeout_s=60)
    opts = uvicorn_options(cfg)
    assert opts["server_header"] is False and opts["proxy_headers"] is False
    assert opts["limit_concurrency"] == 10 + 20 + 64 and opts["timeout_graceful_shutdown"] == 60
    uv = uvicorn.Config(lambda scope, receive, send: None, **opts)  # every key is one uvicorn takes
    assert uv.server_header is False and uv.proxy_headers is False and uv.limit_concurrency == 94


def test_api_key_from_file_env_or_none(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"  {KEY}\n")
    assert load_api_key(key_file, env={"CXR_API_KEY": "another-key-0123456789"}) == KEY  # the file wins
    assert load_api_key(None, env={"CXR_API_KEY": KEY}) == KEY
    assert load_api_key(None, env={}) is None
    assert load_api_key(None, env={"CXR_API_KEY": "  "}) is None


@pytest.mark.parametrize(
    ("content", "fragment"), [("", "empty"), ("short\n", "at least 16"), (None, "cannot read")]
)
def test_api_key_file_problems_are_explained(tmp_path: Path, content: str | None, fragment: str) -> None:
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(ConfigError, match=fragment):
        load_api_key(key_file, env={})


@pytest.mark.parametrize(
    ("given", "ok"), [(KEY, True), (KEY + "x", False), (KEY[:-1], False), ("", False), (None, False)]
)
def test_key_comparison(given: str | None, ok: bool) -> None:
    assert key_matches(given, _digest(KEY)) is ok


# ---- uploads ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "declared", "name", "expected"),
    [
        (png_bytes(), None, "", "png"),
        (png_bytes(), "application/dicom", "x.dcm", "png"),  # the content wins over the declared type
        (b"\xff\xd8\xff\xe0rest", "image/png", "", "jpeg"),
        (tiff_frames(1), None, "", "tiff"),
        (b"RIFF\0\0\0\0WEBPVP8 ", None, "", "webp"),
        (b"BM" + b"\0" * 30, None, "", "bmp"),
        (dicom_bytes(), None, "", "dicom"),
        (dicom_bytes(preamble=False), None, "", "dicom"),  # no preamble, sniffed from the first tag
        (b"\x10\x00\x10\x00PN\x04\x00Doe^", "application/dicom", "", "dicom"),  # declared: tried as DICOM
        (b"\x10\x00\x10\x00PN\x04\x00Doe^", None, "", None),
        (b"GIF89a....", "image/gif", "", None),
        (b"<svg/>", "image/svg+xml", "x.png", None),
        (b"", None, "", None),
        (bomb_png(10, 10)[:8], None, "", "png"),
    ],
)
def test_sniff(data: bytes, declared: str | None, name: str, expected: str | None) -> None:
    assert sniff(data, declared, name) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("chest.png", "chest.png"),
        ("../../etc/passwd", "passwd"),
        ("C:\\data\\x.dcm", "x.dcm"),
        ("a\x00b\r\nc.png", "abc.png"),
        ("", "upload"),
        (None, "upload"),
        ("/", "upload"),
        ("x" * 500, "x" * 200),
    ],
)
def test_safe_name(given: str | None, expected: str) -> None:
    assert safe_name(given) == expected


# ---- metrics ---------------------------------------------------------------------------------------------


def test_metrics_text_format() -> None:
    m = ServeMetrics(["/p"], queue_depth=lambda: 2, in_progress=lambda: 1, ready=lambda: 0, max_batch_size=4)
    m.rejected.labels(reason='a"b').inc()
    m.rejected.labels(reason='a"b').inc(2)
    for v in (0.05, 0.5, 0.5, 7.0):
        m.observe_batch(3, v)
    m.observe_request("BREW", "/../etc/passwd", 404, 0.01)
    text = m.render().decode()
    assert 'cxr_rejected_requests_total{reason="a\\"b"} 3.0' in text
    h = "cxr_inference_duration_seconds"
    assert f'{h}_bucket{{le="0.025"}} 0.0' in text and f'{h}_bucket{{le="0.05"}} 1.0' in text
    assert f'{h}_bucket{{le="5.0"}} 3.0' in text and f'{h}_bucket{{le="10.0"}} 4.0' in text
    assert f'{h}_bucket{{le="+Inf"}} 4.0' in text and f"{h}_count 4.0" in text
    assert f"{h}_sum 8.05" in text and f"# TYPE {h} histogram" in text
    assert 'cxr_batch_size_bucket{le="2.0"} 0.0' in text and 'cxr_batch_size_bucket{le="4.0"} 4.0' in text
    assert 'cxr_batch_size_bucket{le="8.0"}' not in text  # buckets stop at max_batch_size
    # unknown methods and paths collapse to "other": a scanner cannot grow the label set
    assert 'cxr_http_requests_total{method="other",path="other",status="404"} 1.0' in text
    assert "cxr_queue_depth 2.0" in text and "cxr_requests_in_progress 1.0" in text
    assert "# TYPE cxr_model_ready gauge" in text and "cxr_model_ready 0.0" in text


# ---- admission gate --------------------------------------------------------------------------------------


def test_gate_admits_active_plus_waiting_then_refuses() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(max_active=2, max_waiting=1)
        await gate.acquire()
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0.01)
        assert gate.active == 2 and gate.waiting == 1 and not waiter.done()
        with pytest.raises(Overloaded):
            await gate.acquire()
        gate.release()
        await asyncio.wait_for(waiter, 1)
        assert gate.active == 2 and gate.waiting == 0

    asyncio.run(scenario())


def test_gate_slot_follows_unfinished_thread_work() -> None:
    """A request that timed out while its decode still runs keeps its slot until the decode ends."""

    async def scenario() -> None:
        gate = AdmissionGate(max_active=1, max_waiting=0)
        await gate.acquire()
        done = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            job = pool.submit(done.wait, 5)
            gate.release_after([job])
            await asyncio.sleep(0.02)
            with pytest.raises(Overloaded):
                await gate.acquire()
            done.set()
            for _ in range(100):
                await asyncio.sleep(0.01)
                if gate.active == 0:
                    break
            assert gate.active == 0
            await gate.acquire()

    asyncio.run(scenario())


# ---- dynamic batcher -------------------------------------------------------------------------------------


class RecordingInfer:
    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.delay_s = delay_s
        self.fail = fail

    def __call__(self, grays: Sequence[np.ndarray], sources: Sequence[str]) -> list[Prediction]:
        self.sizes.append(len(grays))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("inference exploded")
        return [
            Prediction(s, "Normal", float(g.mean()) / 255, {"Normal": 1.0})
            for g, s in zip(grays, sources, strict=True)
        ]


def _submit_all(batcher: DynamicBatcher, n: int) -> list[Any]:
    async def scenario() -> list[Any]:
        batcher.start()
        try:
            grays = [np.full((4, 4), i, dtype=np.uint8) for i in range(n)]
            return await asyncio.gather(
                *(batcher.submit(g, f"img{i}") for i, g in enumerate(grays)), return_exceptions=True
            )
        finally:
            await batcher.stop()

    return asyncio.run(scenario())


@pytest.mark.parametrize(("max_batch", "n"), [(4, 10), (8, 8), (1, 5)])
def test_batcher_coalesces_up_to_max_and_keeps_order(max_batch: int, n: int) -> None:
    infer = RecordingInfer()
    results = _submit_all(DynamicBatcher(infer, max_batch_size=max_batch, max_wait_ms=50), n)
    assert sum(infer.sizes) == n and max(infer.sizes) <= max_batch
    assert len(infer.sizes) == -(-n // max_batch)  # all arrive at once: full batches, fewest possible
    assert [r.prediction.source for r in results] == [f"img{i}" for i in range(n)]
    assert [round(r.prediction.probability * 255) for r in results] == list(range(n))
    assert all(r.batch_size in infer.sizes for r in results)


def test_batcher_without_wait_does_not_stall_a_lone_request() -> None:
    infer = RecordingInfer()
    batcher = DynamicBatcher(infer, max_batch_size=8, max_wait_ms=500, in_flight=lambda: 1)
    t0 = time.perf_counter()
    _submit_all(batcher, 1)
    assert time.perf_counter() - t0 < 0.4 and infer.sizes == [1]


def test_batcher_failure_reaches_every_waiter_and_the_loop_survives() -> None:
    infer = RecordingInfer(fail=True)
    batcher = DynamicBatcher(infer, max_batch_size=4, max_wait_ms=20)

    async def scenario() -> tuple[list[Any], Any]:
        batcher.start()
        try:
            grays = [np.zeros((4, 4), np.uint8)] * 3
            first = await asyncio.gather(*(batcher.submit(g, "x") for g in grays), return_exceptions=True)
            infer.fail = False
            second = await batcher.submit(grays[0], "y")
            return first, second
        finally:
            await batcher.stop()

    first, second = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in first) and second.prediction.source == "y"


def test_batcher_skips_requests_that_gave_up() -> None:
    infer = RecordingInfer(delay_s=0.2)
    batcher = DynamicBatcher(infer, max_batch_size=1, max_wait_ms=0)

    async def scenario() -> None:
        batcher.start()
        try:
            g = np.zeros((4, 4), np.uint8)
            first = asyncio.create_task(batcher.submit(g, "runs"))
            await asyncio.sleep(0.05)  # "runs" is in inference now
            gave_up = asyncio.create_task(batcher.submit(g, "gives-up"))
            await asyncio.sleep(0.01)
            gave_up.cancel()
            await first
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert infer.sizes == [1]


def test_submit_to_a_stopped_batcher_is_refused() -> None:
    async def scenario() -> None:
        with pytest.raises(BatcherStopped):
            await DynamicBatcher(RecordingInfer(), max_batch_size=2, max_wait_ms=0).submit(
                np.zeros((2, 2)), "x"
            )

    asyncio.run(scenario())


# ---- body-size middleware ------------------------------------------------------------------------------


def _call_middleware(limit: int, chunks: list[bytes], declared: int | None) -> tuple[int, int]:
    """Run BodyLimitMiddleware over an app that reads the whole body; (status, bytes the app saw)."""
    seen = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal seen
        while True:
            msg = await receive()
            seen += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    headers = [(b"content-length", str(declared).encode())] if declared is not None else []
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    asyncio.run(BodyLimitMiddleware(app, limit)(scope, receive, send))
    return int(sent[0]["status"]), seen


@pytest.mark.parametrize(
    ("chunks", "declared", "status"),
    [
        ([b"a" * 100], 100, 200),
        ([b"a" * 101], 101, 413),
        ([b"a" * 50, b"a" * 50], None, 200),
        ([b"a" * 50, b"a" * 51], None, 413),
        ([b"a" * 50, b"a" * 51], 100, 413),  # a lying Content-Length is caught while reading
    ],
)
def test_body_limit_middleware_boundary(chunks: list[bytes], declared: int | None, status: int) -> None:
    got, seen = _call_middleware(100, chunks, declared)
    assert got == status
    assert seen <= 100 or status == 413
    if declared is not None and declared > 100:
        assert seen == 0  # refused before reading a byte
