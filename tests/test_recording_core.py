"""The recording core: one Step and one Event for every path, a short step
queued as one record, and the store's write path (rows many to a statement,
values checked a group at a time) storing exactly what one-by-one writes
would."""

from __future__ import annotations

import gc
import math
import os
import socket
import sys
import threading
from pathlib import Path

import pytest

import lucidic as lai
from helpers import ReadableStore
from lucidic import _pipeline, plugins
from lucidic._context import current_step
from lucidic._pipeline import Pipeline
from lucidic._recording import Event, Step
from lucidic._spool import Spool
from lucidic.store import ROWS_PER_STATEMENT, Record
from lucidic.testing import MemorySink, capture

SECRET = "sk-SECRET-123"


def test_every_path_makes_and_ends_the_cores_step_and_event(store):
    sid = lai.init(session_name="one core")
    seen: list[object] = []

    @lai.step
    def decorated() -> None:
        seen.append(current_step.get())

    decorated()
    lai.create_step(action="imperative")
    seen.append(current_step.get())
    lai.end_step()
    handle = plugins.open_step(action="plugin")
    seen.append(handle)
    assert handle is not None
    handle.end()
    with plugins.step_scope(action="scoped"):
        seen.append(current_step.get())
    call = plugins.start_llm_call("openai", request_model="m")
    assert isinstance(call, Event)
    call.finish(model="m", input_tokens=1, output_tokens=1)
    assert all(isinstance(step, Step) for step in seen)
    assert lai.flush()
    steps = store.session_tree(sid)["steps"]
    assert sorted(s["action"] for s in steps) == ["decorated", "imperative", "plugin", "scoped"]
    # whichever path made it, a step names its writer and is finished
    assert all(s["is_finished"] and s["writer_pid"] == os.getpid() for s in steps)


def test_a_decorated_step_ending_before_delivery_is_one_record_and_reads_the_same():
    @lai.step
    def leaf() -> int:
        return 1

    @lai.step(state="outer")
    def parent() -> int:
        lai.create_event(description="inside")  # queued after the parent's start
        return leaf()

    with capture() as recorded:
        sid = lai.init(session_name="merged", auto_end=False)
        lai.shutdown()  # no worker takes anything until the next flush
        leaf()
        parent()
        steps = [r for r in recorded.records if r[0] == "step"]
        tree = recorded.session(sid)
    by_id: dict[str, list[Record]] = {}
    for record in steps:
        by_id.setdefault(record[1], []).append(record)
    counts = sorted(len(records) for records in by_id.values())
    # each leaf: start and end in one record; the parent, whose start had an
    # event queued after it: two
    assert counts == [1, 1, 2]
    for records in by_id.values():
        if len(records) == 1:
            (fields,) = [r[3] for r in records]
            assert fields["is_finished"] is True
            assert fields["started_at"] <= fields["ended_at"] == records[0][2]
    top = sorted(tree["steps"], key=lambda s: s["action"])
    assert [s["action"] for s in top] == ["leaf", "parent"]
    assert all(s["is_finished"] and s["ended_at"] >= s["started_at"] for s in top)
    assert [c["action"] for c in top[1]["steps"]] == ["leaf"]
    assert top[1]["state"] == "outer"


def test_a_step_open_across_a_fork_is_never_merged_in_the_parent():
    @lai.step(state="forking")
    def forks() -> int:
        pid = os.fork()
        if pid == 0:
            os._exit(0)  # the child: gone at once, recording nothing
        os.waitpid(pid, 0)
        return pid

    with capture() as recorded:
        lai.init(session_name="fork", auto_end=False)
        lai.shutdown()  # nothing is taken off the queue meanwhile
        forks()
        steps = [r for r in recorded.records if r[0] == "step"]
    # The start was last in the queue when the step ended, but a fork came in
    # between: the child may have written to the same step since, so the
    # parent's records keep their own times.
    assert len(steps) == 2
    assert "ended_at" not in steps[0][3] and steps[1][3]["is_finished"] is True


