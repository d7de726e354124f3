"""OTLP/HTTP ingest at /v1/traces: real instrumentations replaying a recorded
OpenAI call, exported by the OpenTelemetry SDK's own OTLP exporters
(protobuf and JSON), spans in any order and split across requests, retries,
the conventions Phoenix and Langfuse accept, and bad input."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from faults import locked_store, wait_until
from google.protobuf import json_format
from google.rpc.error_details_pb2 import BadRequest
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.json.common.trace_encoder import (
    encode_spans as encode_json,
)
from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as encode_protobuf,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status as SpanStatus
from opentelemetry.trace import StatusCode, Tracer
from protocol_support import SHARED_CASSETTES, count_rows
from server_support import Api, ServerProcess, make_key

from helpers import run_python
from lucidic.pricing import cost_of

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def make_spans(build: Callable[[Tracer], None], service: str = "trip-agent"
               ) -> list[ReadableSpan]:
    """Spans made by the real OpenTelemetry SDK."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    build(provider.get_tracer("tests", "1.0"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def body(spans: Sequence[ReadableSpan], encoding: str = PROTOBUF) -> bytes:
    """An export request as the SDK's OTLP exporters encode it."""
    if encoding == JSON:
        return encode_json(spans).to_json().encode()
    return encode_protobuf(spans).SerializeToString()


def post(server: ServerProcess, key: str | None, data: bytes, encoding: str = PROTOBUF,
         **headers: str) -> requests.Response:
    sent = {"Content-Type": encoding, **headers}
    if key:
        sent["Authorization"] = f"Bearer {key}"
    return requests.post(server.url + "/v1/traces", data=data, headers=sent, timeout=60)


def partial(response: requests.Response) -> tuple[int, str]:
    answer = ExportTraceServiceResponse.FromString(response.content)
    return answer.partial_success.rejected_spans, answer.partial_success.error_message


def status_message(response: requests.Response) -> str:
    if response.headers["content-type"].startswith(JSON):
        return str(response.json()["message"])
    return str(Status.FromString(response.content).message)


# -- real instrumentations, real exporters ---------------------------------------------

INSTRUMENTED = """
import sys
import openai, vcr
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

library, encoding, cassette, conversation = sys.argv[1:5]
if encoding == "grpc":  # OTEL_EXPORTER_OTLP_ENDPOINT names the gRPC port
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
elif encoding == "protobuf":
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
else:
    from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter
if library == "openllmetry":
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor
else:
    from openinference.instrumentation.openai import OpenAIInstrumentor

provider = TracerProvider(resource=Resource.create({"service.name": "joke-agent"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_*
OpenAIInstrumentor().instrument(tracer_provider=provider)
tracer = provider.get_tracer("joke-agent")
replay = vcr.VCR(record_mode="none", match_on=("method", "scheme", "host", "port", "path"),
                 ignore_localhost=True)
with replay.use_cassette(cassette):
    with tracer.start_as_current_span("answer the user") as root:
        root.set_attribute("session.id", conversation)
        with tracer.start_as_current_span("execute_tool tell_joke") as tool:
            tool.set_attribute("gen_ai.operation.name", "execute_tool")
            tool.set_attribute("gen_ai.tool.name", "tell_joke")
            tool.set_attribute("gen_ai.tool.call.arguments", '{"topic": "opentelemetry"}')
            answer = openai.OpenAI(api_key="sk-test").chat.completions.create(
                model="gpt-3.5-turbo",
                messages=[{"role": "user", "content": "Tell me a joke about opentelemetry"}])
            tool.set_attribute("gen_ai.tool.call.result", answer.choices[0].message.content)
assert provider.force_flush(30_000)
provider.shutdown()
print("exported")
"""


@pytest.mark.parametrize(("library", "encoding", "compression"), [
    ("openllmetry", "protobuf", "gzip"), ("openinference", "json", "none"),
    ("openinference", "protobuf", "none"), ("openllmetry", "json", "gzip")])
def test_real_instrumentations_exported_by_the_sdks_otlp_exporters_land_as_one_session(
        library: str, encoding: str, compression: str, sqlite_url: str, start_server: Any,
        tmp_path: Path) -> None:
    cassette = SHARED_CASSETTES / "openai" / "chat.yaml"
    if not cassette.is_file():
        pytest.skip(f"recorded OpenAI traffic not found at {cassette}")
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "otel")
    conversation = f"conversation-{library}-{encoding}"
    run_python(INSTRUMENTED, home=tmp_path / "agent", timeout=120,
               args=[library, encoding, str(cassette), conversation],
               env={"OTEL_EXPORTER_OTLP_ENDPOINT": server.url,
                    "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer%20{key}",
                    "OTEL_EXPORTER_OTLP_COMPRESSION": compression})
    check_joke_session(Api(server.url, key).tree(conversation), library)


