"""Langfuse's own Python SDK (langfuse 5.0.4, OpenTelemetry-based) against a
real `lucidic server` on loopback, pointed at it as its users would be:
LANGFUSE_HOST, a public key (any text) and the secret key a Lucidic API key.
Each client runs in a child interpreter, as a user's program does; what the
server stored is read back through its API.

The mapping of ``langfuse.*`` attributes that the client never sends alone
(level ERROR without an error status, usage details in each shape) is
checked with spans the OpenTelemetry SDK makes, sent to the same route."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from protocol_support import SHARED_CASSETTES, count_rows, last_json
from server_support import Api, ServerProcess, make_key

from helpers import run_python
from lucidic.pricing import cost_of

if sys.version_info < (3, 11):
    pytest.skip("langfuse 5.0.4 needs Python 3.11 or newer", allow_module_level=True)

LANGFUSE_VERSION = "5.0.4"
TRACES = "/api/public/otel/v1/traces"


def run_langfuse(code: str, server: ServerProcess, key: str, home: Path, *,
                 args: list[str] | None = None, check: bool = True,
                 env: dict[str, str] | None = None) -> Any:
    """Run ``code`` with the real langfuse client set up as a self-hosting
    user's is. Returns the child's result (its last JSON line)."""
    home.mkdir(parents=True, exist_ok=True)
    result = run_python(code, home=home, cwd=home, args=args, timeout=120, check=check, env={
        "LANGFUSE_HOST": server.url, "LANGFUSE_PUBLIC_KEY": "pk-lf-anything",
        "LANGFUSE_SECRET_KEY": key, **(env or {})})
    return result if not check else last_json(result.stdout)


NESTED = """
import json
import langfuse
from langfuse import Langfuse, observe, propagate_attributes

assert langfuse.__version__ == "VERSION", langfuse.__version__
lf = Langfuse()
assert lf.auth_check()

@observe(as_type="tool")
def search(query):
    return {"hits": 3, "query": query}

@observe()
def fail():
    raise ValueError("no rooms left")

@observe()
def plan(city):
    search(city)
    with lf.start_as_current_observation(
            as_type="generation", name="plan the trip", model="gpt-4o-mini",
            input=[{"role": "system", "content": "be brief"}, {"role": "user", "content": city}],
            model_parameters={"temperature": 0.2}) as generation:
        generation.update(
            output={"role": "assistant", "content": "go in May"},
            usage_details={"input": 80, "input_cached_tokens": 20, "output": 12,
                           "output_reasoning_tokens": 5},
            cost_details={"input": 0.0001, "output": 0.0002})
    lf.create_event(name="budget checked", input={"budget": 900}, output="within budget")
    try:
        fail()
    except ValueError:
        pass
    summary = lf.start_observation(as_type="generation", name="summarise", model="gpt-4o-mini",
                                   input="summarise the plan")
    summary.update(output="May in Oslo", usage_details={"input": 10, "output": 4})
    summary.end()
    return "go in May"

with propagate_attributes(session_id="trip-oslo", user_id="ada", tags=["travel", "beta"],
                          metadata={"tier": "gold", "attempt": 2}, trace_name="plan a trip"):
    plan("Oslo")
