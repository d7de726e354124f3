"""The real lucidicai 3.7.1 client (the hosted Lucidic AI SDK's 3.x line)
against a real `lucidic server` on loopback, pointed at it by
LUCIDIC_BASE_URL as its users would.

lucidicai 3.x is the same ``lucidicai`` package as the 1.3.5 the test
environment holds, so `make install` puts it in a directory of its own
(``.venv/lucidicai3``, with --no-deps: what it imports is in the venv
already) and each client runs in a child interpreter with that directory
first on its path."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from protocol_support import SHARED_CASSETTES, count_rows, last_json
from server_support import Api, ServerProcess, make_key

from helpers import run_python

LUCIDICAI3 = Path(os.environ.get("LUCIDIC_TEST_LUCIDICAI3", Path(sys.prefix) / "lucidicai3"))

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def run_lucidicai3(code: str, server: ServerProcess, key: str, home: Path, *,
                   args: list[str] | None = None) -> dict[str, Any]:
    """Run ``code`` with lucidicai 3.7.1 set up as a self-hosting user's is:
    LUCIDIC_BASE_URL, an API key of the server, an agent id. Returns the JSON
    the child printed last."""
    if not (LUCIDICAI3 / "lucidicai" / "__init__.py").is_file():
        pytest.fail(f"lucidicai 3.7.1 is not installed at {LUCIDICAI3}: run `make install` "
                    "(or set LUCIDIC_TEST_LUCIDICAI3 to a directory holding it)")
    home.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(LUCIDICAI3), os.environ.get("PYTHONPATH")) if p)
    result = run_python(code, home=home, cwd=home, args=args, timeout=120, env={
        "PYTHONPATH": path, "LUCIDIC_BASE_URL": server.url + "/api",
        "LUCIDIC_API_KEY": key, "LUCIDIC_AGENT_ID": "agent-3x"})
    return last_json(result.stdout)  # type: ignore[no-any-return]


def _serve(start_server: Any, db_url: str, project: str) -> tuple[ServerProcess, str]:
    """A server on the store at db_url, and a key of one of its projects."""
    return start_server(db_url), make_key(db_url, project)


def _http(server: ServerProcess, key: str) -> requests.Session:
    http = requests.Session()
    http.headers["Authorization"] = f"Api-Key {key}"
    return http


NESTED = """
import json, threading
import lucidicai
from lucidicai import LucidicAI

assert lucidicai.__version__ == "3.7.1", lucidicai.__version__
client = LucidicAI()

@client.event
def lookup(city):
    client.events.create(type="generic", details=f"looked {city} up")
    return {"city": city, "forecast": "sunny"}

@client.event
def plan(city):
    return lookup(city)["forecast"]

@client.event
def book(city):
    raise ValueError(f"no rooms in {city}")

with client.sessions.create(session_name="trip", task="plan a trip",
                            tags=["travel"]) as session:
    answer = plan("Oslo")
    try:
        book("Oslo")
    except ValueError as exc:
        failed = str(exc)
    client.events.create(type="llm_generation", provider="openai", model="gpt-4o-mini",
                         messages=[{"role": "user", "content": "hi"}], output="hello",
                         input_tokens=5, output_tokens=2)
    client.evals.emit(result=True, name="booked", description="a room was found")
    client.evals.emit(result=0.25, name="quality")
    for thread in threading.enumerate():   # evals are sent from threads of their own
        if thread is not threading.current_thread():
            thread.join(10)
    read = client.sessions.get(session.session_id)
    events = client.events.list(session_id=session.session_id)
    sid = session.session_id
print(json.dumps({"session": sid, "answer": answer, "failed": failed,
                  "read": read["session_id"], "listed": events["total"]}))
