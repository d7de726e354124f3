"""OTLP/gRPC ingest (`lucidic server --otlp-grpc-port`): the OpenTelemetry
SDK's own gRPC exporter against a real server process, the same sessions as
OTLP/HTTP stores, and OTLP/gRPC's status codes, which decide whether an
exporter retries."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from faults import locked_store, wait_until
from google.rpc.error_details_pb2 import BadRequest, RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as encode_protobuf,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import set_span_in_context
from protocol_support import SHARED_CASSETTES, count_rows
from server_support import Api, ServerProcess, free_port, make_key
from test_otlp import (
    INSTRUMENTED,
    agent_trace,
    body,
    check_joke_session,
    make_spans,
    normalized,
    otlp_tables_gone,
    partial,
    post,
)

from helpers import child_env, run_python
from lucidic.reading import Reader
from lucidic.reading.derived import NOTED_IDS, refresh
from lucidic.store import Store

PROTOBUF = "application/x-protobuf"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def start_grpc_server(start_server: Callable[..., ServerProcess], db_url: str,
                      *options: str) -> tuple[ServerProcess, int]:
    """A server that receives OTLP/gRPC too, on a free port (another one when
    another process took the first before the server bound it)."""
    for _ in range(5):
        port = free_port()
        try:
            return start_server(db_url, extra_args=["--otlp-grpc-port", str(port),
                                                    *options]), port
        except AssertionError as exc:
            if "cannot listen for OTLP/gRPC" not in str(exc):
                raise
    raise AssertionError("no free port for OTLP/gRPC")


@pytest.fixture
def exporter_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """What the gRPC exporter logs, every line: its logger drops a line the
    same as the one before for 20 s (DuplicateFilter), so what one test made
    it log would hide another's."""
    from opentelemetry.exporter.otlp.proto.grpc import exporter as module

    filters = list(module.logger.filters)
    for dropping in filters:
        module.logger.removeFilter(dropping)
    caplog.set_level(logging.WARNING, logger="opentelemetry")
    yield caplog
    for dropping in filters:
        module.logger.addFilter(dropping)


def exporter(port: int, key: str | None, **kwargs: Any) -> OTLPSpanExporter:
    headers = {"authorization": f"Bearer {key}"} if key else None
    return OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True,
                            headers=headers, **kwargs)


@contextlib.contextmanager
def export_call(port: int) -> Iterator[Callable[..., ExportTraceServiceResponse]]:
    """TraceService/Export on a plain gRPC channel, with bytes as the request
    (malformed ones too)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel.unary_unary(EXPORT, request_serializer=None,
                                  response_deserializer=ExportTraceServiceResponse.FromString)


def call(port: int, key: str | None, data: bytes, **kwargs: Any) -> ExportTraceServiceResponse:
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    with export_call(port) as export:
        answer: ExportTraceServiceResponse = export(data, metadata=metadata, timeout=60,
                                                    **kwargs)
        return answer


def refusal(port: int, key: str | None, data: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(port, key, data)
    return raised.value


def status_details(error: grpc.RpcError) -> Status:
    """The google.rpc.Status of grpc-status-details-bin, which must agree
    with the call's own code and message."""
    trailers = dict(error.trailing_metadata())  # type: ignore[attr-defined]
    status = Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == error.code().value[0]  # type: ignore[attr-defined]
    assert status.message == error.details()  # type: ignore[attr-defined]
    return status


def retry_delay(status: Status) -> float | None:
    for detail in status.details:
        retry = RetryInfo()
        if detail.Unpack(retry):
            return retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return None


# -- the SDK's gRPC exporter --------------------------------------------------------------

