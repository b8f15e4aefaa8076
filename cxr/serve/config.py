"""The HTTP API's settings as one frozen dataclass, checked when it is built (fastapi-free).

Takes: values from `cxr serve` options / environment variables (or a test). Makes: ``ServeConfig``, which
``cxr.serve.app.create_app`` and ``cxr.serve.server.run_server`` consume. ``load_api_key`` reads the
optional API key from a file or an environment variable (never from a command-line value, which other users
of the machine could read in the process list).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cxr.errors import ConfigError, ProviderError
from cxr.session import PROVIDER_NAMES, check_precision

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 64 * MIB
"""Like Triton's ``--http-max-input-size`` default."""
DEFAULT_MAX_PIXELS = 50_000_000
"""Decoded pixels per image: a 7000x7000 radiograph passes, a decompression bomb does not."""
API_KEY_ENV = "CXR_API_KEY"
MIN_API_KEY_CHARS = 16
KEY_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server needs; every limit is enforced per request (see docker/README.md)."""

    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    provider: str = "auto"
    precision: str = "auto"
    """openvino: auto (bf16 where the CPU and the model's check allow it), fp32 or bf16; others: auto/fp32."""
    threads: int | None = None
    strict_provider: bool = False
    max_batch_size: int = 8
    """Largest inference batch the dynamic batcher forms; 1 turns dynamic batching off."""
    max_wait_ms: float = 2.0
    """How long the batcher waits for more requests once it holds one (0: take only what is queued)."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    request_timeout_s: float = 30.0
    max_concurrency: int = 16
    """Requests admitted at once (reading, decoding, queued for or in inference)."""
    max_queue: int = 64
    """Requests allowed to wait for an admission slot; one more gets 503 with Retry-After."""
    max_batch_files: int = 16
    decode_workers: int = 2
    api_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()
    retry_after_s: int = 1
    access_log: bool = True
    log_level: str = "info"
    heatmaps: bool = False
    """Also load ``<stem>.heatmaps.onnx`` beside the model for ``/v1/predict?heatmap=true``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        if self.provider not in PROVIDER_NAMES:
            raise ConfigError(
                f"unknown provider {self.provider!r}", hint=f"use one of: {', '.join(PROVIDER_NAMES)}"
            )
        try:
            check_precision(self.provider, self.precision)
        except ProviderError as e:
            raise ConfigError(e.message, hint=e.hint) from e
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range", hint="use 0..65535 (0: any free port)")
        positive = {
            "max_batch_size": self.max_batch_size,
            "max_body_bytes": self.max_body_bytes,
            "max_pixels": self.max_pixels,
            "max_concurrency": self.max_concurrency,
            "max_batch_files": self.max_batch_files,
            "decode_workers": self.decode_workers,
            "retry_after_s": self.retry_after_s,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}", hint="omit it to use all cores")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue must be >= 0, got {self.max_queue}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ConfigError(f"max_wait_ms must be within 0..1000, got {self.max_wait_ms}")
        if not self.request_timeout_s > 0:
            raise ConfigError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.api_key is not None:
            check_api_key(self.api_key, source="the API key")
        if any(o.strip() in ("", "null") for o in self.cors_origins):
            raise ConfigError(
                f"invalid CORS origin in {self.cors_origins!r}",
                hint="give full origins like https://viewer.example.org (or * for any)",
            )

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1


def check_api_key(key: str, *, source: str) -> str:
    if len(key) < MIN_API_KEY_CHARS:
        raise ConfigError(
            f"{source} is {len(key)} characters long; cxr needs at least {MIN_API_KEY_CHARS}", hint=KEY_HINT
        )
    if any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError(f"{source} contains whitespace or control characters", hint=KEY_HINT)
    return key


def load_api_key(key_file: Path | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The API key from ``key_file`` (first line, stripped) or else ``$CXR_API_KEY``; None: auth off."""
    env = os.environ if env is None else env
    if key_file is not None:
        path = Path(key_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(
                f"cannot read the API key file {path}: {e.strerror or e}",
                hint="check the path and its permissions",
            ) from e
        lines = text.strip().splitlines()
        if not lines:
            raise ConfigError(f"the API key file {path} is empty", hint=KEY_HINT)
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("API key file %s is readable by other users; chmod 600 it", path)
        return check_api_key(lines[0].strip(), source=f"the key in {path}")
    value = env.get(API_KEY_ENV, "").strip()
    if value:
        return check_api_key(value, source=f"${API_KEY_ENV}")
    return None
