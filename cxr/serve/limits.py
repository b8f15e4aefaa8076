"""Takes ASGI traffic and the limits; makes the body-size cap (``BodyLimitMiddleware``) and
``AdmissionGate``."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

from cxr.serve.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """Raised from ``receive`` when the body passes the cap; turned into a 413 response."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is over the {limit}-byte limit")
        self.limit = limit


class Overloaded(Exception):
    """The admission queue is full."""


def too_large_body(limit: int) -> dict[str, Any]:
    return error_body(
        "payload_too_large",
        f"request body is over the {limit}-byte limit",
        hint="send a smaller file, or raise the server's --max-body-bytes",
    )


class BodyLimitMiddleware:
    """Cap every request body at ``max_bytes``: 413 on a declared or counted overrun, before any parser."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_reject: Callable[[], None] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
        if declared:
            try:
                size = int(declared[0])
            except ValueError:
                size = -1
            if size < 0:
                body = error_body("bad_request", "invalid Content-Length header", hint="send a byte count")
                await JSONResponse(body, 400, {"connection": "close"})(scope, receive, send)
                return
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.on_reject is not None:
            self.on_reject()
        await JSONResponse(too_large_body(self.max_bytes), 413, {"connection": "close"})(scope, receive, send)


class AdmissionGate:
    """At most ``max_active`` requests at once and ``max_waiting`` waiting; one more gets ``Overloaded``."""

    def __init__(self, max_active: int, max_waiting: int) -> None:
        self.max_active = max_active
        self.max_waiting = max_waiting
        self.active = 0
        self.waiting = 0
        self._sem = asyncio.Semaphore(max_active)  # bound to the event loop on first wait

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if needed; ``Overloaded`` when the queue is full."""
        if self._sem.locked() and self.waiting >= self.max_waiting:
            raise Overloaded()
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._sem.release()

    def release_after(self, pending: list[concurrent.futures.Future[Any]]) -> None:
        """Release now, or once the last still-running thread job in ``pending`` has finished."""
        running = [f for f in pending if not f.done()]
        if not running:
            self.release()
            return
        loop = asyncio.get_running_loop()
        remaining = len(running)

        def _one_done() -> None:  # runs on the event loop thread, so the count needs no lock
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                self.release()

        def _done(_: concurrent.futures.Future[Any]) -> None:
            loop.call_soon_threadsafe(_one_done)

        for f in running:
            f.add_done_callback(_done)
