"""Test your own instrumented code: capture what it records, in memory.

    from lucidic.testing import capture

    def test_agent_records_its_steps():
        with capture() as recorded:
            lai.init(session_name="test")
            run_agent()
        (session,) = recorded.sessions()
        assert [s["action"] for s in session["steps"]] == ["plan", "act"]

With pytest, the ``lucidic_capture`` fixture does the same for one test (it is
registered automatically when lucidic is installed).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ._internal import internal_errors
from ._runtime import runtime
from ._sinks import SinkError
from .store import Record, Store

__all__ = ["Capture", "MemorySink", "capture", "internal_errors", "lucidic_capture"]

_numbers = itertools.count(1)


class MemorySink:
    """A sink that keeps everything in memory: the raw records as delivered,
    and an in-memory store built from them, so trees read exactly as they
    would from the embedded store. Set ``failing = True`` to simulate an
    outage (deliveries raise and records spool)."""

    def __init__(self) -> None:
        self.identity = f"memory-{next(_numbers)}"
        self.records: list[Record] = []
        self.store = Store(":memory:")
        self.failing = False

    def write(self, records: Sequence[Record]) -> None:
        if self.failing:
            raise SinkError("MemorySink.failing is set")
        self.store.write(records)
        self.records.extend(records)

    def lookup_session(self, session_id: str) -> dict[str, Any] | None:
        if self.failing:
            raise SinkError("MemorySink.failing is set")
        return self.store.get_session(session_id)

    def close(self) -> None:
        self.store.close()


class Capture:
    """What the code under test recorded. Every read flushes first."""

    def __init__(self, sink: MemorySink) -> None:
        self.sink = sink

    def flush(self, timeout: float = 5.0) -> bool:
        pipeline = runtime.pipelines.get(self.sink.identity)
        return pipeline.flush(timeout) if pipeline is not None else True

    @property
    def records(self) -> list[Record]:
        self.flush()
        return list(self.sink.records)

    def sessions(self) -> list[dict[str, Any]]:
        """Every session recorded, oldest first, as full trees."""
        self.flush()
        listed = self.sink.store.list_sessions(limit=1_000_000)
        return [self.session(s["id"]) for s in reversed(listed)]

    def session(self, session_id: str) -> dict[str, Any]:
        self.flush()
        tree = self.sink.store.session_tree(session_id)
        if tree is None:
            raise KeyError(f"no session {session_id!r} was recorded")
        return tree

    def events(self, type: str | None = None) -> list[dict[str, Any]]:  # noqa: A002
        """Every event recorded (optionally of one type), in order."""
        self.flush()
        rows = [self.sink.store.get_event(r[1]) for r in self.sink.records if r[0] == "event"]
        seen: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row is not None and row["id"] not in seen and (type is None or row["type"] == type):
                seen[row["id"]] = row
        return list(seen.values())

    def steps(self) -> list[dict[str, Any]]:
        self.flush()
        seen: dict[str, dict[str, Any]] = {}
        for record in self.sink.records:
            if record[0] == "step" and record[1] not in seen:
                row = self.sink.store.get_step(record[1])
                if row is not None:
                    seen[record[1]] = row
        return list(seen.values())


@contextmanager
def capture() -> Iterator[Capture]:
    """Send everything recorded inside the block to a fresh in-memory sink.
    Sessions started inside are released (not ended) when the block exits."""
    sink = MemorySink()
    previous = runtime.sink_override
    runtime.sink_override = sink
    try:
        yield Capture(sink)
    finally:
        runtime.sink_override = previous
        pipeline = runtime.pipelines.get(sink.identity)
        if pipeline is not None:
            runtime.forget_pipeline(pipeline, timeout=5.0)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional
    pass
else:
    @pytest.fixture
    def lucidic_capture() -> Iterator[Capture]:
        """Capture what the test's code records (see lucidic.testing.capture)."""
        with capture() as captured:
            yield captured
