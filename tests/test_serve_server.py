"""The API as a real server process on loopback: every endpoint, every limit just below and just above its
boundary, auth on and off, corrupt and hostile uploads, and a clean SIGTERM shutdown."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from cxr.labels import NOTICE
from cxr.runtime.predictor import Predictor
from tests.test_serve_support import (
    DICOM_DIR,
    ServerProcess,
    bomb_png,
    dicom_bytes,
    padded,
    png_bytes,
    running_server,
    tiff_frames,
)

MAX_BODY = 200_000
MAX_PIXELS = 64 * 64
TIMEOUT_S = 2.0
MAX_CONCURRENCY = 2
MAX_QUEUE = 1
MAX_FILES = 3
API_KEY = "k3y-for-tests-0123456789abcdef"

LIMIT_ARGS = [
    f"--max-body-bytes={MAX_BODY}",
    f"--max-pixels={MAX_PIXELS}",
    f"--timeout={TIMEOUT_S}",
    f"--max-concurrency={MAX_CONCURRENCY}",
    f"--max-queue={MAX_QUEUE}",
    f"--max-batch-files={MAX_FILES}",
    "--max-batch-size=4",
    "--max-wait-ms=5",
]


@pytest.fixture(scope="module")
def server(fused_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(fused_model, tmp_path_factory.mktemp("server"), LIMIT_ARGS) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _error(resp: httpx.Response) -> dict[str, str]:
    body = resp.json()
    assert set(body) == {"error"}, body
    text = resp.text
    assert "Traceback" not in text and "/tmp/" not in text and str(Path.cwd()) not in text
    return body["error"]


# ---- endpoints ----------------------------------------------------------------------------------------


def test_health_ready_and_model(client: httpx.Client, fused_model: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["provider"] == "cpu" and ready.json()["warmup_seconds"] >= 0
    info = client.get("/v1/model").json()
    assert info["classes"] == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert info["members"] == ["alpha", "beta"]
    assert info["input_format"] == "uint8_gray" and info["preprocess"]["input_size"] == [32, 32]
    assert info["serving"]["max_body_bytes"] == MAX_BODY and info["notice"] == NOTICE
    assert info["file_name"] == fused_model.name and str(fused_model.parent) not in json.dumps(info)


def test_predict_raw_and_multipart_match_the_runtime(client: httpx.Client, fused_model: Path) -> None:
    data = png_bytes(48, 40, seed=3)
    raw = client.post("/v1/predict", content=data, headers={"content-type": "application/octet-stream"})
    multi = client.post(
        "/v1/predict", files={"file": ("chest.png", data, "image/jpeg")}
    )  # declared type lies
    assert raw.status_code == 200 and multi.status_code == 200, (raw.text, multi.text)
    r, m = raw.json(), multi.json()
    expected = Predictor.from_path(fused_model).predict([data])[0]
    for body in (r, m):
        assert body["label"] == expected.label and body["notice"] == NOTICE
        np.testing.assert_allclose(
            [body["probabilities"][c] for c in expected.probabilities],
            list(expected.probabilities.values()),
            atol=1e-6,
        )
        assert set(body["member_probabilities"]) == {"alpha", "beta"}
        assert body["model"]["id"] == Predictor.from_path(fused_model).model_id and body["provider"] == "cpu"
        assert body["timing"]["batch_size"] >= 1 and body["timing"]["total_ms"] > 0
    assert r["source"] == "upload" and m["source"] == "chest.png"


def test_batch_endpoint_reports_each_file(client: httpx.Client) -> None:
    files = [
        ("files", ("a.png", png_bytes(seed=1), "image/png")),
        ("files", ("bad.png", png_bytes(seed=2)[:60], "image/png")),
        ("files", ("notes.txt", b"just some text, not an image", "text/plain")),
    ]
    resp = client.post("/v1/predict/batch", files=files)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [r["status"] for r in body["results"]] == [200, 422, 415]
    assert body["succeeded"] == 1 and body["failed"] == 2 and body["notice"] == NOTICE
    assert body["results"][0]["prediction"]["label"] in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
    assert body["results"][2]["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize(("count", "status"), [(MAX_FILES, 200), (MAX_FILES + 1, 400)])
def test_batch_file_count_boundary(client: httpx.Client, count: int, status: int) -> None:
    files = [("files", (f"{i}.png", png_bytes(seed=i), "image/png")) for i in range(count)]
    resp = client.post("/v1/predict/batch", files=files)
    assert resp.status_code == status, resp.text
    if status == 200:
        assert resp.json()["succeeded"] == count
    else:
        assert "Too many files" in _error(resp)["message"]


def test_metrics_count_requests_and_batches(client: httpx.Client) -> None:
    client.post("/v1/predict", content=png_bytes())
    client.post("/v1/predict", content=b"not an image")
    text = client.get("/metrics").text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(lines['cxr_http_requests_total{method="POST",path="/v1/predict",status="200"}']) >= 1
    assert float(lines['cxr_http_requests_total{method="POST",path="/v1/predict",status="415"}']) >= 1
    assert float(lines["cxr_batch_size_count"]) >= 1 and float(lines["cxr_model_ready"]) == 1
    assert (
        "cxr_queue_depth" in lines
        and 'cxr_http_request_duration_seconds_bucket{le="+Inf",path="/v1/predict"}' in lines
    )


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("GET", "/v1/predict", 405), ("DELETE", "/healthz", 405)],
)
def test_unknown_routes_get_json_errors(client: httpx.Client, method: str, path: str, status: int) -> None:
    resp = client.request(method, path)
    assert resp.status_code == status and _error(resp)["code"] in ("not_found", "method_not_allowed")


def test_cors_is_off_by_default(client: httpx.Client) -> None:
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    resp = client.options("/v1/predict", headers=headers)
    assert "access-control-allow-origin" not in resp.headers
    assert (
        "access-control-allow-origin"
        not in client.get("/healthz", headers={"Origin": "https://x.org"}).headers
    )


# ---- limits at their boundaries ----------------------------------------------------------------------


@pytest.mark.parametrize(("size", "status"), [(MAX_BODY, 200), (MAX_BODY + 1, 413)])
def test_body_limit_boundary_declared_length(client: httpx.Client, size: int, status: int) -> None:
    resp = client.post(
        "/v1/predict", content=padded(png_bytes(), size), headers={"content-type": "image/png"}
    )
    assert resp.status_code == status, resp.text[:300]
    if status == 413:
        assert _error(resp)["code"] == "payload_too_large" and resp.headers["connection"] == "close"


@pytest.mark.parametrize(("size", "status"), [(MAX_BODY, 200), (MAX_BODY + 1, 413), (5 * MAX_BODY, 413)])
def test_body_limit_boundary_chunked(client: httpx.Client, size: int, status: int) -> None:
    """No Content-Length: the cap is enforced while the chunks arrive."""
    data = padded(png_bytes(), size)
    resp = client.post("/v1/predict", content=iter([data[i : i + 16384] for i in range(0, size, 16384)]))
    assert resp.status_code == status, resp.text[:300]


def _read_until_closed(s: socket.socket) -> str:
    chunks = []
    while chunk := s.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_body_limit_refuses_a_huge_declared_length_before_reading(server: ServerProcess) -> None:
    """A 10 GB Content-Length is refused at once; the server never waits for the body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
        reply = _read_until_closed(s)
    assert reply.startswith("HTTP/1.1 413") and "payload_too_large" in reply


