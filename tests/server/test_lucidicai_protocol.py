"""The real lucidicai 1.3.5 client (the hosted Lucidic AI SDK) against a real
`lucidic server` on port 8000, where the client talks with LUCIDIC_DEBUG=True,
and a replay of what the newest lucidicai release sends."""

from __future__ import annotations

import base64
import gzip
import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from protocol_support import (
    SHARED_CASSETTES,
    count_rows,
    last_json,
    run_lucidicai,
    strip_volatile,
)
from server_support import Api, ServerProcess, make_key, sdk_env

from helpers import child_env, port_8000, run_python
from lucidic.pricing import cost_of

HERE = Path(__file__).resolve().parent

#: lucidicai 1.3.5 talks to port 8000 only: under `make test` (xdist's
#: loadgroup) the tests that hold it run on one worker, one after another,
#: instead of one worker waiting idle for the other's (port_8000 still guards
#: against other checkouts' runs).
pytestmark = pytest.mark.xdist_group("port-8000")


@pytest.fixture
def lai_server(db_url: str, start_server: Any) -> Iterator[ServerProcess]:
    with port_8000():
        server = start_server(db_url, 8000)
        yield server
        server.stop()


#: For the tests that need not run on PostgreSQL as well.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _is_uuid4(value: str) -> bool:
    try:
        return uuid.UUID(value).version == 4
    except ValueError:
        return False


