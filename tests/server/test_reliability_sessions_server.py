"""Reliability of sessions through a real server (issue 7, points 3, 6 and 8),
on SQLite and on PostgreSQL: a session id another project holds, the write
path's answers for ids held elsewhere, and updates that must only ever touch
records of the current session. The embedded-store half is in
tests/test_reliability_sessions.py."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from server_support import Api, make_key

import lucidic as lai
from lucidic import _continuation
from lucidic.errors import InvalidOperationError
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


def test_the_sdk_refuses_ids_held_elsewhere_and_updates_touch_only_its_own_session(
        db_url: str, start_server, monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_server(db_url)
    key_a, key_b = make_key(db_url, "alpha"), make_key(db_url, "beta")
    api_a, api_b = Api(server.url, key_a), Api(server.url, key_b)
    theirs, ours = str(uuid.uuid4()), str(uuid.uuid4())
    assert api_b.records(_session(theirs, name="beta's")).status_code == 200
    assert api_a.records(_session(ours, name="alpha's")).status_code == 200
    monkeypatch.setenv("LUCIDIC_BASE_URL", server.url)
    monkeypatch.setenv("LUCIDIC_API_KEY", key_a)

    # 6. Beta created the id first: alpha's init refuses, in the same words as
    # for an id of alpha's own, so the answer tells nothing about beta.
    refusals = []
    for taken in (theirs, ours):
        with pytest.raises(InvalidOperationError, match="already in use") as refused:
            lai.init(session_id=taken, session_name="squatter")
        refusals.append(str(refused.value))
    _same_words(refusals[0], refusals[1], theirs, ours)
    assert api_b.tree(theirs)["name"] == "beta's" and api_a.tree(ours)["name"] == "alpha's"

    # A free id is checked and created at once (another process may continue it).
    chosen = f"chosen-{uuid.uuid4()}"
    assert lai.init(session_id=chosen, session_name="mine") == chosen
    assert api_a.get(f"/api/v1/sessions/{chosen}").status_code == 200
    step = lai.create_step(action="real")
    event = lai.create_event(description="real", result="kept")

    # 8. Unknown ids, and ids of another session, are refused in the caller;
    # nothing reaches the server.
    for call in (lambda: lai.update_step(step_id="nope", state="phantom"),
                 lambda: lai.update_event(event_id="zzz", result="phantom")):
        with pytest.raises(InvalidOperationError, match="was created in session"):
            call()
    with lai.session("another"):
        for call in (lambda: lai.update_event(event_id=event, result="merged"),
                     lambda: lai.end_step(step_id=step)):
            with pytest.raises(InvalidOperationError, match="was created in session"):
                call()
    lai.end_step(step_id=step)
    lai.end_session(is_successful=True)
    assert lai.flush(10)
    for path in ("/api/v1/steps/nope", "/api/v1/events/zzz"):
        assert api_a.get(path).status_code == 404
    stored = api_a.get(f"/api/v1/events/{event}").json()
    assert (stored["session_id"], stored["result"]) == (chosen, "kept")
    assert api_a.get(f"/api/v1/steps/{step}").json()["is_finished"] is True

    # 3. Continuing asks the server's rule (GET .../continuable), and raises
    # its words: the SDK's message is the route's, and the shared module's.
    with pytest.raises(InvalidOperationError) as finished:
        lai.continue_session(chosen)
    answer = api_a.get(f"/api/v1/sessions/{chosen}/continuable")
    assert answer.status_code == 409
    assert str(finished.value) == answer.json()["detail"] \
        == _continuation.finished_message(chosen)
    with pytest.raises(InvalidOperationError, match="does not exist"):
        lai.continue_session(theirs)


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

    # Creating a session under a given id (what init(session_id=...) asks):
    # refused in one set of words for an id of beta's or of alpha's own.
    created = [api_a.post("/api/v1/sessions", json=_session(sid)) for sid in (theirs, ours)]
    assert [c.status_code for c in created] == [409, 409]
    _same_words(created[0].text, created[1].text, theirs, ours)
    fresh = _session(str(uuid.uuid4()))
    assert api_a.post("/api/v1/sessions", json=fresh).status_code == 201
    # The same request again (a retry whose answer was lost) is not a conflict.
    assert api_a.post("/api/v1/sessions", json=fresh).status_code == 201
    assert api_b.post("/api/v1/sessions", json=fresh).status_code == 409
