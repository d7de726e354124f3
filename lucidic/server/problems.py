"""Errors as application/problem+json (RFC 9457), and the request body limit.

No stack trace ever reaches a client: anything unexpected becomes a plain 500
problem, and the details go to the server's log. A route whose protocol
defines its own error body (OTLP's ``/v1/traces``: a ``google.rpc.Status``)
registers it in ``error_forms``; every error on that route, from a
dependency, the body limit or the route itself, takes that form."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._internal import RATE_LIMIT_SECONDS, log_rate_limited
from ..store import IdInUseError, StoreError, UnknownSessionError, clean_json

logger = logging.getLogger("lucidic.server")

PROBLEM = "application/problem+json"


class ApiError(Exception):
    """An error the API reports on purpose."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extra = extra


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(status: int, detail: str, *, headers: dict[str, str] | None = None,
            **extra: Any) -> Response:
    body = {"type": "about:blank", "title": _title(status), "status": status, "detail": detail,
            **extra}
    return JSONOut(body, status_code=status, headers=headers, media_type=PROBLEM)


#: An error body of a route's own protocol, made from the request's headers,
#: the status, the message and the headers to send.
ErrorForm = Callable[[Headers, int, str, dict[str, str] | None], Response]
#: The routes (by path) whose errors are not problem+json; set by the module
#: that serves the route.
error_forms: dict[str, ErrorForm] = {}