def _jpeg(color: str = "red", size: tuple[int, int] = (8, 6)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


FULL_SESSION = """
import json
import lucidicai as lai

sid = lai.init(session_name="Trip planner", task="plan a trip", tags=["travel", "demo"])
step = lai.create_step(state="Planning", action="Search flights", goal="Cheapest flight")
lai.update_step(eval_score=0.5, eval_description="halfway")
event = lai.create_event(description="searched", result="3 flights",
                         function_name="search_flights", arguments={"to": "Oslo"})
lai.update_event(event_id=event, result="4 flights", cost_added=0.25)
lai.end_event(event_id=event)
loose = lai.create_event(description="note on the side")
lai.end_step(eval_score=1.0)
lai.update_session(task="plan a trip to Oslo")
lai.end_session(is_successful=True, is_successful_reason="booked",
                session_eval=0.9, session_eval_reason="good")
print(json.dumps({"session": sid, "step": step, "event": event, "loose": loose}))
"""


def test_lucidicai_135_records_sessions_steps_and_events_under_unguessable_ids(
        lai_server: ServerProcess, db_url: str, tmp_path: Path) -> None:
    key = make_key(db_url, "travel")
    ids = last_json(run_lucidicai(FULL_SESSION, key=key, home=tmp_path / "client").stdout)
    assert all(_is_uuid4(value) for value in ids.values()), ids

    tree = Api(lai_server.url, key).tree(ids["session"])
    assert (tree["project"], tree["name"], tree["agent_id"]) == ("travel", "Trip planner",
                                                                 "agent-1")
    assert tree["task"] == "plan a trip to Oslo" and tree["tags"] == ["travel", "demo"]
    assert tree["is_finished"] and tree["is_successful"]
    assert (tree["is_successful_reason"], tree["session_eval"],
            tree["session_eval_reason"]) == ("booked", 0.9, "good")
    (step,) = tree["steps"]
    assert step["id"] == ids["step"] and step["is_finished"] and step["ended_at"]
    assert (step["state"], step["action"], step["goal"]) == ("Planning", "Search flights",
                                                             "Cheapest flight")
    assert (step["eval_score"], step["eval_description"]) == (1.0, "halfway")
    by_id = {e["id"]: e for e in step["events"]}
    event = by_id[ids["event"]]
    assert (event["type"], event["description"], event["result"]) == (
        "function", "searched", "4 flights")
    assert event["function_name"] == "search_flights" and event["arguments"] == {"to": "Oslo"}
    assert event["cost"] == 0.25 and event["is_finished"]
    assert by_id[ids["loose"]]["description"] == "note on the side"
    assert tree["total_cost"] == 0.25 and tree["event_count"] == 2


BASIC_USAGE_SEED = """
import lucidicai as lai

# Continue a previous session
session_id = "existing-session-123"
lai.continue_session(session_id=session_id)

# Add more steps and events to the session
lai.create_step(
    state="Continuing workflow",
    action="Process additional data"
)
"""

CREATE_EXISTING_WITH_OUR_SDK = """
import lucidic as lai
lai.init(session_name="Existing session", session_id="existing-session-123")
lai.create_step(state="Started elsewhere", action="Prepare data")
lai.end_step()
lai.detach()
"""

ERROR_HANDLING_SEED = """
import lucidicai as lai
from lucidicai.errors import InvalidOperationError, APIKeyVerificationError

try:
    lai.continue_session(session_id="invalid-session")
except APIKeyVerificationError:
    print("Please check your API credentials")
except InvalidOperationError:
    print("Session may already be active or does not exist")
"""


@sqlite_only
def test_seed_basic_usage_and_error_handling_run_as_written_with_lucidicai(
        lai_server: ServerProcess, db_url: str, tmp_path: Path) -> None:
    key = make_key(db_url, "seed")
    # The session the example continues, made by our own SDK through the server.
    run_python(CREATE_EXISTING_WITH_OUR_SDK, home=tmp_path / "ours",
               env=sdk_env(lai_server, key))
    run_lucidicai(BASIC_USAGE_SEED, key=key, home=tmp_path / "theirs", agent_id="any")
    tree = Api(lai_server.url, key).tree("existing-session-123")
    assert [s["action"] for s in tree["steps"]] == ["Prepare data", "Process additional data"]
    assert tree["steps"][1]["state"] == "Continuing workflow"
    assert tree["is_finished"]  # lucidicai's auto_end ended it at exit

    handled = run_lucidicai(ERROR_HANDLING_SEED, key=key, home=tmp_path / "errors")
    assert handled.stdout.strip() == "Session may already be active or does not exist"
    bad_key = run_lucidicai(ERROR_HANDLING_SEED, key="lk_wrong", home=tmp_path / "errors")
    assert bad_key.stdout.strip() == "Please check your API credentials"


DISTRIBUTED_1 = """
import sys
import lucidicai as lai
auto_end = sys.argv[1] == "hand-over"
session_id = lai.init(session_name="Distributed Workflow", auto_end=not auto_end)
print(f"Started session: {session_id}")
lai.create_step(state="Splitting", action="Partition data")
lai.end_step()
if not auto_end:
    lai.end_session()
"""

DISTRIBUTED_2 = """
import sys
import lucidicai as lai
from lucidicai.errors import InvalidOperationError
try:
    lai.continue_session(session_id=sys.argv[1], providers=["openai"])
except InvalidOperationError as exc:
    print("refused:", exc)
    raise SystemExit(3)
lai.create_step(state="Processing in worker node", action="Analyze data batch")
lai.end_step()
lai.end_session(is_successful=True)
"""


@sqlite_only
def test_seed_distributed_example_hands_over_unless_process_one_ends_the_session(
        lai_server: ServerProcess, db_url: str, tmp_path: Path) -> None:
    key = make_key(db_url, "seed")
    api = Api(lai_server.url, key)

    # As the seed wrote it, process 1 ends the session; its own note forbids
    # continuing a finished session, and the error says so.
    started = run_lucidicai(DISTRIBUTED_1, key=key, home=tmp_path / "p1", args=["as-written"])
    ended = started.stdout.split("Started session: ")[1].split()[0]
    refused = run_lucidicai(DISTRIBUTED_2, key=key, home=tmp_path / "p2", args=[ended],
                            check=False)
    assert refused.returncode == 3, refused.stderr
    assert "has finished" in refused.stdout and "cannot be continued" in refused.stdout
    assert [s["action"] for s in api.tree(ended)["steps"]] == ["Partition data"]

    # Handed over (process 1 leaves it open), process 2 continues and ends it.
    started = run_lucidicai(DISTRIBUTED_1, key=key, home=tmp_path / "p1", args=["hand-over"])
    open_id = started.stdout.split("Started session: ")[1].split()[0]
    run_lucidicai(DISTRIBUTED_2, key=key, home=tmp_path / "p2", args=[open_id])
    tree = api.tree(open_id)
    assert [s["action"] for s in tree["steps"]] == ["Partition data", "Analyze data batch"]
    assert tree["is_finished"] and tree["is_successful"]


ERROR_RECOVERY_SEED = """
import lucidicai as lai
import pickle
from lucidicai.errors import InvalidOperationError

def process_part_1():
    lai.create_step(state="Reading source", action="Load first rows")
    lai.end_step()
    save_checkpoint(session_id, {"rows": 3})
    raise ConnectionError("the data source went away")

def process_part_2(data):
    lai.create_step(state="Resuming", action="Load the rest")

def save_checkpoint(session_id, data):
    with open('checkpoint.pkl', 'wb') as f:
        pickle.dump({'session_id': session_id, 'data': data}, f)

def load_checkpoint():
    with open('checkpoint.pkl', 'rb') as f:
        return pickle.load(f)

try:
    # Start new session
    session_id = lai.init(session_name="Long Running Process")
    data = process_part_1()
    save_checkpoint(session_id, data)

except Exception as e:
    # On failure, recover from checkpoint
    checkpoint = load_checkpoint()
    try:
        lai.continue_session(session_id=checkpoint['session_id'])
    except InvalidOperationError as exc:
        print("client refused:", exc)
        print(checkpoint['session_id'])
"""


@sqlite_only
def test_seed_error_recovery_with_lucidicai_is_refused_by_the_client_itself(
        lai_server: ServerProcess, db_url: str, tmp_path: Path) -> None:
    """lucidicai 1.3.5 checks locally that no session is active before it asks
    the server, so the seed's in-process recovery fails in the client; what
    part 1 recorded is kept, and the session ends at exit (auto_end)."""
    key = make_key(db_url, "seed")
    output = run_lucidicai(ERROR_RECOVERY_SEED, key=key, home=tmp_path / "p").stdout
    assert "client refused:" in output and "Session already in progress" in output
    session_id = output.strip().splitlines()[-1]
    tree = Api(lai_server.url, key).tree(session_id)
    assert [s["action"] for s in tree["steps"]] == ["Load first rows"] and tree["is_finished"]


ERRORS = """
import json
import lucidicai as lai
from lucidicai.errors import APIKeyVerificationError, InvalidOperationError

def attempt(fn):
    try:
        fn()
    except (APIKeyVerificationError, InvalidOperationError) as exc:
        return [type(exc).__name__, str(exc)]
    return None

out = {}
out["bad_key"] = attempt(lambda: lai.init(session_name="x", api_key="lk_not-a-key"))
out["unknown"] = attempt(lambda: lai.continue_session("no-such-session"))
lai.Client().clear()
lai.init(session_name="ok")
out["prompt"] = attempt(lambda: lai.get_prompt("missing", cache_ttl=0))
print(json.dumps(out))
"""


@sqlite_only
def test_lucidicai_errors_carry_the_servers_reason(lai_server: ServerProcess,
                                                   db_url: str, tmp_path: Path) -> None:
    key = make_key(db_url, "errors")
    out = last_json(run_lucidicai(ERRORS, key=key, home=tmp_path / "c").stdout)
    assert out["bad_key"][0] == "APIKeyVerificationError"
    kind, text = out["unknown"]
    assert kind == "InvalidOperationError" and "'no-such-session' was not found" in text
    kind, text = out["prompt"]
    assert kind == "InvalidOperationError" and "lucidic prompts set missing" in text


INSTRUMENTED_OPENAI = """
import json, sys
import vcr
import lucidicai as lai
import openai

sid = lai.init(session_name="instrumented", providers=["openai"])
replay = vcr.VCR(record_mode="none", match_on=("method", "scheme", "host", "port", "path"),
                 ignore_localhost=True)
with replay.use_cassette(sys.argv[1]):
    answer = openai.OpenAI(api_key="sk-test").chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "Tell me a joke about opentelemetry"}])
lai.end_session(is_successful=True)
print(json.dumps({"session": sid, "answer": answer.choices[0].message.content}))
"""


@sqlite_only
def test_an_instrumented_openai_call_replayed_from_a_recording_lands_as_an_llm_event(
        lai_server: ServerProcess, db_url: str, tmp_path: Path) -> None:
    cassette = SHARED_CASSETTES / "openai" / "chat.yaml"
    if not cassette.is_file():
        pytest.skip(f"recorded OpenAI traffic not found at {cassette}")
    key = make_key(db_url, "llm")
    out = last_json(run_lucidicai(INSTRUMENTED_OPENAI, key=key, home=tmp_path / "c",
                                  args=[str(cassette)]).stdout)
    assert "baggage" in out["answer"]
    tree = Api(lai_server.url, key).tree(out["session"])
    (event,) = tree["events"]
    assert event["type"] == "llm" and event["model"] == "gpt-3.5-turbo-0125"
    assert event["cost"] and event["cost"] > 0  # computed by lucidicai from the usage
    assert tree["is_finished"] and tree["is_successful"]


LAI_START = """
import json
import lucidicai as lai
sid = lai.init(session_name="shared", auto_end=False)
lai.create_step(state="lucidicai", action="theirs first")
lai.end_step()
print(json.dumps(sid))
"""

OURS_CONTINUE = """
import sys
import lucidic as lai
with lai.continued(sys.argv[1]):
    lai.create_step(state="lucidic", action="ours second")
    lai.end_step()
"""

LAI_CONTINUE_AND_END = """
import sys
import lucidicai as lai
lai.continue_session(sys.argv[1])
lai.create_step(state="lucidicai", action="theirs third")
lai.end_step()
lai.end_session(is_successful=True)
"""

OURS_START = """
import lucidic as lai
sid = lai.init(session_name="started by lucidic")
lai.create_step(action="ours first")
lai.end_step()
lai.detach()
print(sid)
"""


def test_one_session_continued_back_and_forth_by_lucidicai_and_our_sdk(
        lai_server: ServerProcess, db_url: str, tmp_path: Path) -> None:
    key = make_key(db_url, "shared")
    ours = sdk_env(lai_server, key)
    sid = last_json(run_lucidicai(LAI_START, key=key, home=tmp_path / "a").stdout)
    run_python(OURS_CONTINUE, home=tmp_path / "b", env=ours, args=[sid])
    run_lucidicai(LAI_CONTINUE_AND_END, key=key, home=tmp_path / "c", args=[sid])
    tree = Api(lai_server.url, key).tree(sid)
    assert [s["action"] for s in tree["steps"]] == ["theirs first", "ours second",
                                                    "theirs third"]
    assert tree["is_finished"] and tree["is_successful"]
    shown = subprocess.run([sys.executable, "-m", "lucidic", "sessions", "show", sid],
                           capture_output=True, text=True, timeout=60,
                           env=child_env(tmp_path / "cli", ours))
    assert shown.returncode == 0, shown.stderr
    for action in ("theirs first", "ours second", "theirs third"):
        assert action in shown.stdout

    # And the other way round: our SDK starts, lucidicai continues.
    started = run_python(OURS_START, home=tmp_path / "d", env=ours).stdout.strip()
    run_lucidicai(LAI_CONTINUE_AND_END, key=key, home=tmp_path / "e", args=[started])
    assert [s["action"] for s in Api(lai_server.url, key).tree(started)["steps"]] == [
        "ours first", "theirs third"]


SCREENSHOTS = """
import json, sys, base64
import lucidicai as lai
step_shot, first, second = sys.argv[1:4]
sid = lai.init(session_name="screens")
step = lai.create_step(state="looking", screenshot=step_shot)
event = lai.create_event(description="two screens", screenshots=[first, second])
lai.end_event()
lai.end_step()
lai.end_session()
print(json.dumps({"session": sid, "step": step, "event": event}))
"""


def test_screenshots_are_stored_by_the_server_and_served_with_their_step_and_event(
        lai_server: ServerProcess, db_url: str, tmp_path: Path) -> None:
    from PIL import Image

    key = make_key(db_url, "screens")
    shots = [base64.b64encode(_jpeg(color, (8 + i, 6))).decode()
             for i, color in enumerate(("red", "green", "blue"))]
    ids = last_json(run_lucidicai(SCREENSHOTS, key=key, home=tmp_path / "c",
                                  args=shots).stdout)
    api = Api(lai_server.url, key)
    tree = api.tree(ids["session"])
    (step,) = tree["steps"]
    assert step["screenshot"].startswith("/api/v1/screenshots/")
    (event,) = step["events"]
    assert len(event["screenshots"]) == 2
    sizes = []
    for path in [step["screenshot"], *event["screenshots"]]:
        image = api.get(path)
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        sizes.append(Image.open(io.BytesIO(image.content)).size)
    assert sizes == [(8, 6), (9, 6), (10, 6)]  # each where it was sent, in order
    # Another project's key cannot read them.
    other_key = make_key(db_url, "elsewhere")
    other = Api(lai_server.url, other_key)
    assert other.get(step["screenshot"]).status_code == 404
    assert requests.get(lai_server.url + step["screenshot"], timeout=10).status_code == 401

    # The web UI shows them with their step and event, to its signed-in viewer.
    browser = requests.Session()
    assert browser.post(lai_server.url + "/sign-in", data={"api_key": key, "next": "/"},
                        timeout=10).status_code == 200
    for page, paths in ((f"/steps/{step['id']}", [step["screenshot"]]),
                        (f"/events/{event['id']}", event["screenshots"])):
        html = browser.get(lai_server.url + page, timeout=10).text
        for path in paths:
            assert f'src="{path}"' in html, (page, path)
    image = browser.get(lai_server.url + event["screenshots"][1], timeout=10)
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (10, 6)
    stranger = requests.Session()
    stranger.post(lai_server.url + "/sign-in", data={"api_key": other_key, "next": "/"},
                  timeout=10)
    assert stranger.get(lai_server.url + step["screenshot"], timeout=10).status_code == 404


def _lucidicai_http(server: ServerProcess, key: str) -> requests.Session:
    http = requests.Session()
    http.headers["Authorization"] = f"Api-Key {key}"
    return http


def test_upload_urls_are_single_use_expiring_signed_and_size_limited(
        sqlite_url: str, start_server: Any) -> None:
    server = start_server(sqlite_url, extra_args=["--upload-ttl", "2", "--max-upload-mb",
                                                  "0.01"])
    key = make_key(sqlite_url, "uploads")
    http = _lucidicai_http(server, key)
    sid = http.post(server.url + "/api/initsession", json={"session_name": "u"}).json()[
        "session_id"]
    step = http.post(server.url + "/api/initstep", json={"session_id": sid}).json()["step_id"]

    def url() -> str:
        answer = http.get(server.url + "/api/getpresigneduploadurl",
                          params={"agent_id": "a", "step_id": step})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["presigned_url"])

    jpeg = _jpeg()
    first = url()
    assert requests.put(first, data=jpeg, headers={"Content-Type": "image/jpeg"},
                        timeout=10).status_code == 200
    stored = Api(server.url, key).tree(sid)["steps"][0]["screenshot"]
    before = count_rows(sqlite_url)

    reused = requests.put(first, data=_jpeg("blue"), timeout=10)
    assert reused.status_code == 409 and "used already" in reused.json()["detail"]
    forged = requests.put(first.replace("signature=", "signature=0"), data=jpeg, timeout=10)
    assert forged.status_code == 403 and "signature" in forged.json()["detail"]
    too_big = requests.put(url(), data=b"\xff\xd8\xff" + b"\0" * 20_000, timeout=10)
    assert too_big.status_code == 413
    not_an_image = requests.put(url(), data=b"%PDF-1.4 not a picture", timeout=10)
    assert not_an_image.status_code == 415
    expiring = url()
    import time

    time.sleep(3.5)
    expired = requests.put(expiring, data=jpeg, timeout=10)
    assert expired.status_code == 403 and "expired" in expired.json()["detail"]

    after = count_rows(sqlite_url)
    assert after["uploaded"] == before["uploaded"] == 1  # only the first upload stored
    assert Api(server.url, key).tree(sid)["steps"][0]["screenshot"] == stored


