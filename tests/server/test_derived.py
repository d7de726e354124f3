"""Derived data (lucidic.reading.derived) on both databases: every write notes
the sessions it touched, and an upgraded store notes every session it holds.
(Here beside the server tests for their SQLite-and-PostgreSQL fixtures.)"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from server_support import raw_connection
from test_otlp import agent_trace, encode_protobuf, make_spans

from lucidic._activity_hours import SUMS
from lucidic._timing_buckets import (
    BOTTOM_BUCKET,
    MEASURES,
    MIN_EXPONENT,
    PER_POWER,
    TOP_BUCKET,
    TOP_EXPONENT,
)
from lucidic.reading import Reader, SessionQuery, derived
from lucidic.reading.derived import NOTED_IDS, REFRESHER_LOCK, TABLES, TOTALS, refresh
from lucidic.reading.search import TextMatch
from lucidic.reading.totals import cost_sum, int_sum, saturated
from lucidic.server.otlp import _spans
from lucidic.server.otlp_ingest import ingest
from lucidic.store import MIGRATIONS, SCHEMA_VERSION, IdInUseError, Store

T0 = 1_700_000_000.0


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    yield s
    s.close()


def _notes(store: Store) -> dict[str, int]:
    """The noted sessions and their notes' versions."""
    return {r["session_id"]: int(r["version"])
            for r in store.query("SELECT session_id, version FROM changed_sessions")}


def _forget_notes(store: Store) -> None:
    store.execute("DELETE FROM changed_sessions")


def _session(sid: str, at: float = T0, **fields: Any) -> tuple:
    return ("session", sid, at, {"project": "p", "started_at": at, **fields})


def _event(eid: str, sid: str, at: float = T0, **fields: Any) -> tuple:
    return ("event", eid, at, {"session_id": sid, "started_at": at, **fields})


def test_every_write_notes_the_sessions_it_touched_in_its_own_transaction(
        store: Store) -> None:
    store.write([_session("a"), _event("a-e", "a"),
                 ("step", "b-s", T0, {"session_id": "b", "started_at": T0})])
    # (b has no session row yet: its step is noted all the same)
    assert _notes(store) == {"a": 1, "b": 1}
    # An amended event renews a's note if it is older than a second (its
    # time says when the session was last written, to a second).
    store.execute("UPDATE changed_sessions SET noted_at = 0 WHERE session_id = 'a'")
    store.write([_event("a-e", "a", T0 + 1, cost=0.5)])
    assert _notes(store) == {"a": 2, "b": 1}
    assert store.query("SELECT noted_at FROM changed_sessions WHERE session_id = 'a'"
                       )[0]["noted_at"] > time.time() - 60
    store.write([_event("a-e", "a", T0 + 2, cost=0.6)])  # within a second: left as it is
    assert _notes(store) == {"a": 2, "b": 1}

    _forget_notes(store)
    store.write_for_project([_session("c", project="q"), _event("c-e", "c")], "q")
    assert _notes(store) == {"c": 1}

    _forget_notes(store)
    assert store.create_session(_session("d"), "p")
    assert _notes(store) == {"d": 1}

    _forget_notes(store)
    store.transaction(lambda cur: store.apply(cur, [_event("e-e", "a", cost=1.0)], "p"))
    assert _notes(store) == {"a": 1}

    # A write refused (here: an id another session holds) notes nothing.
    _forget_notes(store)
    with pytest.raises(IdInUseError):
        store.write([_event("a-e", "other")])
    assert _notes(store) == {}