def check_joke_session(tree: dict[str, Any], library: str) -> None:
    """The session INSTRUMENTED exports, as the server stored it."""
    assert tree["project"] == "otel" and tree["agent_id"] == "joke-agent"
    (step,) = tree["steps"]
    assert step["action"] == "answer the user" and step["is_finished"]
    assert step["attributes"]["otel.resource"]["service.name"] == "joke-agent"
    tool, llm = sorted(step["events"], key=lambda e: e["type"] != "tool")
    assert (tool["type"], tool["function_name"], tool["arguments"]) == (
        "tool", "tell_joke", {"topic": "opentelemetry"})
    assert "baggage" in tool["result"]
    # The LLM span sat under the tool span: its event is in the nearest step.
    assert llm["type"] == "llm" and llm["provider"] == "openai"
    assert (llm["model"], llm["request_model"]) == ("gpt-3.5-turbo-0125", "gpt-3.5-turbo")
    assert (llm["input_tokens"], llm["output_tokens"]) == (15, 19)
    assert llm["input"] == [{"role": "user", "content": "Tell me a joke about opentelemetry"}]
    output = llm["output"]
    assert output["role"] == "assistant" and "baggage" in output["content"]
    assert llm["cost"] == pytest.approx(cost_of("openai", "gpt-3.5-turbo-0125", 15, 19))
    assert llm["duration"] and llm["duration"] > 0
    assert llm["attributes"]["otel.scope"]["name"].startswith(
        "opentelemetry.instrumentation.openai" if library == "openllmetry"
        else "openinference.instrumentation.openai")
    assert tree["total_cost"] == pytest.approx(llm["cost"])


# -- order, splitting, retries ----------------------------------------------------------

def agent_trace(conversation: str | None) -> Callable[[Tracer], None]:
    """root (names the session) > plan (step) > [llm (OpenLLMetry's indexed
    attributes), tool (OpenInference) > fetch (step under an event span)]."""
    def build(tracer: Tracer) -> None:
        with tracer.start_as_current_span("run agent") as root:
            if conversation:
                root.set_attribute("gen_ai.conversation.id", conversation)
            root.set_attribute("app.user", "ada")
            with tracer.start_as_current_span("plan"):
                with tracer.start_as_current_span("chat gpt-4o-mini") as llm:
                    for key, value in {
                            "gen_ai.operation.name": "chat", "gen_ai.system": "openai",
                            "gen_ai.request.model": "gpt-4o-mini",
                            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                            "gen_ai.prompt.0.role": "system",
                            "gen_ai.prompt.0.content": "be brief",
                            "gen_ai.prompt.1.role": "user",
                            "gen_ai.prompt.1.content": "weather in Oslo?",
                            "gen_ai.completion.0.role": "assistant",
                            "gen_ai.completion.0.finish_reason": "tool_calls",
                            "gen_ai.completion.0.tool_calls.0.id": "call_1",
                            "gen_ai.completion.0.tool_calls.0.name": "weather",
                            "gen_ai.completion.0.tool_calls.0.arguments": '{"city": "Oslo"}',
                            "gen_ai.usage.input_tokens": 1200,
                            "gen_ai.usage.output_tokens": 20,
                            "gen_ai.usage.cache_read_input_tokens": 1000,
                            "gen_ai.usage.reasoning_tokens": 8}.items():
                        llm.set_attribute(key, value)
                with tracer.start_as_current_span("weather") as tool:
                    tool.set_attribute("openinference.span.kind", "TOOL")
                    tool.set_attribute("tool.name", "weather")
                    tool.set_attribute("tool.parameters", '{"city": "Oslo"}')
                    with tracer.start_as_current_span("fetch forecast"):
                        pass
                    try:
                        raise TimeoutError("forecast service timed out")
                    except TimeoutError as exc:
                        tool.record_exception(exc)
                        tool.set_status(SpanStatus(StatusCode.ERROR, "timed out"))
    return build


def normalized(tree: dict[str, Any]) -> Any:
    """The tree by span id, without ids the server derives per project."""
    def node(item: dict[str, Any], kind: str) -> dict[str, Any]:
        kept = {k: v for k, v in item.items()
                if k not in ("id", "session_id", "step_id", "parent_step_id", "updated_at",
                             "steps", "events")}
        return {"kind": kind, **kept,
                "children": sorted([node(s, "step") for s in item.get("steps", [])]
                                   + [node(e, "event") for e in item.get("events", [])],
                                   key=lambda n: n["attributes"]["otel.span_id"])}
    top = sorted([node(s, "step") for s in tree["steps"]]
                 + [node(e, "event") for e in tree["events"]],
                 key=lambda n: n["attributes"]["otel.span_id"])
    return {"steps": tree["step_count"], "events": tree["event_count"],
            "errors": tree["error_count"], "cost": tree["total_cost"], "tree": top}