"""


def test_a_3x_session_with_nested_calls_an_error_and_evals_lands_as_steps_and_events(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    server, key = _serve(start_server, db_url, "three")
    out = run_lucidicai3(NESTED, server, key, tmp_path / "c")
    assert (out["answer"], out["failed"]) == ("sunny", "no rooms in Oslo")
    assert out["read"] == out["session"] and out["listed"] == 6
    tree = Api(server.url, key).tree(out["session"])
    assert (tree["name"], tree["task"], tree["tags"], tree["agent_id"]) == (
        "trip", "plan a trip", ["travel"], "agent-3x")
    assert tree["is_finished"]
    # plan() called lookup(), which recorded a note: steps nested as the calls
    # were, each holding its own function event; book() failed.
    (plan, book) = sorted(tree["steps"], key=lambda s: s["started_at"])
    assert (plan["action"], plan["function_name"], plan["is_finished"]) == ("plan", "plan", True)
    (plan_call,) = plan["events"]
    assert plan_call["type"] == "function" and plan_call["arguments"] == {"city": "Oslo"}
    (lookup,) = plan["steps"]
    assert lookup["parent_step_id"] == plan["id"] and lookup["function_name"] == "lookup"
    lookup_call, note = sorted(lookup["events"], key=lambda e: e["type"])
    assert (lookup_call["type"], note["type"], note["description"]) == (
        "function", "generic", "looked Oslo up")
    assert json.loads(lookup_call["result"]) == {"city": "Oslo", "forecast": "sunny"}
    assert plan["started_at"] <= lookup["started_at"] <= lookup["ended_at"] <= plan["ended_at"]
    assert book["function_name"] == "book" and "no rooms in Oslo" in book["error"]
    error = next(e for e in book["events"] if e["type"] == "error")
    assert error["error"] == "no rooms in Oslo" and "ValueError" in error["result"]
    # book()'s one failure: its step and the traceback the client sends; the
    # function event folded into the step is the step's own record, not a
    # failure of its own.
    assert tree["error_count"] == 2
    (llm,) = tree["events"]
    assert (llm["type"], llm["model"], llm["input_tokens"], llm["output_tokens"]) == (
        "llm", "gpt-4o-mini", 5, 2)
    assert llm["cost"] and llm["input"] == [{"role": "user", "content": "hi"}]
    assert tree["scores"] == {"booked": True, "quality": 0.25}
    (booked,) = [s for s in tree["score_details"] if s["name"] == "booked"]
    assert (booked["comment"], booked["source"]) == ("a room was found", "lucidicai")


INSTRUMENTED_OPENAI = """
import json, sys
import vcr
import openai
from lucidicai import LucidicAI

client = LucidicAI(providers=["openai"])
replay = vcr.VCR(record_mode="none", match_on=("method", "scheme", "host", "port", "path"),
                 ignore_localhost=True)
with client.sessions.create(session_name="instrumented") as session:
    with replay.use_cassette(sys.argv[1]):
        answer = openai.OpenAI(api_key="sk-test").chat.completions.create(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "Tell me a joke about opentelemetry"}])
left = client.sessions.create(session_name="left open")  # the program never ends it
client.events.create(type="generic", details="last words")
print(json.dumps({"session": session.session_id, "left": left.session_id,
                  "answer": answer.choices[0].message.content}))