lf.flush()
print(json.dumps({"ok": True}))
""".replace("VERSION", LANGFUSE_VERSION)


def steps_by_action(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for step in node.get("steps", []):
        found[step["action"]] = step
        found.update(steps_by_action(step))
    return found


def test_observe_decorated_functions_generations_a_tool_an_event_and_an_error_land_as_one_session(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "travel")
    run_langfuse(NESTED, server, key, tmp_path / "agent",
                 env={"LANGFUSE_TRACING_ENVIRONMENT": "staging", "LANGFUSE_RELEASE": "v1.2"})
    tree = Api(server.url, key).tree("trip-oslo")  # Langfuse's session id is the session
    # The trace's name, tags, user and metadata are the session's.
    assert tree["project"] == "travel" and tree["name"] == "plan a trip"
    assert tree["tags"] == ["travel", "beta"]
    assert tree["attributes"] == {"user.id": "ada",
                                  "langfuse.trace.metadata": {"tier": "gold", "attempt": 2},
                                  "langfuse.environment": "staging", "langfuse.release": "v1.2"}
    (plan,) = tree["steps"]
    assert plan["action"] == "plan" and plan["is_finished"] and plan["error"] is None
    assert plan["attributes"]["langfuse.observation.input"] == {"args": ["Oslo"], "kwargs": {}}
    assert plan["attributes"]["langfuse.observation.output"] == "go in May"
    (fail,) = plan["steps"]  # a span is a step, nested as the calls were
    assert (fail["action"], fail["error"]) == ("fail", "no rooms left")
    events = {e["description"]: e for e in plan["events"]}
    assert set(events) == {"search", "plan the trip", "budget checked", "summarise"}
    tool = events["search"]
    assert (tool["type"], tool["function_name"]) == ("tool", "search")
    assert tool["arguments"] == {"args": ["Oslo"], "kwargs": {}}
    assert json.loads(tool["result"]) == {"hits": 3, "query": "Oslo"}
    llm = events["plan the trip"]
    assert (llm["type"], llm["model"]) == ("llm", "gpt-4o-mini")
    assert llm["input"] == [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": "Oslo"}]
    assert llm["output"] == {"role": "assistant", "content": "go in May"}
    # Langfuse's "input" leaves the cached tokens out; ours include them.
    assert (llm["input_tokens"], llm["cached_tokens"], llm["output_tokens"],
            llm["reasoning_tokens"]) == (100, 20, 17, 5)
    assert llm["cost"] == pytest.approx(0.0003)  # the client's cost details, not the table's
    assert llm["attributes"]["langfuse.observation.model.parameters"] == {"temperature": 0.2}
    assert llm["duration"] is not None and llm["duration"] >= 0
    summary = events["summarise"]  # start_observation(as_type="generation"), ended by hand
    assert (summary["input"], summary["output"]) == ("summarise the plan", "May in Oslo")
    assert (summary["input_tokens"], summary["output_tokens"]) == (10, 4)
    assert summary["cost"] == pytest.approx(cost_of(None, "gpt-4o-mini", 10, 4))  # the table's
    event = events["budget checked"]
    assert (event["type"], event["arguments"], event["result"]) == (
        "generic", {"budget": 900}, "within budget")
    assert tree["total_cost"] == pytest.approx(0.0003 + summary["cost"])
    assert tree["error_count"] == 1


OPENAI = """
import asyncio, json, sys
import vcr
from langfuse import get_client, propagate_attributes
from langfuse.openai import openai

cassette, session, streamed = sys.argv[1], sys.argv[2], sys.argv[3] == "stream"
replay = vcr.VCR(record_mode="none", match_on=("method", "scheme", "host", "port", "path"),
                 ignore_localhost=True)
messages = [{"role": "user", "content": "Tell me a joke about opentelemetry"}]

async def stream():
    chunks = await openai.AsyncOpenAI(api_key="sk-test").chat.completions.create(
        model="gpt-3.5-turbo", messages=messages, stream=True)
    return "".join([c.choices[0].delta.content async for c in chunks
                    if c.choices and c.choices[0].delta.content])

with replay.use_cassette(cassette), propagate_attributes(session_id=session):
    if streamed:
        answer = asyncio.run(stream())
    else:
        answer = openai.OpenAI(api_key="sk-test").chat.completions.create(
            model="gpt-3.5-turbo", messages=messages).choices[0].message.content