def test_amend_last_merges_only_the_record_still_last_in_the_queue(tmp_path):
    sink = MemorySink()
    pipeline = Pipeline(sink, Spool(tmp_path / "spool"))  # no worker yet
    start: Record = ("step", "s1", 1.0, {"session_id": "x", "action": "a", "started_at": 1.0})
    other: Record = ("step", "s2", 1.5, {"session_id": "x", "action": "b", "started_at": 1.5})
    third: Record = ("step", "s3", 1.7, {"session_id": "x", "action": "c", "started_at": 1.7})
    end = {"session_id": "x", "ended_at": 2.0, "is_finished": True}
    pipeline.put(start)
    pipeline.put(other)
    assert not pipeline.amend_last(start, dict(end), 2.0, 0)  # something came after it
    # The spill thread chose the queue, up to this record, to write to disk:
    # amended now, the end would be missing from what it writes.
    with pipeline._take_lock:
        assert pipeline._freeze(2) == [*start, *other]  # their slots
    assert not pipeline.amend_last(other, dict(end), 3.0, 0)
    pipeline.put(third)
    assert not pipeline.amend_last(third, dict(end), 3.0, 1)  # queued before a fork
    assert third[3] == {"session_id": "x", "action": "c", "started_at": 1.7}  # untouched
    assert pipeline.amend_last(third, dict(end), 3.0, 0)
    assert pipeline.flush(5)
    assert sink.records == [start, other, ("step", "s3", 3.0, {**third[3], **end})]
    assert not pipeline.amend_last(third, dict(end), 4.0, 0)  # the worker has taken it
    pipeline.shutdown(5)


def test_queued_records_are_nothing_the_cyclic_garbage_collector_walks(tmp_path):
    # CPython never untracks a tuple holding a dict: queued as tuples, the
    # records a tight loop piles up were walked by every collection (0.4 µs
    # a step in 100,000-step loops). The queue holds their parts instead,
    # none of them tracked, and gives the records back whole.
    pipeline = Pipeline(MemorySink(), Spool(tmp_path / "spool"))  # no worker: all stays queued
    start: Record = ("step", "s1", 1.0, {"session_id": "x", "started_at": 1.0})
    events = [("event", f"e{i}", 1.5, {"session_id": "x", "type": "generic"}) for i in range(3)]
    for record in events:
        pipeline.put(record)
    pipeline.put(start)
    assert pipeline.amend_last(start, {"ended_at": 2.0, "is_finished": True}, 2.0, 0)
    gc.collect()
    assert not any(map(gc.is_tracked, pipeline._queue))
    assert pipeline.queued() == [*events, ("step", "s1", 2.0, {**start[3], "ended_at": 2.0,
                                                                "is_finished": True})]
    pipeline.shutdown(5)


def test_the_worker_takes_records_up_to_a_flush_and_leaves_the_rest_whole(tmp_path):
    # A batch ends at a flush request (the flush waits on what came before
    # it); what follows stays queued, each record's parts together.
    pipeline = Pipeline(MemorySink(), Spool(tmp_path / "spool"))  # no worker: taken by hand
    records = [("event", f"e{i}", 1.0, {"session_id": "x"}) for i in range(5)]
    for record in records[:2]:
        pipeline.put(record)
    flush = _pipeline._FlushRequest(fail_fast=False)
    pipeline._queue.extend((flush, *_pipeline._REQUEST_PAD))  # as flush() queues it
    for record in records[2:]:
        pipeline.put(record)
    with pipeline._take_lock:
        batch, request = pipeline._take()
    assert batch == records[:2] and request is flush
    assert pipeline.queued() == records[2:]
    with pipeline._take_lock:
        assert pipeline._take() == (records[2:], None)
    assert not pipeline._queue


def test_a_step_ending_never_overwrites_what_another_thread_queued_meanwhile(tmp_path):
    # One thread ends its steps (each end merged into its start where that
    # start is still last), another records events, thread switches as
    # frequent as the interpreter allows. amend_last once looked at the last
    # record, then merged, then replaced it: an event appended by the other
    # thread in between was overwritten (about one in 500 here).
    pipeline = Pipeline(MemorySink(), Spool(tmp_path / "spool"), max_queue=10**6,
                        batch_size=10**6)  # no worker: everything stays queued
    count = 100_000
    end = {"session_id": "x", "ended_at": 2.0, "is_finished": True}

    def steps() -> None:
        for i in range(count):
            start: Record = ("step", f"s{i}", 1.0, {"session_id": "x", "started_at": 1.0})
            pipeline.put(start)
            if not pipeline.amend_last(start, dict(end), 2.0, 0):
                pipeline.put(("step", f"s{i}", 2.0, dict(end)))

    def events() -> None:
        for i in range(count):
            pipeline.put(("event", f"e{i}", 1.0, {"session_id": "x"}))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=steps), threading.Thread(target=events)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(interval)
    queued = pipeline.queued()
    assert sorted(int(r[1][1:]) for r in queued if r[0] == "event") == list(range(count))
    ended = {r[1] for r in queued if r[0] == "step" and r[3].get("is_finished")}
    started = {r[1] for r in queued if r[0] == "step" and "started_at" in r[3]}
    assert len(ended) == len(started) == count


