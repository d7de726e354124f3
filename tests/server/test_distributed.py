"""Sessions that span processes (and servers) through a real `lucidic server`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_support import Api, ServerProcess, free_port, make_key, sdk_env

from helpers import run_python
from lucidic.store import Store

SEED_PROCESS_1 = """
import lucidic as lai
sid = lai.init(session_name="Distributed Workflow")
lai.create_step(state="Planning", action="Split the work", goal="Analyse the data")
lai.create_event(description="made 3 batches")
lai.end_step()
lai.detach()
print(sid)
"""

SEED_PROCESS_2 = """
import sys
import lucidic as lai
lai.continue_session(session_id=sys.argv[1])
lai.create_step(state="Processing in worker node", action="Analyze data batch")
lai.create_event(description="batch analysed", result="ok")
lai.end_step()
lai.end_session(is_successful=True)
"""


def test_seed_distributed_example_runs_across_two_processes_through_the_server(
        db_url: str, start_server, tmp_path: Path) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "workflows")
    env = sdk_env(server, key)
    sid = run_python(SEED_PROCESS_1, home=tmp_path / "machine-1", env=env).stdout.strip()
    run_python(SEED_PROCESS_2, home=tmp_path / "machine-2", env=env, args=[sid])

    tree = Api(server.url, key).tree(sid)
    assert tree["project"] == "workflows" and tree["name"] == "Distributed Workflow"
    assert tree["is_finished"] and tree["is_successful"]
    assert [s["action"] for s in tree["steps"]] == ["Split the work", "Analyze data batch"]
    assert tree["steps"][1]["state"] == "Processing in worker node"
    assert [e["description"] for s in tree["steps"] for e in s["events"]] == [
        "made 3 batches", "batch analysed"]
    # Nothing went to either machine's embedded store.
    assert not (tmp_path / "machine-1" / "lucidic.db").exists()
    assert not (tmp_path / "machine-2" / "lucidic.db").exists()

    # A finished session cannot be continued, and the message says how to hand over.
    failed = run_python(SEED_PROCESS_2, home=tmp_path / "machine-3", env=env, args=[sid],
                        check=False)
    assert failed.returncode != 0
    assert "InvalidOperationError" in failed.stderr and "lai.detach()" in failed.stderr

    # `lucidic sessions list/show` read from the server when LUCIDIC_BASE_URL is set.
    cli_env = {**env, "LUCIDIC_HOME": str(tmp_path / "cli-home")}
    shown = _cli(["sessions", "show", sid], cli_env)
    assert "Analyze data batch" in shown and "Distributed Workflow" in shown
    listed = json.loads(_cli(["sessions", "list", "--json"], cli_env))
    assert [s["id"] for s in listed] == [sid]


def _cli(args: list[str], env: dict[str, str]) -> str:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDIC_")}
    full.update(env)
    result = subprocess.run([sys.executable, "-m", "lucidic", *args], capture_output=True,
                            text=True, env=full, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


CONCURRENT_WRITER = """
import sys
import lucidic as lai
sid, label, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with lai.continued(sid):
    for i in range(count):
        lai.create_step(action=f"{label}-step-{i}")
        lai.create_event(description=f"{label}-event-{i}")
        lai.end_step()
assert lai.flush(30)
"""


def test_two_servers_on_one_postgresql_database_serve_one_session(
        pg_url: str, start_server, tmp_path: Path) -> None:
    server_a = start_server(pg_url)
    server_b = start_server(pg_url)
    key = make_key(pg_url, "fleet")
    sid = run_python(SEED_PROCESS_1, home=tmp_path / "m0",
                     env=sdk_env(server_a, key)).stdout.strip()
    count = 300
    writers = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, sid, label, str(count)],
                         env=_child_env(tmp_path / label, sdk_env(server, key)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for label, server in (("a", server_a), ("b", server_b))
    ]
    for writer in writers:
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err

    tree_a, tree_b = Api(server_a.url, key).tree(sid), Api(server_b.url, key).tree(sid)
    assert tree_a == tree_b
    actions = [s["action"] for s in tree_a["steps"]]
    expected = {f"{label}-step-{i}" for label in "ab" for i in range(count)} | {"Split the work"}
    assert len(actions) == len(expected) and set(actions) == expected
    events = [e["description"] for s in tree_a["steps"] for e in s["events"]]
    assert len(events) == 2 * count + 1 and len(set(events)) == len(events)
    store = Store(pg_url)
    try:
        assert store.count("steps") == 2 * count + 1
        assert store.count("events") == 2 * count + 1
        assert store.count("sessions") == 1
    finally:
        store.close()


def _child_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDIC_")}
    env.update({"LUCIDIC_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra})
    return env


STREAMER = """
import sys, time
import lucidic as lai
total = int(sys.argv[1])
sid = lai.init(session_name="stream")
print(sid, flush=True)
worst = 0.0
for i in range(total):
    t0 = time.perf_counter()
    lai.create_event(description=f"event-{i}")
    worst = max(worst, time.perf_counter() - t0)
    if i % 500 == 0:
        time.sleep(0.05)   # a steady stream, about two seconds long
delivered = lai.flush(60)
from lucidic._runtime import runtime
failures = sum(p.stats.delivery_failures for p in runtime.pipelines.values())
print(f"{delivered} {worst} {failures}", flush=True)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_server_killed_mid_stream_and_restarted_every_record_arrives_once(
        backend: str, request: pytest.FixtureRequest, start_server, tmp_path: Path) -> None:
    db_url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    port = free_port()
    server = start_server(db_url, port)
    key = make_key(db_url, "stream")
    total = 20_000
    sdk = subprocess.Popen([sys.executable, "-c", STREAMER, str(total)],
                           env=_child_env(tmp_path / "sdk-home", sdk_env(server, key)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert sdk.stdout is not None
    sid = sdk.stdout.readline().strip()
    time.sleep(0.5)
    server.kill()                      # mid-stream, no goodbye
    time.sleep(1.5)
    restarted: ServerProcess = start_server(db_url, port)
    out, err = sdk.communicate(timeout=90)
    assert sdk.returncode == 0, err
    delivered, worst, failures = out.split()
    assert delivered == "True"
    assert int(failures) > 0  # the outage did hit the stream
    # The hot path never waited for the server (a create_event costs microseconds;
    # a generous bound that a blocking network call would exceed).
    assert float(worst) < 0.25, worst

    tree = Api(restarted.url, key).tree(sid)
    descriptions = [e["description"] for e in tree["events"]]
    assert len(descriptions) == total
    assert set(descriptions) == {f"event-{i}" for i in range(total)}
    store = Store(db_url)
    try:
        assert store.count("events") == total
    finally:
        store.close()