"""


def test_an_openai_call_its_instrumentation_records_lands_as_an_llm_event_and_exit_ends_sessions(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    cassette = SHARED_CASSETTES / "openai" / "chat.yaml"
    if not cassette.is_file():
        pytest.skip(f"recorded OpenAI traffic not found at {cassette}")
    server, key = _serve(start_server, db_url, "llm3")
    out = run_lucidicai3(INSTRUMENTED_OPENAI, server, key, tmp_path / "c", args=[str(cassette)])
    assert "baggage" in out["answer"]
    tree = Api(server.url, key).tree(out["session"])
    (event,) = tree["events"]
    assert (event["type"], event["provider"], event["model"]) == (
        "llm", "openai", "gpt-3.5-turbo-0125")
    assert event["input"] == [{"role": "user", "content": "Tell me a joke about opentelemetry"}]
    assert event["output"] == out["answer"]
    assert event["input_tokens"] and event["output_tokens"] and event["cost"] > 0
    assert event["duration"] is not None and event["duration"] >= 0
    assert tree["is_finished"]
    # The program exited without ending its second session: the client's exit hook did.
    left = Api(server.url, key).tree(out["left"])
    assert left["is_finished"] and left["events"][0]["description"] == "last words"


def test_children_sent_before_or_after_their_parent_nest_the_same(
        db_url: str, start_server: Any) -> None:
    """The client sends each event from its own thread: a parent's
    function_call may arrive before its children or after them."""
    server, key = _serve(start_server, db_url, "order")
    http = _http(server, key)
    base = server.url + "/api/"
    trees = []
    for order in ("children first", "parent first"):
        sid = http.post(base + "initsession", json={"session_name": order}).json()["session_id"]
        parent = {"session_id": sid, "client_event_id": f"call-{order}", "type": "function_call",
                  "occurred_at": "2026-06-01T10:00:02+00:00", "duration": 2.0,
                  "payload": {"function_name": "outer", "arguments": {"n": 1},
                              "return_value": 2}}
        child = {"session_id": sid, "client_event_id": f"note-{order}", "type": "generic",
                 "client_parent_event_id": f"call-{order}",
                 "occurred_at": "2026-06-01T10:00:01+00:00", "payload": {"details": "inside"}}
        for body in ((child, parent) if order == "children first" else (parent, child)):
            answer = http.post(base + "events", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
        tree = Api(server.url, key).tree(sid)
        assert tree["events"] == []
        (step,) = tree["steps"]
        assert (step["id"], step["action"], step["function_name"], step["is_finished"]) == (
            f"call-{order}", "outer", "outer", True)
        assert (step["started_at"], step["ended_at"]) == (1780308000.0, 1780308002.0)
        assert sorted(e["id"] for e in step["events"]) == [f"call-{order}", f"note-{order}"]
        trees.append(tree)
    # The same tree (but for the ids and names) whichever came first.
    def shape(tree: dict[str, Any]) -> Any:
        (step,) = tree["steps"]
        return [(e["type"], e["description"], e["started_at"]) for e in
                sorted(step["events"], key=lambda e: e["type"])]
    assert shape(trees[0]) == shape(trees[1])


def test_bad_3x_requests_get_a_clear_4xx_and_change_nothing(
        sqlite_url: str, start_server: Any) -> None:
    server = start_server(sqlite_url, extra_args=["--max-body-mb", "1"])
    mine, theirs = make_key(sqlite_url, "mine"), make_key(sqlite_url, "theirs")
    http, other = _http(server, mine), _http(server, theirs)
    base = server.url + "/api/"
    sid = http.post(base + "initsession", json={"session_name": "s"}).json()["session_id"]
    assert http.post(base + "events", json={"session_id": sid, "client_event_id": "e1",
                                            "type": "generic"}).status_code == 200
    elsewhere = http.post(base + "initsession", json={"session_name": "t"}).json()["session_id"]
    assert http.post(base + "events", json={"session_id": elsewhere, "client_event_id": "x1",
                                            "type": "generic"}).status_code == 200
    before = count_rows(sqlite_url)
    cases: list[tuple[requests.Session, str, str, dict[str, Any], int, str]] = [
        (http, "POST", "events", {"json": {"session_id": "no-such-session"}}, 404,
         "not found"),
        (http, "POST", "events", {"json": {"session_id": sid, "type": 5}}, 422, "type"),
        (http, "POST", "events", {"json": {"session_id": sid, "payload": "text"}}, 422,
         "payload"),
        (http, "POST", "events", {"json": {"session_id": sid, "occurred_at": "yesterday"}},
         422, "occurred_at"),
        (http, "POST", "events", {"json": {"session_id": sid, "client_event_id": "e2",
                                           "client_parent_event_id": "e2"}}, 422,
         "names itself"),
        (http, "POST", "events", {"json": {"session_id": sid, "client_event_id": "e3",
                                           "client_parent_event_id": "x1"}}, 409,
         "another session"),
        (http, "POST", "events", {"json": {"session_id": sid, "type": "llm_generation",
                                           "payload": {"usage": "lots"}}}, 422, "usage"),
        (http, "POST", "events", {"json": {"session_id": sid, "payload": {
            "details": "x" * (2 * 2**20)}}}, 413, "larger"),
        (http, "PUT", "events/no-such-event", {"json": {"tags": ["a"]}}, 404, "not found"),
        (http, "PUT", "events/e1", {"json": {"payload": "text"}}, 422, "payload"),
        (http, "PUT", "events/e1", {"json": {"colour": "red"}}, 422, "colour"),
        # A duration runs forwards: a negative one was taken (and stored as given).
        (http, "POST", "events", {"json": {"session_id": sid, "client_event_id": "e4",
                                           "duration": -1.5}}, 422,
         "duration: Input should be greater than or equal to 0"),
        (http, "PUT", "events/e1", {"json": {"duration": -0.001}}, 422,
         "duration: Input should be greater than or equal to 0"),
        (http, "GET", "events", {}, 422, "session_id"),
        (http, "GET", "sessions/no-such-session", {}, 404, "not found"),
        (http, "POST", "sdk/evals", {"json": {"session_id": sid, "result": True,
                                              "result_type": "number"}}, 422, "result_type"),
        (http, "POST", "sdk/evals", {"json": {"session_id": sid, "result": {"a": 1}}}, 422,
         "result"),
        (http, "POST", "sdk/evals", {"json": {"session_id": "no-such", "result": 1}}, 404,
         "not found"),
        # Another project's session and events are unknown to this key.
        (other, "POST", "events", {"json": {"session_id": sid}}, 404, "not found"),
        (other, "GET", "events/e1", {}, 404, "not found"),
        (other, "PUT", "events/e1", {"json": {"tags": ["a"]}}, 404, "not found"),
        (other, "GET", "sessions/" + sid, {}, 404, "not found"),
        (other, "GET", "events", {"params": {"session_id": sid}}, 404, "not found"),
        (other, "POST", "sdk/evals", {"json": {"session_id": sid, "result": 1}}, 404,
         "not found"),
    ]
    for client, method, route, kwargs, status, words in cases:
        answer = client.request(method, base + route, timeout=30, **kwargs)
        assert answer.status_code == status, (route, kwargs, answer.text[:300])
        assert words in answer.json()["detail"], (route, answer.text[:300])
    assert count_rows(sqlite_url) == before
    assert http.get(base + "events/e1").json()["event_id"] == "e1"


REFUSED = """
import json, logging
import httpx
from lucidicai import LucidicAI