PROMPTS = """
import json
import lucidicai as lai
lai.init(session_name="prompts")
first = lai.get_prompt("greeting", variables={"name": "Ada"}, cache_ttl=0)
staging = lai.get_prompt("greeting", label="staging", cache_ttl=0)
print(json.dumps([first, staging]))
"""


@sqlite_only
def test_the_prompt_store_is_set_by_the_cli_and_served_to_get_prompt(
        lai_server: ServerProcess, db_url: str, tmp_path: Path) -> None:
    key = make_key(db_url, "prompts")

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "lucidic", "prompts", *args,
                               "--db", db_url], capture_output=True, text=True,
                              timeout=60, env=child_env(tmp_path / "cli"))
        assert done.returncode == 0, done.stderr
        return done.stdout

    v1, v2, v3 = (tmp_path / f"v{n}.txt" for n in (1, 2, 3))
    v1.write_text("Hello {{name}}, welcome!")
    v2.write_text("Hi {{name}} (draft)")
    v3.write_text("Good day, {{name}}.")
    assert "version 1" in cli("set", "greeting", "--label", "production", str(v1),
                              "--project", "prompts")
    assert "version 2" in cli("set", "greeting", str(v2), "--project", "prompts", "--label",
                              "staging")
    out = last_json(run_lucidicai(PROMPTS, key=key, home=tmp_path / "c").stdout)
    assert out == ["Hello Ada, welcome!", "Hi {{name}} (draft)"]

    cli("set", "greeting", "--label", "production", str(v3), "--project", "prompts")
    out = last_json(run_lucidicai(PROMPTS, key=key, home=tmp_path / "c").stdout)
    assert out == ["Good day, Ada.", "Hi {{name}} (draft)"]
    listed = json.loads(cli("list", "--project", "prompts", "--json"))
    assert listed[0]["latest_version"] == 3
    assert listed[0]["labels"] == {"production": 3, "staging": 2}
    shown = cli("show", "greeting", "--project", "prompts", "--version", "1")
    assert "Hello {{name}}, welcome!" in shown and "v1" in shown
    # Another project sees none of it.
    other = make_key(db_url, "other")
    refused = _lucidicai_http(lai_server, other).get(
        lai_server.url + "/api/getprompt", params={"prompt_name": "greeting",
                                                          "label": "production"})
    assert refused.status_code == 404


