"""OTLP/HTTP trace ingest at ``/v1/traces``: what every OpenTelemetry SDK's
OTLP exporter sends (``OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:PORT``,
``OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20KEY``).

Bodies are ``ExportTraceServiceRequest`` messages, binary protobuf
(``application/x-protobuf``) or OTLP's JSON encoding (``application/json``,
hex trace and span ids), optionally gzip- or deflate-compressed; both are
decoded by the ``opentelemetry-proto`` package. As the OTLP specification
asks, fields this server does not know are ignored, the answer is encoded
like the request, a request whose spans were all refused is a 400, and one
where only some were refused is a 200 whose ``partial_success`` says how many
and why. Every error, whatever raised it (a bad payload, an unknown key, the
database busy or broken, the body limit), is a ``google.rpc.Status`` encoded
like the request, with OTLP's status codes: 503 (with ``Retry-After`` when the
database is only busy) is retried by exporters, a 4xx is not; a 400 carries a
``google.rpc.BadRequest``.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError, Message
from google.rpc.error_details_pb2 import BadRequest
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.datastructures import Headers
from starlette.responses import Response

from ..store import Store
from .app import Db, identity, project_key
from .otlp_ingest import ingest
from .otlp_mapping import SpanIn, SpanRefusedError, decode_attributes, decode_span
from .problems import ApiError, error_forms
from .uploads import decompress

router = APIRouter(tags=["opentelemetry"])

PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
#: gRPC status codes for the HTTP statuses this route answers with (OTLP/HTTP
#: does not use them; a client may log them; OTLP/gRPC answers with them).
GRPC_CODES = {400: 3, 401: 16, 404: 5, 405: 12, 409: 6, 413: 8, 415: 3, 500: 13, 503: 14}


def _media(headers: Headers) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _encoding(request: Request) -> str:
    media = _media(request.headers)
    if media in (PROTOBUF, JSON):
        return media
    raise ApiError(415, f"an OTLP/HTTP body is {PROTOBUF} or {JSON}, not {media or 'untyped'!r}")


def _encode(message: Message, encoding: str) -> bytes:
    if encoding == JSON:
        return json_format.MessageToJson(message, indent=None).encode("utf-8")
    return message.SerializeToString()


def _status(headers: Headers, status: int, detail: str,
            sent_headers: dict[str, str] | None) -> Response:
    """An error as OTLP/HTTP answers one: a google.rpc.Status, encoded as
    the request was (binary protobuf when it was neither)."""
    if status == 422:
        # The database refused the data, for good: OTLP's "bad data" is 400.
        status = 400
    answer = Status(code=GRPC_CODES.get(status, 2), message=detail)
    if status == 400:
        details = AnyMessage()
        details.Pack(BadRequest(field_violations=[
            BadRequest.FieldViolation(description=detail)]))
        answer.details.append(details)
    encoding = JSON if _media(headers) == JSON else PROTOBUF
    return Response(_encode(answer, encoding), status_code=status, media_type=encoding,
                    headers=sent_headers)


error_forms[PATH] = _status


def _hex_to_base64(container: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """OTLP's JSON writes ids in hex where protobuf's JSON mapping expects base64."""
    for key in keys:
        value = container.get(key)
        if isinstance(value, str) and value:
            try:
                container[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError as exc:
                raise ApiError(400, f"{where}.{key} is not hexadecimal: {value[:40]!r}") from exc


def _list(container: dict[str, Any], *keys: str) -> list[Any]:
    for key in keys:
        value = container.get(key)
        if isinstance(value, list):
            return value
    return []


def _from_json(body: bytes) -> ExportTraceServiceRequest:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise ApiError(400, "an OTLP/JSON body is a JSON object (ExportTraceServiceRequest)")
    for r, resource_spans in enumerate(_list(document, "resourceSpans", "resource_spans")):
        if not isinstance(resource_spans, dict):
            continue
        for s, scope_spans in enumerate(_list(resource_spans, "scopeSpans", "scope_spans")):
            if not isinstance(scope_spans, dict):
                continue
            for n, span in enumerate(_list(scope_spans, "spans")):
                if not isinstance(span, dict):
                    continue
                where = f"resourceSpans[{r}].scopeSpans[{s}].spans[{n}]"
                _hex_to_base64(span, ("traceId", "trace_id", "spanId", "span_id",
                                      "parentSpanId", "parent_span_id"), where)
                for k, link in enumerate(_list(span, "links")):
                    if isinstance(link, dict):
                        _hex_to_base64(link, ("traceId", "trace_id", "spanId", "span_id"),
                                       f"{where}.links[{k}]")
    message = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise ApiError(400, f"the body is not an OTLP ExportTraceServiceRequest ({exc})") from exc
    return message


def _from_protobuf(body: bytes) -> ExportTraceServiceRequest:
    try:
        return ExportTraceServiceRequest.FromString(body)
    except (DecodeError, RecursionError) as exc:
        raise ApiError(400, f"the body is not a protobuf ExportTraceServiceRequest ({exc})"
                       ) from exc


def _spans(message: ExportTraceServiceRequest) -> tuple[list[SpanIn], int, str | None]:
    """The spans that can be stored, how many cannot, and the first reason."""
    spans: list[SpanIn] = []
    refused, reason = 0, None
    for resource_spans in message.resource_spans:
        try:
            resource = decode_attributes(resource_spans.resource.attributes)
        except SpanRefusedError as exc:
            count = sum(len(s.spans) for s in resource_spans.scope_spans)
            refused, reason = refused + count, reason or f"a resource was refused: {exc}"
            continue
        for scope_spans in resource_spans.scope_spans:
            scope = {k: v for k, v in (("name", scope_spans.scope.name),
                                       ("version", scope_spans.scope.version)) if v}
            for span in scope_spans.spans:
                try:
                    spans.append(decode_span(span, resource, scope))
                except SpanRefusedError as exc:
                    refused += 1
                    reason = reason or f"span {span.name[:80]!r} was refused: {exc}"
    return spans, refused, reason


async def raw_body(request: Request) -> bytes:
    return await request.body()


OPENAPI_BODY = {"requestBody": {"required": True, "content": {
    PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
    JSON: {"schema": {"type": "object", "properties": {
        "resourceSpans": {"type": "array", "items": {"type": "object"}}}}}}}}
#: Every error is a google.rpc.Status, in the request's encoding (these
#: replace the app's problem+json entries for this route).
_STATUS = {PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
           JSON: {"schema": {"type": "object", "properties": {
               "code": {"type": "integer"}, "message": {"type": "string"},
               "details": {"type": "array", "items": {"type": "object"}}}}}}
OPENAPI_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": _STATUS} for status, text in (
        (400, "malformed, or every span refused (not retried)"),
        (401, "missing, unknown or revoked API key"),
        (404, "not answered by this route"),
        (413, "the body is larger than the server's limit (not retried)"),
        (415, "not protobuf or JSON, or an unknown encoding"),
        (503, "the database is busy (Retry-After) or failing on the server's side: "
              "exporters retry"))}
OPENAPI_RESPONSES[200] = {"description": "accepted (partial_success tells what was refused)",
                   "content": {PROTOBUF: {}, JSON: {}}}


@router.post(PATH, summary="OTLP/HTTP trace export (protobuf or JSON)",
             response_class=Response, openapi_extra=OPENAPI_BODY, responses=OPENAPI_RESPONSES)
def export_traces(request: Request, db: Db, body: Annotated[bytes, Depends(raw_body)]
                  ) -> Response:
    return answer_export(request, db, body, project_key(request))


def answer_export(request: Request, db: Store, body: bytes,
                  credentials: HTTPAuthorizationCredentials | None) -> Response:
    """An OTLP/HTTP export request answered (the route of /v1/traces, and
    of the other paths that take OTLP/HTTP, such as Langfuse's): errors are
    raised, and answered as a Status by the app's handlers."""
    encoding = _encoding(request)
    answer = export(db, credentials, body, encoding, request.headers.get("content-encoding"))
    return Response(_encode(answer, encoding), media_type=encoding)


def export(db: Store, credentials: HTTPAuthorizationCredentials | None, body: bytes,
           encoding: str = PROTOBUF, content_encoding: str | None = None
           ) -> ExportTraceServiceResponse:
    """One OTLP export, whichever transport brought it (OTLP/HTTP here,
    OTLP/gRPC in otlp_grpc): the key checked, the request decoded, its spans
    stored, and the answer's partial_success. Raises ApiError (401 for the
    key, 400 for a malformed request or every span refused, 413 and 415) or
    the store's errors, which each transport answers in its own way."""
    who = identity(credentials, db)
    raw = decompress(body, content_encoding)
    message = _from_json(raw) if encoding == JSON else _from_protobuf(raw)
    spans, refused, reason = _spans(message)
    outcome = ingest(db, who.project, spans) if spans else None
    if outcome is not None:
        refused += outcome.rejected
        reason = reason or outcome.reason
    if refused and (outcome is None or outcome.accepted == 0):
        raise ApiError(400, f"all {refused} spans were refused: {reason}")
    answer = ExportTraceServiceResponse()
    if refused:
        answer.partial_success.CopyFrom(ExportTracePartialSuccess(
            rejected_spans=refused, error_message=reason or ""))
    return answer