said = []
class Keep(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())
logging.getLogger("Lucidic").addHandler(Keep())

client = LucidicAI()
out = {}
try:
    client.events.create(type="generic", session_id="no-such-session", details="lost?")
except httpx.HTTPStatusError as exc:
    out["unknown"] = exc.response.status_code

@client.event
def summarise():
    return "x" * (5 * 2**20)     # more than the server stores in one value

with client.sessions.create(session_name="big") as session:
    out["returned"] = len(summarise())       # the user's call is unharmed
    client.events.create(type="generic", details="after the refusal")
out["session"] = session.session_id
out["said"] = [m for m in said if "[HTTP] Error" in m]
print(json.dumps(out))
"""


@sqlite_only
def test_the_real_client_is_told_why_and_its_program_goes_on(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    server, key = _serve(start_server, db_url, "refused")
    out = run_lucidicai3(REFUSED, server, key, tmp_path / "c")
    assert out["unknown"] == 404 and out["returned"] == 5 * 2**20
    unknown, big = out["said"]
    assert "404" in unknown and "'no-such-session' was not found" in unknown
    assert "422" in big and "larger than" in big
    tree = Api(server.url, key).tree(out["session"])
    assert tree["is_finished"]
    assert [e["description"] for e in tree["events"]] == ["after the refusal"]


HOSTED_ONLY = """
import json, sys
import httpx
from lucidicai import LucidicAI
from lucidicai.core.errors import LucidicError

