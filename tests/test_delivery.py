"""The record pipeline: nothing is dropped silently when the sink fails or
the queue is full; flush and the exit path honour their time bound."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from faults import HangingSink, events, wait_until

import lucidic as lai
from helpers import run_python
from lucidic._pipeline import Pipeline
from lucidic._sinks import SinkError
from lucidic._spool import Spool
from lucidic.store import IdInUseError, Record, Store
from lucidic.testing import MemorySink, capture


class _FlakySink(MemorySink):
    """Fails while `down` is set; counts attempts and when they happened."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.attempts: list[float] = []
        self.retry_after: float | None = None

    def write(self, records: Sequence[Record]) -> None:
        self.attempts.append(time.monotonic())
        if self.down.is_set():
            raise SinkError("backend down", retry_after=self.retry_after)
        super().write(records)


def test_with_the_sink_down_records_spool_and_flush_reports_it_then_all_arrive_once(tmp_path):
    sink = _FlakySink()
    pipeline = Pipeline(sink, Spool(tmp_path / "spool"), batch_size=100)
    pipeline.start()
    sink.down.set()
    for record in events(1000):
        pipeline.put(record)
    assert pipeline.flush(0.5) is False  # not delivered: flush says so
    assert pipeline.stats.spooled >= 1000 and list((tmp_path / "spool").glob("*.jsonl"))
    sink.down.clear()
    assert pipeline.flush(15) is True
    assert sink.store.count("events") == 1000
    assert not list((tmp_path / "spool").glob("*.jsonl"))
    pipeline.shutdown(5)


def test_flush_honours_its_timeout_when_the_sink_hangs(tmp_path):
    sink = HangingSink()
    pipeline = Pipeline(sink, Spool(tmp_path / "spool"))
    pipeline.start()
    pipeline.put(events(1)[0])
    started = time.monotonic()
    assert pipeline.flush(0.3) is False
    assert time.monotonic() - started < 5  # bounded (generously, for a loaded machine)
    sink.release.set()
    assert pipeline.flush(10)
    pipeline.shutdown(5)


def test_shutdown_spools_what_a_hanging_sink_did_not_take_and_a_new_pipeline_delivers_it(
        tmp_path):
    hanging = HangingSink()
    first = Pipeline(hanging, Spool(tmp_path / "spool"))
    first.start()
    for record in events(300):
        first.put(record)
    started = time.monotonic()
    assert first.shutdown(0.5) is False
    assert time.monotonic() - started < 5
    healthy = MemorySink()
    second = Pipeline(healthy, Spool(tmp_path / "spool"))
    second.start()
    assert second.flush(10)
    wait_until(lambda: healthy.store.count("events") >= 300, 10)
    assert healthy.store.count("events") == 300
    hanging.release.set()
    second.shutdown(5)


def test_retry_after_from_the_backend_is_honoured(tmp_path):
    sink = _FlakySink()
    sink.retry_after = 0.6
    pipeline = Pipeline(sink, Spool(tmp_path / "spool"))
    pipeline.start()
    sink.down.set()
    pipeline.put(events(1)[0])
    pipeline.flush(0.2)
    first_failure = sink.attempts[0]
    sink.down.clear()
    assert pipeline.flush(10)
    later = [t for t in sink.attempts if t > first_failure]
    assert later and later[0] - first_failure >= 0.6
    pipeline.shutdown(5)


def test_a_partly_written_spool_line_is_skipped_and_the_rest_delivered(tmp_path):
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    spool.append(events(3))
    spool.close()
    (segment,) = spool_dir.glob("*.jsonl")
    with open(segment, "ab") as f:
        f.write(b'["event", "e99", 1.0, {"session_id"')  # killed mid-write
    sink = MemorySink()
    pipeline = Pipeline(sink, Spool(spool_dir))
    pipeline.start()
    assert pipeline.flush(10)
    wait_until(lambda: sink.store.count("events") >= 3, 10)
    assert sink.store.count("events") == 3
    pipeline.shutdown(5)


