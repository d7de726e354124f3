"""Reliability of sessions through a real server (issue 7, point 6), on
SQLite and on PostgreSQL: the write path's answers for ids held elsewhere.
The embedded-store half is in tests/test_reliability_sessions.py."""

from __future__ import annotations

import time
import uuid
from typing import Any

from server_support import Api, make_key

from lucidic.store import Store


def _session(sid: str, **fields: Any) -> dict[str, Any]:
    now = time.time()
    return {"kind": "session", "id": sid, "ts": now,
            "fields": {"name": "s", "started_at": now, **fields}}


def _row(kind: str, rid: str, sid: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "id": rid, "ts": time.time(),
            "fields": {"session_id": sid, "description" if kind == "event" else "action": kind,
                       **fields}}


def _rows(db_url: str) -> list[tuple[Any, ...]]:
    store = Store(db_url)
    try:
        return [tuple(sorted(r.items())) for table in ("sessions", "steps", "events")
                for r in store.query(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        store.close()


def _same_words(a: str, b: str, a_id: str, b_id: str) -> None:
    assert a.replace(a_id, "ID") == b.replace(b_id, "ID")


def test_the_write_path_refuses_ids_held_elsewhere_with_one_definite_answer(
        db_url: str, start_server) -> None:
    server = start_server(db_url)
    key_a, key_b = make_key(db_url, "alpha"), make_key(db_url, "beta")
    api_a, api_b = Api(server.url, key_a), Api(server.url, key_b)
    theirs, ours, other = (str(uuid.uuid4()) for _ in range(3))
    assert api_b.records(_session(theirs), _row("step", "b-step", theirs),
                         _row("event", "b-event", theirs)).status_code == 200
    assert api_a.records(_session(ours), _session(other), _row("step", "a-step", ours),
                         _row("event", "a-event", ours)).status_code == 200
    before = _rows(db_url)

    # Before: a foreign step or event id answered 200 "accepted" and wrote
    # nothing; a foreign session id answered 404 (as if it might come later).
    # Now each is refused for good (409, which a client drops rather than
    # retries), in words that do not say whose the id is: beta's event and
    # alpha's own other session's event read the same.
    answers = {
        "beta's session": api_a.records(_session(theirs, name="hijacked")),
        "beta's step": api_a.records(_row("step", "b-step", ours, state="hijacked")),
        "beta's event": api_a.records(_row("event", "b-event", ours, result="hijacked")),
        "alpha's event, other session": api_a.records(
            _row("event", "a-event", other, result="moved")),
    }
    for what, answer in answers.items():
        assert answer.status_code == 409, (what, answer.status_code, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert "already in use" in answer.json()["detail"] and "beta" not in answer.text
    assert answers["beta's step"].json()["records"] == [{"kind": "step", "id": "b-step"}]
    _same_words(answers["beta's event"].text, answers["alpha's event, other session"].text,
                "b-event", "a-event")
    # A batch is all or nothing: a good record beside a refused one waits.
    mixed = api_a.records(_row("event", "fresh", ours), _row("event", "b-event", ours))
    assert mixed.status_code == 409
    assert _rows(db_url) == before