get_client().flush()
print(json.dumps({"answer": answer}))
"""


@pytest.mark.parametrize("cassette", ["chat.yaml", "chat_async_streaming.yaml"])
def test_langfuses_openai_integration_replaying_a_recorded_call_is_an_llm_event(
        cassette: str, db_url: str, start_server: Any, tmp_path: Path) -> None:
    recorded = SHARED_CASSETTES / "openai" / cassette
    if not recorded.is_file():
        pytest.skip(f"recorded OpenAI traffic not found at {recorded}")
    streamed = "streaming" in cassette
    server = start_server(db_url)
    key = make_key(db_url, "jokes")
    result = run_langfuse(OPENAI, server, key, tmp_path / "agent",
                          args=[str(recorded), "joke-session", "stream" if streamed else "once"])
    tree = Api(server.url, key).tree("joke-session")
    # A trace of one generation: an event of the session, which its root names.
    assert tree["steps"] == [] and tree["name"] == "OpenAI-generation"
    (llm,) = tree["events"]
    assert (llm["type"], llm["description"], llm["model"]) == (
        "llm", "OpenAI-generation", "gpt-3.5-turbo-0125")
    assert llm["input"] == [{"role": "user", "content": "Tell me a joke about opentelemetry"}]
    assert llm["attributes"]["langfuse.observation.model.parameters"]["temperature"] == 1
    if streamed:
        # No usage in the stream; the first token's time is the client's.
        assert llm["output"] == result["answer"]
        assert llm["input_tokens"] is None and llm["cost"] is None
        assert 0 < llm["time_to_first_token"] <= llm["duration"]
        return
    assert llm["output"] == {"role": "assistant", "content": result["answer"]}
    # OpenAI's own usage object, as the integration passes it on.
    assert (llm["input_tokens"], llm["output_tokens"]) == (15, 19)
    assert llm["cost"] == pytest.approx(cost_of("openai", "gpt-3.5-turbo-0125", 15, 19))
    assert tree["total_cost"] == pytest.approx(llm["cost"])


SCORES = """
import json
from langfuse import Langfuse, observe, propagate_attributes

lf = Langfuse()

@observe()
def answer(question):
    # Scored while the trace is open: the scores can reach the server before its spans.
    with lf.start_as_current_observation(as_type="generation", name="reply",
                                         model="gpt-4o-mini") as generation:
        generation.update(output="42")
        generation.score(name="grounded", value=1, data_type="BOOLEAN")
    lf.score_current_trace(name="helpfulness", value=0.75, comment="mostly right")
    return "42"

with propagate_attributes(trace_name="life"):
    answer("meaning of life?")