def test_a_decorated_steps_error_and_a_plugin_steps_end_are_masked(store):
    def mask(text: str) -> str:
        return text.replace(SECRET, "<key>")

    @lai.step
    def fails() -> None:
        raise ValueError(f"bad key {SECRET}")

    sid = lai.init(session_name="masked errors", masking_function=mask)
    with pytest.raises(ValueError, match=SECRET):
        fails()
    handle = plugins.open_step(action="plugin")
    assert handle is not None
    handle.end(state=f"state {SECRET}", error=RuntimeError(f"boom {SECRET}"))
    assert lai.flush()
    steps = {s["action"]: s for s in store.session_tree(sid)["steps"]}
    assert steps["fails"]["error"] == "ValueError: bad key <key>"
    assert (steps["plugin"]["state"], steps["plugin"]["error"]) == (
        "state <key>", "RuntimeError: boom <key>")


@pytest.mark.parametrize("nothing", [None, float("nan"), float("inf"), 2**70],
                         ids=["None", "nan", "inf", "huge int"])
def test_a_value_no_backend_holds_never_clears_a_stored_field(tmp_path, nothing):
    store = ReadableStore(tmp_path / "db.sqlite")
    store.write([("event", "e1", 1.0, {"session_id": "x", "cost": 1.5, "input_tokens": 7})])
    store.write([("event", "e1", 2.0, {"session_id": "x", "cost": nothing,
                                       "input_tokens": nothing, "description": "later"})])
    row = store.get_event("e1")
    assert (row["cost"], row["input_tokens"], row["description"]) == (1.5, 7, "later")


def _mixed_batch() -> list[Record]:
    """Records of many shapes, as the SDK and the server send them: steps with
    and without a parent, merged and split, events with JSON and flags, a row
    named twice, values to clean (NUL, a lone surrogate, NaN) among clean ones."""
    records: list[Record] = [("session", "x", 0.5, {"project": "p", "name": "n",
                                                    "started_at": 0.5, "tags": ["a"]})]
    for i in range(150):
        ts = 1.0 + i
        start = {"action": f"step {i}", "session_id": "x",
                 "parent_step_id": f"s{i - 1}" if i % 3 else None, "started_at": ts,
                 "writer_host": "h", "writer_pid": 42, "writer_agent": None}
        if i % 4 == 0:
            records.append(("step", f"s{i}", ts + 0.5, {**start, "ended_at": ts + 0.5,
                                                       "is_finished": True}))
        else:
            records.append(("step", f"s{i}", ts, start))
        records.append(("event", f"e{i}", ts, {
            "session_id": "x", "step_id": f"s{i}", "type": "llm" if i % 2 else "generic",
            "description": "nul \x00 here" if i == 7 else "lone \ud800" if i == 9 else f"d{i}",
            "input": [{"role": "user", "content": f"q{i}"}], "cost": math.nan if i == 11
            else 0.25 * i, "tokens_estimated": bool(i % 2), "input_tokens": i}))
        if i % 4:
            records.append(("step", f"s{i}", ts + 0.5, {"session_id": "x", "ended_at": ts + 0.5,
                                                        "is_finished": True}))
    return records


def test_a_batch_stores_exactly_what_its_records_one_by_one_would(tmp_path):
    records = _mixed_batch()
    batched, single = ReadableStore(tmp_path / "a.db"), ReadableStore(tmp_path / "b.db")
    batched.write(records)
    for record in records:
        single.write([record])
    for table in ("sessions", "steps", "events"):
        query = f"SELECT * FROM {table} ORDER BY id"
        a, b = batched.query(query), single.query(query)
        assert len(a) == len(b) > 0
        # updated_at: a merged row takes its newest record's time, as one by one
        assert a == b
    event = batched.get_event("e7")
    assert event["description"] == "nul \ufffd here"
    assert batched.get_event("e9")["description"] == "lone \ufffd"
    assert batched.get_event("e11")["cost"] is None
    assert batched.get_event("e3")["tokens_estimated"] is True