def test_prompt_versions_set_at_once_each_get_their_own(db_url: str) -> None:
    # Each writer reads the newest version and adds one: two at once read the
    # same, and on PostgreSQL the second's insert broke its primary key.
    import threading

    from lucidic import prompts
    from lucidic.store import Store

    name = f"race-{uuid.uuid4().hex[:8]}"
    start, failures = threading.Barrier(4), []

    def write(writer: int) -> None:
        store = Store(db_url)
        try:
            start.wait()
            for n in range(10):
                prompts.set_prompt(store, "prompts", name, f"{writer}-{n}", ["production"])
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            failures.append(repr(exc))
        finally:
            store.close()

    writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    assert failures == []
    store = Store(db_url)
    try:
        contents = [prompts.get_prompt(store, "prompts", name, version=v)["content"]
                    for v in range(1, 41)]
        assert sorted(contents) == sorted(f"{w}-{n}" for w in range(4) for n in range(10))
        assert prompts.get_prompt(store, "prompts", name, label="production")["version"] == 40
    finally:
        store.close()


MASS_SIM = """
import json, os
import lucidicai as lai
# 1.3.5's create_mass_sim needs the client made first (before lai.init it
# finds only its placeholder NullClient).
lai.Client(api_key=os.environ["LUCIDIC_API_KEY"], agent_id=os.environ["LUCIDIC_AGENT_ID"])
sim = lai.create_mass_sim(mass_sim_name="nightly", total_num_sessions=2, task="book",
                          tags=["nightly"])
ids = []
for n in range(2):
    ids.append(lai.init(session_name=f"run {n}", mass_sim_id=sim, experiment_id="exp-7",
                        rubrics=["polite", "correct"]))
    lai.end_session(is_successful=n == 0)
ids.append(lai.init(session_name="unrelated"))
lai.end_session()
# A mass simulation id made elsewhere (the hosted product, say) is created on first use.
ids.append(lai.init(session_name="elsewhere", mass_sim_id="made-elsewhere"))
print(json.dumps({"sim": sim, "sessions": ids}))
"""