lf.create_score(name="mood", value="happy", data_type="CATEGORICAL", session_id="chat-7")
lf.flush()
print(json.dumps({"ok": True}))
"""


def test_scores_land_on_the_session_of_their_trace_or_session_and_on_the_observations_event(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "scored")
    api = Api(server.url, key)
    run_langfuse(SCORES, server, key, tmp_path / "agent")
    sessions = api.get("/api/v1/sessions").json()["sessions"]
    by_name = {s["name"]: s for s in sessions}
    # The trace's own session, named by the trace's name; and chat-7.
    assert set(by_name) == {"life", None}
    tree = api.tree(by_name["life"]["id"])
    assert tree["scores"] == {"helpfulness": 0.75}
    (detail,) = [d for d in tree["score_details"] if d["name"] == "helpfulness"]
    assert (detail["comment"], detail["source"]) == ("mostly right", "langfuse")
    (step,) = tree["steps"]
    (reply,) = step["events"]
    assert reply["scores"] == {"grounded": True}
    assert api.tree("chat-7")["scores"] == {"mood": "happy"}


def test_a_score_before_its_trace_names_a_session_moves_there_with_the_trace(
        db_url: str, start_server: Any) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "scored")
    api = Api(server.url, key)
    spans = make_spans(lambda tracer: _langfuse_span(
        tracer, "root", {"langfuse.observation.type": "span", "session.id": "later-named"}))
    trace_id = format(spans[0].context.trace_id, "032x")
    answer = requests.post(server.url + "/api/public/scores", headers=basic(key), timeout=30,
                           json=[{"name": "quality", "value": 3, "traceId": trace_id},
                                 {"name": "bad", "value": 1, "traceId": "not-hex"}])
    assert answer.status_code == 207
    assert answer.json()["accepted"] == 1 and answer.json()["rejected"] == 1
    assert "not an OpenTelemetry trace id" in answer.json()["errors"][0]["message"]
    before = api.get("/api/v1/sessions").json()["sessions"]
    assert len(before) == 1 and before[0]["id"] != "later-named"
    assert post(server, key, spans).status_code == 200
    assert api.tree("later-named")["scores"] == {"quality": 3.0}
    # The trace's own session, which held the score until then, is gone.
    assert [s["id"] for s in api.get("/api/v1/sessions").json()["sessions"]] == ["later-named"]


def test_scores_that_cannot_be_taken_are_refused_alone_saying_why(
        db_url: str, start_server: Any) -> None:
    server = start_server(db_url)
    key, theirs = make_key(db_url, "mine"), make_key(db_url, "theirs")
    url = server.url + "/api/public/scores"
    assert requests.post(url, headers=basic(theirs), timeout=30, json=[
        {"name": "x", "value": 1, "sessionId": "their-session"}]).status_code == 202
    before = count_rows(db_url)
    refused = [({"name": "a", "value": 2, "dataType": "BOOLEAN", "sessionId": "s"},
                "BOOLEAN score's value is 1 or 0"),
               ({"name": "b", "value": "high", "dataType": "NUMERIC", "sessionId": "s"},
                "NUMERIC score's value is a number"),
               ({"name": "c", "value": 1}, "names a traceId or a sessionId"),
               ({"name": "", "value": 1, "sessionId": "s"}, "non-empty string"),
               ({"name": "d", "value": 1, "sessionId": "their-session"}, "another project"),
               ({"name": "e", "value": 1, "traceId": "ab" * 16, "observationId": "xyz"},
                "not an OpenTelemetry span id"),
               ("a score", "is a JSON object")]
    answer = requests.post(url, headers=basic(key), json=[item for item, _ in refused],
                           timeout=30)
    assert answer.status_code == 207, answer.text
    said = answer.json()
    assert (said["accepted"], said["rejected"]) == (0, len(refused))
    for (_, reason), error in zip(refused, said["errors"], strict=True):
        assert reason in error["message"], (reason, error)
    assert count_rows(db_url) == before  # nothing of the refused written
    assert Api(server.url, key).get("/api/v1/sessions/s").status_code == 404
    assert Api(server.url, theirs).tree("their-session")["scores"] == {"x": 1.0}
    assert requests.post(url, headers=basic(key), data=b"{", timeout=30).status_code == 400
    nan = requests.post(url, headers=basic(key), data=b'[{"name": "n", "value": NaN, '
                        b'"sessionId": "s"}]', timeout=30)
    assert nan.status_code == 207 and "finite" in nan.json()["errors"][0]["message"]
    assert requests.post(url, json=[], timeout=30).status_code == 401


PROMPT = """
import json
from langfuse import Langfuse

lf = Langfuse()
prompt = lf.get_prompt("greeting")
staging = lf.get_prompt("greeting", label="staging", cache_ttl_seconds=0)
first = lf.get_prompt("greeting", version=1, cache_ttl_seconds=0)
try:
    lf.get_prompt("missing", cache_ttl_seconds=0)
    missing = None
except Exception as exc:
    missing = str(exc)
print(json.dumps({"production": prompt.compile(name="Ada"), "version": prompt.version,
                  "staging": staging.compile(name="Ada"), "first": first.prompt,
                  "missing": missing}))
"""


def test_get_prompt_reads_the_prompt_store(sqlite_url: str, start_server: Any,
                                           tmp_path: Path) -> None:
    from lucidic import prompts
    from lucidic.store import Store

    store = Store(sqlite_url)
    try:
        prompts.set_prompt(store, "greet", "greeting", "Hello {{name}}!", labels=["production"])
        prompts.set_prompt(store, "greet", "greeting", "Hi {{name}}.", labels=["staging"])
    finally:
        store.close()
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "greet")
    result = run_langfuse(PROMPT, server, key, tmp_path / "agent")
    assert result["production"] == "Hello Ada!" and result["version"] == 1
    assert result["staging"] == "Hi Ada." and result["first"] == "Hello {{name}}!"
    assert "prompt 'missing' has no label 'production'" in result["missing"]


REFUSED = """
import json, logging
from langfuse import Langfuse, observe