def test_a_live_processs_segment_is_never_taken_by_another(tmp_path):
    writer = Spool(tmp_path / "spool")
    writer.append(events(5))  # open segment, locked by its writer
    delivered: list[Record] = []
    assert Spool(tmp_path / "spool").replay(lambda batch, _: delivered.extend(batch), 100) \
        is False
    assert delivered == []
    writer.close()
    assert Spool(tmp_path / "spool").replay(lambda batch, _: delivered.extend(batch), 100) \
        is True
    assert len(delivered) == 5


def left_by_a_dead_process(spool_dir: Path, sessions: Sequence[str]) -> None:
    """One spool segment per session, of three events each, as a process
    that died before delivering them leaves them: unlocked, no one's own."""
    writer = Spool(spool_dir)
    for session in sessions:
        writer.append([(kind, f"{session}-{record_id}", ts, fields)
                       for kind, record_id, ts, fields in events(3, session=session)])
        writer.close()  # (the next append makes a new segment)


def test_replaying_other_processes_segments_stops_after_one_while_own_records_wait(tmp_path):
    left_by_a_dead_process(tmp_path / "spool", ["a", "b", "c"])
    delivered: list[Record] = []
    spool = Spool(tmp_path / "spool")
    assert spool.replay(lambda batch, _: delivered.extend(batch), 100,
                        orphans_wait=lambda: True) is False
    assert [r[3]["session_id"] for r in delivered] == ["a"] * 3
    assert spool.replay(lambda batch, _: delivered.extend(batch), 100,
                        orphans_wait=lambda: False) is True
    assert [r[3]["session_id"] for r in delivered] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def test_a_backlog_left_by_a_dead_process_does_not_hold_up_this_processs_records(tmp_path):
    # The worker replays what other processes left a segment at a time
    # between this process's own batches: replayed all at once, a crashed
    # process's backlog (tens of megabytes after a tight loop) kept a later
    # process's records waiting behind it, past the exit's bound, so that
    # they were spooled instead of delivered (and the test of that backlog's
    # delivery at times found the later process's own end left in the spool).
    left_by_a_dead_process(tmp_path / "spool", ["a", "b", "c"])
    delivered = _delivered_with_one_own_record(tmp_path / "spool", 10)
    assert [r[3]["session_id"] for r in delivered] == \
        ["a"] * 3 + ["mine"] + ["b"] * 3 + ["c"] * 3
    assert not list((tmp_path / "spool").glob("*.jsonl"))


def _delivered_with_one_own_record(spool_dir: Path, total: int) -> list[Record]:
    """What a pipeline (batches of 100) delivers, in order, of what waits in
    ``spool_dir`` and one record of its own queued before it starts, once it
    has delivered ``total`` records."""
    sink = MemorySink()
    pipeline = Pipeline(sink, Spool(spool_dir), batch_size=100)
    pipeline.put(("event", "mine", 1.0, {"session_id": "mine"}))
    pipeline.start()
    try:
        assert pipeline.flush(10) is True
        assert wait_until(lambda: len(sink.records) == total, 10)
    finally:
        pipeline.shutdown(5)
    return sink.records


def test_one_large_segment_left_by_a_dead_process_lets_own_records_go_between_its_batches(
        tmp_path):
    # A segment was replayed whole (up to 16 MiB, about 1.5 s of the store's
    # time) before this process's own records went: replayed a batch at a
    # time, they go after its first batch, and the rest follows.
    writer = Spool(tmp_path / "spool")
    writer.append(events(1000, session="big"))
    writer.close()  # (unlocked, as its writer's death leaves it)
    delivered = _delivered_with_one_own_record(tmp_path / "spool", 1001)
    assert [r[3]["session_id"] for r in delivered] == ["big"] * 100 + ["mine"] + ["big"] * 900
    assert [r[1] for r in delivered if r[1] != "mine"] == [f"e{i}" for i in range(1000)]
    assert list((tmp_path / "spool").iterdir()) == []  # no segment, no progress note