def test_mass_simulations_are_recorded_and_group_their_sessions(
        lai_server: ServerProcess, db_url: str, tmp_path: Path) -> None:
    key = make_key(db_url, "sims")
    out = last_json(run_lucidicai(MASS_SIM, key=key, home=tmp_path / "c").stdout)
    assert _is_uuid4(out["sim"])
    api = Api(lai_server.url, key)
    grouped = api.get("/api/v1/sessions", params={"mass_sim_id": out["sim"]}).json()
    assert sorted(s["id"] for s in grouped["sessions"]) == sorted(out["sessions"][:2])
    run = next(s for s in grouped["sessions"] if s["id"] == out["sessions"][0])
    assert (run["mass_sim_id"], run["experiment_id"], run["rubrics"]) == (
        out["sim"], "exp-7", ["polite", "correct"])
    sims = {m["id"]: m for m in api.get("/api/v1/mass-sims").json()["mass_sims"]}
    assert sorted(sims) == sorted([out["sim"], "made-elsewhere"])
    sim = sims[out["sim"]]
    assert (sim["id"], sim["name"], sim["task"], sim["tags"], sim["total"]) == (
        out["sim"], "nightly", "book", ["nightly"], 2)
    assert (sim["sessions"], sim["ended"], sim["successful"], sim["failed"]) == (2, 2, 1, 1)
    assert (sims["made-elsewhere"]["sessions"], sims["made-elsewhere"]["ended"],
            sims["made-elsewhere"]["total"]) == (1, 1, None)  # ended at exit
    listed = subprocess.run([sys.executable, "-m", "lucidic", "sessions", "list", "--mass-sim",
                             out["sim"]], capture_output=True, text=True, timeout=60,
                            env=child_env(tmp_path / "cli", sdk_env(lai_server, key)))
    assert listed.returncode == 0, listed.stderr
    assert "run 0" in listed.stdout and "run 1" in listed.stdout
    assert out["sessions"][0] in listed.stdout and out["sessions"][2] not in listed.stdout
    assert "unrelated" not in listed.stdout
    # The web UI lists them, and each run's page links to its siblings.
    browser = requests.Session()
    browser.post(lai_server.url + "/sign-in", data={"api_key": key, "next": "/"}, timeout=10)
    listing = browser.get(lai_server.url + "/", params={"mass_sim": out["sim"]}, timeout=10)
    assert listing.status_code == 200
    assert out["sessions"][0] in listing.text and out["sessions"][1] in listing.text
    assert out["sessions"][2] not in listing.text and f"mass simulation {out['sim']}" in \
        listing.text
    page = browser.get(lai_server.url + f"/sessions/{out['sessions'][0]}", timeout=10).text
    assert f'href="/?mass_sim={out["sim"]}"' in page and "exp-7" in page
    # Another project's key sees neither the mass simulation nor its sessions.
    other = Api(lai_server.url, make_key(db_url, "other"))
    assert other.get("/api/v1/mass-sims").json()["mass_sims"] == []
    assert other.get("/api/v1/sessions", params={"mass_sim_id": out["sim"]}).json()[
        "sessions"] == []


def test_a_nul_in_any_text_of_a_lucidicai_body_is_kept_as_a_sessions_is(
        db_url: str, start_server: Any) -> None:
    # A NUL character in a session's text becomes U+FFFD (the store's rule:
    # PostgreSQL holds no NUL). A mass simulation's and an eval's text went
    # to the database as given: SQLite kept the NUL, PostgreSQL refused the
    # request ("the database refused this request").
    server = start_server(db_url)
    key = make_key(db_url, "nul")
    http = _lucidicai_http(server, key)
    base = server.url + "/api/"
    # In a list or an object (tags, a payload) as in a plain text: one rule
    # for one character (a list or an object holding one was refused, 422).
    answer = http.post(base + "initsession", json={"session_name": "a\x00b",
                                                   "tags": ["t\x00ag"]})
    assert answer.status_code == 200, answer.text
    sid = answer.json()["session_id"]
    answer = http.post(base + "events", json={
        "session_id": sid, "type": "function_call",
        "payload": {"function_name": "f\x00n", "arguments": {"k\x00ey": ["v\x00al"]}}})
    assert answer.status_code in (200, 201), answer.text
    answer = http.post(base + "initmasssim", json={
        "mass_sim_name": "n\x00ame", "task": "t\x00ask", "agent_id": "a\x00gent"})
    assert answer.status_code == 200, answer.text
    sim = Api(server.url, key).get(f"/api/v1/mass-sims/{answer.json()['mass_sim_id']}").json()
    assert (sim["name"], sim["task"], sim["agent_id"]) == (
        "n\ufffdame", "t\ufffdask", "a\ufffdgent")
    answer = http.post(base + "sdk/evals", json={"session_id": sid, "name": "tone",
                                                 "result": "po\x00lite",
                                                 "description": "why\x00not"})
    assert answer.status_code == 201, answer.text
    tree = Api(server.url, key).tree(sid)
    assert (tree["name"], tree["tags"]) == ("a\ufffdb", ["t\ufffdag"])
    (call,) = tree["events"]
    assert (call["function_name"], call["arguments"]) == ("f\ufffdn", {"k\ufffdey": ["v\ufffdal"]})
    (score,) = tree["score_details"]
    assert (score["value"], score["comment"]) == ("po\ufffdlite", "why\ufffdnot")


