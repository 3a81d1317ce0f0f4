"""JSON errors, mapped to HTTP in one place (DESIGN §7).

Every error answers ``{"error": {"code", "message"}}``. The packages raise the domain errors of
`explore.errors` (never an HTTP status); `STATUS` below is the only map from those classes to
statuses. 429 and 503 also say when to retry (``Retry-After``), a 401 how to authenticate
(``WWW-Authenticate: Bearer``); a 413 closes the connection (the
rest of the body is not read). A database that does not answer, wherever a route meets it, is a
503 ``store_unavailable``. Anything else that escapes a route is a bug: it is logged with its
traceback and answered as a JSON 500 ``internal_error`` (the connection stays open for the
client's next request).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from explore.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    InvalidJson,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from log.store import is_unreachable

__all__ = [
    "STATUS",
    "InternalErrors",
    "describe_validation",
    "error_response",
    "install",
    "status_of",
]

logger = logging.getLogger(__name__)

# The one map from domain errors to HTTP statuses.
STATUS: dict[type[DomainError], int] = {
    InvalidJson: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    InvalidInput: 422,
    TooManyRequests: 429,
    Unavailable: 503,
}
INTERNAL_MESSAGE = "the service failed on this request; the error was logged"


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def status_of(err: DomainError) -> int:
    """The HTTP status of a domain error (its nearest mapped class); 500 for an unmapped one."""
    for cls in type(err).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


def domain_error_response(err: DomainError) -> Response:
    status = status_of(err)
    if status == 500:
        logger.error("domain error %s has no HTTP status: %s", type(err).__name__, err.message)
        return error_response(500, "internal_error", INTERNAL_MESSAGE)
    headers = None
    retry_after = getattr(err, "retry_after_s", None)
    if isinstance(err, TooManyRequests | Unavailable) and retry_after is not None:
        headers = {"Retry-After": str(max(int(retry_after), 0))}
    elif isinstance(err, PayloadTooLarge):
        # The rest of the body was never read: close the connection rather than let the server
        # receive (and discard) all of it to keep the connection alive.
        headers = {"Connection": "close"}
    elif isinstance(err, Unauthorized):
        headers = {"WWW-Authenticate": 'Bearer realm="decision-service"'}
    return error_response(status, err.code, err.message, headers)


def describe_validation(errors: list[Any]) -> str:
    """One readable line per pydantic error: `field.path: message`."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers for this request's path (asked through the
    routes' own matching, so nested routers count)."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


class InternalErrors:
    """ASGI middleware: an exception that escapes the app becomes a logged JSON 500.

    Starlette's own last-resort handler answers plain text and re-raises, and the server then
    closes the connection; here the exception stops, so keep-alive connections survive. Once a
    response has started nothing can be sent any more: the exception is re-raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing broken
            logger.info("client disconnected during %s %s", scope.get("method"), scope.get("path"))
        except Exception as err:
            where = (scope.get("method"), scope.get("path"))
            if started:
                logger.exception("error after the response started on %s %s", *where)
                raise
            if is_unreachable(err):  # the store did not answer: not a bug; retrying is safe
                logger.warning("store unreachable on %s %s: %s", *where, err)
                unavailable = Unavailable("the event store is unreachable; retry shortly")
                response = domain_error_response(unavailable)
            else:
                logger.exception("unhandled error on %s %s", *where)
                response = error_response(500, "internal_error", INTERNAL_MESSAGE)
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, err: DomainError) -> Response:
        return domain_error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> Response:
        return error_response(422, "invalid_request", describe_validation(list(err.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(err.status_code, "error")
        headers = dict(err.headers or {})
        if err.status_code == 405:
            # Starlette names the methods of the first route matching the path only
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(err.status_code, code, str(err.detail), headers)

    app.add_middleware(InternalErrors)
