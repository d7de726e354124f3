"""Derived data (lucidic.reading.derived) on both databases: every write notes
the sessions it touched, and an upgraded store notes every session it holds.
(Here beside the server tests for their SQLite-and-PostgreSQL fixtures.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_otlp import agent_trace, encode_protobuf, make_spans

from lucidic.server.otlp import _spans
from lucidic.server.otlp_ingest import ingest
from lucidic.store import MIGRATIONS, IdInUseError, Store

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
    store.write([_event("a-e", "a", T0 + 1, cost=0.5)])  # an amended event
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
    if db_url.startswith("postgresql"):
        import psycopg

        conn: Any = psycopg.connect(db_url, autocommit=True)
        ph = "%s"
    else:
        import sqlite3

        conn = sqlite3.connect(db_url[len("sqlite:///"):], isolation_level=None)
        ph = "?"
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
    finally:
        upgraded.close()
