"""Takes a ``ServeConfig``; runs uvicorn with the API's hardening on a socket bound here (``--port 0``
works)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from cxr.errors import ConfigError
from cxr.serve.config import ServeConfig

log = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); ``ConfigError`` if it is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"cannot resolve host {host!r}: {e}", hint="use 127.0.0.1 or 0.0.0.0") from e
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror or e}",
            hint="pick another --port (0: any free port)",
        ) from e
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_options(cfg: ServeConfig) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` that keep the API's hardening (no Server header,
    no proxy headers, a connection cap above admission); on the command line: ``uvicorn --factory
    cxr.serve:create_app --no-server-header --no-proxy-headers --limit-concurrency 144``."""
    return {
        "log_level": cfg.log_level,
        "access_log": cfg.access_log,
        "server_header": False,
        "proxy_headers": False,
        "limit_concurrency": cfg.max_concurrency + cfg.max_queue + 64,  # a backstop above admission
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": max(5, int(cfg.request_timeout_s)),
    }


def run_server(cfg: ServeConfig, *, port_file: Path | None = None) -> None:
    """Serve ``cfg`` until SIGINT/SIGTERM (in-flight requests finish); the bound port goes to ``port_file``."""
    import uvicorn

    from cxr.serve.app import create_app

    sock = bind_socket(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    if port_file is not None:
        tmp = Path(port_file).with_suffix(".tmp")
        tmp.write_text(f"{port}\n", encoding="utf-8")
        tmp.replace(port_file)  # atomic: a reader never sees a half-written port
    app = create_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(cfg)))
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    log.info(
        "cxr serving %s on http://%s:%d (auth %s)",
        cfg.model.name,
        shown,
        port,
        "on" if cfg.api_key else "off",
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
