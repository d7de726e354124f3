"""OTLP/gRPC trace ingest: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``
on its own port (``lucidic server --otlp-grpc-port``, 4317 by OTLP's custom),
what OpenTelemetry's gRPC exporters and the Collector send by default
(``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``, ``OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:4317``,
``OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20KEY``).

Each request goes through the one ingest path of ``/v1/traces`` (otlp.export:
the same key check, span mapping, limits and partial_success); only the
answers differ, with the status codes OTLP/gRPC gives: INVALID_ARGUMENT for a
malformed request or every span refused (not retried), UNAUTHENTICATED for a
missing or unknown key, UNAVAILABLE when the database is busy (with a
google.rpc.RetryInfo, so exporters retry after it) or failing on the server's
side (exporters retry with their own backoff), INTERNAL for anything else.
Served by grpc's generic handlers: no generated stubs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import BadRequest, RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)

from ..store import StoreError
from ..ui.db import StorePool
from .app import credentials_in
from .otlp import GRPC_CODES, export
from .problems import ApiError, store_error_answer

logger = logging.getLogger("lucidic.server")

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
METHOD = "Export"
#: The worker threads answering requests (each holds one of the pool's stores).
WORKERS = 8
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _abort(context: grpc.ServicerContext, status: int, detail: str,
           retry_after: str | None = None) -> NoReturn:
    """End the call with the gRPC code of an HTTP ``status``. A retry delay
    goes, as google.rpc.RetryInfo, in the Status of grpc-status-details-bin
    (as the OTLP specification says) and in google.rpc.retryinfo-bin (what
    the Python SDK's exporter reads)."""
    code = 3 if status == 422 else GRPC_CODES.get(status, 13)  # 422: bad data
    answer = Status(code=code, message=detail)
    trailers: list[tuple[str, str | bytes]] = []
    if code == 3:  # as on /v1/traces: the client's own mistake, said in a BadRequest
        violation = AnyMessage()
        violation.Pack(BadRequest(field_violations=[
            BadRequest.FieldViolation(description=detail)]))
        answer.details.append(violation)
    if retry_after is not None:
        retry = RetryInfo(retry_delay=Duration(seconds=int(retry_after)))
        details = AnyMessage()
        details.Pack(retry)
        answer.details.append(details)
        trailers.append(("google.rpc.retryinfo-bin", retry.SerializeToString()))
    trailers.append(("grpc-status-details-bin", answer.SerializeToString()))
    context.set_trailing_metadata(tuple(trailers))
    context.abort(_CODES[code], detail)


def _export(pool: StorePool
            ) -> Callable[[bytes, grpc.ServicerContext], ExportTraceServiceResponse]:
    def handle(body: bytes, context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        metadata = dict(context.invocation_metadata())
        authorization = metadata.get("authorization", "")
        credentials = credentials_in(authorization if isinstance(authorization, str) else "")
        try:
            with pool.store() as db:
                return export(db, credentials, body)
        except ApiError as exc:
            _abort(context, exc.status, exc.detail)
        except StoreError as exc:
            status, detail, headers = store_error_answer(exc, "gRPC", f"{SERVICE}/{METHOD}")
            _abort(context, status, detail, (headers or {}).get("Retry-After"))
        except Exception as exc:
            logger.error("lucidic server: unexpected error on gRPC %s/%s", SERVICE, METHOD,
                         exc_info=exc)
            _abort(context, 500, "internal server error; the server's log has the details")
    return handle


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def receiver(pool: StorePool, host: str, port: int, *, max_message_bytes: int,
             workers: int = WORKERS) -> tuple[grpc.Server, int]:
    """The gRPC server, bound to ``host:port`` but not started, and the port
    it holds (``port`` 0: any free one). A request is at most
    ``max_message_bytes`` (the HTTP server's body limit), decompressed.
    Raises OSError when the port cannot be bound."""
    # The bytes as they came (no request_deserializer): a malformed request
    # is then our INVALID_ARGUMENT, not the INTERNAL grpc answers when its
    # deserializer fails.
    handler: grpc.RpcMethodHandler[bytes, ExportTraceServiceResponse] = \
        grpc.unary_unary_rpc_method_handler(
            _export(pool), response_serializer=ExportTraceServiceResponse.SerializeToString)
    handlers: list[grpc.GenericRpcHandler] = [
        grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})]
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lucidic-otlp-grpc"),
        handlers=handlers,
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.so_reuseport", 0)])
    address = _address(host, port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound = 0
        reason = str(exc)
    else:
        reason = "the address is in use or not this machine's"
    if not bound:
        server.stop(None)
        raise OSError(f"cannot listen for OTLP/gRPC on {address} ({reason})")
    return server, bound