out = {}
client = LucidicAI()
out["flag"] = client.feature_flags.get("max_retries", default=3)
for name, call in [("datasets", lambda: client.datasets.list()),
                   ("experiment", lambda: client.experiments.create("exp")),
                   ("prompt_update", lambda: client.prompts.update(
                       prompt_name="greeting", prompt_content="hi")),
                   ("training", lambda: client.training_modules.tools(session_id="s")),
                   ("evosim", lambda: client.evosims.train(sys.argv[1]))]:
    try:
        call()
        out[name] = "returned"
    except httpx.HTTPStatusError as exc:
        out[name] = [exc.response.status_code, exc.response.json()["detail"]]
    except LucidicError as exc:
        out[name] = [type(exc).__name__, str(exc)]
production = LucidicAI(production=True)
out["production_datasets"] = production.datasets.list()
with production.sessions.create(session_name="still recorded") as session:
    production.events.create(type="generic", details="recorded")
out["session"] = session.session_id
print(json.dumps(out))
"""


@sqlite_only
def test_hosted_only_features_say_so_and_recording_goes_on(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    server, key = _serve(start_server, db_url, "hosted")
    config = tmp_path / "evosim.json"
    config.write_text('{"name": "x"}')
    out = run_lucidicai3(HOSTED_ONLY, server, key, tmp_path / "c", args=[str(config)])
    assert out["flag"] == 3  # a flag the server does not have: the default
    for name, feature in [("datasets", "datasets"), ("experiment", "creating experiments"),
                          ("prompt_update", "writing prompts"), ("training", "training modules"),
                          ("evosim", "evolutionary simulations")]:
        kind, text = out[name]
        assert f"not available on a self-hosted lucidic server: {feature}" in text, (name, text)
        assert kind == 404 or (kind, text[:9]) == ("LucidicError", "HTTP 404:"), (name, kind)
    assert out["production_datasets"] == {"num_datasets": 0, "datasets": []}
    tree = Api(server.url, key).tree(out["session"])
    assert tree["is_finished"] and tree["events"][0]["description"] == "recorded"


def test_every_hosted_only_route_answers_404_with_the_reason(sqlite_url: str,
                                                             start_server: Any) -> None:
    from lucidic.server.lucidicai3 import _HOSTED

    server = start_server(sqlite_url)
    http = _http(server, make_key(sqlite_url, "hosted"))
    before = count_rows(sqlite_url)
    for method, path, feature, _ in _HOSTED:
        url = server.url + "/api/" + path.replace("{inference_run_id}", "run-1")
        answer = http.request(method, url, json={"agent_id": "a"}, timeout=30)
        assert answer.status_code == 404, (method, path, answer.text)
        body = answer.json()
        assert body["detail"] == body["error"]  # the field some of the client's resources read
        assert f"self-hosted lucidic server: {feature} (" in body["detail"]
        assert requests.request(method, url, timeout=30).status_code == 401
    assert count_rows(sqlite_url) == before


#: Attributes other clients may store that are no JSON object; the last a
#: text that reads as one, which is still a text.
THEIR_ATTRIBUTES = (("flag", True), ("text", "just words"), ("list", [1, 2]),
                    ("object-text", '{"type": "llm_generation", "parent_event_id": "flag"}'))


@sqlite_only
def test_events_other_clients_recorded_with_attributes_not_an_object_are_read_and_refused_clearly(
        db_url: str, start_server: Any) -> None:
    """Our records API (and OTLP) keep an event's attributes as any JSON value;
    the 3.x routes keep their type and parent in attributes as an object.
    Found by fuzzing: reading such an event back was a 500."""
    server, key = _serve(start_server, db_url, "mixed")
    http = _http(server, key)
    base = server.url + "/api/"
    sid = "5e55a0d1-0000-4000-8000-000000000001"
    now = 1780308000.0
    answer = Api(server.url, key).records(
        {"kind": "session", "id": sid, "ts": now, "fields": {"name": "ours", "started_at": now}},
        *({"kind": "event", "id": event_id, "ts": now,
           "fields": {"session_id": sid, "description": event_id, "started_at": now,
                      "attributes": value}}
          for event_id, value in THEIR_ATTRIBUTES))
    assert answer.status_code == 200, answer.text
    for event_id, value in THEIR_ATTRIBUTES:
        read = http.get(base + f"events/{event_id}", timeout=30)
        assert read.status_code == 200, read.text
        body = read.json()
        assert (body["event_id"], body["type"], body["attributes"]) == (event_id, "generic", value)
        assert body["client_parent_event_id"] is None
        # Amending it would have to drop or bury what the other client wrote.
        amend = http.put(base + f"events/{event_id}", json={"tags": ["t"]}, timeout=30)
        assert amend.status_code == 409, amend.text
        assert "not a JSON object" in amend.json()["detail"]
        assert http.get(base + f"events/{event_id}").json()["attributes"] == value
    listed = http.get(base + "events", params={"session_id": sid}, timeout=30)
    assert listed.status_code == 200, listed.text
    assert sorted(e["event_id"] for e in listed.json()["events"]) == [
        "flag", "list", "object-text", "text"]
    # A 3.x event may name such an event as its parent: it becomes the step.
    child = http.post(base + "events", json={
        "session_id": sid, "client_event_id": "child", "type": "generic",
        "client_parent_event_id": "flag", "occurred_at": "2026-06-01T10:00:01+00:00",
        "payload": {"details": "inside"}}, timeout=30)
    assert child.status_code == 200, child.text
    (step,) = Api(server.url, key).tree(sid)["steps"]
    assert step["id"] == "flag" and sorted(e["id"] for e in step["events"]) == ["child", "flag"]


@sqlite_only
def test_an_amended_duration_moves_a_function_calls_start_and_its_steps(
        db_url: str, start_server: Any) -> None:
    """client.events.update(duration=...): a function_call is stamped when
    its call returns, so a new duration moves its start, not its end; and
    the step it stands for (others nest in it) moves with it."""
    server, key = _serve(start_server, db_url, "amend")
    http = _http(server, key)
    base = server.url + "/api/"
    sid = http.post(base + "initsession", json={"session_name": "amend"}).json()["session_id"]
    for body in ({"session_id": sid, "client_event_id": "call", "type": "function_call",
                  "occurred_at": "2026-06-01T10:00:02+00:00", "duration": 2.0,
                  "payload": {"function_name": "outer"}},
                 {"session_id": sid, "client_event_id": "note", "type": "generic",
                  "client_parent_event_id": "call",
                  "occurred_at": "2026-06-01T10:00:01+00:00", "payload": {"details": "in"}}):
        assert http.post(base + "events", json=body, timeout=30).status_code == 200
    amended = http.put(base + "events/call", json={"duration": 5.0, "tags": ["slow"]},
                       timeout=30)
    assert amended.status_code == 200, amended.text
    body = amended.json()
    assert (body["started_at"], body["ended_at"], body["duration"]) == (
        1780307997.0, 1780308002.0, 5.0)
    assert body["type"] == "function_call" and body["attributes"]["tags"] == ["slow"]
    (step,) = Api(server.url, key).tree(sid)["steps"]
    assert (step["id"], step["started_at"], step["ended_at"]) == (
        "call", 1780307997.0, 1780308002.0)
    # Any other event is stamped when it began: a duration moves its end.
    note = http.put(base + "events/note", json={"duration": 0.5}, timeout=30).json()
    assert (note["started_at"], note["ended_at"]) == (1780308001.0, 1780308001.5)


AMENDED = """
import json
from lucidicai import LucidicAI