def test_own_records_also_go_between_batches_of_the_segment_a_replay_is_in(tmp_path):
    # The rule holds within a segment: own records that wait stop the
    # replay of another process's segment after its next batch, however far
    # into the segment it is.
    writer = Spool(tmp_path / "spool")
    writer.append(events(1000, session="big"))
    writer.close()
    sink = MemorySink()
    pipeline = Pipeline(sink, Spool(tmp_path / "spool"), batch_size=100)
    delivered = threading.Event()
    mine_at: list[int] = []
    original = sink.write

    def write(records: Sequence[Record]) -> None:
        original(records)
        if len(sink.records) == 300:  # while the third batch is delivered: own records
            pipeline.put(("event", "mine", 1.0, {"session_id": "mine"}))
        if any(r[1] == "mine" for r in records):
            mine_at.append(len(sink.records))
            delivered.set()

    sink.write = write  # type: ignore[method-assign]
    pipeline.start()
    assert delivered.wait(10)
    assert wait_until(lambda: len(sink.records) == 1001, 10)
    assert mine_at == [301]  # after the batch under way, before the rest
    assert sorted(r[1] for r in sink.records if r[1] != "mine") == \
        sorted(f"e{i}" for i in range(1000))
    pipeline.shutdown(5)


def test_a_segment_a_replay_stopped_in_stays_this_processs_until_it_lets_go(tmp_path):
    # Stopped between two batches, the segment stays locked by its replayer
    # (no other process takes it up, from its start, meanwhile); let go of
    # (the exit closes the spool), the next replayer takes it up where the
    # last batch ended: every record once.
    writer = Spool(tmp_path / "spool")
    writer.append(events(1000))  # one line of 1,000 records: batches cut it
    writer.close()
    first: list[Record] = []
    spool = Spool(tmp_path / "spool")
    assert spool.replay(lambda batch, _: first.extend(batch), 300,
                        orphans_wait=lambda: True) is False
    assert [r[1] for r in first] == [f"e{i}" for i in range(300)]
    other: list[Record] = []
    assert Spool(tmp_path / "spool").replay(lambda batch, _: other.extend(batch), 300) \
        is False
    assert other == []  # held
    assert spool.replay(lambda batch, _: first.extend(batch), 300,
                        orphans_wait=lambda: True) is False
    assert [r[1] for r in first] == [f"e{i}" for i in range(600)]
    spool.close()
    assert Spool(tmp_path / "spool").replay(lambda batch, _: other.extend(batch), 300) is True
    assert [r[1] for r in other] == [f"e{i}" for i in range(600, 1000)]
    assert list((tmp_path / "spool").iterdir()) == []


#: A process that crashed with a backlog in the spool: one segment of its
#: session and 10,000 events (lines of 2,048 records each), never delivered.
CRASHED_WITH_A_BACKLOG = """
    import os, signal
    from pathlib import Path
    from lucidic._spool import Spool
    records = [("session", "orphaned", 1.0, {{"project": "default", "name": "left"}})]
    records += [("event", f"e{{i}}", 2.0, {{"session_id": "orphaned",
                                            "description": f"event {{i}}"}})
                for i in range(10_000)]
    Spool(Path({spool!r})).append(records)
    os.kill(os.getpid(), signal.SIGKILL)
"""

#: A process replaying that backlog into the embedded store, in batches of
#: 1,000 (so that batches cut lines), killed by SIGKILL at its third write:
#: before the store takes it, or once it has. Says how many records the
#: store took from it.
REPLAYER_KILLED_MIDWAY = """
    import os, signal, sys, threading
    from pathlib import Path
    from lucidic._pipeline import Pipeline
    from lucidic._sinks import LocalSink
    from lucidic._spool import Spool

    class Dying(LocalSink):
        writes = taken = 0

        def write(self, records):
            Dying.writes += 1
            if Dying.writes == 3 and {before!r}:
                os.kill(os.getpid(), signal.SIGKILL)
            super().write(records)
            Dying.taken += len(records)
            if Dying.writes == 3:
                print(Dying.taken, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            if Dying.writes == 2 and {before!r}:
                print(Dying.taken, flush=True)

    Pipeline(Dying(Path({db!r})), Spool(Path({spool!r})), batch_size=1000).start()
    threading.Event().wait(60)
"""