def test_the_sdks_grpc_exporter_stores_the_session_otlp_http_stores(
        db_url: str, start_server: Any) -> None:
    server, port = start_grpc_server(start_server, db_url)
    over_grpc, over_http = make_key(db_url, "grpc"), make_key(db_url, "http")
    # A tracer provider exporting through the gRPC exporter, as an
    # application instrumented with OpenTelemetry does.
    provider = TracerProvider(resource=Resource.create({"service.name": "trip-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter(port, over_grpc)))
    agent_trace("conv-grpc")(provider.get_tracer("tests", "1.0"))
    provider.shutdown()
    # The same trace as OTLP/HTTP brings it, span by span as above (a session
    # id belongs to one project: its own).
    for span in make_spans(agent_trace("conv-http")):
        assert post(server, over_http, body([span])).status_code == 200

    grpc_tree = normalized(Api(server.url, over_grpc).tree("conv-grpc"))
    http_tree = normalized(Api(server.url, over_http).tree("conv-http"))
    for tree, conversation in ((grpc_tree, "conv-grpc"), (http_tree, "conv-http")):
        assert tree["tree"][0]["attributes"].pop("gen_ai.conversation.id") == conversation
    assert grpc_tree["steps"] == 3 and grpc_tree["events"] == 2 and grpc_tree["errors"] == 1
    (root,) = grpc_tree["tree"]
    (plan,) = root["children"]
    (llm,) = [child for child in plan["children"] if child.get("type") == "llm"]
    assert (llm["model"], llm["input_tokens"], llm["output_tokens"]) == (
        "gpt-4o-mini-2024-07-18", 1200, 20)
    assert llm["input"] == [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": "weather in Oslo?"}]

    def timeless(value: Any) -> Any:
        """Without what differs between two runs of one trace: ids and times."""
        if isinstance(value, dict):
            return {k: timeless(v) for k, v in value.items()
                    if not k.endswith(("_at", "duration", "time", "_id"))}
        if isinstance(value, list):
            return [timeless(v) for v in value]
        return value

    def flat(node: dict[str, Any], path: tuple[str, ...] = ()) -> list[Any]:
        """Each step and event with the names above it."""
        name = node.get("action") or node.get("description") or ""
        rows = [(path, name, timeless({k: v for k, v in node.items() if k != "children"}))]
        for child in node.get("children", []):
            rows += flat(child, (*path, name))
        return rows

    def rows(tree: dict[str, Any]) -> list[Any]:
        found = [row for top in tree["tree"] for row in flat(top)]
        return sorted(found, key=repr)

    assert {k: v for k, v in grpc_tree.items() if k != "tree"} == \
        {k: v for k, v in http_tree.items() if k != "tree"}
    assert rows(grpc_tree) == rows(http_tree)


def test_a_real_instrumentation_exports_over_grpc_configured_by_the_documented_variables(
        sqlite_url: str, start_server: Any, tmp_path: Path) -> None:
    cassette = SHARED_CASSETTES / "openai" / "chat.yaml"
    if not cassette.is_file():
        pytest.skip(f"recorded OpenAI traffic not found at {cassette}")
    server, port = start_grpc_server(start_server, sqlite_url)
    key = make_key(sqlite_url, "otel")
    # What docs/protocols.md tells an exporter: the gRPC port, the key in
    # lower-case metadata, gzip.
    run_python(INSTRUMENTED, home=tmp_path / "agent", timeout=120,
               args=["openllmetry", "grpc", str(cassette), "conversation-grpc"],
               env={"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                    "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{key}",
                    "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"})
    check_joke_session(Api(server.url, key).tree("conversation-grpc"), "openllmetry")


def test_an_unknown_or_missing_key_is_unauthenticated_and_the_exporter_gives_up(
        db_url: str, start_server: Any, exporter_log: pytest.LogCaptureFixture) -> None:
    server, port = start_grpc_server(start_server, db_url)
    make_key(db_url, "someone")
    before = count_rows(db_url)
    spans = make_spans(agent_trace("intruder"))
    refused = exporter(port, "lk_unknown", timeout=30)
    assert refused.export(spans) is SpanExportResult.FAILURE
    refused.shutdown()
    # Not retried: UNAUTHENTICATED is no transient error.
    assert "retrying" not in exporter_log.text and "UNAUTHENTICATED" in exporter_log.text
    for key, words in (("lk_unknown", "not valid"), (None, "no API key")):
        error = refusal(port, key, body(spans))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert words in status_details(error).message
    assert count_rows(db_url) == before


def test_malformed_and_wholly_refused_requests_are_invalid_argument_and_change_nothing(
        db_url: str, start_server: Any) -> None:
    server, port = start_grpc_server(start_server, db_url)
    key, other = make_key(db_url, "mine"), make_key(db_url, "theirs")
    taken = body(make_spans(agent_trace("taken")))
    assert call(port, other, taken) == ExportTraceServiceResponse()
    before = count_rows(db_url)
    for data, words in ((b"\x0a\xff\xff\xff\xff\x0f", "not a protobuf"),
                        (taken, "another project")):
        error = refusal(port, key, data)
        # grpc's own deserializer would have made the first INTERNAL.
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error  # type: ignore[attr-defined]
        status = status_details(error)
        assert words in status.message
        (details,) = status.details
        violations = BadRequest()
        assert details.Unpack(violations)
        assert violations.field_violations[0].description == status.message
    assert count_rows(db_url) == before


def test_a_bad_span_id_is_a_partial_success_and_a_gzip_request_is_read(
        db_url: str, start_server: Any) -> None:
    server, port = start_grpc_server(start_server, db_url)
    key = make_key(db_url, "partial")
    request = encode_protobuf(make_spans(agent_trace("kept")))
    broken = request.resource_spans[0].scope_spans[0].spans.add()
    broken.CopyFrom(request.resource_spans[0].scope_spans[0].spans[0])
    broken.span_id = b"\x01\x02\x03\x04"
    answer = call(port, key, request.SerializeToString(), compression=grpc.Compression.Gzip)
    assert answer.partial_success.rejected_spans == 1
    assert "span id is not 8 bytes" in answer.partial_success.error_message
    assert Api(server.url, key).tree("kept")["step_count"] == 3
    # Sent gzip-compressed again: stored once, nothing refused but the bad span.
    before = count_rows(db_url)
    again = call(port, key, request.SerializeToString(), compression=grpc.Compression.Gzip)
    assert again.partial_success.rejected_spans == 1
    assert count_rows(db_url) == before
    assert len(gzip.compress(request.SerializeToString())) < len(request.SerializeToString())


def test_a_busy_database_is_unavailable_with_retry_info_and_a_broken_one_without(
        tmp_path: Path, start_server: Any) -> None:
    db = tmp_path / "server.db"
    server, port = start_grpc_server(start_server, f"sqlite:///{db}")
    key = make_key(f"sqlite:///{db}", "errors")
    good = body(make_spans(agent_trace("errors")))
    with locked_store(db):
        busy = refusal(port, key, good)
    assert busy.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    status = status_details(busy)
    assert "busy" in status.message and retry_delay(status) == 1.0
    # Also where the Python SDK's exporter looks for it.
    trailers = dict(busy.trailing_metadata())  # type: ignore[attr-defined]
    assert RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 1

    with otlp_tables_gone(db):
        broken = refusal(port, key, good)
    assert broken.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    status = status_details(broken)
    assert "log" in status.message and retry_delay(status) is None  # back off, no promise
    assert "google.rpc.retryinfo-bin" not in dict(broken.trailing_metadata())  # type: ignore[attr-defined]

    assert call(port, key, good) == ExportTraceServiceResponse()
    assert Api(server.url, key).tree("errors")["step_count"] == 3


def test_the_sdks_grpc_exporter_retries_through_a_busy_database_after_its_retry_info(
        tmp_path: Path, start_server: Any, exporter_log: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "server.db"
    server, port = start_grpc_server(start_server, f"sqlite:///{db}")
    key = make_key(f"sqlite:///{db}", "exporter")
    sender_exporter = exporter(port, key, timeout=120)

    def retries() -> list[str]:
        return [r.getMessage() for r in exporter_log.records if "retrying in" in r.getMessage()]

    results: list[SpanExportResult] = []
    spans: list[ReadableSpan] = make_spans(agent_trace("busy"))
    with locked_store(db):
        sender = threading.Thread(
            target=lambda: results.append(sender_exporter.export(spans)))
        sender.start()
        assert wait_until(lambda: retries(), 60), exporter_log.text
    sender.join(120)
    assert results == [SpanExportResult.SUCCESS], exporter_log.text
    # The server's RetryInfo, not the exporter's own backoff (1 s +-20%).
    assert "retrying in 1.00s" in retries()[0], retries()
    assert Api(server.url, key).tree("busy")["step_count"] == 3
    sender_exporter.shutdown()
    assert "Failed to export" not in exporter_log.text


def test_a_grpc_port_another_server_holds_stops_the_server_with_a_clear_message(
        tmp_path: Path, start_server: Any) -> None:
    # grpc binds with SO_REUSEPORT unless told not to: a second server would
    # then share the port with the first, each taking some exports into its
    # own database.
    first, port = start_grpc_server(start_server, f"sqlite:///{tmp_path / 'first.db'}")
    second = ServerProcess(f"sqlite:///{tmp_path / 'second.db'}", log=tmp_path / "second.log",
                           extra_args=["--otlp-grpc-port", str(port)])
    try:
        with pytest.raises(AssertionError, match="server exited"):
            second.start()
    finally:
        second.stop()
    assert f"cannot listen for OTLP/gRPC on 127.0.0.1:{port}" in second.log_text()
    assert "choose another port with --otlp-grpc-port" in second.log_text()
    assert "Traceback" not in second.log_text()


def test_a_request_over_the_body_limit_is_refused_and_stores_nothing(
        sqlite_url: str, start_server: Any) -> None:
    server, port = start_grpc_server(start_server, sqlite_url, "--max-body-mb", "1")
    key = make_key(sqlite_url, "big")

    def big(tracer: Any) -> None:
        with tracer.start_as_current_span("big") as span:
            span.set_attribute("session.id", "big")
            span.set_attribute("input.value", "x" * (2 * 2**20))

    before = count_rows(sqlite_url)
    data = body(make_spans(big))
    error = refusal(port, key, data)
    # gRPC's own answer to a message over the receiver's limit.
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    # Compressed, it is as large once read: refused alike.
    with pytest.raises(grpc.RpcError) as raised:
        call(port, key, data, compression=grpc.Compression.Gzip)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert count_rows(sqlite_url) == before
    assert Api(server.url, key).get("/api/v1/sessions").json()["sessions"] == []


# -- a span that ends before it starts, by each door -----------------------------------------

def backwards_trace(tracer: Any) -> None:
    """An LLM call, a tool call and a step that each end before they start
    (a client's clock stepped back), beside an LLM call that took 2 s."""
    t0 = 1_767_000_000 * 10**9  # whole seconds, in nanoseconds
    second = 10**9

    def span(name: str, start: float, end: float, parent: Any = None,
             **attributes: Any) -> Any:
        made = tracer.start_span(name, start_time=t0 + int(start * second),
                                 context=set_span_in_context(parent) if parent else None)
        for key, value in attributes.items():
            made.set_attribute(key.replace("__", "."), value)
        made.end(end_time=t0 + int(end * second))
        return made

    llm = {"gen_ai__operation__name": "chat", "gen_ai__system": "openai",
           "gen_ai__response__model": "gpt-4o-mini",
           "langfuse__observation__type": "generation"}
    root = tracer.start_span("backwards run", start_time=t0)
    root.set_attribute("session.id", "backwards")
    span("chat on time", 1, 3, root, **llm)
    first_token = datetime.fromtimestamp(t0 / 1e9 + 5.1, timezone.utc).isoformat()
    span("chat backwards", 5, 4.7, root, **llm,
         langfuse__observation__completion_start_time=json.dumps(first_token))
    span("tool backwards", 6, 5.5, root, gen_ai__operation__name="execute_tool",
         gen_ai__tool__name="weather", langfuse__observation__type="tool")
    span("step backwards", 7, 6.8, root)
    root.end(end_time=t0 + 10 * second)


def every_event(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [*node["events"], *(e for step in node["steps"] for e in every_event(step))]


@pytest.mark.parametrize("door", ["protobuf", "json", "grpc", "langfuse"])
def test_a_span_that_ends_before_it_starts_has_an_unknown_duration_by_every_door(
        door: str, db_url: str, start_server: Any, tmp_path: Path) -> None:
    """Its times are kept as sent; its duration (and the time to first token
    derived from its start) is unknown, as the lucidicai routes refuse a
    negative duration and the SDK records one as unknown: no percentile of
    the dashboard counts it, and no view shows a negative time."""
    server, port = start_grpc_server(start_server, db_url)
    key = make_key(db_url, "backwards")
    spans = make_spans(backwards_trace)
    if door == "grpc":
        call(port, key, body(spans))
    elif door == "langfuse":
        lf_auth = base64.b64encode(f"pk-lf-x:{key}".encode()).decode()
        answer = requests.post(server.url + "/api/public/otel/v1/traces", data=body(spans),
                               headers={"Content-Type": PROTOBUF,
                                        "Authorization": f"Basic {lf_auth}"}, timeout=30)
        assert answer.status_code == 200, answer.text
    else:
        encoding = PROTOBUF if door == "protobuf" else "application/json"
        answer = post(server, key, body(spans, encoding), encoding)
        assert answer.status_code == 200, answer.text
    tree = Api(server.url, key).tree("backwards")
    events = {e["description"]: e for e in every_event(tree)}
    assert events["chat on time"]["duration"] == pytest.approx(2.0)
    backwards, tool = events["chat backwards"], events["tool backwards"]
    assert (backwards["duration"], backwards["time_to_first_token"]) == (None, None)
    assert tool["duration"] is None
    t0 = 1_767_000_000
    assert (backwards["started_at"], backwards["ended_at"]) == pytest.approx((t0 + 5, t0 + 4.7))
    assert (tool["started_at"], tool["ended_at"]) == pytest.approx((t0 + 6, t0 + 5.5))
    # The dashboard's percentiles count the calls whose duration is known.
    # Read from the session's own events, then (once the refresher rebuilt
    # its derived rows) from the timing counts.
    store = Store(db_url)
    try:
        for rebuilt in (False, True):
            if rebuilt:  # (here, or by the server's own refresher meanwhile)
                refresh(store, quiet=0.0)
                assert store.query(f"{NOTED_IDS} WHERE session_id = 'backwards'") == []
            (model,) = Reader(store).dashboard("backwards", t0 - 3600, t0 + 3600).models
            assert (model["duration_p50"], model["duration_p95"]) == (2.0, 2.0)
            assert (model["ttft_p50"], model["ttft_p95"]) == (None, None)
    finally:
        store.close()
    # Neither the CLI nor the UI shows a negative time, nor fails.
    negative = re.compile(r"-\s*\d[\w.,+]*\s*(µs|ms|s|min|h)\b")

    def cli_show(session_id: str) -> str:
        shown = subprocess.run(
            [sys.executable, "-m", "lucidic", "sessions", "show", session_id],
            capture_output=True, text=True, timeout=60,
            env=child_env(tmp_path / "cli", {"LUCIDIC_BASE_URL": server.url,
                                              "LUCIDIC_API_KEY": key, "TZ": "UTC"}))
        assert shown.returncode == 0, shown.stderr
        assert not negative.search(shown.stdout), shown.stdout
        return shown.stdout

    assert "step backwards" in cli_show("backwards")
    browser = requests.Session()
    signed_in = browser.post(server.url + "/sign-in", data={"api_key": key}, timeout=30)
    assert signed_in.status_code == 200, signed_in.text[:300]
    page = browser.get(server.url + "/sessions/backwards", timeout=30)
    assert page.status_code == 200 and "step backwards" in page.text
    assert not negative.search(page.text)
    # Its outline row has no length and no bar on the timeline (not a sliver).
    (step,) = [s for s in tree["steps"][0]["steps"] if s["action"] == "step backwards"]
    assert step["duration"] is None  # (a step's is its times', read back)
    row = page.text[page.text.index(f'data-key="step:{step["id"]}"'):]
    row = row[:row.index("</div>")]
    assert '<span class="dur num"></span>' in row and "<svg" not in row, row
    # A trace of one such span: a session of its own, which ends before it starts.
    assert post(server, key, body(make_spans(lambda tracer: tracer.start_span(
        "clock stepped back", start_time=(t0 + 20) * 10**9).end(
        end_time=(t0 + 19) * 10**9)))).status_code == 200
    (own,) = [s for s in Api(server.url, key).get("/api/v1/sessions").json()["sessions"]
              if s["name"] == "clock stepped back"]
    assert "took" not in cli_show(own["id"])
    assert Api(server.url, key).tree(own["id"])["duration"] is None
    for path in (f"/sessions/{own['id']}", "/"):
        page = browser.get(server.url + path, timeout=30)
        assert page.status_code == 200 and "clock stepped back" in page.text
        assert not negative.search(page.text)


def test_spans_of_a_deleted_session_are_refused_alone_in_the_same_words_by_both_doors(
        db_url: str, start_server: Any) -> None:
    """A deleted session's spans are refused for good, saying so, over
    OTLP/HTTP and OTLP/gRPC alike: with other sessions' spans in the
    request, those are stored and the answer is a partial success; alone,
    the request is refused as malformed (not retried)."""
    server, port = start_grpc_server(start_server, db_url)
    key = make_key(db_url, "deleting")
    api = Api(server.url, key)
    assert post(server, key, body(make_spans(agent_trace("gone")))).status_code == 200
    assert api.http.delete(server.url + "/api/v1/sessions/gone", params={"force": "true"},
                           timeout=10).status_code == 200
    gone = make_spans(agent_trace("gone"))
    words = "session 'gone' was deleted: records for a deleted session are refused"
    for door, conversation in (("http", "kept-http"), ("grpc", "kept-grpc")):
        mixed = body(gone + make_spans(agent_trace(conversation)))
        if door == "http":
            answer = post(server, key, mixed)
            assert answer.status_code == 200, answer.content
            rejected, reason = partial(answer)
        else:
            kept = call(port, key, mixed)
            rejected, reason = (kept.partial_success.rejected_spans,
                                kept.partial_success.error_message)
        assert (rejected, reason) == (len(gone), words), door
        assert api.tree(conversation)["step_count"] == 3
    before = count_rows(db_url)
    http = post(server, key, body(gone))
    assert http.status_code == 400
    http_status = Status.FromString(http.content)
    error = refusal(port, key, body(gone))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    grpc_status = status_details(error)
    assert grpc_status.message == http_status.message == \
        f"all {len(gone)} spans were refused: {words}"
    assert count_rows(db_url) == before
    assert api.get("/api/v1/sessions/gone").status_code == 404
    assert "Traceback" not in server.log_text()
