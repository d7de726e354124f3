"""Reliability of sessions and the public API under real faults (issue 7,
points 3, 5, 6 and 8, over the embedded store or no server at all): a server
that accepts connections and never answers, fork() while the parent's worker
writes a backlog, session ids of another project in the store, and input
that breaks Python's own protocols. Their server-side half is in
tests/server/test_reliability_sessions_server.py."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import lucidic as lai
from helpers import run_python
from lucidic.errors import InvalidOperationError
from lucidic.store import IdInUseError, Store


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A real socket that accepts every connection and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)  # kept open, never read from nor written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()
    for conn in held:
        conn.close()


# -- 3. init() never waits on the network; continuing waits a bounded time ---------

SILENT_CHILD = """
import json, os, time
import lucidic as lai

os.environ["LUCIDIC_CONNECT_TIMEOUT"] = "30"  # anything waiting on it would show
began = time.monotonic()
sid = lai.init(session_name="no answer needed")
lai.create_step(action="work")
lai.create_event(description="kept")
init_took = time.monotonic() - began
lai.detach()

os.environ["LUCIDIC_CONNECT_TIMEOUT"] = "1"
began = time.monotonic()
try:
    lai.continue_session(sid)
    refused = None
except Exception as exc:
    refused = f"{type(exc).__name__}: {exc}"
continue_took = time.monotonic() - began
print(json.dumps({"init": init_took, "continue": continue_took, "refused": refused}))
"""


def test_init_returns_at_once_and_continue_fails_within_its_bound_on_a_silent_server(
        silent_server: str, lucidic_home: Path) -> None:
    done = run_python(SILENT_CHILD, home=lucidic_home, timeout=60,
                      env={"LUCIDIC_BASE_URL": silent_server, "LUCIDIC_API_KEY": "lk_test",
                           "LUCIDIC_FLUSH_TIMEOUT": "0.5"})
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # Before: ~20 s (a key check, then a session write with a 15 s read timeout).
    assert out["init"] < 3.0, out
    # Continuing must ask, and gives up after LUCIDIC_CONNECT_TIMEOUT (1 s)
    # with an error naming the server; generous slack for a loaded machine.
    assert out["refused"] is not None, out
    assert out["refused"].startswith("ServerUnavailableError") and silent_server in out["refused"]
    assert "LUCIDIC_CONNECT_TIMEOUT" in out["refused"]
    assert 0.9 <= out["continue"] < 6.0, out
    # What init recorded was not dropped: the exit spooled it for later.
    spooled = [p for p in (lucidic_home / "spool").rglob("*") if p.is_file()]
    assert any("kept" in p.read_text(errors="replace") for p in spooled)


# -- 5. a forked child delivers its own records --------------------------------------

FORKING_PARENT = """
import json, os, sys
import lucidic as lai
from lucidic.store import Store

CHILDREN, PER_CHILD, BACKLOG = 8, 500, 10_000
lai.init(session_name="forks")
for i in range(BACKLOG):
    lai.create_event(description=f"parent {i}")
pids = []
for child in range(CHILDREN):
    pid = os.fork()  # while the worker is writing the backlog
    if pid == 0:
        for i in range(PER_CHILD):
            lai.create_event(description=f"child {child} {i}")
        if child % 2:
            os._exit(0 if lai.flush(20) else 3)  # says whether its own records arrived
        sys.exit(0)  # the normal way out: the exit flush delivers them
    pids.append(pid)
statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
store = Store(os.path.join(os.environ["LUCIDIC_HOME"], "lucidic.db"))
rows = store.query("SELECT description FROM events WHERE description LIKE 'child %'")
print(json.dumps({"statuses": statuses, "child_rows": [r["description"] for r in rows]}))
"""


def test_forked_children_deliver_their_own_records_while_the_parent_writes_a_backlog(
        lucidic_home: Path, store: Store) -> None:
    done = run_python(FORKING_PARENT, home=lucidic_home, timeout=120)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # Before: the children forked mid-transaction saw "database is locked"
    # for their whole life (flush False, everything left in the spool).
    assert out["statuses"] == [0] * 8, out["statuses"]
    expected = {f"child {c} {i}" for c in range(8) for i in range(500)}
    # Counted as the children left, before anyone could replay their spools.
    assert len(out["child_rows"]) == len(expected) and set(out["child_rows"]) == expected
    assert store.count("events") == 10_000 + len(expected)


# -- 6. a session id of another project, in the embedded store -----------------------

def test_init_refuses_an_id_another_project_holds_in_the_embedded_store(
        lucidic_home: Path, store: Store) -> None:
    # A server serving the embedded store's file wrote project ops's session.
    store.write_for_project([("session", "ops-session", 1.0, {"name": "theirs",
                                                              "started_at": 1.0})], "ops")
    with pytest.raises(InvalidOperationError, match="already in use"):
        lai.init(session_id="ops-session", session_name="squatter")
    assert store.get_session("ops-session")["name"] == "theirs"
    # Continuing it from here (the embedded store has no accounts) keeps its
    # project, so the session's own records apply instead of being skipped.
    lai.continue_session("ops-session")
    lai.update_session(task="continued locally")
    lai.end_session(is_successful=True)
    row = store.get_session("ops-session")
    assert (row["project"], row["task"], row["is_finished"]) == ("ops", "continued locally",
                                                                 True)


# -- 8. bad input never escapes into user code ----------------------------------------

class _Unlistable(list):  # type: ignore[type-arg]
    """A list whose own iteration raises (its items are there all the same)."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("iteration refused")