#: The next process: replays what is left, says how many records it delivered.
NEXT_REPLAYER = """
    import time
    from pathlib import Path
    from lucidic._pipeline import Pipeline
    from lucidic._sinks import LocalSink
    from lucidic._spool import Spool

    spool = Path({spool!r})
    pipeline = Pipeline(LocalSink(Path({db!r})), Spool(spool), batch_size=1000)
    pipeline.start()
    deadline = time.monotonic() + 60
    while any(spool.glob("*.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(pipeline.stats.delivered, flush=True)
    pipeline.shutdown(5)
"""


@pytest.mark.parametrize("killed", ["before", "after"])
def test_a_replayer_killed_midway_is_taken_up_where_its_last_delivered_batch_ended(
        tmp_path, killed):
    # A replay killed midway began the segment again from its start in the
    # next process: up to 16 MiB delivered twice. The segment's progress
    # file says where the last delivered batch ended; a replayer killed
    # between a delivery and its note delivers that one batch again (at
    # least once: exactly once would need the note in the sink's own
    # transaction).
    spool, db, home = tmp_path / "spool", tmp_path / "lucidic.db", tmp_path / "home"
    crashed = run_python(CRASHED_WITH_A_BACKLOG.format(spool=str(spool)), home=home,
                         check=False)
    assert crashed.returncode == -9, crashed.stderr
    first = run_python(REPLAYER_KILLED_MIDWAY.format(spool=str(spool), db=str(db),
                                                     before=killed == "before"),
                       home=home, check=False)
    assert first.returncode == -9, first.stderr
    taken_first = int(first.stdout.split()[0])
    assert taken_first == (2000 if killed == "before" else 3000)
    second = run_python(NEXT_REPLAYER.format(spool=str(spool), db=str(db)), home=home)
    taken_second = int(second.stdout.split()[0])
    again = 0 if killed == "before" else 1000  # the batch taken but not noted
    assert taken_first + taken_second == 10_001 + again
    assert list(spool.iterdir()) == []  # no segment, no progress note left
    store = Store(db)
    try:
        assert store.count("events") == 10_000
    finally:
        store.close()


def test_a_copy_of_the_workers_batch_is_held_from_replay_until_released(tmp_path):
    spool_dir = tmp_path / "spool"
    writer = Spool(spool_dir)
    delivered: list[Record] = []

    def replay() -> bool:
        return Spool(spool_dir).replay(lambda batch, _: delivered.extend(batch), 100)

    kept, _ = writer.write_aside(events(3, session="kept"))
    gone, _ = writer.write_aside(events(2, session="gone"))
    assert kept is not None and gone is not None
    # Held: the batch may still be delivered by its worker.
    assert replay() is False and delivered == []
    writer.release_aside(gone, delivered=True)
    assert not gone.exists()
    writer.release_aside(kept, delivered=False)  # the sink failed: replay it
    assert replay() is True
    assert sorted(r[3]["session_id"] for r in delivered) == ["kept"] * 3
    assert not list(spool_dir.iterdir())


def test_a_copy_written_aside_by_a_process_killed_midway_is_replayed(tmp_path):
    spool_dir = tmp_path / "spool"
    code = f"""
        import os, signal
        from pathlib import Path
        from lucidic._spool import Spool
        from faults import events
        spool = Spool(Path({str(spool_dir)!r}))
        path, _ = spool.write_aside(events(4))
        # Killed midway through more of it, before the worker let go of it.
        os.write(spool._aside[path], b'["event", "e9", 9.0, {{"session_')
        os.kill(os.getpid(), signal.SIGKILL)
    """
    result = run_python(code, home=tmp_path / "home", check=False,
                        env={"PYTHONPATH": str(Path(__file__).parent)})
    assert result.returncode == -9, result.stderr
    assert [p.suffix for p in spool_dir.iterdir()] == [".jsonl"]
    delivered: list[Record] = []
    assert Spool(spool_dir).replay(lambda batch, _: delivered.extend(batch), 100) is True
    assert sorted(r[1] for r in delivered) == ["e0", "e1", "e2", "e3"]