def test_a_count_takes_on_the_lucidicai_routes_what_the_records_api_takes(
        db_url: str, start_server: Any) -> None:
    # A mass simulation's total_num_sims is a count (models.Count: what a
    # 64-bit column holds) whichever way it comes; initmasssim refused one
    # beyond 2**53 that our records API takes.
    server = start_server(db_url)
    key = make_key(db_url, "counts")
    http, api = _lucidicai_http(server, key), Api(server.url, key)
    answer = http.post(server.url + "/api/initmasssim", json={"total_num_sims": 2**63 - 1})
    assert answer.status_code == 200, answer.text
    sim = api.get(f"/api/v1/mass-sims/{answer.json()['mass_sim_id']}").json()
    assert sim["total"] == 2**63 - 1
    assert api.records({"kind": "mass_sim", "id": "m", "ts": 1.0,
                        "fields": {"total_num_sims": 2**63 - 1}}).status_code == 200
    for bad in (2**63, -1):
        answer = http.post(server.url + "/api/initmasssim", json={"total_num_sims": bad})
        assert answer.status_code == 422 and "total_num_sims" in answer.json()["detail"]
        answer = api.records({"kind": "mass_sim", "id": "m", "ts": 1.0,
                              "fields": {"total_num_sims": bad}})
        assert answer.status_code == 422 and "total_num_sims" in answer.json()["detail"]


def test_bad_lucidicai_requests_get_a_clear_4xx_and_change_nothing(
        db_url: str, start_server: Any) -> None:
    server = start_server(db_url)
    mine, theirs = make_key(db_url, "mine"), make_key(db_url, "theirs")
    http = _lucidicai_http(server, mine)
    other = _lucidicai_http(server, theirs)
    base = server.url + "/api/"
    sid = http.post(base + "initsession", json={"session_name": "s"}).json()["session_id"]
    step = http.post(base + "initstep", json={"session_id": sid}).json()["step_id"]
    event = http.post(base + "initevent", json={"step_id": step}).json()["event_id"]
    finished = http.post(base + "initsession", json={"session_name": "done"}).json()[
        "session_id"]
    assert http.put(base + "updatesession", json={"session_id": finished,
                                                  "is_finished": True}).status_code == 200
    before = count_rows(db_url)

    cases: list[tuple[requests.Session, str, str, dict[str, Any], int, str]] = [
        (http, "POST", "initsession", {"data": b"{not json"}, 400, "not valid JSON"),
        (http, "POST", "initsession", {"json": {"session_name": "x", "colour": "red"}}, 422,
         "colour"),
        (http, "POST", "initstep", {"json": {"session_id": 5}}, 422, "session_id"),
        (http, "PUT", "updatestep", {"json": {"step_id": step, "state": "x" * (4 * 2**20 + 1)}},
         422, "state"),
        (http, "PUT", "updatestep", {"json": {"step_id": step, "eval_score": "high"}}, 422,
         "eval_score"),
        (http, "POST", "initevent", {"json": {"session_id": sid, "current_time": "yesterday"}},
         422, "current_time"),
        (http, "POST", "initevent", {"json": {"description": "orphan"}}, 422, "step_id"),
        (http, "PUT", "updateevent", {"json": {"event_id": event, "cost_added": 1e300}}, 422,
         "cost_added"),
        (http, "PUT", "updateevent", {"json": {"event_id": event, "duration": -2}}, 422,
         "duration: Input should be greater than or equal to 0"),
        (http, "POST", "initevent", {"json": {"step_id": step, "duration": -2}}, 422,
         "duration: Input should be greater than or equal to 0"),
        (http, "PUT", "updatesession", {"json": {"session_id": finished, "is_finished": False}},
         409, "cannot be reopened"),
        (http, "POST", "initstep", {"json": {"session_id": finished}}, 409, "has finished"),
        (http, "POST", "continuesession", {"json": {"session_id": finished}}, 409,
         "has finished"),
        (http, "POST", "initsession", {"json": {"session_id": finished}}, 409, "has finished"),
        (http, "GET", "getpresigneduploadurl", {"params": {"step_id": step, "colour": "red"}},
         422, "colour"),
        (http, "GET", "getpresigneduploadurl", {"params": {"event_id": event}}, 422,
         "nth_screenshot"),
        # Ids no client makes: refused alike on both databases (PostgreSQL
        # refused a NUL itself: "the database refused this request").
        *((http, "GET", "getpresigneduploadurl", {"params": {name: bad, **rest}}, 422,
           f"query.{name}: {words}")
          for name, rest in (("event_id", {"nth_screenshot": 0}), ("step_id", {}),
                             ("session_id", {"event_id": event, "nth_screenshot": 0}))
          for bad, words in (("a\x00b", "must be printable text"),
                             ("x" * 257, "String should have at most 256 characters"))),
        *((http, "GET", route, {"params": {"prompt_name": "greeting", **bad}}, 422,
           f"query.{next(iter(bad))}: must be printable text")
          for route in ("getprompt", "sdk/prompts")
          for bad in ({"prompt_name": "a\x00b"}, {"label": "a\x00b"})),
        (http, "GET", "getprompt", {"params": {"prompt_name": "x" * 257}}, 422,
         "query.prompt_name: String should have at most 256 characters"),
        (http, "GET", "getpresigneduploadurl", {"params": {"event_id": event,
                                                           "nth_screenshot": "first"}}, 422,
         "query.nth_screenshot: Input should be a valid integer"),
        (http, "GET", "getpresigneduploadurl", {"params": {"event_id": event,
                                                           "nth_screenshot": 0,
                                                           "session_id": finished}}, 422,
         f"not in the session named by session_id ({finished!r})"),
        # Another project's ids are unknown to this key.
        (other, "POST", "continuesession", {"json": {"session_id": sid}}, 404, "not found"),
        (other, "POST", "initstep", {"json": {"session_id": sid}}, 404, "not found"),
        (other, "PUT", "updatestep", {"json": {"step_id": step, "state": "x"}}, 404,
         "not found"),
        (other, "POST", "initevent", {"json": {"step_id": step}}, 404, "not found"),
        (other, "PUT", "updateevent", {"json": {"event_id": event, "result": "x"}}, 404,
         "not found"),
        (other, "PUT", "updatesession", {"json": {"session_id": sid, "is_finished": True}},
         404, "not found"),
        (other, "GET", "getpresigneduploadurl", {"params": {"step_id": step}}, 404,
         "not found"),
        (other, "POST", "initsession", {"json": {"session_id": sid}}, 409, "already in use"),
        (other, "POST", "events", {"json": {"session_id": sid, "type": "generic"}}, 404,
         "not found"),
    ]
    for client, method, route, kwargs, status, words in cases:
        answer = client.request(method, base + route, timeout=30, **(
            {**kwargs, "headers": {"Content-Type": "application/json"}}
            if "data" in kwargs else kwargs))
        assert answer.status_code == status, (route, kwargs, answer.text)
        assert words in answer.json()["detail"], (route, answer.text)
    # lucidicai's init(session_id=...) of an unfinished session of the project joins it.
    joined = http.post(base + "initsession", json={"session_id": sid, "session_name": "again"})
    assert joined.status_code == 200 and joined.json() == {"session_id": sid}
    other_event = _lucidicai_http(server, theirs).post(base + "events", json={
        "session_id": sid, "client_event_id": event, "type": "generic"})
    assert other_event.status_code == 404
    assert count_rows(db_url) == before

    # The key works as Bearer and as Api-Key on every route; a wrong one is a 401.
    assert http.get(server.url + "/api/v1/sessions").status_code == 200
    assert _lucidicai_http(server, "lk_nope").get(base + "verifyapikey").status_code == 401


