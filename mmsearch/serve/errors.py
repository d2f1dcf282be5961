"""HTTP errors: every failure leaves the server as ``{"error": {"status", "code", "message"}}``.

Library errors are mapped at this boundary: a bad query is the client's fault (4xx), a broken
collection or model is the server's (5xx), and nothing escapes as an HTML page or a bare 500.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    CollectionNotFoundError,
    EncoderError,
    IndexNotFoundError,
    MMSearchError,
    QueryError,
)

log = logging.getLogger(__name__)

# a Python object's default repr, "<_io.BytesIO object at 0x7f...>": an address means nothing to a client
_OBJECT_REPR = re.compile(r"<([A-Za-z_][\w.]*)(?: object)? at 0x[0-9A-Fa-f]+>")
_FILE_LIKE = ("BytesIO", "BufferedReader", "SpooledTemporaryFile", "TextIOWrapper", "StringIO")


def plain_message(message: object) -> str:
    """``message`` as text with object reprs (``<_io.BytesIO object at 0x…>``) said in words."""
    def words(match: re.Match[str]) -> str:
        name = match.group(1).rsplit(".", 1)[-1]
        if name in _FILE_LIKE:
            return "the uploaded data"
        return "an object" if name == "object" else f"a {name} object"

    return _OBJECT_REPR.sub(words, str(message))


class ApiError(Exception):
    """An error with an HTTP status and a message that says what to do."""

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        self.status = status
        self.code = code or _slug(status)
        self.message = plain_message(message)
        super().__init__(self.message)


def error_body(status: int, message: str, code: str | None = None, **extra: Any) -> dict[str, Any]:
    """The one JSON form of an error (object reprs in the message said in words)."""
    return {"error": {"status": status, "code": code or _slug(status), "message": plain_message(message), **extra}}


def status_for(exc: MMSearchError) -> int:
    """The HTTP status of a library error."""
    if isinstance(exc, (IndexNotFoundError, CollectionNotFoundError)):
        return 404
    if isinstance(exc, QueryError):
        return 400
    if isinstance(exc, EncoderError):
        return 503
    return 500


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the JSON error form."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(MMSearchError, _library_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


def _respond(status: int, message: str, code: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, **extra), status_code=status)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _respond(exc.status, exc.message, exc.code)


async def _library_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MMSearchError)
    status = status_for(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return _respond(status, str(exc), type(exc).__name__)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path[:200]} (see /docs)"
    return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [{"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")} for e in exc.errors()]
    message = "; ".join(f"{d['where']}: {d['problem']}" for d in details[:3]) or "invalid request"
    return _respond(422, message, "invalid_request", details=details)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return _respond(500, "internal server error (logged on the server)")


def _slug(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"
