"""What deleting sessions costs on an SQLite store, and what it gives back.

A store of SESSIONS sessions (each with STEPS steps and EVENTS events, LLM
calls among them, derived data rebuilt as `lucidic ui` would) is made once;
then `prune` deletes those older than 30 days (three quarters of them), a
batch (lucidic.reading.retention.BATCH sessions) to a transaction. Printed:

  file        the file's size (and its write-ahead log's) before, after the
              prune, and after VACUUM
  prune       sessions deleted a second, and the longest a batch held the
              write lock (what a writer may wait, at most, meanwhile)
  vacuum      how long VACUUM took (writers wait for all of it)

With --pg URL, the same store in a fresh PostgreSQL schema (dropped
afterwards): the prune's rate and how long a batch's transaction took (each
holds the refresher's lock and its sessions' rows); no file sizes.

    .venv/bin/python bench/bench_retention.py [--sessions 20000] [--quick]
    .venv/bin/python bench/bench_retention.py --pg postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lucidic.reading import retention  # noqa: E402
from lucidic.reading.derived import refresh  # noqa: E402
from lucidic.store import Store  # noqa: E402

DAY = 86400.0


def _size(path: Path) -> tuple[int, int]:
    """The file's size and its write-ahead log's."""
    wal = Path(f"{path}-wal")
    return os.path.getsize(path), os.path.getsize(wal) if wal.exists() else 0


def _mib(size: tuple[int, int]) -> str:
    return f"{size[0] / 1048576:,.1f} MiB (+{size[1] / 1048576:,.1f} MiB of WAL)"


def _fill(store: Store, sessions: int, steps: int, events: int, now: float) -> None:
    text = "the model's answer, long enough to look like one " * 8
    batch: list[tuple] = []
    for n in range(sessions):
        sid = f"session-{n:07d}"
        at = now - (60 - 40 * n // sessions) * DAY  # the older half: 40 days and more
        batch.append(("session", sid, at, {"project": "default", "started_at": at,
                                           "name": f"run {n}", "is_finished": True,
                                           "ended_at": at + 60}))
        batch += [("step", f"{sid}-s{j}", at + j, {"session_id": sid, "started_at": at + j,
                                                   "action": "think"}) for j in range(steps)]
        batch += [("event", f"{sid}-e{j}", at + j, {
            "session_id": sid, "started_at": at + j, "type": "llm" if j % 2 else "tool",
            "model": "gpt-4o", "input_tokens": 100 + j, "output_tokens": 20, "cost": 0.001,
            "duration": 0.5 + j / 10, "output": text}) for j in range(events)]
        if len(batch) >= 20_000:
            store.write(batch)
            batch = []
    if batch:
        store.write(batch)
    while refresh(store, quiet=-60, limit=1000):
        pass


def _timed_prune(store: Store, now: float) -> tuple[retention.Pruning, float, list[float]]:
    """A prune of the sessions older than 30 days: what it did, how long it
    took, and how long each of its transactions took."""
    held: list[float] = []
    real = store.transaction

    def timed(fn, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return real(fn, **kwargs)
        finally:
            held.append(time.perf_counter() - started)

    store.transaction = timed  # type: ignore[method-assign]
    started = time.perf_counter()
    done = retention.prune(store, 30 * DAY, now=now)
    took = time.perf_counter() - started
    store.transaction = real  # type: ignore[method-assign]
    return done, took, held


def _report(sessions: int, options: argparse.Namespace, done: retention.Pruning, took: float,
            held: list[float], what: str) -> None:
    rows = options.steps + options.events
    print(f"store: {sessions:,} sessions of {options.steps} steps and {options.events} "
          f"events; pruned {done.sessions:,} ({done.sessions * rows:,} steps and events)")
    print(f"prune:  {done.sessions / took:,.0f} sessions/s ({took:.1f} s); a batch of "
          f"{retention.BATCH} held {what} {max(held) * 1000:.0f} ms at most, "
          f"{sorted(held)[len(held) // 2] * 1000:.0f} ms median")


def _postgresql(base: str, sessions: int, options: argparse.Namespace, now: float) -> None:
    import psycopg

    schema = "lucidic_bench_retention_" + uuid.uuid4().hex[:8]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        store = Store(f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}")
        _fill(store, sessions, options.steps, options.events, now)
        done, took, held = _timed_prune(store, now)
        print("PostgreSQL:")
        _report(sessions, options, done, took, held, "its transaction")
        store.close()
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="2,000 sessions")
    parser.add_argument("--pg", metavar="URL",
                        help="a PostgreSQL URL (a fresh schema is made and dropped)")
    options = parser.parse_args()
    sessions = 2_000 if options.quick else options.sessions
    now = time.time()
    if options.pg:
        _postgresql(options.pg, sessions, options, now)
        return
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "lucidic.db"
        store = Store(path)
        _fill(store, sessions, options.steps, options.events, now)
        store.vacuum()  # (the filled file as compact as it gets: the fair "before")
        before = _size(path)
        done, took, held = _timed_prune(store, now)
        after = _size(path)
        started = time.perf_counter()
        store.vacuum()
        vacuum = time.perf_counter() - started
        vacuumed = _size(path)
        _report(sessions, options, done, took, held, "the write lock")
        print(f"file:   {_mib(before)} before, {_mib(after)} after the prune, "
              f"{_mib(vacuumed)} after VACUUM")
        print(f"vacuum: {vacuum:.1f} s")
        store.close()


if __name__ == "__main__":
    main()