def _orders(count: int) -> list[list[int]]:
    rng = random.Random(7)
    orders = [list(range(count)), list(reversed(range(count)))]
    for _ in range(4):
        order = list(range(count))
        rng.shuffle(order)
        orders.append(order)
    return orders


def named(span: ReadableSpan, conversation: str, encoding: str) -> bytes:
    """One span as its own export request, with the session it names renamed
    (each project needs a session id of its own)."""
    request = encode_protobuf([span])
    for item in request.resource_spans[0].scope_spans[0].spans:
        for attribute in item.attributes:
            if attribute.key == "gen_ai.conversation.id":
                attribute.value.string_value = conversation
    if encoding == PROTOBUF:
        return request.SerializeToString()
    document = json.loads(body([span], JSON))
    for attribute in document["resourceSpans"][0]["scopeSpans"][0]["spans"][0].get(
            "attributes", []):
        if attribute["key"] == "gen_ai.conversation.id":
            attribute["value"] = {"stringValue": conversation}
    return json.dumps(document).encode()


def test_spans_in_any_order_and_any_split_give_the_same_session(
        db_url: str, start_server: Any) -> None:
    server = start_server(db_url)
    spans = make_spans(agent_trace("conv"))
    assert len({s.name for s in spans}) == 5
    results = []
    for n, order in enumerate(_orders(5)):
        key = make_key(db_url, f"order-{n}")
        encoding = JSON if n % 2 else PROTOBUF
        # One span per request, in this order (the LLM span usually comes
        # before its parents, as a batch exporter sends them).
        for index in order:
            response = post(server, key, named(spans[index], f"conv-{n}", encoding), encoding)
            assert response.status_code == 200, response.text
        api = Api(server.url, key)
        sessions = api.get("/api/v1/sessions").json()["sessions"]
        # The trace sat in a session of its own until the root named one.
        assert [s["id"] for s in sessions] == [f"conv-{n}"], sessions
        tree = normalized(api.tree(f"conv-{n}"))
        assert tree["tree"][0]["attributes"].pop("gen_ai.conversation.id") == f"conv-{n}"
        results.append(tree)
    first = results[0]
    assert all(result == first for result in results[1:])

    (root,) = first["tree"]
    assert (root["kind"], root["action"], root["attributes"]["app.user"]) == (
        "step", "run agent", "ada")
    (plan,) = root["children"]
    kinds = {child["action"] if child["kind"] == "step" else child["type"]: child
             for child in plan["children"]}
    assert set(kinds) == {"llm", "tool", "fetch forecast"}  # fetch moved up from the tool
    llm, tool = kinds["llm"], kinds["tool"]
    assert llm["input"] == [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": "weather in Oslo?"}]
    assert llm["output"] == {"role": "assistant", "finish_reason": "tool_calls",
                             "tool_calls": [{"id": "call_1", "name": "weather",
                                             "arguments": {"city": "Oslo"}}]}
    assert (llm["input_tokens"], llm["output_tokens"], llm["cached_tokens"],
            llm["reasoning_tokens"]) == (1200, 20, 1000, 8)
    assert llm["cost"] == pytest.approx(cost_of("openai", "gpt-4o-mini-2024-07-18", 1200, 20,
                                                1000))
    assert (tool["function_name"], tool["arguments"]) == ("weather", {"city": "Oslo"})
    assert tool["error"] == "TimeoutError: forecast service timed out"
    assert first["errors"] == 1 and first["steps"] == 3 and first["events"] == 2


def test_an_exporters_retries_never_duplicate_and_a_trace_without_a_session_is_its_own(
        db_url: str, start_server: Any) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "retries")
    spans = make_spans(agent_trace(None), service="cron-agent")
    data = body(spans)
    for _ in range(3):
        assert post(server, key, data).status_code == 200
    before = count_rows(db_url)
    assert post(server, key, gzip.compress(data), **{"Content-Encoding": "gzip"}
                ).status_code == 200
    assert count_rows(db_url) == before
    api = Api(server.url, key)
    (session,) = api.get("/api/v1/sessions").json()["sessions"]
    assert (session["name"], session["agent_id"]) == ("run agent", "cron-agent")
    assert session["is_finished"] and session["step_count"] == 3
    assert session["event_count"] == 2
    assert session["started_at"] == pytest.approx(min(s.start_time for s in spans) / 1e9)