client = LucidicAI()
with client.sessions.create(session_name="amended") as session:
    call = client.events.create(type="function_call", function_name="fetch",
                                arguments={"url": "a"}, return_value="draft", duration=1.0)
    note = client.events.create(type="generic", details="first words")
    answer = client.events.update(call, payload={"function_name": "fetch",
                                                 "arguments": {"url": "a"},
                                                 "return_value": "final"},
                                  tags=["checked"], metadata={"reviewer": "ann"}, duration=3.0)
    client.events.update(note, payload={"details": "second words"})
    read = client.events.get(call)
    note_read = client.events.get(note)
print(json.dumps({"session": session.session_id, "call": call, "answer": answer, "read": read,
                  "note": note_read}))
"""


def test_an_event_the_real_client_amends_reads_back_amended(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    server, key = _serve(start_server, db_url, "amended")
    out = run_lucidicai3(AMENDED, server, key, tmp_path / "c")
    answer, read = out["answer"], out["read"]
    assert answer == read  # the update answers the event as it now reads
    assert (read["event_id"], read["type"], read["event_type"]) == (
        out["call"], "function_call", "function")
    assert (read["function_name"], read["arguments"], read["result"]) == (
        "fetch", {"url": "a"}, "final")
    assert read["duration"] == 3.0 and read["ended_at"] - read["started_at"] == 3.0
    assert (read["attributes"]["tags"], read["attributes"]["metadata"]) == (
        ["checked"], {"reviewer": "ann"})
    assert (out["note"]["type"], out["note"]["description"]) == ("generic", "second words")
    tree = Api(server.url, key).tree(out["session"])
    assert sorted(e["description"] for e in tree["events"]) == ["fetch", "second words"]


LISTED = """
import json, sys
from lucidicai import LucidicAI

