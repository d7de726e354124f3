"""Deleting sessions (lucidic.reading.retention) on SQLite and PostgreSQL:
every row of every table that hangs off a deleted session goes, nothing of
another session does, the sums across sessions stay exact, a prune keeps
what is still being written, and a record for a deleted session arriving
later is refused for good. (Beside the server tests for their SQLite and
PostgreSQL fixtures.)"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_derived import (
    BASE,
    DAY,
    _assert_hourly_kept,
    _assert_pages_exact,
    _assert_percentiles_exact,
    _notes,
    _recounted,
    _refresh_all,
    _stale_hours,
    _timed_world,
    _timing_counts,
    _world,
)

from lucidic import evalstore
from lucidic._sinks import LocalSink, RecordsRefusedError
from lucidic.reading import retention
from lucidic.reading.retention import delete_sessions, prune
from lucidic.store import DeletedSessionError, Store, UnknownSessionError


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    yield s
    s.close()


#: Every table of the schema, and how a row of it names its session (a
#: column; None: a table of sums across sessions, or of no session at all).
#: A new table fails the test until it says what becomes of its rows.
SESSION_COLUMN: dict[str, str | None] = {
    "sessions": "id", "steps": "session_id", "events": "session_id",
    "scores": "session_id", "rubric_results": "session_id", "evaluations": "session_id",
    "uploads": "session_id", "otlp_traces": "session_id", "otlp_spans": None,
    "changed_sessions": "session_id", "session_totals": "session_id",
    "session_text": "session_id", "session_activity": "session_id",
    "llm_timings": "session_id", "timing_counts": None, "hourly_activity": None,
    "stale_hours": None, "deleted_sessions": "session_id", "experiments": None,
    "mass_sims": None, "projects": None, "api_keys": None, "web_sessions": None,
    "prompts": None, "prompt_labels": None, "lucidic_meta": None,
}


def _tables(store: Store) -> set[str]:
    if store.dialect == "sqlite":
        rows = store.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r["name"] for r in rows}
    rows = store.query("SELECT table_name AS name FROM information_schema.tables "
                       "WHERE table_schema = current_schema()")
    return {r["name"] for r in rows}


def _rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table."""
    assert _tables(store) == set(SESSION_COLUMN)
    return {table: store.query(f"SELECT * FROM {table}") for table in SESSION_COLUMN}


def _key(row: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in row.items()))


def _belongs(table: str, row: dict[str, Any], victims: set[str],
             rows: dict[str, list[dict[str, Any]]]) -> bool:
    """Whether a row hangs off one of the victims."""
    column = SESSION_COLUMN[table]
    if table == "uploads":
        steps = {r["id"] for r in rows["steps"] if r["session_id"] in victims}
        events = {r["id"] for r in rows["events"] if r["session_id"] in victims}
        return (row["session_id"] in victims or row["step_id"] in steps
                or row["event_id"] in events)
    if table == "otlp_traces":
        return False  # kept, as their ids are: a late span or score of them is refused
    if table == "otlp_spans":
        return any(t["trace_id"] == row["trace_id"] and t["project"] == row["project"]
                   and t["session_id"] in victims for t in rows["otlp_traces"])
    return column is not None and row[column] in victims


#: Tables whose rows a deletion corrects (sums across sessions, checked
#: against a recount) or adds (the deleted ids).
_CORRECTED = {"timing_counts", "hourly_activity", "stale_hours", "deleted_sessions"}