def test_concurrent_requests_for_one_trace_give_the_sequential_result(
        pg_url: str, start_server: Any) -> None:
    server = start_server(pg_url)
    sequential, concurrent = make_key(pg_url, "sequential"), make_key(pg_url, "concurrent")
    spans = make_spans(agent_trace("conv"))
    for key, conversation, parallel in ((sequential, "seq", False),
                                        (concurrent, "par", True)):
        # Every span alone, children first, and every request sent three times.
        requests_ = [named(span, conversation, PROTOBUF) for span in reversed(spans)] * 3
        if parallel:
            barrier = threading.Barrier(len(requests_))
            answers: list[int] = []

            def send(data: bytes, key: str = key, barrier: threading.Barrier = barrier,
                     answers: list[int] = answers) -> None:
                barrier.wait()
                answers.append(post(server, key, data).status_code)

            threads = [threading.Thread(target=send, args=(data,)) for data in requests_]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert answers == [200] * len(requests_)
        else:
            for data in requests_:
                assert post(server, key, data).status_code == 200
    trees = [normalized(Api(server.url, key).tree(conversation))
             for key, conversation in ((sequential, "seq"), (concurrent, "par"))]
    for tree in trees:
        del tree["tree"][0]["attributes"]["gen_ai.conversation.id"]
    assert trees[0] == trees[1] and trees[0]["steps"] == 3


def test_an_otlp_trace_joins_a_session_our_sdk_started(
        sqlite_url: str, start_server: Any, tmp_path: Path) -> None:
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "mixed")
    api = Api(server.url, key)
    sid = "started-by-sdk"
    assert api.records({"kind": "session", "id": sid, "ts": 1.0,
                        "fields": {"name": "ours", "agent_id": "agent-x", "started_at": 1.0}}
                       ).status_code == 200
    assert post(server, key, body(make_spans(agent_trace(sid)))).status_code == 200
    tree = api.tree(sid)
    assert (tree["name"], tree["agent_id"], tree["started_at"]) == ("ours", "agent-x", 1.0)
    assert [s["action"] for s in tree["steps"]] == ["run agent"]


# -- conventions ------------------------------------------------------------------------

def conventions(tracer: Tracer) -> None:
    with tracer.start_as_current_span("workflow") as root:
        root.set_attribute("langfuse.session.id", "lf-session")
        with tracer.start_as_current_span("ChatCompletion") as oi:
            for key, value in {
                    "openinference.span.kind": "LLM", "llm.provider": "openai",
                    "llm.model_name": "gpt-4o-2024-08-06",
                    "llm.invocation_parameters": '{"model": "gpt-4o", "temperature": 0}',
                    "llm.input_messages.0.message.role": "user",
                    "llm.input_messages.0.message.contents.0.message_content.type": "text",
                    "llm.input_messages.0.message.contents.0.message_content.text": "hi",
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.content": "hello",
                    "llm.token_count.prompt": 10, "llm.token_count.completion": 2,
                    "llm.token_count.prompt_details.cache_read": 4,
                    "llm.token_count.completion_details.reasoning": 1,
                    "llm.cost.total": 0.5, "metadata": '{"tier": "gold"}'}.items():
                oi.set_attribute(key, value)
        with tracer.start_as_current_span("chat claude") as semconv:
            for key, value in {
                    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                    "gen_ai.request.model": "claude-sonnet-4-5",
                    "gen_ai.system_instructions": '[{"type": "text", "content": "be kind"}]',
                    "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
                        {"type": "text", "content": "weather?"}]}]),
                    "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                        {"type": "reasoning", "content": "look it up"},
                        {"type": "tool_call", "id": "t1", "name": "weather",
                         "arguments": {"city": "Oslo"}}], "finish_reason": "tool_call"}]),
                    "gen_ai.usage.input_tokens": 30, "gen_ai.usage.output_tokens": 5}.items():
                semconv.set_attribute(key, value)
        with tracer.start_as_current_span("embeddings text-embedding-3-small") as embed:
            embed.set_attribute("gen_ai.operation.name", "embeddings")
            embed.set_attribute("gen_ai.request.model", "text-embedding-3-small")
            embed.set_attribute("gen_ai.usage.input_tokens", 8)
        with tracer.start_as_current_span("failing step") as failing:
            failing.set_status(SpanStatus(StatusCode.ERROR, "gave up"))