logging.basicConfig(level=logging.ERROR)
lf = Langfuse()
try:
    lf.auth_check()
    auth = "passed"
except Exception as exc:
    auth = type(exc).__name__

@observe()
def work():
    return 1

work()
lf.flush()
print(json.dumps({"auth": auth}))
"""


def test_a_wrong_secret_key_is_refused_and_nothing_is_stored(
        sqlite_url: str, start_server: Any, tmp_path: Path) -> None:
    server = start_server(sqlite_url)
    make_key(sqlite_url, "real")
    before = count_rows(sqlite_url)
    result = run_langfuse(REFUSED, server, "lk_not-a-key", tmp_path / "agent", check=False)
    assert result.returncode == 0, result.stderr  # the program itself carries on
    assert last_json(result.stdout) == {"auth": "UnauthorizedError"}
    assert "401" in result.stderr  # the exporter says why it could not deliver
    assert count_rows(sqlite_url) == before
    answer = requests.post(server.url + TRACES, data=b"", timeout=10,
                           headers={"Content-Type": "application/x-protobuf",
                                    "Authorization": "Basic " + base64.b64encode(
                                        b"pk-lf-1:lk_wrong").decode()})
    assert answer.status_code == 401
    from google.rpc.status_pb2 import Status

    assert "LANGFUSE_SECRET_KEY" in Status.FromString(answer.content).message
    bare = requests.post(server.url + TRACES, data=b"", timeout=10,
                         headers={"Content-Type": "application/x-protobuf"})
    assert bare.status_code == 401
    assert "LANGFUSE_SECRET_KEY" in Status.FromString(bare.content).message


PLATFORM = """
import json
from langfuse import Langfuse

lf = Langfuse()
try:
    lf.get_dataset("capitals")
    said = None
except Exception as exc:
    said = exc.body
print(json.dumps(said))
"""


def test_the_langfuse_platforms_own_features_answer_404_saying_what_to_use_instead(
        sqlite_url: str, start_server: Any, tmp_path: Path) -> None:
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "p")
    body = run_langfuse(PLATFORM, server, key, tmp_path / "agent")
    assert body["status"] == 404
    assert "datasets" in body["message"] and "run_experiment" in body["message"]
    for method, path, feature in (("POST", "/api/public/media", "LANGFUSE_MEDIA_UPLOAD_ENABLED"),
                                  ("GET", "/api/public/traces/abc", "sessions show"),
                                  ("POST", "/api/public/v2/prompts", "lucidic prompts set"),
                                  ("POST", "/api/public/ingestion", "v3 or newer"),
                                  ("GET", "/api/public/v3/scores", "reading scores")):
        answer = requests.request(method, server.url + path, headers=basic(key), timeout=10)
        assert answer.status_code == 404, (path, answer.text)
        assert feature in answer.json()["message"], (path, answer.json())
    assert requests.get(server.url + "/api/public/media/x", timeout=10).status_code == 401
    assert requests.get(server.url + "/api/public/health", timeout=10).json()["status"] == "OK"


MEDIA = """
import base64, json, struct, sys, zlib
from langfuse import Langfuse, observe, propagate_attributes

def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

pixel = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
         + chunk(b"IDAT", zlib.compress(b"\\x00\\xff\\x00\\x00")) + chunk(b"IEND", b""))
image = "data:image/png;base64," + base64.b64encode(pixel).decode()
lf = Langfuse()

@observe()
def look(picture):
    return "a red pixel"

with propagate_attributes(session_id=sys.argv[1]):
    look(image)