def test_values_every_row_has_alike_are_stored_as_each_record_says(tmp_path: Path):
    # The store checks once a value every row of a column has alike, and
    # binds it once a statement if it is a text or integer: an int standing
    # for another row's equal float or flag must store what that row would
    # have stored alone (each column's affinity), a NUL alike in every row
    # be cleaned as in one, and a column alike but for one row be checked
    # whole.
    records: list[Record] = [("step", f"s{i}", 1.0 + i, {
        "session_id": "x", "writer_pid": 42, "is_finished": True,
        "eval_score": (1, 1.0, True)[i % 3], "started_at": 5 if i % 2 else 5.0,
        "action": "lone \ud800" if i == 150 else "same", "goal": "g",
        "ended_at": float("nan") if i == 299 else 2.0})
        for i in range(300)]
    # (other shapes: groups of their own, each checked apart)
    records += [("step", f"n{i}", 1.0 + i, {"session_id": "x", "state": "nul \x00 alike"})
                for i in range(100)]
    records += [("step", f"t{i}", 1.0 + i, {"session_id": "x",
                                            "is_finished": (True, False, None, 1)[i % 4]})
                for i in range(100)]
    batched, single = ReadableStore(tmp_path / "a.db"), ReadableStore(tmp_path / "b.db")
    batched.write(records)
    for record in records:
        single.write([record])
    query = ("SELECT id, writer_pid, typeof(writer_pid), is_finished, typeof(is_finished), "
             "eval_score, typeof(eval_score), started_at, typeof(started_at), state, action, "
             "goal, ended_at FROM steps ORDER BY id")
    assert batched.query(query) == single.query(query)
    assert batched.get_step("n1")["state"] == "nul \ufffd alike"
    assert batched.get_step("s150")["action"] == "lone \ufffd"
    # (an unset flag reads as False)
    assert [batched.get_step(f"t{i}")["is_finished"] for i in range(4)] == [
        True, False, False, True]
    assert batched.get_step("s7")["writer_pid"] == 42
    # (and the pid and the flag were bound once a statement, as the session was)
    many = [(columns, shared) for (kind, columns), _, rows, shared in batched._upserts
            if kind == "step" and rows > 1 and "writer_pid" in columns]
    assert many
    for columns, shared in many:
        at = {column: i for i, column in enumerate(columns, 1)}
        assert {at["session_id"], at["writer_pid"], at["is_finished"]} <= set(shared)


def test_the_store_takes_more_rows_than_one_statement_holds(tmp_path: Path):
    store = ReadableStore(tmp_path / "db.sqlite")
    records: list[Record] = [("event", f"e{i}", float(i), {"session_id": "x", "type": "tool",
                                                            "description": f"d{i}"})
                             for i in range(1000)]
    store.write(records)
    assert store.count("events") == 1000
    assert store.get_event("e999")["description"] == "d999"


def test_a_tight_loops_full_batches_reach_the_store_one_statement_each(tmp_path: Path):
    # The driver lets go of the interpreter once a statement, and a busy user
    # thread keeps the worker waiting up to a switch interval to get it back:
    # a full batch of alike records must be one statement, not one per power
    # of two in its size (a batch of 2,000 took six).
    from lucidic._sessions import LOCAL_PROJECT
    from lucidic._sinks import LocalSink

    sink = LocalSink(tmp_path / "db.sqlite")
    statements: list[str] = []
    sink._get_store()._conn.set_trace_callback(statements.append)
    sink.write([("session", "x", 1.0, {"project": LOCAL_PROJECT, "name": "loop",
                                       "started_at": 1.0})])
    statements.clear()
    pipeline = Pipeline(sink, Spool(tmp_path / "spool"))
    batches = 3
    for i in range(batches * ROWS_PER_STATEMENT):  # all queued before the worker starts
        pipeline.put(("step", f"s{i}", 2.0 + i, {"session_id": "x", "action": "a",
                                                 "started_at": 2.0 + i, "ended_at": 2.5 + i}))
    assert pipeline.flush(timeout=30)  # starts the worker
    pipeline.shutdown(timeout=5)
    upserts = [s for s in statements if s.startswith("INSERT INTO steps")]
    assert len(upserts) == batches
    assert sink._get_store().count("steps") == batches * ROWS_PER_STATEMENT


def test_a_plugins_event_cannot_name_its_writer_or_step(store):
    # Lucidic stamps who wrote an event and which step it belongs to; a
    # session with no agent and no current step records neither.
    sid = lai.init(session_name="stamped")
    plugins.record_event("tool", description="d", writer_agent="someone",
                         writer_host="elsewhere", writer_pid=1, step_id="not-a-step")
    assert lai.flush()
    (event,) = store.session_tree(sid)["events"]
    assert (event["writer_agent"], event["writer_host"], event["writer_pid"],
            event["step_id"]) == (None, socket.gethostname(), os.getpid(), None)


def test_a_new_store_file_gets_16_kib_pages_and_an_existing_one_keeps_its_own(tmp_path):
    import sqlite3

    new = ReadableStore(tmp_path / "new.db")
    assert new.query("PRAGMA page_size") == [{"page_size": 16384}]
    with sqlite3.connect(tmp_path / "old.db") as old_file:
        old_file.execute("PRAGMA page_size=4096")
        old_file.execute("CREATE TABLE made_before (x)")
    old = ReadableStore(tmp_path / "old.db")
    assert old.query("PRAGMA page_size") == [{"page_size": 4096}]
    old.write([("step", "s", 1.0, {"session_id": "x", "action": "a"})])
    assert old.get_step("s")["action"] == "a"
    new.close()
    old.close()
