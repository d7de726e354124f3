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


def test_a_failing_sink_spools_inside_the_captures_own_directory_and_ends_fast(
        lucidic_home, tmp_path):
    """sink.failing = True: the records wait in the capture's directory (never
    in LUCIDIC_HOME), reads show what was delivered before without waiting
    for the outage to end, and leaving the block does not wait out the
    flush bound for records that cannot be delivered."""
    import time

    from lucidic._config import DEFAULT_FLUSH_TIMEOUT

    with capture(tmp_path / "kit") as recorded:
        sid = lai.init(session_name="outage")
        assert recorded.flush()
        recorded.sink.failing = True
        _agent()
        assert lai.flush(timeout=0.5) is False
        assert recorded.session(sid)["steps"] == []  # the step waits in the spool
        spooled = list((tmp_path / "kit" / "spool" / recorded.sink.identity).glob("*.jsonl"))
        assert spooled
        started = time.monotonic()
    ended = time.monotonic() - started
    assert not lucidic_home.exists()
    # The old teardown waited out the flush bound (4 of its 5 s) for a sink
    # that could not take anything; generous, on a loaded machine.
    assert ended < DEFAULT_FLUSH_TIMEOUT * 0.6


def test_leaving_a_capture_whose_sink_is_failing_does_not_keep_trying_it(tmp_path):
    """What a failing sink cannot take goes to the capture's spool when the
    block ends; the exit does not retry the sink until a deadline first."""
    attempts = []
    with capture(tmp_path / "kit") as recorded:
        lai.init(session_name="outage")
        recorded.sink.failing = True
        _agent()
        assert lai.flush(timeout=0.2) is False
        write = recorded.sink.write

        def counted(records):
            attempts.append(len(records))
            return write(records)

        recorded.sink.write = counted  # type: ignore[method-assign]
        lai.create_event(description="at the end")
    # each retry comes 20 ms after the last: a second of them would be dozens
    assert len(attempts) <= 3
    spool = tmp_path / "kit" / "spool" / recorded.sink.identity
    assert "at the end" in "".join(p.read_text() for p in spool.glob("*.jsonl"))


def test_a_sink_back_from_failing_takes_the_spooled_records_at_once(tmp_path):
    with capture(tmp_path / "kit") as recorded:
        recorded.sink.failing = True
        sid = lai.init(session_name="back")
        _agent()
        assert lai.flush(timeout=0.3) is False
        recorded.sink.failing = False
        (session,) = recorded.sessions()
    assert session["id"] == sid and [s["action"] for s in session["steps"]] == ["plan"]


def test_capture_without_a_directory_removes_its_own(lucidic_home):
    with capture() as recorded:
        recorded.sink.failing = True
        lai.init()
        lai.create_event(description="lost with the outage")
        lai.flush(timeout=0.3)
        directory = recorded.directory
        assert any(directory.rglob("*.jsonl"))
    assert not directory.exists() and not lucidic_home.exists()


def test_the_fixture_spools_under_the_tests_tmp_path(lucidic_capture, tmp_path):
    assert lucidic_capture.directory == tmp_path / "lucidic-capture"