lf.flush()
print(json.dumps({"image": image}))
"""


@pytest.mark.parametrize("uploads", ["true", "false"])
def test_media_uploads_are_refused_saying_how_to_keep_images_inline(
        uploads: str, sqlite_url: str, start_server: Any, tmp_path: Path) -> None:
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "media")
    result = run_langfuse(MEDIA, server, key, tmp_path / "agent", args=["looked"], check=False,
                          env={"LANGFUSE_MEDIA_UPLOAD_ENABLED": uploads})
    assert result.returncode == 0, result.stderr
    image = last_json(result.stdout)["image"]
    (step,) = Api(server.url, key).tree("looked")["steps"]
    given = step["attributes"]["langfuse.observation.input"]["args"][0]
    if uploads == "true":
        # The client sends a reference in the image's place and uploads it
        # apart; the upload is refused, saying what to do instead.
        assert given.startswith("@@@langfuseMedia:type=image/png")
        assert "Media upload error" in result.stderr
        assert "LANGFUSE_MEDIA_UPLOAD_ENABLED=false" in result.stderr
    else:
        assert given == image  # kept inline, as sent
        assert "Media upload error" not in result.stderr


# -- the attributes the client does not send alone ------------------------------------------

def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"pk-lf-x:{key}".encode()).decode()}


def make_spans(build: Callable[[Tracer], None]) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "lf-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    build(provider.get_tracer("langfuse-sdk", LANGFUSE_VERSION))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def _langfuse_span(tracer: Tracer, name: str, attributes: dict[str, Any],
                   start: int | None = None) -> None:
    with tracer.start_as_current_span(name, start_time=start) as span:
        for key, value in attributes.items():
            span.set_attribute(key, value)


def post(server: ServerProcess, key: str, spans: list[ReadableSpan]) -> requests.Response:
    return requests.post(server.url + TRACES, data=encode_spans(spans).SerializeToString(),
                         headers={"Content-Type": "application/x-protobuf", **basic(key)},
                         timeout=30)


def generations(tracer: Tracer) -> None:
    with tracer.start_as_current_span("agent run") as root:
        root.set_attribute("langfuse.observation.type", "agent")
        root.set_attribute("session.id", "shapes")
        for name, attributes in {
                # What Langfuse's OpenAI integration passes on: OpenAI's usage object.
                "openai chat": {"langfuse.observation.usage_details": json.dumps({
                    "prompt_tokens": 50, "completion_tokens": 30, "total_tokens": 80,
                    "prompt_tokens_details": {"cached_tokens": 10, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 20}})},
                # The Responses API's.
                "openai responses": {"langfuse.observation.usage_details": json.dumps({
                    "input_tokens": 40, "output_tokens": 9, "total_tokens": 49,
                    "input_tokens_details": {"cached_tokens": 8},
                    "output_tokens_details": {"reasoning_tokens": 3}})},
                # Anthropic's names, as Langfuse's LangChain handler passes them on.
                "anthropic": {"langfuse.observation.usage_details": json.dumps({
                    "input": 7, "output": 5, "cache_read_input_tokens": 100,
                    "cache_creation_input_tokens": 20}),
                    "langfuse.observation.cost_details": json.dumps({"total": 0.01,
                                                                     "input": 0.004}),
                    "langfuse.observation.level": "ERROR",
                    "langfuse.observation.status_message": "overloaded"},
                # Anthropic's own usage object (its input_tokens leave the cache
                # out, as Langfuse's input does), as an integration passes it on.
                "anthropic raw": {"langfuse.observation.usage_details": json.dumps({
                    "input_tokens": 7, "output_tokens": 5, "cache_read_input_tokens": 100,
                    "cache_creation_input_tokens": 20,
                    "cache_creation": {"ephemeral_5m_input_tokens": 20},
                    "service_tier": "standard"})},
                "embedding": {"langfuse.observation.type": "embedding",
                              "langfuse.observation.usage_details": json.dumps({"input": 6})},
        }.items():
            _langfuse_span(tracer, name, {"langfuse.observation.type": "generation",
                                          "langfuse.observation.model.name": "gpt-4o",
                                          **attributes})
        started = time.time_ns()
        _langfuse_span(tracer, "streamed", {
            "langfuse.observation.type": "generation",
            "langfuse.observation.completion_start_time": json.dumps(
                datetime.fromtimestamp(started / 1e9 + 0.25, timezone.utc).isoformat())},
            start=started)
        _langfuse_span(tracer, "guard", {"langfuse.observation.type": "guardrail",
                                         "langfuse.observation.level": "ERROR"})
        _langfuse_span(tracer, "note", {"langfuse.observation.type": "event",
                                        "langfuse.observation.level": "WARNING"})


def test_usage_details_in_each_shape_and_level_error_without_an_error_status(
        sqlite_url: str, start_server: Any) -> None:
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "shapes")
    assert post(server, key, make_spans(generations)).status_code == 200
    tree = Api(server.url, key).tree("shapes")
    (root,) = tree["steps"]
    assert root["action"] == "agent run"
    events = {e["description"]: e for e in root["events"]}
    tokens = {name: (e["input_tokens"], e["cached_tokens"], e["cache_write_tokens"],
                     e["output_tokens"], e["reasoning_tokens"]) for name, e in events.items()}
    assert tokens == {"openai chat": (50, 10, None, 30, 20),
                      "openai responses": (40, 8, None, 9, 3),
                      "anthropic": (127, 100, 20, 5, None),
                      "anthropic raw": (127, 100, 20, 5, None),
                      "embedding": (6, None, None, None, None),
                      "streamed": (None, None, None, None, None),
                      "note": (None, None, None, None, None)}
    assert events["streamed"]["time_to_first_token"] == pytest.approx(0.25, abs=1e-3)
    assert events["openai chat"]["cost"] == pytest.approx(cost_of(None, "gpt-4o", 50, 30, 10))
    assert events["anthropic"]["cost"] == pytest.approx(0.01)  # total before its parts
    assert events["anthropic raw"]["cost"] == pytest.approx(
        cost_of(None, "gpt-4o", 127, 5, 100, 20))  # (the price table's, of every part)
    # Level ERROR is an error whether or not the span's status says so.
    assert events["anthropic"]["error"] == "overloaded"
    (guard,) = root["steps"]
    assert (guard["action"], guard["error"]) == ("guard", "error")
    assert (events["note"]["type"], events["note"]["error"]) == ("generic", None)
    assert events["embedding"]["type"] == "llm"


def _traced(session_id: str | None, started: int) -> Callable[[Tracer], None]:
    def build(tracer: Tracer) -> None:
        attributes = {"langfuse.observation.type": "agent", "langfuse.trace.tags": ["t"],
                      "user.id": "ada"}
        if session_id:
            attributes["session.id"] = session_id
        with tracer.start_as_current_span("plan", start_time=started) as root:
            for key, value in attributes.items():
                root.set_attribute(key, value)
            _langfuse_span(tracer, "think", {"langfuse.observation.type": "span"},
                           start=started + 10**8)
    return build


def test_a_session_a_score_made_before_the_spans_gets_what_the_spans_would_have_given_it(
        db_url: str, start_server: Any) -> None:
    # A score sent before its trace's spans (by trace or by session id) made
    # a bare session; the spans that came then left it without an agent.
    server = start_server(db_url)
    key = make_key(db_url, "scored")
    api = Api(server.url, key)
    started = 1_767_000_000 * 10**9
    control_named = make_spans(_traced("spans-first", started))
    control_own = make_spans(_traced(None, started))
    scored_named = make_spans(_traced("score-first", started))
    scored_own = make_spans(_traced(None, started))
    trace_id = format(scored_own[0].context.trace_id, "032x")
    answer = requests.post(server.url + "/api/public/scores", headers=basic(key), timeout=30,
                           json=[{"name": "quality", "value": 3, "traceId": trace_id},
                                 {"name": "quality", "value": 2, "sessionId": "score-first"}])
    assert answer.status_code == 202, answer.text
    for spans in (control_named, control_own, scored_named, scored_own):
        assert post(server, key, spans).status_code == 200
    listed = api.get("/api/v1/sessions").json()["sessions"]
    assert len(listed) == 4

    def said(session: dict[str, Any]) -> dict[str, Any]:
        return {k: session[k] for k in ("agent_id", "name", "tags", "attributes",
                                        "started_at", "is_finished")}

    by_id = {s["id"]: s for s in listed}
    own = [s for s in listed if s["id"] not in ("spans-first", "score-first")]
    assert said(by_id["score-first"]) == said(by_id["spans-first"])
    assert said(own[0]) == said(own[1])
    assert by_id["score-first"]["agent_id"] == "lf-agent"
    assert {s["name"] for s in own} == {"plan"}
    assert api.tree("score-first")["scores"] == {"quality": 2.0}
    assert sorted(str(api.tree(s["id"])["scores"]) for s in own) == ["{'quality': 3.0}", "{}"]


def test_a_score_or_a_late_span_of_a_deleted_sessions_trace_is_refused_alone(
        db_url: str, start_server: Any) -> None:
    """A trace whose session was deleted (named by its spans, or the trace's
    own) takes nothing more: a score naming it is refused alone (207 with
    the reason, as one naming the deleted session id is), and a late span
    of it is refused too, instead of either making a new session."""
    server = start_server(db_url)
    key = make_key(db_url, "deleting")
    api = Api(server.url, key)
    named = make_spans(lambda tracer: _langfuse_span(
        tracer, "root", {"langfuse.observation.type": "span", "session.id": "lf-gone"}))
    def with_child(tracer: Tracer) -> None:
        with tracer.start_as_current_span("own root"):
            _langfuse_span(tracer, "child", {"langfuse.observation.type": "span"})

    own = make_spans(with_child)
    root, child = (next(s for s in own if s.name == "own root"),
                   next(s for s in own if s.name == "child"))
    assert post(server, key, [*named, root]).status_code == 200
    (own_session,) = [s["id"] for s in api.get("/api/v1/sessions").json()["sessions"]
                      if s["id"] != "lf-gone"]
    for sid in ("lf-gone", own_session):
        assert api.http.delete(server.url + f"/api/v1/sessions/{sid}",
                               params={"force": "true"}, timeout=10).status_code == 200
    before = count_rows(db_url)
    fresh = "cd" * 16
    answer = requests.post(server.url + "/api/public/scores", headers=basic(key), timeout=30,
                           json=[{"name": "q", "value": 1,
                                  "traceId": format(named[0].context.trace_id, "032x")},
                                 {"name": "q", "value": 1,
                                  "traceId": format(root.context.trace_id, "032x"),
                                  "observationId": format(root.context.span_id, "016x")},
                                 {"name": "q", "value": 1, "traceId": fresh}])
    assert answer.status_code == 207, answer.text
    said = answer.json()
    assert (said["accepted"], said["rejected"]) == (1, 2)
    assert [e["message"] for e in said["errors"]] == [
        f"score {n} was refused: session {sid!r} was deleted: records for a deleted session "
        "are refused" for n, sid in ((0, "lf-gone"), (1, own_session))]
    late = post(server, key, [child])
    assert late.status_code == 400 and f"session {own_session!r} was deleted" in late.text
    # Only the fresh trace's score made a session (its own), nothing else.
    sessions = api.get("/api/v1/sessions").json()["sessions"]
    assert len(sessions) == 1 and sessions[0]["id"] not in ("lf-gone", own_session)
    assert api.tree(sessions[0]["id"])["scores"] == {"q": 1.0}
    after = count_rows(db_url)
    assert after["sessions"] == before["sessions"] + 1
    assert (after["steps"], after["events"]) == (before["steps"], before["events"])
    assert "Traceback" not in server.log_text()
