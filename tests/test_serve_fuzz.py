"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis, a dev dependency).

Every operation gets generated requests, valid and invalid (random bodies, wrong content types, odd headers);
every response must be documented (status code, content type, body schema) and never a 5xx. Random bytes
are rarely images, so successful responses are also checked against the schema with real PNG uploads.
Runs the in-process ASGI app with its lifespan, derandomised and bounded in examples (~20 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cxr.serve.app import create_app
from cxr.serve.config import ServeConfig
from cxr.session import SessionConfig
from tests.onnx_factory import make_fused_model
from tests.test_serve_support import png_bytes

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev dependency) is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.python import asgi  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

MAX_EXAMPLES = 100
KEY = "fuzzing-key-0123456789abcdef"


def _app(tmp: Path, api_key: str | None) -> Any:
    model = make_fused_model(tmp / f"fuzz_{'auth' if api_key else 'open'}.onnx")
    cfg = ServeConfig(
        model=model,
        session=SessionConfig(threads=1),
        max_body_bytes=256 * 1024,
        max_pixels=512 * 512,
        request_timeout_s=10,
        api_key=api_key,
    )
    return create_app(cfg)


def _ready(schema: Any) -> Any:
    """(Re)start the app's lifespan and wait for the model: schemathesis' pytest plugin ends ASGI lifespans
    after every test, and the next request starts a fresh one."""
    schema.find_operation_by_path("GET", "/healthz").Case().call()
    state = schema.app.state.cxr
    deadline = time.monotonic() + 30
    while state.status != "ready" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state.status == "ready", state.error
    return schema


OPERATIONS = [
    ("POST", "/v1/predict"),
    ("POST", "/v1/predict/batch"),
    ("GET", "/v1/model"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    try:
        yield {
            "open": schemathesis.openapi.from_asgi("/openapi.json", _app(tmp, None)),
            "auth": schemathesis.openapi.from_asgi("/openapi.json", _app(tmp, KEY)),
        }
    finally:
        asgi.shutdown_lifespans()


def _fuzz(schema: Any, method: str, path: str, mode: GenerationMode, examples: int) -> list[int]:
    operation = _ready(schema).find_operation_by_path(method, path)
    assert operation is not None, f"{method} {path} missing from the OpenAPI schema"
    statuses: list[int] = []

    # A schema cannot say "these bytes must be a PNG": random binary bodies are schema-valid, and the API
    # rightly refuses them (415/422), so the "schema-valid data must be accepted" check does not apply there.
    excluded = [positive_data_acceptance] if path.startswith("/v1/predict") else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(FUZZ, max_examples=examples)
    def run(case: Any) -> None:
        statuses.append(case.call_and_validate(excluded_checks=excluded).status_code)

    run()
    return statuses


CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE)
    for m, p in OPERATIONS
    if m == "POST"  # GETs have nothing to negate
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g}" for m, p, g in CASES])
def test_api_conforms_to_its_schema(
    schemas: dict[str, Any], method: str, path: str, mode: GenerationMode
) -> None:
    statuses = _fuzz(schemas["open"], method, path, mode, MAX_EXAMPLES)
    assert statuses and all(s < 500 for s in statuses)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_with_auth_refuses_cleanly(schemas: dict[str, Any], method: str, path: str) -> None:
    statuses = _fuzz(schemas["auth"], method, path, GenerationMode.POSITIVE, 10)
    if path in ("/healthz", "/readyz"):
        assert set(statuses) == {200}
    else:
        assert set(statuses) == {401}


@pytest.mark.slow
def test_successful_responses_conform_to_the_schema(schemas: dict[str, Any]) -> None:
    schema = _ready(schemas["open"])
    png = png_bytes(40, 30, seed=4)
    cases = [
        schema.find_operation_by_path("POST", "/v1/predict").Case(body=png, media_type="image/png"),
        schema.find_operation_by_path("POST", "/v1/predict").Case(
            body={"file": png}, media_type="multipart/form-data"
        ),
        schema.find_operation_by_path("POST", "/v1/predict/batch").Case(
            body={"files": [png, png]}, media_type="multipart/form-data"
        ),
        schema.find_operation_by_path("GET", "/v1/model").Case(),
        schema.find_operation_by_path("GET", "/metrics").Case(),
    ]
    for case in cases:
        assert case.call_and_validate().status_code == 200, case