client = LucidicAI()
made = []
for n in range(7):
    with client.sessions.create(session_name=f"run {n}") as session:
        made.append(session.session_id)
other = LucidicAI(agent_id="agent-other")
with other.sessions.create(session_name="someone else's") as session:
    made.append(session.session_id)
pages, offset = [], 0
while True:
    page = client.sessions.list(agent_id="agent-3x", limit=3, offset=offset)
    pages.append(page)
    offset += len(page["sessions"])
    if not page["sessions"] or offset >= page["total"]:
        break
everything = client.sessions.list()
print(json.dumps({"made": made, "pages": pages, "everything": everything}))
"""


def test_the_real_client_pages_through_its_sessions(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    server, key = _serve(start_server, db_url, "listed")
    out = run_lucidicai3(LISTED, server, key, tmp_path / "c")
    mine, theirs = out["made"][:7], out["made"][7]
    pages = out["pages"]
    assert [len(p["sessions"]) for p in pages] == [3, 3, 1]
    assert [(p["total"], p["limit"], p["offset"]) for p in pages] == [
        (7, 3, 0), (7, 3, 3), (7, 3, 6)]
    listed = [s["session_id"] for p in pages for s in p["sessions"]]
    assert listed == mine[::-1]  # newest first, each once
    assert all(s["id"] == s["session_id"] and s["agent_id"] == "agent-3x"
               for p in pages for s in p["sessions"])
    everything = out["everything"]
    assert (everything["total"], everything["limit"], everything["offset"]) == (8, 100, 0)
    assert [s["session_id"] for s in everything["sessions"]] == [theirs, *mine[::-1]]


LISTED_LARGE = """
import json, sys
import httpx
from lucidicai import LucidicAI

client = LucidicAI()
everything = client.sessions.list(limit=1000)
window = client.sessions.list(limit=550, offset=100)
try:
    client.sessions.list(limit=10_001)
    refused = None
except httpx.HTTPStatusError as exc:
    refused = [exc.response.status_code, exc.response.json()["detail"]]
print(json.dumps({"everything": everything, "window": window, "refused": refused}))
"""


def test_the_real_client_lists_as_many_sessions_as_it_asks_for_past_one_page(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    # sessions.list(limit=...) sends the caller's limit as it is (default
    # 100); anything over 500 (the read API's largest page) was refused with
    # a 422, and the client raised. Up to 10,000 are answered now, read a
    # page at a time; more is refused saying so.
    server, key = _serve(start_server, db_url, "many")
    made = [f"s-{n:03d}" for n in range(700)]
    answer = Api(server.url, key).records(*(
        {"kind": "session", "id": sid, "ts": 1.0,
         "fields": {"name": sid, "agent_id": "agent-3x", "started_at": 1000.0 + n}}
        for n, sid in enumerate(made)))
    assert answer.status_code == 200, answer.text
    out = run_lucidicai3(LISTED_LARGE, server, key, tmp_path / "c")
    newest_first = made[::-1]
    everything, window = out["everything"], out["window"]
    assert [s["session_id"] for s in everything["sessions"]] == newest_first
    assert (everything["total"], everything["limit"], everything["offset"]) == (700, 1000, 0)
    assert [s["session_id"] for s in window["sessions"]] == newest_first[100:650]
    assert (window["total"], window["limit"], window["offset"]) == (700, 550, 100)
    assert all(s["step_count"] == 0 for s in everything["sessions"])  # with their totals
    status, detail = out["refused"]
    assert status == 422 and "limit" in detail and "10000" in detail


EVALS = """
import json, threading
from lucidicai import LucidicAI