def _extras(store: Store, sessions: list[str]) -> None:
    """Rows of every other table that hangs off a session: scores, rubric
    results, evaluation claims, uploads (by session, step and event), OTLP
    bookkeeping; experiments and mass simulations they name."""
    ph = store.placeholder
    steps = {r["session_id"]: r["id"] for r in store.query("SELECT id, session_id FROM steps")}
    events = {r["session_id"]: r["id"] for r in store.query("SELECT id, session_id FROM events")}
    for n, sid in enumerate(sessions):
        project = (store.get_session(sid) or {}).get("project") or "p"
        store.write([("session", sid, BASE, {"project": project, "experiment_id": "exp1",
                                             "mass_sim_id": "ms1"})]
                    if store.get_session(sid) else [])
        store.write([("score", f"sc-{sid}", BASE, {"session_id": sid, "name": "quality",
                                                  "value": 0.5})])
        evalstore.claim(store, project, sid, ["judge"], "owner", 60.0)
        evalstore.complete(store, project, sid, "judge", "owner", scores=[{"name": "j",
                           "value": 1.0}], criteria=[{"criterion": "c", "weight": 1.0,
                           "value": 1.0}], error=None, evaluator_session_id=None, force=False)
        for what, step, event in (("s", None, None), ("t", steps.get(sid), None),
                                  ("e", None, events.get(sid))):
            store.execute(
                "INSERT INTO uploads (id, project, purpose, session_id, step_id, event_id, nth, "
                f"created_at, expires_at, data) VALUES ({', '.join([ph] * 10)})",
                (f"up-{what}-{sid}", project, "screenshot", sid if what == "s" else None, step,
                 event, n, BASE, BASE + 900, b"\x89PNG"))
        store.execute("INSERT INTO otlp_traces (project, trace_id, session_id, is_placeholder) "
                      f"VALUES ({ph}, {ph}, {ph}, 0)", (project, f"tr-{sid}", sid))
        store.execute("INSERT INTO otlp_spans (project, trace_id, span_id, is_step) "
                      f"VALUES ({ph}, {ph}, {ph}, 1)", (project, f"tr-{sid}", f"sp-{sid}"))


def _assert_exact_after(store: Store) -> None:
    """Pages, sums by hour and timing counts as a recount says, before and
    after the refresher has run."""
    _assert_pages_exact(store)
    _assert_hourly_kept(store)
    assert _timing_counts(store) == _recounted(store)
    _refresh_all(store)
    assert _notes(store) == {} and _stale_hours(store) == set()
    _assert_pages_exact(store)
    _assert_hourly_kept(store)
    assert _timing_counts(store) == _recounted(store)


@pytest.mark.parametrize("refreshed", [True, False], ids=["refreshed", "noted"])
def test_deleting_sessions_removes_every_row_of_theirs_and_nothing_of_others(
        store: Store, refreshed: bool) -> None:
    rng = random.Random(21)
    store.write([*_world(rng, 40), *_timed_world(rng, "t", 12)])
    sessions = sorted({r["id"] for r in store.query("SELECT id FROM sessions")}
                      | {"s3"})  # (s3: only its steps and events name it)
    _extras(store, sessions)
    _refresh_all(store)
    if not refreshed:  # noted again: their derived rows stale
        store.write([("session", r["id"], BASE, {"project": r["project"]})
                     for r in store.query("SELECT id, project FROM sessions")])
        store.write([("step", "s3-late", BASE, {"session_id": "s3", "action": "late"})])
        assert _notes(store)
    victims = {"s1", "s3", "s4", "s9", "t1", "t2"}
    before = _rows(store)
    assert all(any(_belongs(t, r, victims, before) for r in before[t])
               for t in ("sessions", "steps", "events", "scores", "rubric_results",
                         "evaluations", "uploads", "otlp_spans",
                         "session_activity", "llm_timings"))

    # (noted just now: forced, or the unfinished ones count as being written to)
    done = delete_sessions(store, [*sorted(victims), "never-stored"], force=not refreshed)

    assert done.deleted == sorted(victims) and done.unknown == ["never-stored"]
    assert done.running == []
    after = _rows(store)
    for table, rows in before.items():
        if table in _CORRECTED:
            continue
        kept = [r for r in rows if not _belongs(table, r, victims, before)]
        assert sorted(map(_key, after[table])) == sorted(map(_key, kept)), table
    assert {r["session_id"] for r in after["deleted_sessions"]} == victims
    assert victims <= {r["session_id"] for r in after["otlp_traces"]}
    # experiments and mass simulations stay, with the runs still stored
    assert {r["id"] for r in after["experiments"]} == {"exp1"}
    assert {r["id"] for r in after["mass_sims"]} == {"ms1"}
    _assert_exact_after(store)
    _assert_percentiles_exact(store)
    assert store.deleted_among(victims) == sorted(victims)
    assert not store.deleted_among(["s2"]) and not store.deleted_among(["s1"], "q")