def test_a_process_killed_while_making_a_segment_leaves_no_file_behind_for_good(tmp_path):
    spool_dir = tmp_path / "spool"
    code = f"""
        import os, signal
        from pathlib import Path
        from lucidic._spool import Spool
        from faults import events
        # Killed between making the segment's temporary file and renaming it.
        os.rename = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        Spool(Path({str(spool_dir)!r})).append(events(3))
    """
    result = run_python(code, home=tmp_path / "home", check=False,
                        env={"PYTHONPATH": str(Path(__file__).parent)})
    assert result.returncode == -9, result.stderr
    (left,) = spool_dir.iterdir()
    assert left.suffix == ".tmp" and left.stat().st_size == 0
    replay = Spool(spool_dir).replay
    assert replay(lambda batch, _: None, 100) is True
    assert left.exists()  # young: it could be a live writer's, a moment from its rename
    old = time.time() - 120
    os.utime(left, (old, old))
    with open(left, "rb") as held:  # a live writer holds its lock: kept
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert replay(lambda batch, _: None, 100) is True
        assert left.exists()
    assert replay(lambda batch, _: None, 100) is True
    assert not left.exists()


def test_the_sdk_keeps_recording_while_the_sink_is_down_and_flush_delivers_later():
    with capture() as captured:
        captured.sink.failing = True
        sid = lai.init()
        for i in range(100):
            lai.create_event(description=f"e{i}")
        assert lai.flush(timeout=0.3) is False
        captured.sink.failing = False
        assert lai.flush(timeout=10) is True
        assert captured.session(sid)["event_count"] == 100