def test_numbers_beyond_range_in_a_typed_events_payload_are_dropped_as_tokens_are(
        db_url: str, start_server: Any) -> None:
    # The newest release's payloads are free-form JSON: a usage number beyond
    # what its column holds is dropped (the price table's cost stands in for
    # a cost), never a refusal of the whole event, never a server error.
    server = start_server(db_url)
    key = make_key(db_url, "numbers")
    http = _lucidicai_http(server, key)
    sid = http.post(server.url + "/api/initsession", json={"session_name": "n"}).json()[
        "session_id"]
    usages = {"dear": {"input_tokens": 1000, "output_tokens": 10, "cost": 1e300},
              # valid JSON, an int in Python, and no float holds it
              "huge": {"input_tokens": 10 ** 400, "output_tokens": 10, "cost": -(10 ** 400),
                       "cache": {"read": 10 ** 400}}}
    for name, usage in usages.items():
        answer = http.post(server.url + "/api/events", json={
            "session_id": sid, "client_event_id": name, "type": "llm_generation",
            "payload": {"request": {"provider": "openai", "model": "gpt-4o-mini"},
                        "usage": usage}})
        assert answer.status_code == 200, (name, answer.text)
    events = {e["id"]: e for e in Api(server.url, key).tree(sid)["events"]}
    assert events["dear"]["cost"] == pytest.approx(cost_of("openai", "gpt-4o-mini", 1000, 10))
    huge = events["huge"]
    assert (huge["input_tokens"], huge["output_tokens"], huge["cached_tokens"]) == (
        None, 10, None)
    assert huge["cost"] == pytest.approx(cost_of("openai", "gpt-4o-mini", None, 10))
    # Where a payload's number is kept as it is (text, attributes), it stays exact.
    answer = http.post(server.url + "/api/events", json={
        "session_id": sid, "client_event_id": "kept", "type": "generic",
        "payload": {"details": 10 ** 400, "extra": -(10 ** 400)}})
    assert answer.status_code == 200, answer.text
    kept = Api(server.url, key).get("/api/v1/events/kept").json()
    assert kept["description"] == str(10 ** 400) and kept["attributes"]["extra"] == -(10 ** 400)
    # Beyond what a JSON reader takes (4,300 digits): refused, not a server error.
    answer = http.post(server.url + "/api/events", data=(
        f'{{"session_id": "{sid}", "payload": {{"details": {"9" * 5000}}}}}'),
        headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "parsing the body" in answer.json()["detail"]


def _blob_event(server: ServerProcess, http: requests.Session, sid: str, event_id: str,
                payload: dict[str, Any], kind: str = "llm_generation") -> str:
    """A typed event whose payload follows to its blob_url, as the newest
    release sends one over 64 KB: the preview now; the blob_url returned."""
    answer = http.post(server.url + "/api/events", json={
        "session_id": sid, "client_event_id": event_id, "type": kind, "payload": payload,
        "needs_blob": True})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["blob_url"])


def test_a_payload_nested_beyond_any_reader_is_refused_and_the_server_stays_up(
        sqlite_url: str, start_server: Any) -> None:
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "deep")
    http = _lucidicai_http(server, key)
    sid = http.post(server.url + "/api/initsession", json={"session_name": "d"}).json()[
        "session_id"]
    blob_url = _blob_event(server, http, sid, "deep", {"request": {"model": "m"}})
    deep = b"[" * 100_000 + b"]" * 100_000  # json.loads raised RecursionError
    for body, encoding in ((deep, None), (gzip.compress(deep), "gzip")):
        headers = {"Content-Type": "application/json"}
        if encoding:
            headers["Content-Encoding"] = encoding
        answer = requests.put(blob_url, data=body, headers=headers, timeout=30)
        assert answer.status_code == 422, answer.text
        assert "nested" in answer.json()["detail"]
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    # Nothing was taken: the URL still takes the real payload.
    answer = requests.put(blob_url, json={"request": {"model": "m", "messages": ["hi"]}},
                          timeout=30)
    assert answer.status_code == 200, answer.text
    assert Api(server.url, key).tree(sid)["events"][0]["input"] == ["hi"]


