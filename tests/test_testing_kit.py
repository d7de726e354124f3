"""lucidic.testing: what users test their own instrumented code with."""

from __future__ import annotations

import pytest

import lucidic as lai
from lucidic.testing import capture


def _agent() -> None:
    @lai.step(action="plan")
    def plan():
        lai.create_event(description="idea")

    plan()


def test_capture_records_sessions_in_memory_and_not_in_the_embedded_store(lucidic_home):
    with capture() as recorded:
        sid = lai.init(session_name="captured")
        _agent()
    (session,) = recorded.sessions()
    assert session["id"] == sid and session["name"] == "captured"
    assert [s["action"] for s in session["steps"]] == ["plan"]
    assert [e["description"] for e in recorded.events()] == ["idea"]
    assert [s["action"] for s in recorded.steps()] == ["plan"]
    assert {r[0] for r in recorded.records} == {"session", "step", "event"}
    assert not (lucidic_home / "lucidic.db").exists()


def test_capture_releases_its_sessions_when_the_block_ends():
    with capture():
        lai.init()
    assert lai.create_event(description="after") is None  # no session leaks out


def test_the_pytest_fixture_is_registered_by_the_entry_point(lucidic_capture):
    lai.init(session_name="fixture")
    _agent()
    assert lucidic_capture.events()[0]["description"] == "idea"


def test_unknown_session_in_capture_is_a_key_error():
    with capture() as recorded:
        with pytest.raises(KeyError):
            recorded.session("missing")
