"""A request body limit enforced while the body streams in, before any of it is parsed."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body

#: an over-limit body is read and dropped up to this much, so the client (still sending) gets the 413
#: instead of a connection reset; a larger one is cut off
DRAIN_BYTES = 32 * 1024 * 1024


class BodyLimit:
    """Refuse request bodies over ``max_body_bytes`` with 413: at once by Content-Length, else while reading."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, drain_bytes: int = DRAIN_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            if declared <= self.drain_bytes:
                await _drain(receive, self.drain_bytes)
            await _send_413(send, self.max_body_bytes)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                if message.get("more_body"):
                    await _drain(receive, self.drain_bytes - seen)
                # raised inside body parsing, it reaches the app's HTTPException handler as a JSON 413
                raise HTTPException(413, f"the request body is larger than {self.max_body_bytes} bytes")
            return message

        return counted


async def _drain(receive: Receive, max_bytes: int) -> None:
    """Read and drop the rest of a request body, at most ``max_bytes`` of it."""
    while max_bytes > 0:
        message = await receive()
        max_bytes -= len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, limit: int) -> None:
    import json

    body = json.dumps(error_body(413, f"the request body is larger than {limit} bytes")).encode()
    headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                          (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
