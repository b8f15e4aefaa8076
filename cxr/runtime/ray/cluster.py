"""Takes a Ray address; makes a ``RayConnection`` (or a clear error); Ray is imported only inside
functions."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from cxr.errors import ConfigError, CxrError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[ray]' in a clone of cxr"
ADDRESS_HINT = (
    "start a cluster with `ray start --head` and pass its address (HOST:6379, ray://HOST:10001 or auto), "
    "or leave --address out to start a local Ray instance"
)


class RayUnavailableError(ConfigError):
    """Ray (or Ray Data) is not installed."""


class RayConnectError(ConfigError):
    """The Ray cluster at the given address cannot be reached."""


class RayJobError(CxrError):
    """The Ray job failed while it ran (an actor could not start, a worker died, a read failed...)."""


def import_ray() -> ModuleType:
    """``import ray`` and Ray Data, or say how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the data extra has no ray.data dependencies)
    except ImportError as e:
        raise RayUnavailableError(
            f"Ray is not installed here ({e.name or e}); the ray engine needs Ray Data",
            hint=INSTALL_HINT,
        ) from e
    return ray


@dataclass(frozen=True)
class RayConnection:
    address: str  # the GCS address joined (or started)
    started: bool  # this process started the Ray instance (and shuts it down at the end)
    cpus: float
    gpus: float
    nodes: int


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` for ``HOST:PORT`` and ``ray://HOST:PORT``; None for ``auto`` and other forms."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def probe(address: str, timeout_s: float) -> None:
    """Raise ``RayConnectError`` when nothing accepts a TCP connection at the address's host and port."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as e:
        raise RayConnectError(
            f"cannot reach the Ray cluster at {address!r}: {e.strerror or e} (no answer from {hp[0]} port "
            f"{hp[1]} within {timeout_s:g} s)",
            hint=ADDRESS_HINT,
        ) from e


def connect(
    address: str | None = None,
    *,
    local_cpus: int | None = None,
    connect_timeout_s: float = 5.0,
    ray_logs: bool = False,
) -> RayConnection:
    """Join the cluster at ``address`` (or start a local instance); reuse a connection already open."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS") or None
        if target is not None:
            probe(target, connect_timeout_s)
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.INFO if ray_logs else logging.ERROR,
        }
        if target is None:  # "local": a new instance, never a `ray start` cluster found by chance
            kwargs["num_cpus"] = local_cpus
        try:
            ray.init(address=target or "local", **kwargs)
        except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            what = f"reach the Ray cluster at {target!r}" if target else "start a local Ray instance"
            raise RayConnectError(f"cannot {what}: {first}", hint=ADDRESS_HINT) from e
        started = target is None
    elif address is not None:
        log.info("Ray is already initialised in this process: using that cluster, not %s", address)
    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    gcs = ray.get_runtime_context().gcs_address
    return RayConnection(str(gcs), started, float(res.get("CPU", 0)), float(res.get("GPU", 0)), nodes)


def disconnect(conn: RayConnection) -> None:
    """Shut Ray down if ``connect`` started it."""
    if conn.started:
        import ray

        ray.shutdown()


@contextlib.contextmanager
def quiet_ray_data(enabled: bool) -> Iterator[None]:
    """While a scan runs: no Ray Data progress bars and INFO logs on stderr (the CLI has its own bar)."""
    if not enabled:
        yield
        return
    import ray.data

    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ctx.enable_progress_bars = bars
        logger.setLevel(level)
