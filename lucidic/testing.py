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

Nothing is written outside the capture's own directory (the test's
``tmp_path`` with the fixture, else a temporary directory removed at the
end): with ``recorded.sink.failing = True`` the records spool there, and
nothing touches ``LUCIDIC_HOME``.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._internal import internal_errors
from ._pipeline import Pipeline
from ._runtime import flush_pipeline, runtime
from ._sinks import Sink, SinkError
from ._spool import Spool
from .store import Record, Store

__all__ = ["Capture", "MemorySink", "capture", "internal_errors", "lucidic_capture"]

_numbers = itertools.count(1)


class MemorySink(Sink):
    """A sink that keeps everything in memory: the raw records as delivered,
    and an in-memory store built from them, so trees read exactly as they
    would from the embedded store. Set ``failing = True`` to simulate an
    outage (deliveries raise and records spool); set it back to False and
    the next delivery, a few milliseconds later, takes them."""

    #: While failing, the pipeline is asked to retry this soon (as a server
    #: would with Retry-After), so a test never waits out a real backoff.
    RETRY_AFTER = 0.02

    def __init__(self) -> None:
        self.identity = f"memory-{next(_numbers)}"
        self.records: list[Record] = []
        self.store = Store(":memory:")
        self.failing = False

    def write(self, records: Sequence[Record]) -> None:
        if self.failing:
            raise SinkError("MemorySink.failing is set", retry_after=self.RETRY_AFTER)
        self.store.write(records)
        self.records.extend(records)

    def lookup_session(self, session_id: str) -> dict[str, Any] | None:
        if self.failing:
            raise SinkError("MemorySink.failing is set", retry_after=self.RETRY_AFTER)
        return self.store.get_session(session_id)

    def close(self) -> None:
        self.store.close()


class Capture:
    """What the code under test recorded. Every read flushes first (while
    ``sink.failing`` is set, a read shows what was delivered before)."""

    def __init__(self, sink: MemorySink, directory: Path) -> None:
        self.sink = sink
        #: The capture's own directory; records spool under ``spool/`` here.
        self.directory = directory

    @property
    def _reader(self) -> Any:
        from .reading import Reader  # the pytest plugin's import stays light

        return Reader(self.sink.store)

    def flush(self, timeout: float = 5.0) -> bool:
        pipeline = runtime.pipelines.get(self.sink.identity)
        if pipeline is None:
            return True
        return flush_pipeline(pipeline, timeout, fail_fast=self.sink.failing)

    @property
    def records(self) -> list[Record]:
        self.flush()
        return list(self.sink.records)

    def sessions(self) -> list[dict[str, Any]]:
        """Every session recorded, oldest first, as full trees."""
        self.flush()
        listed = self._reader.session_list(limit=1_000_000)
        return [self.session(s["id"]) for s in reversed(listed)]

    def session(self, session_id: str) -> dict[str, Any]:
        self.flush()
        tree: dict[str, Any] | None = self._reader.tree(session_id)
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
def capture(directory: str | Path | None = None) -> Iterator[Capture]:
    """Send everything recorded inside the block to a fresh in-memory sink.
    Sessions started inside are released (not ended) when the block exits.

    ``directory`` is where records spool while ``sink.failing`` is set; by
    default a temporary directory, removed when the block exits."""
    sink = MemorySink()
    owned = directory is None
    home = Path(tempfile.mkdtemp(prefix="lucidic-capture-") if owned else str(directory))
    pipeline = Pipeline(sink, Spool(home / "spool" / sink.identity,
                                    rejected=home / "rejected" / f"{sink.identity}.jsonl"))
    with runtime.lock:
        # Registered before any session asks for it, so the pipeline that
        # serves the sink spools here and not under LUCIDIC_HOME.
        runtime.pipelines[sink.identity] = pipeline
        previous = runtime.sink_override
        runtime.sink_override = sink
    try:
        yield Capture(sink, home)
    finally:
        runtime.sink_override = previous
        # What a failing sink holds cannot be delivered: spool it, and do not
        # keep retrying the sink until a deadline.
        runtime.forget_pipeline(pipeline, timeout=1.0 if sink.failing else 5.0,
                                fail_fast=sink.failing)
        if owned:
            shutil.rmtree(home, ignore_errors=True)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional
    pass
else:
    @pytest.fixture
    def lucidic_capture(tmp_path: Path) -> Iterator[Capture]:
        """Capture what the test's code records (see lucidic.testing.capture),
        spooling, if ever, under the test's own ``tmp_path``."""
        with capture(tmp_path / "lucidic-capture") as captured:
            yield captured