def error_response(scope: Scope, status: int, detail: str, *,
                   headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """The error as the route at ``scope``'s path answers errors: its own
    form if it has one, else a problem."""
    form = error_forms.get(scope.get("path", ""))
    if form is not None:
        return form(Headers(scope=scope), status, detail, headers)
    return problem(status, detail, headers=headers, **extra)


class JSONOut(JSONResponse):
    """Compact JSON; a stored value JSON cannot carry (a NaN, say) becomes null
    rather than an error."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=False, allow_nan=False,
                              separators=(",", ":")).encode("utf-8")
        except ValueError:  # includes UnicodeEncodeError
            return json.dumps(clean_json(content), ensure_ascii=False, allow_nan=False,
                              separators=(",", ":"), default=str).encode("utf-8")


def _where(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("session", "step", "event") and parts and parts[-1].startswith("["):
            continue  # the discriminator tag pydantic adds: noise to a reader
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "request"


def _message(error: dict[str, Any]) -> str:
    if error.get("type") == "string_pattern_mismatch":
        return ("must be printable text: no control, format or separator characters "
                "other than the plain space")
    return str(error.get("msg", "")).removeprefix("Value error, ")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(request.scope, exc.status, exc.detail, headers=exc.headers,
                              **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else _title(exc.status_code)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}; see /docs"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /docs"
        return error_response(request.scope, exc.status_code, detail,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": _where(tuple(e.get("loc", ()))), "msg": _message(e),
                   "type": str(e.get("type", ""))} for e in exc.errors()[:20]]
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type.lower() and any(
                e["loc"] == "body" and e["type"] in ("model_attributes_type", "dict_type")
                for e in errors):
            return error_response(request.scope, 415, "the request body must be JSON, sent "
                                  f"with 'Content-Type: application/json' (not {content_type!r})")
        if any(e["type"] == "json_invalid" for e in errors):
            reason = next(e["msg"] for e in errors if e["type"] == "json_invalid")
            return error_response(request.scope, 400,
                                  f"the request body is not valid JSON ({reason})")
        shown = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5])
        more = f" (and {len(exc.errors()) - 5} more)" if len(exc.errors()) > 5 else ""
        return error_response(request.scope, 422, f"the request is not valid: {shown}{more}",
                              errors=errors)

    @app.exception_handler(UnknownSessionError)
    async def _unknown_session(request: Request, exc: UnknownSessionError) -> Response:
        # (deleted_session_ids: of those, the deleted ones, whose records a
        # client sets aside at once rather than waiting for the session.)
        return error_response(request.scope, 404, f"{exc}; nothing was written. A step or "
                              "event must name a session of this API key's project, created "
                              "earlier or in the same batch, and not deleted.",
                              session_ids=exc.session_ids[:100],
                              deleted_session_ids=exc.deleted[:100])

    @app.exception_handler(IdInUseError)
    async def _id_in_use(request: Request, exc: IdInUseError) -> Response:
        # Definite: no retry will change it (a client drops these records).
        return error_response(request.scope, 409, f"{exc}; nothing was written.",
                              records=[{"kind": kind, "id": rid}
                                       for kind, rid in exc.records[:100]])

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> Response:
        status, detail, headers = store_error_answer(exc, request.method, request.url.path)
        return error_response(request.scope, status, detail, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logger.error("lucidic server: unexpected error on %s %s", request.method,
                     request.url.path, exc_info=exc)
        return error_response(request.scope, 500,
                              "internal server error; the server's log has the details")



def store_error_answer(exc: StoreError, method: str, path: str
                       ) -> tuple[int, str, dict[str, str] | None]:
    """How a database failure is answered, whatever the transport (the HTTP
    routes, OTLP/gRPC): the status, the detail and the headers (Retry-After
    when the database is only busy). Logs it, rate-limited."""
    # A connection cut after its COMMIT went out leaves the outcome
    # unknown; a retry is safe either way: every write is idempotent.
    written = ("the database may or may not have written it (the connection to it was "
               "lost while committing); sending it again is safe, as a record sent twice "
               "is stored once" if exc.may_have_written else "nothing was written")
    if exc.broken:
        # Not the request's fault, nor a passing one: the operator must
        # mend the database. 503, not 422 (which a client takes for its
        # records' fault, and drops them) nor 500 (which OTLP exporters do
        # not retry): clients keep the records and send them again.
        # Once every few seconds for each cause: while the database stays
        # broken every client's every retry fails alike.
        log_rate_limited(f"server_database_broken:{str(exc)[:200]}",
                         "lucidic server: the database failed on %s %s, and will until "
                         "it is mended (clients keep what they send and retry; the same "
                         "failure is logged again after %d s): %s", method, path,
                         RATE_LIMIT_SECONDS, exc, level=logging.ERROR, to=logger)
        return 503, ("the server's database failed on its own side (a table missing, no "
                     "permission or no space left, say: the server's log says which); "
                     f"{written}; retry later"), None
    log_rate_limited(f"server_database_error:{str(exc)[:200]}",
                     "lucidic server: database error on %s %s: %s", method, path, exc,
                     to=logger)
    if not exc.transient:
        # The database refused what it was given (a number beyond its
        # range, say): a retry would get the same. Its own words stay in
        # the log: they may quote other rows' values.
        return 422, ("the database refused this request (a value beyond what it can hold "
                     "or compute, say); nothing was written, and a retry will not help; "
                     "the server's log has the details"), None
    return 503, f"the database is unavailable or busy; {written}; retry later", \
        {"Retry-After": "1"}

class BodyLimit:
    """Refuse request bodies larger than ``max_bytes`` with a 413 problem,
    whether or not the client announced the length."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._refuse(scope, receive, send, 400,
                                       "the Content-Length header is not a number")
                    return
                if declared > self.max_bytes:
                    await self._refuse(scope, receive, send, 413, self._too_large(),
                                       max_bytes=self.max_bytes)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, 413, self._too_large(),
                                   max_bytes=self.max_bytes)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return (f"the request body is larger than this server's limit of {self.max_bytes} "
                "bytes; send fewer records per batch")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int,
                      detail: str, **extra: Any) -> None:
        # A 413 names the limit, so that a client can cut a record to fit it.
        await error_response(scope, status, detail, headers={"Connection": "close"}, **extra)(
            scope, receive, send)