@pytest.mark.parametrize(("width", "height", "status"), [(64, 64, 200), (64, 65, 413), (65, 64, 413)])
def test_pixel_limit_boundary_png(client: httpx.Client, width: int, height: int, status: int) -> None:
    resp = client.post("/v1/predict", content=png_bytes(width, height))
    assert resp.status_code == status, resp.text
    if status == 413:
        assert _error(resp)["code"] == "image_too_large" and "4096-pixel limit" in resp.text


@pytest.mark.parametrize(("rows", "cols", "status"), [(64, 64, None), (65, 64, 413)])
def test_pixel_limit_boundary_dicom(client: httpx.Client, rows: int, cols: int, status: int | None) -> None:
    resp = client.post(
        "/v1/predict", content=dicom_bytes(rows, cols), headers={"content-type": "application/dicom"}
    )
    if status is None:  # below the limit: decoded by cxr.imaging.dicom (if present) or refused with a 4xx
        assert resp.status_code == 200 or resp.json()["error"]["code"] != "image_too_large"
    else:
        assert resp.status_code == status and _error(resp)["code"] == "image_too_large"


def _slow_body(data: bytes, pieces: int, pause_s: float) -> Iterator[bytes]:
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        yield data[i : i + step]
        time.sleep(pause_s)


@pytest.mark.parametrize(("total_s", "status"), [(0.6, 200), (TIMEOUT_S + 1.5, 408)])
def test_request_timeout_boundary_slow_upload(client: httpx.Client, total_s: float, status: int) -> None:
    data = png_bytes()
    resp = client.post("/v1/predict", content=_slow_body(data, 6, total_s / 6))
    assert resp.status_code == status, resp.text
    if status == 408:
        assert _error(resp)["code"] == "request_timeout"


