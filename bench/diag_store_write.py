"""Diagnostic (not run by run_all): what one record costs the worker.

Times ``Store.write`` of a 2,000-event batch from a thread, with the main
thread idle and then busy with Python work like a ``lai.create_event`` loop,
for the store's ``executemany`` upsert and for a multi-row ``INSERT ... VALUES
(...), (...)`` variant of the same SQL; and the Python-side row building
(``_row_params``) alone. The worker's cost per record bounds sustained ingest.

    .venv/bin/python bench/diag_store_convoy.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lucidic.store import _TABLES, Store, _row_params  # noqa: E402

SESSION = "6f1c0d8e-0000-4000-8000-000000000000"
CHUNK = 250


def batch(tag: str, n: int = 2000) -> list:
    return [("event", f"{tag}-{i}", time.time(),
             {"type": "generic", "description": "tool call", "session_id": SESSION,
              "step_id": None, "started_at": 1.0, "ended_at": 1.0, "is_finished": True})
            for i in range(n)]


def multirow_write(store: Store, records: list) -> None:
    columns = _TABLES["event"][1]
    rows = [_row_params(columns, r) for r in records]
    head, rest = store._upserts["event"].split(" VALUES ", 1)
    values, tail = rest.split(" ON CONFLICT ", 1)
    sql = f"{head} VALUES {', '.join([values] * CHUNK)} ON CONFLICT {tail}"

    def run(cur) -> None:  # noqa: ANN001
        full = len(rows) // CHUNK * CHUNK
        for i in range(0, full, CHUNK):
            cur.execute(sql, [x for row in rows[i:i + CHUNK] for x in row])
        if rows[full:]:
            cur.executemany(store._upserts["event"], rows[full:])

    store._run(run, write=True)


def timed(write, store: Store, tag: str, busy: bool) -> float:  # noqa: ANN001
    records = batch(tag)
    result: list[float] = []
    done = threading.Event()

    def worker() -> None:
        start = time.perf_counter()
        write(store, records)
        result.append(time.perf_counter() - start)
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    if busy:  # what a loop of lai.create_event() does: small dicts, a clock, a deque
        queue: deque = deque(maxlen=65536)
        while not done.is_set():
            for i in range(100):
                queue.append(("event", i, time.time(), {"description": "tool call", "n": i}))
    thread.join()
    return result[0]


def main() -> None:
    store = Store(Path(tempfile.mkdtemp(prefix="lucidic-diag-")) / "lucidic.db")
    variants = {"executemany (Store.write)": Store.write, f"multi-row x{CHUNK}": multirow_write}
    columns = _TABLES["event"][1]
    records = batch("params")
    start = time.perf_counter()
    for record in records:
        _row_params(columns, record)
    print(f"_row_params: {(time.perf_counter() - start) / len(records) * 1e6:.2f} µs per event")
    print("ms to write 2,000 events from a thread, median of 5 [max]")
    for name, write in variants.items():
        for busy in (False, True):
            runs = [timed(write, store, f"{name}-{busy}-{k}", busy) * 1000 for k in range(5)]
            print(f"  {name:<28} main thread {'busy' if busy else 'idle'}: "
                  f"{statistics.median(runs):8.1f} [{max(runs):.1f}]")


if __name__ == "__main__":
    main()