def test_openinference_genai_and_langfuse_conventions_map_as_phoenix_and_langfuse_read_them(
        sqlite_url: str, start_server: Any) -> None:
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "conventions")
    assert post(server, key, body(make_spans(conventions), JSON), JSON).status_code == 200
    tree = Api(server.url, key).tree("lf-session")
    (workflow,) = tree["steps"]
    assert workflow["attributes"]["langfuse.session.id"] == "lf-session"  # kept as given
    (failing,) = workflow["steps"]
    assert failing["error"] == "gave up"
    events = {e["description"]: e for e in workflow["events"]}
    oi = events["ChatCompletion"]
    assert (oi["provider"], oi["model"], oi["request_model"]) == (
        "openai", "gpt-4o-2024-08-06", "gpt-4o")
    assert oi["input"] == [{"role": "user", "content": "hi"}]
    assert oi["output"] == {"role": "assistant", "content": "hello"}
    assert (oi["input_tokens"], oi["output_tokens"], oi["cached_tokens"],
            oi["reasoning_tokens"], oi["cost"]) == (10, 2, 4, 1, 0.5)  # the span's own cost
    assert oi["attributes"]["metadata"] == '{"tier": "gold"}'
    assert "llm.input_messages.0.message.role" not in oi["attributes"]
    claude = events["chat claude"]
    assert (claude["provider"], claude["model"]) == ("anthropic", "claude-sonnet-4-5")
    assert claude["input"] == [{"role": "system", "content": "be kind"},
                               {"role": "user", "content": "weather?"}]
    assert claude["output"] == {"role": "assistant", "thinking": "look it up",
                                "finish_reason": "tool_call",
                                "tool_calls": [{"id": "t1", "name": "weather",
                                                "arguments": {"city": "Oslo"}}]}
    assert claude["cost"] == pytest.approx(cost_of("anthropic", "claude-sonnet-4-5", 30, 5))
    embed = events["embeddings text-embedding-3-small"]
    assert embed["type"] == "llm" and embed["input_tokens"] == 8


# -- bad input --------------------------------------------------------------------------

def test_bad_otlp_requests_get_a_clear_4xx_and_change_nothing(
        db_url: str, start_server: Any) -> None:
    server = start_server(db_url, extra_args=["--max-body-mb", "8"])
    key, other = make_key(db_url, "mine"), make_key(db_url, "theirs")
    assert post(server, other, body(make_spans(agent_trace("taken")))).status_code == 200
    good = body(make_spans(agent_trace("fine")))
    before = count_rows(db_url)

    def huge(tracer: Tracer) -> None:
        with tracer.start_as_current_span("huge") as span:
            span.set_attribute("input.value", "x" * (4 * 2**20 + 1))

    cases: list[tuple[str | None, bytes, str, dict[str, str], int, str]] = [
        (None, good, PROTOBUF, {}, 401, "no API key"),
        ("lk_wrong", good, PROTOBUF, {}, 401, "not valid"),
        (key, good, "text/plain", {}, 415, "application/x-protobuf"),
        (key, b"\x0a\xff\xff\xff\xff\x0f", PROTOBUF, {}, 400, "not a protobuf"),
        (key, b'{"resourceSpans": [', JSON, {}, 400, "not valid JSON"),
        (key, b"[1, 2]", JSON, {}, 400, "JSON object"),
        (key, b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', JSON,
         {}, 400, "not hexadecimal"),
        (key, b'{"resourceSpans": "many"}', JSON, {}, 400, "ExportTraceServiceRequest"),
        (key, good, PROTOBUF, {"Content-Encoding": "gzip"}, 400, "not gzip"),
        (key, gzip.compress(good), PROTOBUF, {"Content-Encoding": "br"}, 415, "br"),
        (key, body(make_spans(huge)), PROTOBUF, {}, 400, "longer than"),
        (key, body(make_spans(agent_trace("taken"))), PROTOBUF, {}, 400, "another project"),
    ]
    for sender, data, encoding, headers, status, words in cases:
        response = post(server, sender, data, encoding, **headers)
        assert response.status_code == status, (words, response.text[:300])
        shown = (status_message(response) if response.headers["content-type"].startswith(
            (PROTOBUF, JSON)) else response.json()["detail"])
        assert words in shown, (words, shown)
    assert count_rows(db_url) == before
    too_big = post(server, key, b"\0" * (9 * 2**20))
    assert too_big.status_code == 413
    assert count_rows(db_url) == before

    # Fields OTLP does not define are ignored, as its specification asks.
    document = json.loads(body(make_spans(agent_trace("fine")), JSON))
    document["futureField"] = {"x": 1}
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["someNewThing"] = 3
    accepted = post(server, key, json.dumps(document).encode(), JSON)
    assert accepted.status_code == 200 and accepted.json() == {}
    assert Api(server.url, key).tree("fine")["step_count"] == 3