def _gauge(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing")


def test_admission_queue_boundary(server: ServerProcess, client: httpx.Client) -> None:
    """MAX_CONCURRENCY requests in progress + MAX_QUEUE waiting are served; one more gets 503 + Retry-After."""
    release = threading.Event()
    data = png_bytes()

    def held_upload() -> int:
        def body() -> Iterator[bytes]:
            yield data[:10]
            release.wait(10)
            yield data[10:]

        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post("/v1/predict", content=body()).status_code

    held = MAX_CONCURRENCY + MAX_QUEUE
    with ThreadPoolExecutor(held) as pool:
        futures = []
        for _ in range(held):
            futures.append(pool.submit(held_upload))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if (
                _gauge(client, "cxr_requests_in_progress") == MAX_CONCURRENCY
                and _gauge(client, "cxr_queue_depth") == MAX_QUEUE
            ):
                break
            time.sleep(0.05)
        try:
            over = client.post("/v1/predict", content=data)
            assert over.status_code == 503, over.text
            assert over.headers["retry-after"] == "1" and _error(over)["code"] == "overloaded"
            assert client.get("/readyz").status_code == 200  # probes never queue behind predictions
        finally:
            release.set()
        assert [f.result() for f in futures] == [200] * held
    assert client.post("/v1/predict", content=data).status_code == 200


# ---- hostile and corrupt uploads ---------------------------------------------------------------------

HOSTILE = {
    "empty": (b"", None, 400, "empty_file"),
    "random_bytes": (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), None, 415, None),
    "text": (b"hello, I am not an X-ray", "image/png", 415, "unsupported_media_type"),
    "json": (b'{"path": "/etc/passwd"}', "application/json", 415, "unsupported_media_type"),
    "html": (b"<html><script>alert(1)</script></html>", "text/html", 415, "unsupported_media_type"),
    "gif": (b"GIF89a" + b"\0" * 100, "image/gif", 415, "unsupported_media_type"),
    "truncated_png": (png_bytes(48, 48, 5)[:100], "image/png", 422, None),
    "png_signature_only": (b"\x89PNG\r\n\x1a\n", "image/png", 422, "corrupt_image"),
    "jpeg_header_only": (b"\xff\xd8\xff\xe0" + b"\0" * 20, "image/jpeg", 422, None),
    "png_bomb_header": (bomb_png(100_000, 100_000), "image/png", 413, "image_too_large"),
    "png_bomb_just_over": (bomb_png(MAX_PIXELS + 1, 1), "image/png", 413, "image_too_large"),
    "multi_frame_tiff": (tiff_frames(3), "image/tiff", 422, "multi_frame"),
    "multi_frame_dicom": (dicom_bytes(16, 16, frames=3), "application/dicom", 422, "multi_frame"),
    "dicom_marker_garbage": (b"\0" * 128 + b"DICM" + b"\xff" * 64, "application/dicom", 422, None),
    "dicom_without_pixels": (b"\0" * 128 + b"DICM", "application/dicom", 422, None),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_uploads_get_a_clear_4xx(client: httpx.Client, name: str) -> None:
    data, declared, status, code = HOSTILE[name]
    headers = {"content-type": declared} if declared else {}
    resp = client.post("/v1/predict", content=data, headers=headers)
    assert resp.status_code == status, resp.text
    err = _error(resp)
    assert err["message"] and (code is None or err["code"] == code), err
    multi = client.post(
        "/v1/predict", files={"file": (f"{name}.bin", data, declared or "application/octet-stream")}
    )
    assert multi.status_code == status, multi.text


@pytest.mark.parametrize(
    ("files", "data", "headers", "code"),
    [
        ({"image": ("x.png", png_bytes(), "image/png")}, None, None, "missing_file"),
        (None, {"file": "a text field, not a file"}, None, "not_a_file"),
        (None, b"--xyz\r\nbroken", {"content-type": "multipart/form-data; boundary=xyz"}, None),
        (None, b"whatever", {"content-type": "multipart/form-data"}, None),
    ],
)
def test_malformed_multipart_is_400(
    client: httpx.Client, files: dict | None, data: object, headers: dict | None, code: str | None
) -> None:
    kwargs: dict[str, object] = {"headers": headers}
    if files is not None:
        kwargs["files"] = files
    if isinstance(data, dict):
        kwargs["data"] = data
        kwargs["files"] = {"other": ("o.png", png_bytes(), "image/png")}
    elif data is not None:
        kwargs["content"] = data
    resp = client.post("/v1/predict", **kwargs)  # type: ignore[arg-type]
    assert resp.status_code == 400, resp.text
    err = _error(resp)
    assert code is None or err["code"] == code


@pytest.mark.parametrize(
    "filename", ["../../../../etc/passwd", "/etc/shadow", "C:\\Windows\\win.ini", "a\x00b\nc.png"]
)
def test_client_file_names_are_labels_never_paths(client: httpx.Client, filename: str) -> None:
    resp = client.post("/v1/predict", files={"file": (filename, png_bytes(), "image/png")})
    assert resp.status_code == 200, resp.text
    source = resp.json()["source"]
    assert "/" not in source and "\\" not in source and "\n" not in source and "\x00" not in source


def test_invalid_content_length_is_400(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
        reply = _read_until_closed(s)
    assert reply.split(" ")[1] == "400"


def _count(client: httpx.Client, key: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(key + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_vanishing_mid_upload_is_no_server_error(
    server: ServerProcess, client: httpx.Client
) -> None:
    key = 'cxr_http_requests_total{method="POST",path="/v1/predict",status="400"}'
    before = _count(client, key)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n" + png_bytes()[:200]
        )
    deadline = time.monotonic() + 5
    while _count(client, key) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _count(client, key) == before + 1
    assert "unhandled error" not in server.log() and "Traceback" not in server.log()


def test_server_survives_everything_above(client: httpx.Client) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/predict", content=png_bytes(seed=9)).status_code == 200


@pytest.mark.real_data
@pytest.mark.parametrize(
    "name",
    [
        "nih_cxr14_dx_chest.dcm",
        "barre_CR-MONO1-10-chest.dcm",
        "siim_acr_cr_chest_jpegbaseline.dcm",
        "fodicom_CR-ModalitySequenceLUT_dental.dcm",
    ],
)
def test_real_dicom_files_never_crash_the_server(client: httpx.Client, name: str) -> None:
    """Real radiographs (440 to 1024 px) are over this server's limits: refused with 413, either while the
    body arrives (over 200 kB) or from the header, before any pixel is decoded (compressed or not)."""
    path = DICOM_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    resp = client.post(
        "/v1/predict", content=path.read_bytes(), headers={"content-type": "application/dicom"}
    )
    assert resp.status_code == 413, resp.text
    assert _error(resp)["code"] in ("payload_too_large", "image_too_large")


# ---- auth on ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(fused_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("auth")
    key_file = work / "api-key"
    key_file.write_text(API_KEY + "\n")
    os.chmod(key_file, 0o600)
    with running_server(fused_model, work, ["--api-key-file", str(key_file)]) as srv:
        yield srv


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-API-Key": "wrong-key-but-long-enough-0000"}, 401),
        ({"Authorization": f"Bearer {API_KEY[:-1]}"}, 401),
        ({"Authorization": f"Basic {API_KEY}"}, 401),
        ({"X-API-Key": API_KEY}, 200),
        ({"Authorization": f"Bearer {API_KEY}"}, 200),
    ],
)
def test_api_key(auth_server: ServerProcess, headers: dict[str, str], status: int) -> None:
    with httpx.Client(base_url=auth_server.url, timeout=30) as c:
        for method, path, kwargs in (
            ("POST", "/v1/predict", {"content": png_bytes()}),
            ("GET", "/v1/model", {}),
            ("GET", "/metrics", {}),
        ):
            resp = c.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
            assert resp.status_code == status, (path, resp.text)
            if status == 401:
                assert resp.headers["www-authenticate"] == "Bearer" and _error(resp)["code"] == "unauthorized"
                assert API_KEY not in resp.text
        assert (
            c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        )  # probes stay open


def test_sigterm_shuts_down_gracefully(auth_server: ServerProcess) -> None:
    status = auth_server.stop()
    assert status in (0, -15), auth_server.log()[-2000:]
    assert "Application shutdown complete" in auth_server.log()


def test_uvicorn_run_by_hand_reads_the_same_environment(fused_model: Path, tmp_path: Path) -> None:
    """`uvicorn --factory cxr.serve:create_app` with the CXR_* variables serves the API `cxr serve` would."""
    import subprocess
    import sys

    from tests.test_serve_support import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env |= {
        "PYTHONPATH": str(REPO),
        "CXR_MODEL": str(fused_model),
        "CXR_THREADS": "1",
        "CXR_MAX_BATCH_FILES": "3",
    }
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "cxr.serve:create_app", "--port", str(port)]
    cmd += ["--no-server-header", "--no-proxy-headers", "--no-access-log"]
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, port, log)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        resp = httpx.get(f"{server.url}/v1/model", timeout=10)
        assert resp.status_code == 200 and resp.json()["serving"]["max_batch_files"] == 3
        assert "server" not in resp.headers
    finally:
        assert server.stop() in (0, -15)