def test_an_uploaded_payload_ends_the_wait_even_when_it_leaves_no_attributes(
        db_url: str, start_server: Any) -> None:
    # The event is created with payload_pending in its attributes; the blob
    # replaces them. A payload whose every field has a column of its own
    # left the attributes empty, and an empty set was written as "no
    # change": the event read as waiting for its payload for ever.
    server = start_server(db_url)
    key = make_key(db_url, "pending")
    http = _lucidicai_http(server, key)
    sid = http.post(server.url + "/api/initsession", json={"session_name": "p"}).json()[
        "session_id"]
    full = {"llm": ("llm_generation", {
                "request": {"provider": "openai", "model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": "y" * 70_000}]},
                "response": {"output": "a summary"},
                "usage": {"input_tokens": 17_600, "output_tokens": 3}}),
            "note": ("generic", {"details": "z" * 70_000})}
    for event_id, (kind, payload) in full.items():
        preview = {k: v for k, v in payload.items() if k != "response"}
        blob_url = _blob_event(server, http, sid, event_id, preview, kind)
        pending = Api(server.url, key).get(f"/api/v1/events/{event_id}").json()
        assert pending["attributes"] == {"payload_pending": True}
        answer = requests.put(blob_url, data=gzip.compress(json.dumps(payload).encode()),
                              headers={"Content-Type": "application/json",
                                       "Content-Encoding": "gzip"}, timeout=30)
        assert answer.status_code == 200, answer.text
    events = {e["id"]: e for e in Api(server.url, key).tree(sid)["events"]}
    for event_id in full:
        assert "payload_pending" not in (events[event_id]["attributes"] or {}), event_id
    assert events["llm"]["output"] == "a summary" and events["llm"]["input_tokens"] == 17_600
    assert events["note"]["description"] == "z" * 70_000


def _replay(server: ServerProcess, key: str, recording: dict[str, Any]) -> list[Any]:
    answers: list[Any] = []
    blob_url = None
    for request in recording["requests"]:
        headers = {k: v for k, v in request["headers"].items() if k != "authorization"}
        if request["path"].startswith("/api/uploads/"):
            assert blob_url is not None
            answer = requests.put(blob_url, data=request["body"].encode("latin-1"),
                                  headers=headers, timeout=30)
        else:
            headers["Authorization"] = f"Api-Key {key}"
            url = server.url + request["path"] + (f"?{request['query']}" if request["query"]
                                                  else "")
            answer = requests.request(request["method"], url, headers=headers,
                                      data=request["body"].encode("latin-1"), timeout=30)
        assert answer.status_code == request["status"] == 200, (request["path"], answer.text)
        answers.append(answer.json())
        blob_url = answers[-1].get("blob_url", blob_url)
    return answers


def test_what_the_newest_lucidicai_release_sends_is_understood(
        db_url: str, start_server: Any, tmp_path: Path) -> None:
    recording = json.loads((HERE / "lucidicai_newest_requests.json").read_text("utf-8"))
    assert recording["lucidicai"].startswith("3.")
    server = start_server(db_url)
    key = make_key(db_url, "newest")
    subprocess.run([sys.executable, "-m", "lucidic", "prompts", "set", "greeting", "--label",
                    "production", "--project", "newest", "--db", db_url,
                    str(_write(tmp_path / "greeting.txt", "Hello {{name}}\n"))], check=True,
                   capture_output=True, timeout=60, env=child_env(tmp_path / "cli"))
    answers = _replay(server, key, recording)
    session_id = answers[0]["session_id"]
    assert next(a for a in answers if "prompt_content" in a)["prompt_content"] == \
        "Hello {{name}}\n"
    api = Api(server.url, key)
    tree = api.tree(session_id)
    assert (tree["name"], tree["agent_id"], tree["task"], tree["tags"]) == (
        "newest release", "agent-newest", "check the weather", ["recorded"])
    assert tree["is_finished"] and tree["is_successful"]
    assert tree["is_successful_reason"] == "it worked"
    # lookup() recorded an LLM call inside it: the call is a step holding its
    # own function event and the LLM event (see lucidic.server.lucidicai).
    (lookup,) = tree["steps"]
    assert (lookup["action"], lookup["function_name"], lookup["is_finished"]) == (
        "lookup", "lookup", True)
    events = tree["events"] + lookup["events"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    assert sorted(by_type) == ["error", "function", "generic", "llm"]
    (function,) = by_type["function"]
    assert function["function_name"] == "lookup" and function["arguments"] == {"city": "Oslo"}
    small, blob, large = sorted(by_type["llm"], key=lambda e: e["started_at"])
    assert (small["provider"], small["model"], small["input_tokens"],
            small["output_tokens"]) == ("openai", "gpt-4o-mini", 12, 3)
    assert small["cost"] and small["attributes"]["parent_event_id"] == function["id"]
    assert small["step_id"] == function["step_id"] == lookup["id"] == function["id"]
    # The payload over 64 KB arrived at its blob_url and replaced the preview.
    assert blob["input"][0]["content"] == "y" * 70000 and blob["output"] == "a summary"
    assert "payload_pending" not in blob["attributes"] and blob["input_tokens"] == 17600
    assert len(large["input"][0]["content"]) == 70000
    (error,) = by_type["error"]
    assert error["error"] == "the tool failed" and "Traceback" in error["result"]
    assert by_type["generic"][0]["description"] == "a note"

    # The client retries a request whose answer it did not see: nothing doubles.
    for request in recording["requests"]:
        if request["path"] == "/api/events":
            requests.post(server.url + "/api/events", data=request["body"].encode("latin-1"),
                          headers={"Authorization": f"Api-Key {key}",
                                   "Content-Type": "application/json"}, timeout=30)
    assert strip_volatile(api.tree(session_id)) == strip_volatile(tree)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