#: What OTLP/HTTP exporters send again (the specification's "retryable
#: response codes"); every other 4xx or 5xx they drop.
RETRYABLE = {429, 502, 503, 504}


def otlp_status(response: requests.Response, encoding: str) -> Status:
    """The body of an OTLP error: a google.rpc.Status, encoded as the request was."""
    assert response.headers["content-type"] == encoding, response.content[:300]
    if encoding == JSON:
        return json_format.Parse(response.content, Status())
    return Status.FromString(response.content)


@contextlib.contextmanager
def otlp_tables_gone(db: Path) -> Iterator[None]:
    """The server's SQLite database broken under it (a table its OTLP ingest
    needs renamed away), until the block ends."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as admin:
        admin.execute("ALTER TABLE otlp_traces RENAME TO otlp_traces_kept")
        try:
            yield
        finally:
            admin.execute("ALTER TABLE otlp_traces_kept RENAME TO otlp_traces")


@pytest.mark.parametrize("encoding", [PROTOBUF, JSON])
def test_every_otlp_error_is_a_status_encoded_like_the_request_with_otlps_status_codes(
        encoding: str, tmp_path: Path, start_server: Any) -> None:
    # The database's failures and the body limit were answered as
    # application/problem+json, which no OTLP client decodes.
    db = tmp_path / "server.db"
    server = start_server(f"sqlite:///{db}", extra_args=["--max-body-mb", "1"])
    key = make_key(f"sqlite:///{db}", "errors")
    good = body(make_spans(agent_trace("errors")), encoding)
    bad = b"\x0a\xff\xff\xff\xff\x0f" if encoding == PROTOBUF else b'{"resourceSpans": ['

    unauthenticated = post(server, None, good, encoding)
    assert unauthenticated.status_code == 401
    assert "API key" in otlp_status(unauthenticated, encoding).message

    malformed = post(server, key, bad, encoding)
    assert malformed.status_code == 400  # bad data: not retried
    status = otlp_status(malformed, encoding)
    assert "not" in status.message
    (details,) = status.details
    violations = BadRequest()
    assert details.Unpack(violations)
    assert violations.field_violations[0].description == status.message

    too_big = post(server, key, b"\0" * (2 * 2**20), encoding)
    assert too_big.status_code == 413  # not retried, as the specification asks
    assert "limit" in otlp_status(too_big, encoding).message

    with otlp_tables_gone(db):
        broken = post(server, key, good, encoding)
    assert broken.status_code == 503 and broken.status_code in RETRYABLE
    assert "Retry-After" not in broken.headers  # broken: back off, no promise
    assert "log" in otlp_status(broken, encoding).message

    with locked_store(db):
        busy = post(server, key, good, encoding)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert "busy" in otlp_status(busy, encoding).message

    assert post(server, key, good, encoding).status_code == 200
    assert Api(server.url, key).tree("errors")["step_count"] == 3


@pytest.mark.parametrize("encoding", [PROTOBUF, JSON])
def test_the_sdks_otlp_exporter_retries_through_a_broken_then_busy_database_and_delivers_once(
        encoding: str, tmp_path: Path, start_server: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    if encoding == PROTOBUF:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.json.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    db = tmp_path / "server.db"
    server = start_server(f"sqlite:///{db}")
    key = make_key(f"sqlite:///{db}", "exporter")
    exporter = OTLPSpanExporter(endpoint=server.url + "/v1/traces", timeout=120,
                                headers={"Authorization": f"Bearer {key}"})
    caplog.set_level(logging.WARNING, logger="opentelemetry")

    def retries() -> list[str]:
        return [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]

    results: list[SpanExportResult] = []
    for fault, conversation in ((otlp_tables_gone, "broken"), (locked_store, "busy")):
        caplog.clear()
        spans = make_spans(agent_trace(conversation))
        with fault(db):
            sender = threading.Thread(target=lambda batch: results.append(exporter.export(batch)),
                                      args=(spans,))
            sender.start()
            assert wait_until(lambda: retries(), 60), caplog.text
        sender.join(120)
        assert results.pop() is SpanExportResult.SUCCESS, caplog.text
        assert Api(server.url, key).tree(conversation)["step_count"] == 3
        if fault is locked_store:  # the server's Retry-After, not the exporter's backoff
            assert "retrying in 1.00s" in retries()[0], retries()
    exporter.shutdown()
    assert "Failed to export" not in caplog.text


def odd_shapes(tracer: Tracer) -> None:
    """Attributes of shapes no convention names, which a span may still carry."""
    with tracer.start_as_current_span("odd agent") as root:
        root.set_attribute("session.id", "odd")
        with tracer.start_as_current_span("chat priced beyond reason") as llm:
            for key, value in {
                    "gen_ai.operation.name": "chat", "gen_ai.system": "openai",
                    "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 1000,
                    "gen_ai.usage.output_tokens": 10, "gen_ai.usage.cost": 1e300}.items():
                llm.set_attribute(key, value)
        with tracer.start_as_current_span("chat with odd digits") as llm:
            # '²' and '¹' are digits to str.isdigit, but no int() reads them.
            for key, value in {
                    "gen_ai.operation.name": "chat", "gen_ai.prompt.0.role": "user",
                    "gen_ai.prompt.0.content": "hi", "gen_ai.prompt.².content": "squared",
                    "gen_ai.completion.0.role": "assistant",
                    "gen_ai.completion.0.tool_calls.¹.name": "superscript"}.items():
                llm.set_attribute(key, value)
        with tracer.start_as_current_span("tool calls as text") as llm:
            for key, value in {
                    "openinference.span.kind": "LLM",
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.tool_calls.0.tool_call": "weather(city='Oslo')",
                    "llm.output_messages.0.message.tool_calls.1.tool_call.function":
                        "get_time",
                    "llm.output_messages.1.message.role": "assistant",
                    "llm.output_messages.1.message.tool_calls": "call the weather tool",
                    "llm.output_messages.2.message.role": "assistant",
                    "llm.output_messages.2.message.tool_calls": json.dumps([{
                        "id": "c1", "function": {"name": "weather",
                                                 "arguments": '{"city": "Oslo"}'}}]),
                    }.items():
                llm.set_attribute(key, value)
        with tracer.start_as_current_span("operation as a list") as odd:
            odd.set_attribute("gen_ai.operation.name", ["chat", "embeddings"])
        with tracer.start_as_current_span("messages as a number") as llm:
            llm.set_attribute("gen_ai.operation.name", "chat")
            llm.set_attribute("gen_ai.system_instructions", "be kind")
            llm.set_attribute("gen_ai.input.messages", 5)


def test_odd_attribute_shapes_are_stored_sensibly_never_a_server_error(
        db_url: str, start_server: Any) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "odd")
    response = post(server, key, body(make_spans(odd_shapes)))
    assert response.status_code == 200, response.content[:300]
    assert partial(response) == (0, "")
    (root,) = Api(server.url, key).tree("odd")["steps"]
    events = {e["description"]: e for e in root["events"]}
    # A cost beyond any real call is dropped, as tokens beyond their range
    # are: the price table's cost stands in.
    priced = events["chat priced beyond reason"]
    assert priced["cost"] == pytest.approx(cost_of("openai", "gpt-4o-mini", 1000, 10))
    # Only ASCII digits index a flattened list; another key is kept as it is.
    digits = events["chat with odd digits"]
    assert digits["input"] == [{"role": "user", "content": "hi"}]
    assert digits["attributes"]["gen_ai.prompt.².content"] == "squared"
    assert digits["output"] == {"role": "assistant",
                                "tool_calls": {"¹": {"name": "superscript"}}}
    # Tool calls given as text are kept as text (or as the JSON they hold).
    assert events["tool calls as text"]["output"] == [
        {"role": "assistant", "tool_calls": ["weather(city='Oslo')", {"name": "get_time"}]},
        {"role": "assistant", "tool_calls": "call the weather tool"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "name": "weather",
                                              "arguments": {"city": "Oslo"}}]}]
    # An operation that is not one word names none: the span is a step.
    (listed,) = root["steps"]
    assert listed["attributes"]["gen_ai.operation.name"] == ["chat", "embeddings"]
    assert events["messages as a number"]["input"] == [
        {"role": "system", "content": "be kind"}, 5]


def test_some_spans_refused_is_a_partial_success_naming_why(
        sqlite_url: str, start_server: Any) -> None:
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "partial")
    request = encode_protobuf(make_spans(agent_trace("kept")))
    broken = request.resource_spans[0].scope_spans[0].spans.add()
    broken.CopyFrom(request.resource_spans[0].scope_spans[0].spans[0])
    broken.span_id = b"\x01\x02\x03\x04"
    response = post(server, key, request.SerializeToString())
    assert response.status_code == 200
    rejected, message = partial(response)
    assert rejected == 1 and "span id is not 8 bytes" in message
    assert Api(server.url, key).tree("kept")["step_count"] == 3


def test_the_openapi_spec_documents_the_protocol_routes_for_the_fuzzer(
        sqlite_url: str, start_server: Any) -> None:
    server = start_server(sqlite_url)
    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    paths = spec["paths"]
    for path in ("/v1/traces", "/api/initsession", "/api/continuesession", "/api/initstep",
                 "/api/updatestep", "/api/initevent", "/api/updateevent", "/api/updatesession",
                 "/api/getpresigneduploadurl", "/api/getprompt", "/api/initmasssim",
                 "/api/events", "/api/verifyapikey", "/api/uploads/{object_key}",
                 "/api/v1/screenshots/{object_key}", "/api/v1/mass-sims"):
        assert path in paths, path
    content = paths["/v1/traces"]["post"]["requestBody"]["content"]
    assert set(content) == {PROTOBUF, JSON}
    for status, answer in paths["/v1/traces"]["post"]["responses"].items():
        assert set(answer["content"]) == {PROTOBUF, JSON}, status  # a Status, not a problem
    assert "mass_sim_id" in {p["name"] for p in paths["/api/v1/sessions"]["get"]["parameters"]}




def test_one_request_with_several_traces_of_one_conversation(
        sqlite_url: str, start_server: Any) -> None:
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "conversation")
    spans = [*make_spans(agent_trace("shared")), *make_spans(agent_trace("shared")),
             *make_spans(agent_trace(None))]
    assert post(server, key, body(spans)).status_code == 200
    api = Api(server.url, key)
    sessions = {s["id"]: s for s in api.get("/api/v1/sessions").json()["sessions"]}
    assert len(sessions) == 2 and sessions["shared"]["step_count"] == 6
    (own,) = (s for sid, s in sessions.items() if sid != "shared")
    assert own["step_count"] == 3 and own["is_finished"] and own["name"] == "run agent"
    assert sessions["shared"]["started_at"] == pytest.approx(
        min(s.start_time for s in spans[:10]) / 1e9)


def deeply_nested_messages(tracer: Tracer) -> None:
    """LLM spans whose messages attribute is JSON text nested deep: deeper
    than any JSON parser goes, and nearly as deep (a string attribute may
    hold anything)."""
    with tracer.start_as_current_span("agent") as root:
        root.set_attribute("session.id", "deep")
        for name, depth in (("too deep", 100_000), ("nearly too deep", 900)):
            with tracer.start_as_current_span(name) as llm:
                llm.set_attribute("gen_ai.operation.name", "chat")
                llm.set_attribute("gen_ai.input.messages", "[" * depth + "]" * depth)


@pytest.mark.parametrize("encoding", [PROTOBUF, JSON])
def test_a_json_text_attribute_nested_too_deep_is_kept_as_text_not_a_server_error(
        encoding: str, sqlite_url: str, start_server: Any) -> None:
    # Parsing the text raised RecursionError, which nothing expected: a 500
    # for a span the server can store perfectly well as the text it is.
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "deep")
    response = post(server, key, body(make_spans(deeply_nested_messages), encoding), encoding)
    assert response.status_code == 200, response.content[:300]
    (root,) = Api(server.url, key).tree("deep")["steps"]
    events = {e["description"]: e for e in root["events"]}
    assert events["too deep"]["input"] == "[" * 100_000 + "]" * 100_000
    # What the parser can read is read, as any JSON text of messages is.
    assert json.dumps(events["nearly too deep"]["input"], separators=(",", ":")) == \
        "[" * 900 + "]" * 900


@pytest.mark.parametrize("encoding", [PROTOBUF, JSON])
def test_an_unexpected_failure_is_a_500_status_encoded_like_the_request(
        encoding: str, tmp_path: Path) -> None:
    # No input the server is sent makes it fail unexpectedly (the one found
    # is fixed above); its database garbled by hand does: a trace's stored
    # naming time made text, which no code path expects. The exporter must
    # still get a google.rpc.Status it can decode, in its own encoding. The
    # TypeError this raises was taken for the driver refusing the request's
    # data: a 400 "a retry will not help", and the exporter dropped its spans.
    db = tmp_path / "server.db"
    server = ServerProcess(f"sqlite:///{db}", log=tmp_path / "server.log").start()
    try:
        key = make_key(f"sqlite:///{db}", "garbled")
        request = body(make_spans(agent_trace("garbled")), encoding)
        assert post(server, key, request, encoding).status_code == 200
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as admin:
            admin.execute("UPDATE otlp_traces SET named_start = 'garbled by hand'")
        failed = post(server, key, request, encoding)
    finally:
        server.stop()
    assert failed.status_code == 500, failed.content
    status = otlp_status(failed, encoding)
    assert status.code == 13  # INTERNAL
    assert "internal server error" in status.message and "log" in status.message
    assert not status.details  # (a BadRequest is for the client's own mistakes)
    log = server.log_text()
    assert "unexpected error on POST /v1/traces" in log and "TypeError" in log, log