class _Untuplable(tuple):  # type: ignore[type-arg]
    def __iter__(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("iteration refused")


def test_containers_whose_iteration_raises_are_recorded_not_raised(store: Store) -> None:
    sid = lai.init(tags=_Unlistable(["a", "b"]), providers=_Unlistable([]))
    event = lai.create_event(description="e", arguments=_Unlistable([1, {"k": _Untuplable((2,))}]),
                             screenshots=_Unlistable(["aGk="]))
    assert event is not None
    lai.update_event(event_id=event, arguments={"nested": _Unlistable(["x"])},
                     screenshots=_Untuplable(("aGk=", "aG8=")))
    lai.update_session(tags=_Untuplable(("c",)))
    experiment = lai.create_experiment("x", rubrics=_Unlistable(["tone"]),
                                       tags=_Unlistable(["t"]))
    assert lai.flush(10)
    assert store.query("SELECT rubrics FROM experiments WHERE id = ?",
                       [experiment])[0]["rubrics"] == ["tone"]
    row = store.get_event(event)
    assert row["arguments"] == {"nested": ["x"]}
    assert row["screenshots"] == ["aGk=", "aG8="]
    assert store.get_session(sid)["tags"] == ["c"]


@pytest.mark.parametrize("huge", [2 ** 1024, 10 ** 400, -(2 ** 2000)],
                         ids=["2**1024", "10**400", "-2**2000"])
def test_ints_no_float_can_hold_raise_the_documented_error(huge: int, store: Store) -> None:
    sid = lai.init()
    step = lai.create_step(action="a")
    for call in (lambda: lai.create_event(cost_added=huge),
                 lambda: lai.update_step(step_id=step, eval_score=huge),
                 lambda: lai.create_step(eval_score=huge),
                 lambda: lai.update_session(session_eval=huge),
                 lambda: lai.end_session(session_eval=huge),
                 lambda: lai.score("quality", huge)):
        with pytest.raises(InvalidOperationError, match="must be a finite number"):
            call()
    # A wait longer than any clock can count is a long wait, not a crash.
    assert lai.flush(timeout=2 ** 64) is True
    big = lai.create_step(eval_score=2 ** 64)  # beyond 64 bits, yet a finite float
    with pytest.raises(InvalidOperationError, match=r"cost_added must be within ±1e\+18"):
        lai.create_event(cost_added=2 ** 64)  # finite, but beyond any cost a server takes
    lai.end_session()
    assert lai.flush(10)
    assert store.get_step(big)["eval_score"] == 2.0 ** 64
    assert store.session_tree(sid)["event_count"] == 0


def test_updates_by_unknown_ids_raise_and_never_make_phantom_rows(store: Store) -> None:
    sid = lai.init()
    lai.create_step(action="real")
    lai.create_event(description="real")
    for call in (lambda: lai.update_step(step_id="nope", state="phantom"),
                 lambda: lai.end_step(step_id="nope"),
                 lambda: lai.update_event(event_id="zzz", result="phantom"),
                 lambda: lai.end_event(event_id="zzz"),
                 lambda: lai.create_event(step_id="nope", description="orphan")):
        with pytest.raises(InvalidOperationError, match="was created in session"):
            call()
    lai.end_session()
    assert lai.flush(10)
    assert store.get_step("nope") is None and store.get_event("zzz") is None
    tree = store.session_tree(sid)
    assert (tree["step_count"], tree["event_count"]) == (1, 1)


def test_a_session_continued_again_here_still_knows_the_ids_it_made(store: Store) -> None:
    """Detaching drops the process's state of the session; continuing it in
    the same process must not forget which steps and events it made."""
    sid = lai.init(session_name="handed back", auto_end=False)
    step = lai.create_step(action="opened before the detach")
    event = lai.create_event(description="made before the detach")
    lai.detach()
    with lai.continued(sid):
        lai.end_event(event_id=event, result="ended after")
        lai.end_step(step_id=step, state="ended after")
        lai.end_session()
    assert lai.flush(10)
    assert store.get_event(event)["result"] == "ended after"
    assert store.get_step(step)["state"] == "ended after"


def test_an_event_id_of_another_session_never_merges_into_it(store: Store) -> None:
    first = lai.init(session_name="first")
    event = lai.create_event(description="mine", result="kept")
    step = lai.create_step(action="mine")
    with lai.session("second"):
        for call in (lambda: lai.update_event(event_id=event, result="overwritten"),
                     lambda: lai.end_step(step_id=step, state="taken over")):
            with pytest.raises(InvalidOperationError, match="was created in session"):
                call()
    lai.update_event(event_id=event, description="still mine")  # its own session may
    lai.end_session()
    assert lai.flush(10)
    row = store.get_event(event)
    assert (row["session_id"], row["result"], row["description"]) == (first, "kept",
                                                                      "still mine")
    assert store.get_step(step)["state"] is None
    # The store itself refuses, rather than silently skips, a record whose id
    # another session holds (what any other writer of the file might send).
    with pytest.raises(IdInUseError, match="already in use"):
        store.write([("event", event, 9e9, {"session_id": "elsewhere", "result": "x"})])
    assert store.get_event(event)["result"] == "kept"