def test_a_deletion_goes_a_batch_to_a_transaction(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(retention, "BATCH", 3)
    store.write([("session", f"b{n}", BASE, {"project": "p", "started_at": BASE,
                                             "is_finished": True}) for n in range(10)])
    transactions: list[int] = []
    real = store.transaction

    def counted(fn: Any, **kwargs: Any) -> Any:
        transactions.append(1)
        return real(fn, **kwargs)

    monkeypatch.setattr(store, "transaction", counted)
    assert delete_sessions(store, [f"b{n}" for n in range(10)]).deleted == \
        sorted(f"b{n}" for n in range(10))
    assert len(transactions) == 4 and store.count("sessions") == 0


def test_a_postgresql_deletion_reads_the_derived_rows_once_in_deleting_them(
        pg_url: str) -> None:
    """On PostgreSQL a deletion takes the timing counts to take off and the
    hours to sum again from the rows its DELETEs return, as the refresher
    does: it looks session_activity's and llm_timings' rows up once each (to
    delete them), where it read session_activity twice and llm_timings 3
    times (until PostgreSQL first analyses them, each time a whole scan)."""
    from test_derived import _scans, scan_counted_world

    store = scan_counted_world(pg_url)
    try:
        before = {table: _scans(store, table) for table in ("session_activity", "llm_timings")}
        assert delete_sessions(store, ["t1", "t2", "t3"], force=True).deleted == [
            "t1", "t2", "t3"]
        after = {table: _scans(store, table) for table in ("session_activity", "llm_timings")}
        assert {table: after[table] - before[table] for table in before} == {
            "session_activity": 1, "llm_timings": 1}
        _assert_exact_after(store)
    finally:
        store.close()


def test_a_session_of_another_project_is_unknown_to_a_scoped_deletion(store: Store) -> None:
    store.write([("session", "mine", BASE, {"project": "p", "started_at": BASE}),
                 ("session", "theirs", BASE, {"project": "q", "started_at": BASE})])
    done = delete_sessions(store, ["mine", "theirs"], project="p", force=True)
    assert done.deleted == ["mine"] and done.unknown == ["theirs"]
    assert store.get_session("theirs") is not None
    # deleted already: unknown the second time
    assert delete_sessions(store, ["mine"]).unknown == ["mine"]


def test_a_session_being_written_to_is_left_unless_forced(store: Store) -> None:
    now = time.time()
    store.write([("session", "live", now - 5, {"project": "p", "started_at": now - 3600}),
                 ("step", "live-1", now - 5, {"session_id": "live", "started_at": now - 5}),
                 ("session", "ended", now - 5, {"project": "p", "started_at": now - 60,
                                                "is_finished": True, "ended_at": now - 5}),
                 ("session", "quiet", now - 3 * 3600, {"project": "p",
                                                       "started_at": now - 3 * 3600})])
    _refresh_all(store)  # (a note says when the store was last written: now)
    done = delete_sessions(store, ["live", "ended", "quiet"], now=now)
    assert done.running == ["live"] and done.deleted == ["ended", "quiet"]
    assert store.get_session("live") is not None
    assert delete_sessions(store, ["live"], force=True, now=now).deleted == ["live"]
    assert store.count("steps") == 0


def _aged_world(now: float) -> list[tuple]:
    old = now - 40 * DAY
    return [
        # ended long ago: pruned
        ("session", "old-ended", old + 60, {"project": "p", "started_at": old,
                                            "is_finished": True, "ended_at": old + 60}),
        ("event", "old-ended-e", old + 30, {"session_id": "old-ended", "started_at": old + 30,
                                            "type": "llm", "model": "m", "duration": 1.0}),
        # never ended, nothing written for 40 days: abandoned, pruned
        ("session", "abandoned", old, {"project": "q", "started_at": old}),
        ("step", "abandoned-1", old + 5, {"session_id": "abandoned", "started_at": old + 5}),
        # started long ago, still written to yesterday: kept
        ("session", "long-running", old, {"project": "p", "started_at": old}),
        ("step", "long-running-1", now - DAY, {"session_id": "long-running",
                                               "started_at": now - DAY}),
        # ended long ago, but an event arrived for it since (late): kept
        ("session", "late-event", old + 60, {"project": "p", "started_at": old,
                                             "is_finished": True, "ended_at": old + 60}),
        ("event", "late-event-e", now - 2 * DAY, {"session_id": "late-event",
                                                  "started_at": old + 10}),
        # ended long ago, but its session record was written again since: kept
        ("session", "ended-late", now - 3 * DAY, {"project": "p", "started_at": old,
                                                  "is_finished": True, "ended_at": old + 9}),
        # recent: kept
        ("session", "recent", now - DAY, {"project": "p", "started_at": now - DAY,
                                          "is_finished": True, "ended_at": now - DAY}),
    ]


def test_prune_deletes_old_sessions_and_keeps_those_still_written_to(store: Store) -> None:
    now = time.time()
    store.write(_aged_world(now))
    _refresh_all(store)
    dry = prune(store, 30 * DAY, dry_run=True, now=now, keep_ids=10)
    assert dry.sessions == 2 and sorted(dry.ids) == ["abandoned", "old-ended"]
    assert store.count("sessions") == 6  # nothing deleted by a dry run
    scoped = prune(store, 30 * DAY, project="q", now=now, keep_ids=10)
    assert scoped.ids == ["abandoned"]
    done = prune(store, 30 * DAY, now=now, batch=1, keep_ids=10)
    assert done.sessions == 1 and done.ids == ["old-ended"]
    assert done.oldest == done.newest == now - 40 * DAY
    assert sorted(r["id"] for r in store.query("SELECT id FROM sessions")) == [
        "ended-late", "late-event", "long-running", "recent"]
    assert prune(store, 30 * DAY, now=now).sessions == 0
    _assert_exact_after(store)


def test_prune_takes_an_old_session_that_never_said_when_it_started(store: Store) -> None:
    """A session with no start (made by a score, or for a step that came
    before it) is judged by when it was last written, as every session is."""
    now = time.time()
    old = now - 40 * DAY
    store.write([
        ("session", "unstarted-old", old, {"project": "p"}),
        ("step", "unstarted-old-1", old, {"session_id": "unstarted-old", "action": "a"}),
        ("session", "unstarted-recent", now - DAY, {"project": "p"}),
        ("session", "unstarted-late-step", old, {"project": "p"}),
        ("step", "late-step-1", now - DAY, {"session_id": "unstarted-late-step",
                                            "action": "a"}),
        ("session", "started-old", old, {"project": "p", "started_at": old,
                                         "is_finished": True, "ended_at": old}),
    ])
    _refresh_all(store)
    assert store.get_session("unstarted-old")["started_at"] is None
    dry = prune(store, 30 * DAY, now=now, dry_run=True, keep_ids=10)
    assert sorted(dry.ids) == ["started-old", "unstarted-old"]
    done = prune(store, 30 * DAY, now=now, batch=1, keep_ids=10)
    assert sorted(done.ids) == ["started-old", "unstarted-old"] and done.sessions == 2
    assert (done.oldest, done.newest) == (old, old)
    assert sorted(r["id"] for r in store.query("SELECT id FROM sessions")) == [
        "unstarted-late-step", "unstarted-recent"]
    assert store.deleted_among(["unstarted-old"])
    assert store.query("SELECT id FROM steps") == [{"id": "late-step-1"}]


def test_a_session_noted_as_written_recently_is_not_pruned(store: Store) -> None:
    """A record time says little of when it was written (a clock behind, a
    spool replayed): the store's own time of its last write, while noted, counts."""
    now = time.time()
    old = now - 40 * DAY
    store.write([("session", "replayed", old, {"project": "p", "started_at": old,
                                               "is_finished": True, "ended_at": old})])
    assert prune(store, 30 * DAY, now=now, dry_run=True).sessions == 0   # noted just now
    assert prune(store, 30 * DAY, now=now + 31 * DAY, dry_run=True).sessions == 1


def test_records_for_a_deleted_session_are_refused_for_good(store: Store) -> None:
    now = time.time()
    store.write([("session", "gone", now, {"project": "p", "started_at": now,
                                           "is_finished": True}),
                 ("session", "kept", now, {"project": "p", "started_at": now})])
    assert delete_sessions(store, ["gone"]).deleted == ["gone"]
    late = [("step", "gone-late", now + 1, {"session_id": "gone", "started_at": now + 1}),
            ("event", "kept-e", now + 1, {"session_id": "kept", "started_at": now + 1})]
    for records in (late[:1], [("session", "gone", now + 2, {"project": "p",
                                                             "ended_at": now + 2})],
                    [("score", "gone-score", now, {"session_id": "gone", "name": "q",
                                                   "value": 1.0})]):
        with pytest.raises(DeletedSessionError) as refused:
            store.write(records)
        assert refused.value.session_ids == ["gone"] and not refused.value.transient
    with pytest.raises(DeletedSessionError):   # the server's path, scoped to a project
        store.write_for_project(late[:1], "p")
    with pytest.raises(UnknownSessionError) as unknown:
        store.write_for_project([late[0], ("step", "x", now, {"session_id": "never"})], "p")
    assert unknown.value.session_ids == ["gone", "never"] and unknown.value.deleted == ["gone"]
    with pytest.raises(DeletedSessionError):    # a session record making it again
        store.write_for_project([("session", "gone", now + 3, {"started_at": now})], "p")
    with pytest.raises(DeletedSessionError):
        store.create_session(("session", "gone", now, {"started_at": now}), "p")
    # nothing of it came back; the other session takes its records
    store.write(late[1:])
    assert store.get_session("gone") is None and store.get_step("gone-late") is None
    assert store.count("events") == 1 and "gone" not in _notes(store)


def test_the_embedded_sink_sets_aside_only_the_records_of_a_deleted_session(
        tmp_path: Path) -> None:
    sink = LocalSink(tmp_path / "store.db")
    store = sink.local_store()
    now = time.time()
    store.write([("session", "gone", now, {"project": "p", "started_at": now,
                                           "is_finished": True}),
                 ("session", "kept", now, {"project": "p", "started_at": now})])
    delete_sessions(store, ["gone"])
    batch = [("event", f"e{n}", now, {"session_id": "gone" if n % 3 == 0 else "kept",
                                      "started_at": now}) for n in range(12)]
    with pytest.raises(RecordsRefusedError) as refused:
        sink.write(batch)
    assert refused.value.later == []
    assert sorted(r[1] for r, _ in refused.value.refused) == ["e0", "e3", "e6", "e9"]
    assert "'gone' was deleted" in refused.value.refused[0][1]
    assert store.count("events") == 8
    sink.close()


def _orphans(store: Store) -> dict[str, int]:
    """Rows of a session that has no session row (none are written here)."""
    found = {}
    for table in ("steps", "events", "changed_sessions", "session_activity",
                  "session_totals", "scores"):
        rows = store.query(f"SELECT COUNT(*) AS n FROM {table} t WHERE NOT EXISTS "
                           "(SELECT 1 FROM sessions s WHERE s.id = t.session_id)")
        found[table] = int(rows[0]["n"])
    return found


def test_writers_racing_a_prune_leave_whole_sessions_or_none(db_url: str) -> None:
    """Writers keep writing to old sessions (late records) and to new ones
    while a prune deletes the old ones a few at a time: every old session
    ends either whole (if a record reached it in time) or gone with every
    row, and no write fails but for naming a deleted session."""
    now = time.time()
    old = now - 40 * DAY
    setup = Store(db_url)
    olds = [f"old{n}" for n in range(120)]
    setup.write([record for n, sid in enumerate(olds) for record in (
        ("session", sid, old, {"project": "p", "started_at": old + n, "is_finished": True,
                               "ended_at": old + n}),
        ("event", f"{sid}-e", old, {"session_id": sid, "started_at": old + n, "type": "llm",
                                    "model": "m", "duration": 1.0}))])
    _refresh_all(setup)
    stop = threading.Event()
    failures: list[BaseException] = []
    refused: list[str] = []
    written: list[str] = []

    def writer(seed: int) -> None:
        store = Store(db_url, busy_timeout=30)
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                sid = rng.choice(olds)
                new = f"new-{uuid.uuid4().hex[:8]}"
                records = [("event", f"{sid}-late-{uuid.uuid4().hex[:8]}", time.time(),
                            {"session_id": sid, "started_at": old + 1, "type": "tool"}),
                           ("session", new, time.time(), {"project": "p",
                                                         "started_at": time.time()})]
                try:
                    store.write_for_project(records, "p")
                    written.append(sid)
                except UnknownSessionError as exc:
                    assert exc.session_ids == [sid] and exc.deleted == [sid], exc
                    refused.append(sid)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        while len(written) < 5:
            time.sleep(0.01)
        pruner = Store(db_url, busy_timeout=30)
        pruned = prune(pruner, 30 * DAY, batch=7, keep_ids=1000)
        pruner.close()
        deadline = time.monotonic() + 60
        while not refused and time.monotonic() < deadline:  # (a late record for one)
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert failures == []
    assert pruned.sessions > 0 and refused
    kept = {r["id"] for r in setup.query("SELECT id FROM sessions")}
    assert set(pruned.ids).isdisjoint(kept)
    for sid in olds:   # whole, or gone
        assert (sid in kept) != (sid in pruned.ids), sid
    assert set(written) <= kept   # a late record reached it: no longer old
    assert _orphans(setup) == dict.fromkeys(_orphans(setup), 0)
    _assert_exact_after(setup)
    setup.close()


def test_init_with_a_deleted_sessions_id_says_the_id_was_deleted(tmp_path: Path) -> None:
    from helpers import run_python

    home = tmp_path / "home"
    made = run_python("""
        import lucidic as lai
        print(lai.init(session_name="soon gone"))
        lai.end_session(is_successful=True)
        assert lai.flush()
    """, home=home)
    sid = made.stdout.strip()
    store = Store(home / "lucidic.db")
    assert delete_sessions(store, [sid]).deleted == [sid]
    store.close()
    reused = run_python(f"""
        import lucidic as lai
        from lucidic.errors import InvalidOperationError
        try:
            lai.init(session_name="again", session_id={sid!r})
        except InvalidOperationError as exc:
            print("refused:", exc)
    """, home=home)
    assert f"refused: {sid!r} was deleted" in reused.stdout, reused.stdout + reused.stderr


def test_continuing_a_deleted_session_says_it_was_deleted(tmp_path: Path) -> None:
    """Not that it does not exist: the id was a session's, and stays taken."""
    from helpers import run_python

    home = tmp_path / "home"
    sid = run_python("""
        import lucidic as lai
        print(lai.init(session_name="soon gone"))
        assert lai.flush()
    """, home=home).stdout.strip()
    store = Store(home / "lucidic.db")
    assert delete_sessions(store, [sid], force=True).deleted == [sid]
    store.close()
    tried = run_python(f"""
        import lucidic as lai
        from lucidic.errors import InvalidOperationError
        for attempt in (lambda: lai.continue_session({sid!r}),
                        lambda: lai.continue_session("never-was")):
            try:
                attempt()
            except InvalidOperationError as exc:
                print("refused:", exc)
    """, home=home)
    refusals = tried.stdout.splitlines()
    assert refusals[0].startswith(f"refused: session {sid!r} was deleted"), tried.stdout
    assert refusals[1].startswith("refused: session 'never-was' does not exist"), tried.stdout


def test_spans_racing_the_deletion_of_their_session_are_refused_alone(pg_url: str) -> None:
    """PostgreSQL: a deletion that commits while an OTLP request is being
    stored, after the request looked its sessions up, still refuses only
    the deleted session's spans (the request is stored again, seeing it),
    not every span of the request."""
    import psycopg
    from test_otlp import agent_trace, encode_protobuf, make_spans

    from lucidic.server.otlp import _spans
    from lucidic.server.otlp_ingest import ingest

    store = Store(pg_url)
    try:
        gone = make_spans(agent_trace("gone"))
        ingest(store, "p", _spans(encode_protobuf(gone))[0])
        spans = _spans(encode_protobuf([*gone, *make_spans(agent_trace("kept"))]))[0]
        # A deletion under way: the session's row locked and deleted, its
        # id noted, not committed yet.
        deleting = psycopg.connect(pg_url)
        deleting.execute("SELECT id FROM sessions WHERE id = 'gone' FOR UPDATE")
        deleting.execute("INSERT INTO deleted_sessions (session_id, project, deleted_at) "
                         "VALUES ('gone', 'p', 0)")
        deleting.execute("DELETE FROM steps WHERE session_id = 'gone'")
        deleting.execute("DELETE FROM events WHERE session_id = 'gone'")
        deleting.execute("DELETE FROM sessions WHERE id = 'gone'")
        pid = store.query("SELECT pg_backend_pid() AS pid")[0]["pid"]
        results: list[Any] = []
        writer = threading.Thread(target=lambda: results.append(
            _outcome_or_error(lambda: ingest(store, "p", spans))))
        writer.start()
        watcher = Store(pg_url)
        for _ in range(600):   # until the request waits for the deletion's row lock
            if watcher.query("SELECT 1 AS one FROM pg_stat_activity WHERE pid = %s "
                             "AND wait_event_type = 'Lock'", (pid,)):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the request never waited for the deletion")
        watcher.close()
        deleting.commit()
        deleting.close()
        writer.join(60)
        (outcome,) = results
        assert not isinstance(outcome, Exception), outcome
        assert (outcome.accepted, outcome.rejected) == (len(spans) - len(gone), len(gone))
        assert outcome.reason == ("session 'gone' was deleted: records for a deleted "
                                  "session are refused")
        assert store.get_session("gone") is None and store.get_session("kept") is not None
    finally:
        store.close()


def _outcome_or_error(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return exc