def test_a_postgresql_write_notes_its_sessions_in_the_round_trip_of_its_last_upsert(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement of its own cost the server about 85 µs a request: the
    note rides on the last upsert (when it takes its rows as JSON), the way
    note_changed would make it, renewed at most once a second."""
    import psycopg

    store = Store(pg_url)
    statements: list[str] = []
    execute = psycopg.Cursor.execute

    def recorded(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(query))
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", recorded)
    try:
        store.write_for_project([_session("a"), _session("b"), _event("a-e", "a"),
                                 ("step", "b-s", T0, {"session_id": "b", "started_at": T0})],
                                "p")
        assert _notes(store) == {"a": 1, "b": 1}
        writes = [sql for sql in statements if sql.startswith(("INSERT", "WITH"))]
        assert len(writes) == 3                     # sessions, a step, an event
        assert not any(sql.startswith("INSERT INTO changed_sessions") for sql in writes)
        store.execute("UPDATE changed_sessions SET noted_at = 0 WHERE session_id = 'a'")
        store.write_for_project([_event("a-e", "a", T0 + 1, cost=0.5), _session("c"),
                                 _event("c-e", "c", T0 + 1)], "p")
        assert _notes(store) == {"a": 2, "b": 1, "c": 1}
        store.write_for_project([_event("a-e", "a", T0 + 2, cost=0.6)], "p")  # within a second
        assert _notes(store) == {"a": 2, "b": 1, "c": 1}
    finally:
        store.close()


def test_an_otlp_trace_moved_out_of_its_placeholder_session_notes_both(store: Store) -> None:
    spans = make_spans(agent_trace("conv"))
    root = next(s for s in spans if s.parent is None)
    for span in spans:
        if span is not root:
            ingest(store, "p", _spans(encode_protobuf([span]))[0])
    (placeholder,) = [r["session_id"] for r in store.query("SELECT session_id FROM otlp_traces")]
    assert placeholder != "conv"
    _forget_notes(store)
    ingest(store, "p", _spans(encode_protobuf([root]))[0])  # names the session: rows move
    assert set(_notes(store)) == {placeholder, "conv"}


def test_an_upgraded_store_notes_every_session_it_holds(db_url: str) -> None:
    """From schema version 8 (the one before derived data): every session,
    and every session that only steps or events name, is noted at once."""
    before = [(v, s) for v, s in MIGRATIONS if v <= 8]
    conn, ph = raw_connection(db_url)
    conn.execute("CREATE TABLE lucidic_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for _, statements in before:
        for statement in statements:
            conn.execute(statement)
    conn.execute("INSERT INTO lucidic_meta VALUES ('schema_version', '8')")
    conn.execute(f"INSERT INTO sessions (id, project, started_at, updated_at) "
                 f"VALUES ({ph}, 'p', 1, 1), ({ph}, 'p', 2, 2)", ("s1", "s2"))
    conn.execute(f"INSERT INTO events (id, session_id, updated_at) VALUES ({ph}, {ph}, 1)",
                 ("e", "orphan"))
    conn.close()
    upgraded = Store(db_url)
    try:
        assert set(_notes(upgraded)) == {"s1", "s2", "orphan"}
        _assert_pages_exact(upgraded)      # read from rows
        _refresh_all(upgraded)
        assert _notes(upgraded) == {}
        _assert_pages_exact(upgraded)      # read from derived data
    finally:
        upgraded.close()


# -- pages read from derived data are exactly what every row says -----------------------

DAY = 86400.0
BASE = (T0 // DAY) * DAY
WORDS = ("plan", "Straße", "STRASSE", "İstanbul", "ΣΊΣΥΦΟΣ", "Ꭰ", "Kelvin K", "你好",
         "naïve", "quote \"q\"", "back\\slash", "100%", "under_score", "ﬀ", "Ǆ", "émoji 🙂",
         "TAB", "a b", "xyz")
SEARCHES = ("plan", "PLAN", "straße", "strasse", "STRASSE", "istanbul", "İstanbul", "i̇",
            "σίσυφος", "ΣΊΣΥΦΟΣ", "Ꭰ", "ꭰ", "k", "K", "kelvin", "你好", "你", "naïve",
            "NAÏVE", '"q"', 'quote "q', "\\", "back\\s", "100%", "%", "_", "under_",
            "ff", "ﬀ", "ǆ", "Ǆ", "🙂", "a b", "xyz", "XYZ", "role", '"role"', "s0",
            "nothing at all", "1", "0.5", "gpt", "m-2")
MODELS = (None, "m-1", "m-2", "gpt")


def _world(rng: Any, sessions: int, prefix: str = "s") -> list[tuple]:
    """Sessions in two projects with steps and events of every kind, text in
    several scripts, some of it in JSON columns; events cross hour and day
    boundaries; one session's rows arrive before its session record."""
    records: list[tuple] = []
    for i in range(sessions):
        sid = f"{prefix}{i}"
        at = BASE + rng.choice((0, 1, 2)) * DAY + rng.uniform(-4000, 90000)
        if i != 3:  # s3: no session row (its events still count on the dashboard)
            records.append(("session", sid, at, {
                "project": "p" if i % 3 else "q", "started_at": at,
                "name": f"{rng.choice(WORDS)} #{i}", "tags": [rng.choice(WORDS)],
                "is_finished": i % 2 == 0, "is_successful": [None, True, False][i % 3]}))
        for j in range(rng.randrange(3)):
            records.append(("step", f"{sid}-st{j}", at + j, {
                "session_id": sid, "started_at": at + j, "action": rng.choice(WORDS),
                "error": "boom" if rng.random() < 0.2 else None}))
        for j in range(rng.randrange(5)):
            started = at + rng.uniform(0, 7200)
            llm = rng.random() < 0.5
            fields: dict[str, Any] = {
                "session_id": sid, "started_at": started, "type": "llm" if llm else "tool",
                "description": rng.choice(WORDS), "cost": rng.choice((None, 0.1, 0.25, 1e-7)),
                "input_tokens": rng.choice((None, 3, 1000)), "output_tokens": rng.choice(
                    (None, 7)), "error": "failed" if rng.random() < 0.2 else None}
            if llm:
                fields.update(model=rng.choice(MODELS), request_model=rng.choice(MODELS),
                              duration=rng.choice((None, 0.5, 1.5, rng.random())),
                              time_to_first_token=rng.choice((None, 0.1, rng.random())),
                              input=[{"role": "user", "content": rng.choice(WORDS)}])
            else:
                fields["arguments"] = {"q": rng.choice(WORDS)}
            records.append(("event", f"{sid}-ev{j}", started, fields))
    # LLM calls of one model in one hour on either side of a range's end
    # (RANGES[1]): a group of session_activity across it.
    for n, at in enumerate((BASE + 1000, BASE + 1500, BASE + DAY + 3600.1,
                            BASE + DAY + 3600.5)):
        records.append(("event", f"{prefix}-edge{n}", at, {
            "session_id": f"{prefix}1", "started_at": at, "type": "llm", "model": "m-1",
            "cost": 0.5, "input_tokens": 10, "duration": n / 10}))
    return records


def _plain_search(store: Store, query: str) -> set[str]:
    match = TextMatch(store, query)
    prefix, prefix_params = match.id_prefix("s")
    rows, params = match.rows("s")
    return {r["id"] for r in store.query(f"SELECT s.id FROM sessions s WHERE {prefix} OR {rows}",
                                         [*prefix_params, *params])}


def _plain_totals(store: Store) -> dict[str, dict[str, Any]]:
    """Each session's sort keys, summed from every row as the list always did."""
    tokens = saturated(store, f"COALESCE({int_sum(store, 'input_tokens')}, 0) + "
                              f"COALESCE({int_sum(store, 'output_tokens')}, 0)")
    rows = store.query(
        "SELECT s.id, COALESCE(ev.cost, 0) AS cost, COALESCE(ev.tokens, 0) AS tokens, "
        "COALESCE(ev.events, 0) AS events, "
        "COALESCE(ev.errors, 0) + COALESCE(st.errors, 0) AS errors FROM sessions s "
        f"LEFT JOIN (SELECT session_id, {cost_sum('cost')} AS cost, {tokens} AS tokens, "
        "COUNT(*) AS events, SUM(CASE WHEN error IS NOT NULL OR type = 'error' THEN 1 ELSE 0 "
        "END) AS errors FROM events GROUP BY session_id) ev ON ev.session_id = s.id "
        "LEFT JOIN (SELECT session_id, COUNT(*) AS errors FROM steps WHERE error IS NOT NULL "
        "GROUP BY session_id) st ON st.session_id = s.id")
    return {r.pop("id"): r for r in rows}


def _plain_dashboard(store: Store, project: str | None, since: float,
                     until: float) -> dict[str, Any]:
    """The dashboard's figures from the events themselves, summed in Python."""
    events = store.query("SELECT e.*, s.project FROM events e LEFT JOIN sessions s "
                         "ON s.id = e.session_id")
    days: dict[int, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["started_at"] is None or not since <= e["started_at"] < until:
            continue
        if project is not None and e["project"] != project:
            continue
        # an LLM call answered without token counts, or without a cost
        without = {"llm_calls_without_tokens": e["type"] == "llm" and e["error"] is None
                   and e["input_tokens"] is None and e["output_tokens"] is None,
                   "llm_calls_without_cost": e["type"] == "llm" and e["error"] is None
                   and e["cost"] is None}
        day = days.setdefault(int(e["started_at"] // DAY), {
            "cost": 0.0, "input_tokens": 0, "output_tokens": 0, "llm_calls": 0,
            "llm_errors": 0, "events": 0, "errors": 0, **dict.fromkeys(without, 0)})
        day["cost"] += e["cost"] or 0.0
        day["input_tokens"] += e["input_tokens"] or 0
        day["output_tokens"] += e["output_tokens"] or 0
        day["events"] += 1
        day["errors"] += e["error"] is not None or e["type"] == "error"
        for key, counted in without.items():
            day[key] += counted
        if e["type"] == "llm":
            day["llm_calls"] += 1
            day["llm_errors"] += e["error"] is not None
            model = models.setdefault(e["model"] or e["request_model"] or "(no model)", {
                "calls": 0, "cost": 0.0, "input_tokens": 0, "output_tokens": 0, "errors": 0,
                "durations": [], "ttfts": [], **dict.fromkeys(without, 0)})
            model["calls"] += 1
            model["cost"] += e["cost"] or 0.0
            model["input_tokens"] += e["input_tokens"] or 0
            model["output_tokens"] += e["output_tokens"] or 0
            model["errors"] += e["error"] is not None
            for key, counted in without.items():
                model[key] += counted
            for key, column in (("durations", "duration"), ("ttfts", "time_to_first_token")):
                if e[column] is not None:
                    model[key].append(e[column])
    for model in models.values():
        for key, name in (("durations", "duration"), ("ttfts", "ttft")):
            values = sorted(model.pop(key))
            for p in (50, 95):
                model[f"{name}_p{p}"] = (values[(len(values) * p + 99) // 100 - 1]
                                         if values else None)
    return {"days": days, "models": models}


def _assert_dashboard_exact(store: Store, project: str | None, since: float,
                            until: float) -> None:
    board = Reader(store).dashboard(project, since, until)
    plain = _plain_dashboard(store, project, since, until)
    found_days = {int(d["day"]): d for d in board.days if d["events"]}
    assert set(found_days) == set(plain["days"]), (project, since, until)
    for number, expected in plain["days"].items():
        found = found_days[number]
        # costs are sums of sums: equal up to the last binary digits
        assert found["cost"] == pytest.approx(expected["cost"], rel=1e-12, abs=1e-15)
        assert {k: int(found[k]) for k in expected if k != "cost"} == \
            {k: v for k, v in expected.items() if k != "cost"}, (project, since, until)
    found_models = {m["model"]: m for m in board.models}
    assert set(found_models) == set(plain["models"])
    for name, expected in plain["models"].items():
        found = found_models[name]
        assert found["cost"] == pytest.approx(expected["cost"], rel=1e-12, abs=1e-15)
        assert {k: found[k] for k in expected if k != "cost"} == \
            {k: v for k, v in expected.items() if k != "cost"}, (name, project, since, until)
    for key in ("llm_calls_without_tokens", "llm_calls_without_cost"):
        assert getattr(board, key) == sum(d[key] for d in plain["days"].values())


RANGES = ((BASE - DAY, BASE + 4 * DAY), (BASE + 1234.5, BASE + DAY + 3600.25),
          (BASE + DAY, BASE + 2 * DAY), (BASE + 7200, BASE + 7200.5))


def _assert_pages_exact(store: Store) -> None:
    """Every sort (walked page by page with the keyset cursor), every
    search and the dashboard over several ranges, against every row."""
    reader = Reader(store)
    totals = _plain_totals(store)
    for sort in TOTALS:
        for descending in (True, False):
            for project in (None, "p"):
                seen: list[str] = []
                cursor = None
                while True:
                    page = reader.sessions(SessionQuery(project=project, sort=sort, limit=7,
                                                        descending=descending, cursor=cursor))
                    seen.extend(s["id"] for s in page.sessions)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                ids = [sid for sid in totals if project is None
                       or store.get_session(sid, project) is not None]
                expected = sorted(ids, key=lambda sid: (totals[sid][sort], sid),
                                  reverse=descending)
                if sort != "cost":
                    assert seen == expected, (sort, descending, project)
                    continue
                # A session's cost is a float sum, whose last binary digit
                # depends on the order the database adds its events in (any
                # plan's, as ever): equal costs may then be told apart.
                assert sorted(seen) == sorted(expected)
                costs = [totals[sid]["cost"] for sid in seen]
                assert costs == pytest.approx(sorted(costs, reverse=descending),
                                              rel=1e-12, abs=1e-15), (sort, descending)
    for query in SEARCHES:
        found = {s["id"] for s in reader.sessions(SessionQuery(search=query, limit=500)).sessions}
        assert found == _plain_search(store, query), query
    for project in (None, "p"):
        for since, until in RANGES:
            _assert_dashboard_exact(store, project, since, until)


def _hourly(store: Store) -> dict[tuple, tuple]:
    """hourly_activity's rows, by day, hour, model, kind and project."""
    return {(r["day"], r["hour"], r["model"], r["is_llm"], r["orphan"], r["project"]):
            tuple(r[c] for c in SUMS)
            for r in store.query("SELECT * FROM hourly_activity")}


def _resummed(store: Store) -> dict[tuple, tuple]:
    """session_activity's rows summed by day, hour, model, kind and project."""
    sums: dict[tuple, list[Any]] = {}
    for r in store.query("SELECT * FROM session_activity"):
        key = (r["day"], r["hour"], r["model"], r["is_llm"], int(r["project"] is None),
               r["project"] or "")
        found = sums.setdefault(key, [None] * len(SUMS))
        for i, column in enumerate(SUMS):
            if r[column] is not None:
                found[i] = (found[i] or 0) + r[column]
    return {key: tuple(found) for key, found in sums.items()}


def _stale_hours(store: Store) -> set[int]:
    return {r["hour"] for r in store.query("SELECT hour FROM stale_hours")}


def _assert_hourly_kept(store: Store) -> None:
    """hourly_activity sums session_activity exactly (costs up to the last
    binary digits: sums in another order), but in stale hours."""
    stale = _stale_hours(store)
    hourly, resummed = ({key: found for key, found in sums.items() if key[1] not in stale}
                        for sums in (_hourly(store), _resummed(store)))
    assert set(hourly) == set(resummed)
    cost = SUMS.index("cost")
    for key, found in hourly.items():
        expected = resummed[key]
        assert found[:cost] + found[cost + 1:] == expected[:cost] + expected[cost + 1:], key
        assert (found[cost] is None) == (expected[cost] is None)
        assert (found[cost] or 0.0) == pytest.approx(expected[cost] or 0.0, rel=1e-12)


def _refresh_all(store: Store) -> None:
    while refresh(store, quiet=-60, limit=7):
        pass


def test_pages_read_from_derived_data_are_exactly_what_every_row_says(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(derived, "HOURS_PER_ROUND", 3)  # (stale hours summed a few at a time)
    rng = random.Random(11)
    # (an event alone in its hour, moved to another below)
    store.write([*_world(rng, 60), ("event", "lone", T0, {"session_id": "s2", "type": "llm",
                                                          "started_at": BASE - 2 * DAY})])
    _assert_pages_exact(store)                 # every session noted: read from rows
    _refresh_all(store)
    assert _notes(store) == {} and _stale_hours(store) == set()
    _assert_hourly_kept(store)
    statements = _statements(monkeypatch)
    _assert_pages_exact(store)                 # every session from derived data
    # the dashboard's whole hours from the sums by hour across sessions
    assert any("FROM hourly_activity" in sql for sql in statements)
    # some calls reported no usage: the dashboard counts them
    assert Reader(store).dashboard(None, *RANGES[0]).llm_calls_without_tokens > 0
    # Changes after a refresh: re-deliveries, amended steps and events, late
    # events (in the past, across hours), an event moved to another session
    # by an OTLP-like update, new sessions; half of them refreshed again.
    store.write(_world(random.Random(11), 60)[:40])              # delivered again
    store.write([("event", "s5-ev0", T0 + 1e6, {"session_id": "s5", "cost": 5.0,
                                                "description": "amended naïve"}),
                 ("step", "s7-st0", T0 + 1e6, {"session_id": "s7", "error": "late"}),
                 # moved to another hour and day: its old hour is summed again
                 ("event", "lone", T0 + 1e6, {"session_id": "s2", "started_at": BASE + 5000}),
                 ("event", "s9-late", BASE - 5, {"session_id": "s9", "started_at": BASE - 5,
                                                 "type": "llm", "model": "m-2",
                                                 "duration": 9.0, "cost": 0.3})])
    store.write(_world(random.Random(12), 20, prefix="n"))
    _assert_pages_exact(store)
    while refresh(store, quiet=-60, limit=3) and len(_notes(store)) > 15:
        pass
    assert _notes(store) and _stale_hours(store)  # (summed once no session is left)
    _assert_hourly_kept(store)
    _assert_pages_exact(store)                 # some from derived data, some from rows
    _refresh_all(store)
    assert _stale_hours(store) == set()
    _assert_hourly_kept(store)
    _assert_pages_exact(store)


def test_one_refresher_at_a_time_per_store_not_per_database(pg_url: str) -> None:
    # An advisory lock is the whole database's: keyed by a constant, the
    # refresher of a store in another schema (another server, or another
    # test running beside this one) held this store's off.
    store = Store(pg_url)
    conn, _ = raw_connection(pg_url)  # (its search path is the store's schema)
    other = "lucidic_test_other_" + uuid.uuid4().hex[:12]
    try:
        store.write(_world(random.Random(5), 4))
        noted = len(_notes(store))
        conn.execute(f"CREATE SCHEMA {other}")
        for schema, rebuilt in ((None, 0), (other, noted)):
            if schema is not None:
                conn.execute(f"SET search_path TO {schema}")
            conn.execute("BEGIN")
            conn.execute(f"SELECT pg_advisory_xact_lock({REFRESHER_LOCK})")  # mid-rebuild
            assert refresh(store, quiet=-60) == rebuilt
            conn.execute("ROLLBACK")
        assert _notes(store) == {}
    finally:
        conn.execute(f"DROP SCHEMA IF EXISTS {other} CASCADE")
        conn.close()
        store.close()


def test_pages_stay_exact_with_writers_busy_while_the_refresher_works(
        store: Store, db_url: str) -> None:
    """Writers on their own connections keep writing to the same sessions
    while a refresher rebuilds them (every note counted as quiet): when they
    stop, before any further refresh, every page is what every row says."""
    store.write(_world(random.Random(3), 12))
    stop = threading.Event()
    failures: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        writer = Store(db_url, busy_timeout=30.0)
        try:
            for n in range(40):
                sid = f"s{rng.randrange(12)}"
                writer.write([_event(f"w{seed}-{n}", sid, BASE + rng.uniform(0, 3 * DAY),
                                     type="llm", model=rng.choice(MODELS), cost=0.125,
                                     input_tokens=n, duration=rng.random(),
                                     description=rng.choice(WORDS)),
                              ("event", f"s{seed}-ev0", BASE + 5 * DAY + n,
                               {"session_id": f"s{seed}", "cost": n / 8})])
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            writer.close()

    def refresher() -> None:
        other = Store(db_url, busy_timeout=30.0)
        try:
            while not stop.is_set():
                refresh(other, quiet=-60, limit=3)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            other.close()

    threads = [threading.Thread(target=write, args=(seed,)) for seed in (1, 2)]
    rebuilding = threading.Thread(target=refresher)
    rebuilding.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    rebuilding.join()
    assert not failures, failures
    _assert_pages_exact(store)
    _refresh_all(store)
    _assert_pages_exact(store)


def test_a_note_renewed_while_the_refresher_worked_stays(store: Store) -> None:
    store.write([_session("a"), _event("a-e", "a", cost=1.0)])
    original = Store.transaction

    class Cursor:
        """The refresher's cursor; a writer renews the note just before the
        refresher removes the notes it read (as another connection's write,
        committed in between, would on PostgreSQL)."""

        def __init__(self, cur: Any) -> None:
            self.cur = cur

        def __getattr__(self, name: str) -> Any:
            return getattr(self.cur, name)

        def executemany(self, sql: str, params: Any) -> Any:
            if sql.startswith("DELETE FROM changed_sessions"):
                self.cur.execute("UPDATE changed_sessions SET version = version + 1")
            return self.cur.executemany(sql, params)

    def write_meanwhile(self: Store, fn: Any, *, write: bool = True) -> Any:
        return original(self, lambda cur: fn(Cursor(cur)), write=write)

    Store.transaction = write_meanwhile  # type: ignore[method-assign]
    try:
        refresh(store, quiet=-60)
    finally:
        Store.transaction = original  # type: ignore[method-assign]
    assert _notes(store) == {"a": 2}


# -- the refresher ------------------------------------------------------------------------

def _wait_until(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _refreshers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lucidic-refresher"]


def test_the_ui_app_refreshes_derived_data_while_it_runs(db_url: str) -> None:
    from fastapi.testclient import TestClient

    from lucidic.ui.app import create_ui_app

    writer = Store(db_url)
    try:
        writer.write([_session("a"), _event("a-e", "a", cost=2.0)])
        before = len(_refreshers())
        with TestClient(create_ui_app(db_url), base_url="http://127.0.0.1"):
            assert len(_refreshers()) == before + 1
            _wait_until(lambda: _notes(writer) == {})  # quiet 2 s, then refreshed
            assert writer.query("SELECT session_id, cost FROM session_totals") == [
                {"session_id": "a", "cost": 2.0}]
        assert len(_refreshers()) == before     # stopped with the app
    finally:
        writer.close()


def test_the_server_process_refreshes_derived_data(db_url: str, start_server: Any) -> None:
    writer = Store(db_url)
    try:
        writer.write([_session("a"), _event("a-e", "a", cost=2.0)])
        start_server(db_url)
        _wait_until(lambda: _notes(writer) == {})
        assert [r["session_id"] for r in writer.query("SELECT session_id FROM session_text")] \
            == ["a"]
    finally:
        writer.close()


def test_a_refresher_failure_is_logged_and_pages_stay_exact(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    from lucidic.reading.derived import Refresher

    store.write(_world(random.Random(5), 20))
    if store.dialect == "postgresql":
        store.execute("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                      "RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql")
        store.execute("CREATE TRIGGER refuse BEFORE INSERT ON session_text "
                      "FOR EACH ROW EXECUTE FUNCTION refuse()")
    else:
        store.execute("CREATE TRIGGER refuse BEFORE INSERT ON session_text "
                      "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    @contextmanager
    def connection() -> Iterator[Store]:
        yield store

    refresher = Refresher(connection, interval=0.05)
    with caplog.at_level(logging.WARNING, logger="lucidic"):
        refresher.start()
        try:
            _wait_until(lambda: "refreshing derived data failed" in caplog.text)
        finally:
            refresher.stop()
    assert "refused" in caplog.text
    assert len(_notes(store)) == 20  # nothing refreshed: every session read from its rows
    assert store.query("SELECT COUNT(*) AS n FROM session_totals")[0]["n"] == 0
    _assert_pages_exact(store)


# -- percentiles from counts by bucket (timing_counts) ------------------------------------

def _bucket(value: float) -> int:
    """The bucket of a value, from its binary exponent (an independent
    account of lucidic._timing_buckets.bucket_sql)."""
    if value >= 2.0 ** TOP_EXPONENT:
        return TOP_BUCKET
    if value < 2.0 ** MIN_EXPONENT:
        return BOTTOM_BUCKET
    exponent = math.frexp(value)[1] - 1
    return exponent * PER_POWER + math.floor((value / 2.0 ** exponent - 1) * PER_POWER)


def _recounted(store: Store) -> dict[tuple, int]:
    """timing_counts as llm_timings' rows say, counted in Python."""
    counted: dict[tuple, int] = {}
    for row in store.query("SELECT * FROM llm_timings"):
        for column, measure in MEASURES.items():
            if row[column] is not None:
                key = (measure, math.floor(row["started_at"] / 3600), row["model"],
                       _bucket(row[column]), int(row["project"] is None),
                       row["project"] or "")
                counted[key] = counted.get(key, 0) + 1
    return counted


def _timing_counts(store: Store) -> dict[tuple, int]:
    return {(r["measure"], r["hour"], r["model"], r["bucket"], r["orphan"], r["project"]):
            int(r["calls"]) for r in store.query("SELECT * FROM timing_counts")
            if int(r["calls"])}


# Values at and beside every kind of bucket edge: powers of two, a bucket's
# lower bound and the float just below it, zero, negatives, the one bucket
# below 2**MIN_EXPONENT and the one from 2**TOP_EXPONENT on.
EDGY_VALUES = (0.0, -1.5, 2.0 ** MIN_EXPONENT, math.nextafter(2.0 ** MIN_EXPONENT, 0), 1e-9,
               0.5, 1.0, math.nextafter(1.0, 0), 1.0625, math.nextafter(1.0625, 0), 1.0626,
               2.0 ** TOP_EXPONENT, math.nextafter(2.0 ** TOP_EXPONENT, 0), 1e12, 0.3, 0.4)


def _timed_world(rng: Any, prefix: str, sessions: int) -> list[tuple]:
    """LLM calls crowding a few buckets (many equal values) beside values on
    bucket edges, at times on and within a second of hour boundaries."""
    records: list[tuple] = []
    for i in range(sessions):
        sid = f"{prefix}{i}"
        if i % 5:  # every fifth session has no session row (no project)
            records.append(_session(sid, BASE, project="p" if i % 2 else "q"))
        for j in range(rng.randrange(1, 12)):
            hour = BASE + rng.randrange(-2, 30) * 3600
            at = hour + rng.choice((0.0, -0.25, 0.25, -1.0, 1.0, 1800.0, rng.uniform(0, 3600)))
            records.append(_event(f"{sid}-t{j}", sid, at, type="llm",
                                  model=rng.choice(("m-1", "m-2")),
                                  duration=rng.choice((*EDGY_VALUES, 0.4, 0.4, 0.4,
                                                       rng.uniform(0, 3), None)),
                                  time_to_first_token=rng.choice((0.1, 0.1, 0.1, None,
                                                                  *EDGY_VALUES))))
    return records


TIMED_RANGES = ((BASE - DAY, BASE + 2 * DAY), (BASE, BASE + DAY), (BASE + 0.5, BASE + 7199.5),
                (BASE - 0.25, BASE + 3600.25), (BASE + 1800, BASE + 2 * 3600 + 1800),
                (BASE + 3599.75, BASE + 10800.25), (BASE + 100, BASE + 200),
                (BASE - 1, BASE + 5 * 3600 + 1))


def _assert_percentiles_exact(store: Store) -> None:
    for project in (None, "p"):
        for since, until in TIMED_RANGES:
            _assert_dashboard_exact(store, project, since, until)


def test_percentiles_from_counts_by_bucket_are_exact_and_the_counts_kept_right(
        store: Store) -> None:
    """p50 and p95 found bucket by bucket are what ranking every call finds,
    whether the calls are noted, kept, or some of each, over ranges whose
    ends fall on, beside and between hours; timing_counts always counts
    llm_timings exactly, as calls move between hours, buckets and sessions."""
    rng = random.Random(21)
    store.write(_timed_world(rng, "t", 40))
    _assert_percentiles_exact(store)                       # every call from its event
    _refresh_all(store)
    assert _timing_counts(store) == _recounted(store) != {}
    _assert_percentiles_exact(store)                       # every call kept
    # Calls rewritten: other values, other hours, another model; new calls.
    store.write([_event(f"t{i}-t0", f"t{i}", BASE + i * 3600 + 0.5, type="llm", model="m-2",
                        duration=rng.choice(EDGY_VALUES), time_to_first_token=None)
                 for i in range(0, 40, 3)] + _timed_world(rng, "u", 10))
    _assert_percentiles_exact(store)                       # kept and noted together
    while refresh(store, quiet=-60, limit=4) and len(_notes(store)) > 8:
        pass
    assert _notes(store)
    assert _timing_counts(store) == _recounted(store)
    _assert_percentiles_exact(store)
    _refresh_all(store)
    assert _timing_counts(store) == _recounted(store)
    _assert_percentiles_exact(store)


def test_an_upgraded_store_counts_the_timings_it_kept(db_url: str) -> None:
    """From schema version 9 (derived data, but no timing_counts): the
    timings llm_timings holds are counted at once, so the dashboard is
    exact before any rebuild, and after."""
    store = Store(db_url)
    store.write(_timed_world(random.Random(4), "t", 30))
    _refresh_all(store)
    store.write(_timed_world(random.Random(5), "t", 6))   # some noted again
    store.close()
    conn, _ = raw_connection(db_url)
    for statement in (*UNDO_11, "DROP INDEX llm_timings_duration",
                      "DROP INDEX llm_timings_ttft", "DROP TABLE timing_counts",
                      "UPDATE lucidic_meta SET value = '9' WHERE key = 'schema_version'"):
        conn.execute(statement)
    conn.close()
    assert [v for v, _ in MIGRATIONS if v > 9] == [10, 11, 12]
    upgraded = Store(db_url)
    try:
        assert upgraded.schema_version() == SCHEMA_VERSION
        assert _timing_counts(upgraded) == _recounted(upgraded) != {}
        assert _notes(upgraded)
        _assert_percentiles_exact(upgraded)
        _refresh_all(upgraded)
        assert _timing_counts(upgraded) == _recounted(upgraded)
        _assert_percentiles_exact(upgraded)
    finally:
        upgraded.close()


#: What migration 11 added, taken away: a store as the code before it left it
#: (its other columns of session_activity are as that code computed them).
UNDO_11 = ("DROP TABLE hourly_activity", "ALTER TABLE session_activity DROP COLUMN without_tokens",
           "ALTER TABLE session_activity DROP COLUMN without_cost")


def test_an_upgraded_store_counts_calls_without_usage_and_sums_by_hour(db_url: str) -> None:
    """From schema version 10 (derived data without the counts of calls that
    reported no usage, and no sums by hour): the kept groups' counts are
    filled from their events and the sums by hour from the kept groups, so
    the dashboard is exact at once, before any rebuild, and after."""
    store = Store(db_url)
    store.write(_world(random.Random(31), 50))
    _refresh_all(store)
    store.write(_world(random.Random(32), 50)[:60])    # some noted again
    store.write(_world(random.Random(33), 10, prefix="n"))
    store.close()
    conn, _ = raw_connection(db_url)
    for statement in (*UNDO_11, "UPDATE lucidic_meta SET value = '10' "
                      "WHERE key = 'schema_version'"):
        conn.execute(statement)
    conn.close()
    assert [v for v, _ in MIGRATIONS if v > 10] == [11, 12]
    upgraded = Store(db_url)
    try:
        assert upgraded.schema_version() == SCHEMA_VERSION
        assert _notes(upgraded)
        kept = upgraded.query(
            "SELECT SUM(without_tokens) AS tokens, SUM(without_cost) AS cost "
            f"FROM session_activity WHERE session_id NOT IN ({NOTED_IDS})")[0]
        assert kept["tokens"] and kept["cost"]           # filled, where it counts
        _assert_hourly_kept(upgraded)
        for project in (None, "p"):
            for since, until in RANGES:
                _assert_dashboard_exact(upgraded, project, since, until)
        # what a rebuild finds is what the upgrade filled in
        filled = upgraded.query(
            "SELECT session_id, hour, model, is_llm, without_tokens, without_cost "
            f"FROM session_activity WHERE session_id NOT IN ({NOTED_IDS})")
        _refresh_all(upgraded)
        every = [r["session_id"] for r in upgraded.query(
            "SELECT DISTINCT session_id FROM session_activity")]
        upgraded.transaction(lambda cur: upgraded.note_changed(cur, every))
        _refresh_all(upgraded)
        rebuilt = {(r["session_id"], r["hour"], r["model"], r["is_llm"]): r
                   for r in upgraded.query("SELECT * FROM session_activity")}
        for row in filled:
            again = rebuilt[(row["session_id"], row["hour"], row["model"], row["is_llm"])]
            assert (again["without_tokens"], again["without_cost"]) == \
                (row["without_tokens"], row["without_cost"]), row
        _refresh_all(upgraded)
        _assert_hourly_kept(upgraded)
        _assert_pages_exact(upgraded)
    finally:
        upgraded.close()


# -- a store mostly noted (never rebuilt, or being rebuilt) --------------------------------

def _statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The read statements run from now on."""
    import lucidic.store

    seen: list[str] = []
    fetch = lucidic.store._fetch_rows

    def recorded(cur: Any, sql: str, params: Any) -> Any:
        seen.append(sql)
        return fetch(cur, sql, params)

    monkeypatch.setattr(lucidic.store, "_fetch_rows", recorded)
    return seen


def _reads_derived_data(statements: list[str]) -> bool:
    return any(NOTED_IDS in sql or any(table in sql for table in (*TABLES, "timing_counts"))
               for sql in statements)


def test_a_store_mostly_noted_is_read_from_every_row_as_before_derived_data(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until a UI or server has rebuilt most of a store (the CLI and the SDK
    never do), telling its many noted sessions from the rest cost more than
    reading every row did before derived data (sorted by cost about 1.5
    to 2 times as long, the dashboard 3 times, at 10,000 sessions): the
    pages read every row then, exact as ever, and derived data once most of
    the store is rebuilt."""
    monkeypatch.setattr(derived, "MANY_NOTES", 10)
    store.write(_world(random.Random(8), 40))
    statements = _statements(monkeypatch)
    _assert_pages_exact(store)                         # all noted
    assert statements and not _reads_derived_data(statements)
    while 2 * len(_notes(store)) >= 40:                # (the world's 40 sessions)
        refresh(store, quiet=-60, limit=3)
    statements.clear()
    _assert_pages_exact(store)                         # most rebuilt
    assert _reads_derived_data(statements)
    monkeypatch.setattr(derived, "MANY_NOTES", 1000)
    _refresh_all(store)
    store.write(_world(random.Random(10), 60, prefix="new"))  # most noted, but few
    statements.clear()
    _assert_pages_exact(store)
    assert _reads_derived_data(statements)


def test_the_dashboard_reads_its_snapshot_without_jit_compiling(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard's statements (of many parts, running in milliseconds)
    were JIT compiled for 1.4 s of a 1.4 s page when PostgreSQL's estimates
    were far off, as they are for tables the refresher has just rewritten:
    its snapshot plans them without JIT; other snapshots keep the setting."""
    store = Store(pg_url)
    try:
        setting = store.query("SHOW jit")[0]["jit"]
        assert store.snapshot(lambda query: query("SHOW jit", []))[0]["jit"] == setting
        assert store.snapshot(lambda query: query("SHOW jit", []),
                              compiled=False)[0]["jit"] == "off"
        assert store.query("SHOW jit")[0]["jit"] == setting  # (for that transaction only)
        seen: list[str] = []
        snapshot = store.snapshot

        def recorded(fn: Any, **options: Any) -> Any:
            return snapshot(lambda query: fn(lambda sql, params: (
                seen.append(query("SHOW jit", [])[0]["jit"]), query(sql, params))[1]),
                **options)

        monkeypatch.setattr(store, "snapshot", recorded)
        store.write(_world(random.Random(2), 5))
        Reader(store).dashboard(None, *RANGES[0])
        assert seen and set(seen) == {"off"}
    finally:
        store.close()


# -- what a batch marks and reads (lucidic._activity_hours.marking_stale) -----------------

def test_a_batch_marks_stale_exactly_the_hours_its_rows_left_and_entered(
        store: Store) -> None:
    """Of the hours a rebuilt session's rows were in and are in now, each is
    noted stale once, and no other: not the hours of sessions left alone.
    The timing counts follow the calls out of the hours they left."""
    hour = BASE + 10 * 3600
    store.write([_session("a"), _session("b"),
                 _event("a1", "a", hour + 5, type="llm", model="m", duration=0.4),
                 _event("a2", "a", hour + 3600 + 5, type="llm", model="m", duration=2.0),
                 _event("b1", "b", hour + 2 * 3600 + 5)])
    _refresh_all(store)
    assert _stale_hours(store) == set()
    hours = int(hour // 3600)
    # a1 moves 3 hours on; a2 stays; a new event lands 5 hours on. b is untouched.
    store.write([_event("a1", "a", hour + 3 * 3600 + 5, type="llm", model="m", duration=0.4),
                 _event("a3", "a", hour + 5 * 3600 + 5, type="llm", model="m",
                        time_to_first_token=0.1)])
    assert refresh(store, quiet=-60) == 1
    # left: hours (a1's old hour), kept: hours + 1, entered: hours + 3 and + 5
    assert _stale_hours(store) == {hours, hours + 1, hours + 3, hours + 5}
    assert _timing_counts(store) == _recounted(store)
    _assert_hourly_kept(store)
    # a session rebuilt without a change marks its own hours again, and only them
    _refresh_all(store)
    store.write([_event("b1", "b", hour + 2 * 3600 + 5)])
    assert refresh(store, quiet=-60) == 1
    assert _stale_hours(store) == {hours + 2}
    _refresh_all(store)
    assert _stale_hours(store) == set()
    _assert_hourly_kept(store)
    assert _timing_counts(store) == _recounted(store)
    _assert_pages_exact(store)


def _scans(store: Store, table: str) -> int:
    """How many times PostgreSQL has scanned ``table`` (sequential and index
    scans), once the store's connection has reported its counts."""
    store.query("SELECT pg_stat_force_next_flush()")  # (reported when it next idles)
    store.query("SELECT 1")
    row = store.query("SELECT seq_scan, idx_scan FROM pg_stat_user_tables "
                      "WHERE relid = to_regclass(%s)", (table,))[0]
    return int(row["seq_scan"] or 0) + int(row["idx_scan"] or 0)


def scan_counted_world(pg_url: str) -> Store:
    """A PostgreSQL store of 12 timed sessions, derived data rebuilt, whose
    scans can be counted (the test skips before PostgreSQL 15)."""
    store = Store(pg_url)
    if int(store.query("SHOW server_version_num")[0]["server_version_num"]) < 150000:
        store.close()
        pytest.skip("counting scans needs pg_stat_force_next_flush (PostgreSQL 15)")
    store.write([*_timed_world(random.Random(5), "t", 12)])
    _refresh_all(store)
    return store


def test_a_postgresql_batch_reads_its_old_rows_once_in_deleting_them(pg_url: str) -> None:
    """On PostgreSQL a batch takes the hours to sum again and the timing
    counts to take off and add from the rows its DELETE and INSERT return:
    it looks session_activity's and llm_timings' rows up once each (to
    delete them), where it read session_activity 3 times and llm_timings 5
    (until PostgreSQL first analyses them, each time a whole scan)."""
    store = scan_counted_world(pg_url)
    try:
        store.write([_event(f"t{i}-t0", f"t{i}", BASE + i * 3600 + 0.5, type="llm",
                            model="m-2", duration=0.5) for i in range(0, 12, 2)])
        before = {table: _scans(store, table) for table in ("session_activity", "llm_timings")}
        assert refresh(store, quiet=-60) == 6
        after = {table: _scans(store, table) for table in ("session_activity", "llm_timings")}
        assert {table: after[table] - before[table] for table in before} == {
            "session_activity": 1, "llm_timings": 1}
        assert _timing_counts(store) == _recounted(store)
        _refresh_all(store)
        _assert_hourly_kept(store)
    finally:
        store.close()


def _analyses(store: Store) -> dict[str, int]:
    return {r["relname"]: int(r["analyze_count"]) for r in store.query(
        "SELECT relname, analyze_count FROM pg_stat_user_tables "
        "WHERE relname IN ('session_activity', 'llm_timings') "
        "AND schemaname = current_schema()")}


def _calls(prefix: str, sessions: int) -> list[tuple]:
    """``sessions`` sessions of 60 LLM calls, each in an hour of its own."""
    return [record for i in range(sessions) for record in (
        _session(f"{prefix}{i}"),
        *(_event(f"{prefix}{i}-{j}", f"{prefix}{i}", BASE + j * 3600, type="llm",
                 model="m", duration=0.5) for j in range(60)))]


def test_the_refresher_analyses_its_tables_once_they_have_doubled(pg_url: str) -> None:
    """Until PostgreSQL has analysed session_activity and llm_timings, it
    plans a batch's lookups as whole scans: the refresher ANALYZEs each
    from 128 pages on, and again once it has doubled since, not at every
    batch."""
    store = Store(pg_url)
    try:
        def pages(table: str) -> int:
            return int(store.query("SELECT pg_relation_size(to_regclass(%s)) / "
                                   "current_setting('block_size')::bigint AS n",
                                   (table,))[0]["n"])

        store.write(_calls("a", 300))
        refresh(store, quiet=-60, limit=1000)
        assert min(pages("session_activity"), pages("llm_timings")) >= 128
        assert _analyses(store) == {"session_activity": 0, "llm_timings": 0}
        store.write(_calls("b", 1))                 # the next batch analyses them
        refresh(store, quiet=-60)
        assert _analyses(store) == {"session_activity": 1, "llm_timings": 1}
        store.write(_calls("c", 1))                 # not doubled since: not again
        refresh(store, quiet=-60)
        assert _analyses(store) == {"session_activity": 1, "llm_timings": 1}
        store.write(_calls("d", 350))               # doubled
        refresh(store, quiet=-60, limit=1000)
        store.write(_calls("e", 1))
        refresh(store, quiet=-60)
        assert _analyses(store) == {"session_activity": 2, "llm_timings": 2}
        _refresh_all(store)
        _assert_hourly_kept(store)
        assert _timing_counts(store) == _recounted(store)
    finally:
        store.close()


def test_the_refresher_does_not_wait_behind_a_table_another_analyse_holds(
        pg_url: str) -> None:
    """A table being vacuumed or analysed elsewhere (autovacuum) is left for
    a later batch to analyse: the batch neither waits nor fails (with a
    lock_timeout, waiting failed the batch, and so every batch after it)."""
    url = pg_url.replace("options=", "options=-clock_timeout%3D1000%20")
    store = Store(url)
    holder, _ = raw_connection(pg_url)
    try:
        store.write(_calls("a", 300))
        refresh(store, quiet=-60, limit=1000)
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE session_activity IN SHARE UPDATE EXCLUSIVE MODE")
        store.write(_calls("b", 1))
        assert refresh(store, quiet=-60) == 1
        assert _analyses(store) == {"session_activity": 0, "llm_timings": 1}
        holder.execute("COMMIT")
        store.write(_calls("c", 1))
        assert refresh(store, quiet=-60) == 1
        assert _analyses(store) == {"session_activity": 1, "llm_timings": 1}
    finally:
        holder.close()
        store.close()