client = LucidicAI()
with client.sessions.create(session_name="judged") as session:
    client.evals.emit(result=True)
    client.evals.emit(result=0.75)
    client.evals.emit(result="mostly right")
    client.evals.emit(result="excellent", name="tone", description="polite throughout")
    client.evals.emit(result="7", result_type="string", name="grade")
    for thread in threading.enumerate():   # evals are sent from threads of their own
        if thread is not threading.current_thread():
            thread.join(10)
print(json.dumps({"session": session.session_id}))
"""


def test_unnamed_and_label_evals_of_the_real_client_are_stored_as_scores(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    server, key = _serve(start_server, db_url, "evals")
    out = run_lucidicai3(EVALS, server, key, tmp_path / "c")
    tree = Api(server.url, key).tree(out["session"])
    assert tree["scores"] == {"boolean eval": True, "number eval": 0.75,
                              "string eval": "mostly right", "tone": "excellent", "grade": "7"}
    details = {s["name"]: s for s in tree["score_details"]}
    assert {name: s["kind"] for name, s in details.items()} == {
        "boolean eval": "bool", "number eval": "number", "string eval": "label",
        "tone": "label", "grade": "label"}
    assert (details["tone"]["comment"], details["tone"]["source"]) == (
        "polite throughout", "lucidicai")
    assert details["grade"]["value"] == "7"  # a label that reads as a number stays a label


def test_listing_sessions_by_an_id_no_database_can_hold_finds_none_on_either_database(
        db_url: str, start_server: Any) -> None:
    """A NUL character in agent_id or experiment_id: PostgreSQL refused the
    query (a 422 saying the database refused it) where SQLite found no
    session; no session has such an id, so the page is empty on both, as
    our own list route answers."""
    server, key = _serve(start_server, db_url, "nul")
    http = _http(server, key)
    assert http.post(server.url + "/api/initsession", json={"session_name": "s"},
                     timeout=30).status_code == 200
    for name in ("agent_id", "experiment_id"):
        answer = http.get(server.url + "/api/sessions", params={name: "a\x00b"}, timeout=30)
        assert answer.status_code == 200, (name, answer.text)
        assert (answer.json()["sessions"], answer.json()["total"]) == ([], 0)


def test_a_long_session_list_counts_its_total_once_not_once_per_page(db_url: str) -> None:
    # A list of up to 10,000 is read 500 (the read API's largest page) at a
    # time; each page counted every matching session again, a full scan of
    # the project's sessions 20 times over for one request.
    from lucidic.server import lucidicai3
    from lucidic.server.models import Identity
    from lucidic.store import Store

    store = Store(db_url)
    try:
        store.write_for_project(
            [("session", f"s-{n:04d}", 1.0, {"name": "s", "agent_id": "agent-3x",
                                            "started_at": 1000.0 + n}) for n in range(1200)],
            "counted")
        statements: list[str] = []
        query = store.query

        def recording(sql: str, params: Any = ()) -> list[dict[str, Any]]:
            statements.append(sql)
            return query(sql, params)

        store.query = recording  # type: ignore[method-assign]
        answer = json.loads(lucidicai3.list_sessions(
            Identity(project="counted", key_id="k"), store, agent_id="agent-3x",
            limit=1100, offset=50).body)
    finally:
        store.close()
    assert answer["total"] == 1200 and len(answer["sessions"]) == 1100
    assert answer["sessions"][0]["session_id"] == "s-1149"
    assert sum("COUNT(*)" in sql for sql in statements) == 1, statements
