"""Takes arguments and ``CXR_*`` variables (arguments win); makes the checked ``ServeConfig``."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from cxr.errors import ConfigError, CxrError
from cxr.session import SessionConfig

log = logging.getLogger(__name__)

ENV_PREFIX = "CXR_"
API_KEY_ENV = "CXR_API_KEY"
SESSION_ENV = {
    "provider": "CXR_PROVIDER",
    "precision": "CXR_PRECISION",
    "threads": "CXR_THREADS",
    "strict_provider": "CXR_STRICT_PROVIDER",
}
"""The session's fields and the variables that set them (the names ``cxr serve`` has always read)."""
MIN_API_KEY_CHARS = 16
KEY_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
POSITIVE = (
    "max_batch_size",
    "max_body_bytes",
    "max_pixels",
    "max_concurrency",
    "max_batch_files",
    "decode_workers",
    "retry_after_s",
)


class _SessionEnv(PydanticBaseSettingsSource):
    """``CXR_PROVIDER``, ``CXR_THREADS``, ... as the nested ``session`` (below the arguments and ``CXR_*``)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {
            name: os.environ[var] for name, var in SESSION_ENV.items() if os.environ.get(var, "").strip()
        }
        return {"session": found} if found else {}


class ServeConfig(BaseSettings):
    """Everything the server needs; every limit is enforced per request (see docker/README.md)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", populate_by_name=True
    )

    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    session: SessionConfig = Field(default_factory=SessionConfig)
    """Provider, precision, threads: the one ``cxr.session.SessionConfig`` every runtime caller uses."""
    max_batch_size: int = 8
    """Largest inference batch the dynamic batcher forms; 1 turns dynamic batching off."""
    max_wait_ms: float = 2.0
    """How long the batcher waits for more requests once it holds one (0: take only what is queued)."""
    max_body_bytes: int = 64 * 1024 * 1024  # like Triton's --http-max-input-size default
    max_pixels: int = 50_000_000  # per image: a 7000x7000 radiograph passes, a decompression bomb does not
    request_timeout_s: float = Field(
        default=30.0, validation_alias=AliasChoices("request_timeout_s", "CXR_REQUEST_TIMEOUT")
    )
    max_concurrency: int = 16
    """Requests admitted at once (reading, decoding, queued for or in inference)."""
    max_queue: int = 64
    """Requests allowed to wait for an admission slot; one more gets 503 with Retry-After."""
    max_batch_files: int = 16
    decode_workers: int = 2
    api_key: str | None = Field(default=None, repr=False)
    api_key_file: Path | None = None
    """The key's file (first line); it wins over ``api_key``."""
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    retry_after_s: int = 1
    access_log: bool = True
    log_level: str = "info"
    heatmaps: bool = False
    """Also load ``<stem>.heatmaps.onnx`` beside the model for ``/v1/predict?heatmap=true``."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise _config_error(e) from None
        except CxrError as e:  # the session's own check (an unknown provider, bf16 off OpenVINO)
            raise ConfigError(e.message, hint=e.hint) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _SessionEnv(settings_cls)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):  # CXR_CORS_ORIGINS=https://a,https://b
            return tuple(o.strip() for o in value.split(",") if o.strip())
        return value

    @model_validator(mode="before")
    @classmethod
    def _key_from_file(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = dict(data)
            if data.get("api_key_file"):
                data["api_key"] = load_api_key(Path(data["api_key_file"]))
            elif isinstance(data.get("api_key"), str) and not data["api_key"].strip():
                data["api_key"] = None  # CXR_API_KEY= (empty): no authentication
        return data

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range", hint="use 0..65535 (0: any free port)")
        for name in POSITIVE:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
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
        return self


def _config_error(e: ValidationError) -> CxrError:
    """The first problem of ``e`` as a ``ConfigError`` (the original one when a check raised it)."""
    first = e.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, CxrError):
        return cause
    field = ".".join(str(p) for p in first.get("loc", ())) or "settings"
    if first.get("type") == "missing":
        return ConfigError(f"no {field} given", hint=f"pass {field}=... or set {ENV_PREFIX}{field.upper()}")
    if first.get("type") == "extra_forbidden":
        return ConfigError(
            f"ServeConfig has no setting {field!r}",
            hint="provider, precision, threads and strict_provider go in session=cxr.session.SessionConfig(...)"
            if field in SESSION_ENV
            else f"use one of: {', '.join(ServeConfig.model_fields)}",
        )
    return ConfigError(
        f"{field}: {first.get('msg')} (got {first.get('input')!r})",
        hint=f"fix the option or the {ENV_PREFIX}{field.split('.')[0].upper()} environment variable",
    )


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