def test_with_the_spool_unwritable_records_wait_in_memory_and_the_newest_are_dropped_counted(
        tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    sink = _FlakySink()
    sink.down.set()
    pipeline = Pipeline(sink, Spool(blocker / "spool"), max_queue=100, batch_size=10)
    pipeline.start()
    records = events(1000)
    for record in records[:150]:
        pipeline.put(record)
    assert wait_until(lambda: pipeline._spool_failing, 10)  # the spill thread found it unwritable
    for record in records[150:]:
        pipeline.put(record)
    assert pipeline.flush(0.3) is False
    # The oldest are kept (twice the queue's size, give or take the batch the
    # worker holds), the newest dropped, and every record is one or the other.
    assert 0 < pipeline.stats.dropped <= 1000 - 200
    sink.down.clear()
    wait_until(lambda: sink.store.count("events") + pipeline.stats.dropped >= 1000, 15)
    stored = {r[1] for r in sink.records}
    assert len(stored) + pipeline.stats.dropped == 1000
    assert stored == {r[1] for r in records[:len(stored)]}  # the oldest, in order
    pipeline.shutdown(1)


def test_records_from_two_processes_merge_in_any_order(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    newer = ("step", "s1", 20.0, {"session_id": "x", "state": "newer", "is_finished": True,
                                  "ended_at": 20.0})
    older = ("step", "s1", 10.0, {"session_id": "x", "state": "older", "goal": "g",
                                  "started_at": 10.0})
    store.write([newer])
    store.write([older])
    store.write([newer, older])  # replayed again: no change, no duplicate
    row = store.get_step("s1")
    assert (row["state"], row["goal"], row["is_finished"]) == ("newer", "g", True)
    assert (row["started_at"], row["ended_at"]) == (10.0, 20.0)
    assert store.count("steps") == 1
    # A record cannot move a step into another session: it is refused, not
    # silently skipped.
    with pytest.raises(IdInUseError):
        store.write([("step", "s1", 30.0, {"session_id": "intruder", "state": "hijacked"})])
    assert store.get_step("s1")["session_id"] == "x" and store.get_step("s1")["state"] == "newer"


def test_spool_path_is_per_destination(lucidic_home):
    with capture() as captured:
        captured.sink.failing = True
        lai.init()
        lai.create_event(description="x")
        lai.flush(0.3)
        dirs = [p.name for p in (captured.directory / "spool").iterdir()]
        assert dirs == [captured.sink.identity]
        captured.sink.failing = False
        assert lai.flush(10)


def test_merging_a_rows_records_within_a_batch_never_lets_an_older_field_win(tmp_path):
    """A step's start and end replayed together from the spool, after an
    update made between them was already delivered: the update must stand."""
    store = Store(tmp_path / "db.sqlite")
    start = ("step", "s1", 10.0, {"session_id": "x", "state": "planning", "action": "plan",
                                  "started_at": 10.0})
    update = ("step", "s1", 20.0, {"session_id": "x", "state": "revised"})
    end = ("step", "s1", 30.0, {"session_id": "x", "ended_at": 30.0, "is_finished": True})
    store.write([update])
    store.write([start, end])
    row = store.get_step("s1")
    assert row["state"] == "revised"
    assert (row["action"], row["started_at"], row["ended_at"]) == ("plan", 10.0, 30.0)
    assert row["is_finished"] is True


def test_a_record_the_store_refuses_is_left_out_alone_and_named(store):
    from lucidic._sinks import LocalSink, RecordsRefusedError

    sink = LocalSink(Path(store.url))
    good = events(10, session="x")
    bad = ("event", "bad", 1.0, {"session_id": "x", "description": object()})  # unbindable
    with pytest.raises(RecordsRefusedError) as refusal:
        sink.write([*good[:5], bad, *good[5:]])
    assert store.count("events") == 10
    assert [r[1] for r, _ in refusal.value.refused] == ["bad"]
    assert refusal.value.later == []
    sink.close()


def test_numbers_no_backend_can_hold_are_stored_as_null(store):
    store.write([("event", "e1", 1.0, {"session_id": "x", "input_tokens": 2**70,
                                       "cost": float("nan"), "duration": float("inf")})])
    row = store.get_event("e1")
    assert (row["input_tokens"], row["cost"], row["duration"]) == (None, None, None)


def test_what_the_fast_spool_encoding_refuses_still_spools_and_replays(tmp_path):
    odd = [("event", "surrogate", 1.0, {"session_id": "x", "description": "bad \ud800 text"}),
           ("event", "huge", 1.0, {"session_id": "x", "input_tokens": 2**70}),
           ("event", "nan", 1.0, {"session_id": "x", "cost": float("nan")}),
           ("event", "plain", 1.0, {"session_id": "x", "description": "fine"})]
    spool = Spool(tmp_path / "spool")
    spool.append(odd)
    spool.close()
    delivered: list[Record] = []
    assert Spool(tmp_path / "spool").replay(lambda batch, _: delivered.extend(batch), 100) \
        is True
    assert [r[1] for r in delivered] == ["surrogate", "huge", "nan", "plain"]
    store = Store(tmp_path / "db.sqlite")
    store.write(delivered)
    assert store.get_event("surrogate")["description"] == "bad \ufffd text"
    assert store.get_event("huge")["input_tokens"] is None
    assert store.get_event("nan")["cost"] is None
    assert store.get_event("plain")["description"] == "fine"


def test_flush_with_no_time_to_wait_says_whether_everything_is_delivered(tmp_path):
    # flush(0) and shutdown(0) cannot wait for the worker, but when nothing
    # is left to deliver they must still say True rather than "timed out".
    sink = HangingSink()
    pipeline = Pipeline(sink, Spool(tmp_path / "spool"))
    pipeline.start()
    pipeline.put(events(1)[0])
    assert pipeline.flush(0) is False  # the sink still holds the record
    sink.release.set()
    assert pipeline.flush(10) is True
    assert pipeline.flush(0) is True
    assert pipeline.shutdown(0) is True
