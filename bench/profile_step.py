"""Where each microsecond of one recorded step goes.

    .venv/bin/python bench/profile_step.py            # about 30 seconds
    .venv/bin/python bench/profile_step.py --n 50000  # steadier figures

The hot path (``@lai.step`` around a function that returns at once, with a
session current) piece by piece in the user's thread, and the worker's
delivery of the same steps to the embedded store, phase by phase. Each piece
is timed alone, N times in a loop, in process CPU time, best of R rounds (a
profiler's own cost would swamp pieces this small); the pieces are then
summed and set beside the whole, measured the same way, and beside the
hand-written floor recorder of bench_core.py part 5.

Then a long loop (``--long`` steps, as bench_core.py part 5 times them: the
worker and the spill thread running): where the CPU of a step goes by thread,
what the cyclic garbage collector and the kernel's page faults take, and how
many records the worker read back from the spool. Timed alone, the pieces
above leave out what a long loop adds: records pile up while the loop holds
the interpreter, and the worker delivers them long after they were made.
Last, the loop's own thread with neither, one or both of the worker and the
spill thread running beside it: what each costs it, in its own CPU and in
wall time.

It reads Lucidic's internals (this is a profile), and changes nothing in
them but to count the records replayed and, for the last section, to hold
the worker or the spill thread still and lift the queue's bound.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))  # run from a checkout without installing


def best_of(rounds: int, n: int, run: Callable[[int], Any],
            reset: Callable[[], Any] | None = None) -> float:
    """Microseconds of CPU per call of run(n) / n, best of ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        if reset is not None:
            reset()
        gc.collect()
        start = time.process_time()
        run(n)
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def loop(call: Callable[[], Any]) -> Callable[[int], None]:
    def run(count: int) -> None:
        for _ in range(count):
            call()
    return run


def thread_cpu(thread: threading.Thread | None) -> float:
    """Seconds of CPU the thread has used (nan where the platform cannot say)."""
    if thread is None or thread.ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return float("nan")
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except OSError:  # it has ended
        return float("nan")


def minor_faults(thread: threading.Thread | None) -> float:
    """The thread's minor page faults so far (Linux; nan elsewhere)."""
    if thread is None or thread.native_id is None:
        return float("nan")
    try:
        with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
            return float(stat.read().rsplit(")", 1)[1].split()[7])
    except (OSError, IndexError, ValueError):
        return float("nan")


class CollectorTime:
    """Seconds the cyclic garbage collector runs, by generation, in any thread."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self._started: dict[int, float] = {}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started[threading.get_ident()] = time.perf_counter()
        else:
            started = self._started.pop(threading.get_ident(), None)
            if started is not None:
                self.seconds[info["generation"]] += time.perf_counter() - started


def long_loop(stepped: Callable[[int], Any], pipeline: Any, n: int, rounds: int
              ) -> dict[str, float]:
    """µs a step (median of ``rounds``) of each part of a tight loop of n
    steps and the flush that delivers them, the worker delivering meanwhile."""
    import lucidic as lai

    replayed = 0
    deliver_replayed = pipeline._deliver_replayed

    def counted(batch: Any, refused_since: Any) -> None:
        nonlocal replayed
        replayed += len(batch)
        deliver_replayed(batch, refused_since)

    pipeline._deliver_replayed = counted
    threads = dict(zip(THREADS, (threading.current_thread(), pipeline._thread,
                                 pipeline._spiller), strict=True))
    collector = CollectorTime()
    samples: dict[str, list[float]] = {}
    run = loop(lambda: stepped(1))
    run(20_000)  # warm-up
    lai.flush(60)
    gc.callbacks.append(collector)
    try:
        for _ in range(rounds):
            gc.collect()
            collector.seconds = [0.0, 0.0, 0.0]
            replayed = 0
            faults = sum(minor_faults(thread) for thread in threads.values())
            # (the threads' clocks read inside the process clock's reading)
            whole = time.process_time()
            cpu = {name: thread_cpu(thread) for name, thread in threads.items()}
            delivered = pipeline.stats.delivered
            run(n)
            delivered_during = pipeline.stats.delivered - delivered
            if not lai.flush(120):
                raise SystemExit("lai.flush() did not deliver the long loop")
            sample = {name: thread_cpu(thread) - cpu[name] for name, thread in threads.items()}
            sample["whole"] = time.process_time() - whole
            sample["the rest (other threads)"] = sample["whole"] - sum(sample[k] for k in THREADS)
            sample.update({
                "page faults": sum(minor_faults(thread) for thread in threads.values()) - faults,
                "garbage collector, youngest generations": sum(collector.seconds[:2]),
                "garbage collector, full collections": collector.seconds[2],
                "records delivered during the loop": delivered_during,
                "records read back from the spool": replayed})
            for key, value in sample.items():
                samples.setdefault(key, []).append(value / n)
    finally:
        gc.callbacks.remove(collector)
        del pipeline._deliver_replayed  # the class's again
    counts = ("page faults", "records delivered during the loop",
              "records read back from the spool")
    return {key: statistics.median(values) * (1 if key in counts else 1e6)
            for key, values in samples.items()}


THREADS = ("user's thread", "worker", "spill thread")

#: Which of the worker and the spill thread run during a loop (see shares()).
SHARE_MODES = {"neither (both held still)": (False, False), "the spill thread": (False, True),
               "the worker": (True, False), "both": (True, True)}


def shares(stepped: Callable[[int], Any], pipeline: Any, n: int, rounds: int
           ) -> dict[str, tuple[float, float]]:
    """The loop's own thread, µs of its CPU and of wall time a step (medians
    of ``rounds``, the modes in turn), while neither, one or both of the
    worker and the spill thread run; held still, one does nothing at its
    turns, and what it left is delivered between rounds. The queue's bound is
    lifted meanwhile, so that no mode meets a full queue."""
    import lucidic as lai

    deliver, spill_tick = pipeline._cycle, pipeline._spill_tick
    max_queue = pipeline._max_queue
    samples: dict[str, list[tuple[float, float]]] = {mode: [] for mode in SHARE_MODES}
    run = loop(lambda: stepped(1))
    pipeline._max_queue = 10 ** 9
    try:
        for _ in range(rounds):
            for mode, (worker, spill) in SHARE_MODES.items():
                pipeline._cycle = deliver if worker else (lambda: None)
                pipeline._spill_tick = spill_tick if spill else (lambda: None)
                gc.collect()
                wall = time.perf_counter()
                cpu = time.thread_time()
                run(n)
                samples[mode].append(((time.thread_time() - cpu) / n,
                                      (time.perf_counter() - wall) / n))
                pipeline._cycle, pipeline._spill_tick = deliver, spill_tick
                if not lai.flush(120):
                    raise SystemExit("lai.flush() did not deliver a shares round")
    finally:
        pipeline._cycle, pipeline._spill_tick = deliver, spill_tick
        pipeline._max_queue = max_queue
    return {mode: (statistics.median(c for c, _ in values) * 1e6,
                   statistics.median(w for _, w in values) * 1e6)
            for mode, values in samples.items()}


def report_shares(found: dict[str, tuple[float, float]], n: int, rounds: int) -> None:
    p = print
    p("")
    p(f"The loop's own thread in a tight loop of {n:,} steps, with these running beside it "
      f"(median of {rounds} rounds), µs a step")
    p("")
    p(f"  {'running beside it':<38}{'its CPU':>8}{'wall':>8}")
    for mode, (cpu, wall) in found.items():
        p(f"  {mode:<38}{cpu:8.2f}{wall:8.2f}")


def report_long_loop(long: dict[str, float], n: int, rounds: int) -> None:
    p = print
    p("")
    p(f"In a tight loop of {n:,} steps and the flush that delivers them, the worker and "
      f"the spill thread running (median of {rounds} rounds), µs of CPU per step")
    p("")
    p(f"whole CPU per recorded step              {long['whole']:6.2f}")
    for key in (*THREADS, "the rest (other threads)"):
        p(f"  {key:<38}{long[key]:6.2f}")
    p("of which, in any of them:")
    for key in ("garbage collector, youngest generations", "garbage collector, full collections"):
        p(f"  {key:<38}{long[key]:6.2f}")
    p(f"page faults a step                       {long['page faults']:6.3f}")
    p(f"records delivered during the loop a step "
      f"{long['records delivered during the loop']:6.3f}")
    p(f"records read back from the spool a step  "
      f"{long['records read back from the spool']:6.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--long", type=int, default=100_000,
                        help="steps of the long loop (0: leave it out)")
    parser.add_argument("--long-rounds", type=int, default=3)
    parser.add_argument("--shares-rounds", type=int, default=3,
                        help="rounds of each mode of the last section (0: leave it out)")
    args = parser.parse_args(argv)
    n, rounds = args.n, args.rounds
    os.environ["LUCIDIC_HOME"] = tempfile.mkdtemp(prefix="lucidic-profile-")

    from bench_core import FloorRecorder

    import lucidic as lai
    from lucidic._context import current_step, process_slot, scope_binding
    from lucidic._recording import CURRENT, open_step
    from lucidic.store import ROWS_PER_STATEMENT, Store, _check_records, _group_rows

    def body(x: int) -> int:
        return x

    stepped = lai.step(body)
    floor = FloorRecorder()
    floor_step = floor.step(body)
    lai.init(session_name="profile")
    binding = process_slot.binding
    assert binding is not None
    pipeline = binding.pipeline
    lai.flush(30)
    deliver, spill_tick = pipeline._cycle, pipeline._spill_tick
    # The worker and the spill thread idle: the hot path is timed alone, and
    # what it queues stays queued for the worker's phases to be timed on.
    pipeline._cycle = lambda: None
    pipeline._spill_tick = lambda: None
    queue = pipeline._queue
    spec_static = {"action": "body", "function_name": f"{__name__}.body"}
    maskable = ("action", "function_name")

    def plain_wrapper(*call_args: Any) -> Any:
        return body(*call_args)

    def find_session() -> Any:
        found = scope_binding.get()
        if found is None:
            found = process_slot.binding
        return found if found is not None and found.active else None

    sample = open_step(binding, dict(spec_static), CURRENT, maskable)
    record = ("step", "x", 1.0, {"session_id": binding.session_id})

    def opened() -> Any:
        return open_step(binding, spec_static.copy(), CURRENT, maskable, merge_end=True)

    def open_and_end() -> None:
        opened().end()

    def build_only() -> Any:
        # open_step's work but the queueing: id, time, fields, writer
        ids = binding.state.ids
        step_id = f"{ids.prefix}{next(ids.counter):x}"
        now = time.time()
        fields = spec_static.copy()
        fields["session_id"] = binding.session_id  # (no parent: no parent_step_id)
        fields["started_at"] = now
        fields.update(binding.writer)
        return ("step", step_id, now, fields)

    kept: list[Any] = []
    floor_token = floor.session.set("floor-session")
    # What the timing loop itself costs a call (a lambda calling nothing):
    # taken off every piece timed through loop().
    idle = best_of(rounds, n, loop(lambda: None))
    hot = {
        "whole": best_of(rounds, n, loop(lambda: stepped(1)), queue.clear),
        "floor": best_of(rounds, n, loop(lambda: floor_step(1)), floor.queue.clear),
        "bare call": best_of(rounds, n, loop(lambda: body(1))),
        "call through a wrapper": best_of(rounds, n, loop(lambda: plain_wrapper(1))),
        "find the session": best_of(rounds, n, loop(find_session)),
        # (kept, as the queue keeps what open_step builds: freed at once, the
        # records would cost less than they do, and the difference be
        # charged to the Step object)
        "build the start record": best_of(rounds, n, loop(lambda: kept.append(build_only())),
                                          kept.clear),
        "queue it": best_of(rounds, n, loop(lambda: pipeline.put(record)), queue.clear),
        "open the step": best_of(rounds, n, loop(opened), queue.clear),
        "open and end": best_of(rounds, n, loop(open_and_end), queue.clear),
        "current step set and reset": best_of(
            rounds, n, loop(lambda: current_step.reset(current_step.set(sample)))),
    }
    floor.session.reset(floor_token)
    hot = {key: value - idle for key, value in hot.items()}
    hot["Step object and parent lookup"] = (hot["open the step"] - hot["build the start record"]
                                            - hot["queue it"])
    hot["end it (merged into its start)"] = hot["open and end"] - hot["open the step"]
    hot["the wrapper's own"] = hot["call through a wrapper"] - hot["bare call"]
    hot["guards (try, restore)"] = hot["whole"] - sum(hot[k] for k in (
        "call through a wrapper", "find the session", "open and end",
        "current step set and reset"))

    # The worker: deliver the same steps to the embedded store, phase by phase.
    queue.clear()
    for i in range(n):
        stepped(i)
    records = pipeline.queued()
    queue.clear()
    batches = [records[i:i + ROWS_PER_STATEMENT]
               for i in range(0, len(records), ROWS_PER_STATEMENT)]  # as the worker takes them
    store = Store(Path(os.environ["LUCIDIC_HOME"]) / "profile.db")
    phases = {"check the batch": 0.0, "records into rows": 0.0, "SQLite upserts": 0.0,
              "SQLite commit": 0.0}
    worker_rounds = max(2, rounds // 2)
    best: dict[str, float] = {}
    for _ in range(worker_rounds):
        for key in phases:
            phases[key] = 0.0
        for batch in batches:
            t0 = time.process_time()
            repeated = _check_records(batch)
            t1 = time.process_time()
            groups = _group_rows(batch, mergeable=repeated)
            t2 = time.process_time()
            cursor = store._conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            store._apply(cursor, groups, ("session", "step", "event"))
            t3 = time.process_time()
            cursor.execute("COMMIT")
            t4 = time.process_time()
            phases["check the batch"] += t1 - t0
            phases["records into rows"] += t2 - t1
            phases["SQLite upserts"] += t3 - t2
            phases["SQLite commit"] += t4 - t3
        store.execute("DELETE FROM steps")
        for key, seconds in phases.items():
            best[key] = min(best.get(key, float("inf")), seconds / n * 1e6)

    def worker_cycle() -> float:
        for i in range(n):
            stepped(i)
        start = time.process_time()
        deliver()
        return (time.process_time() - start) / n * 1e6

    best["whole delivery (worker cycle)"] = min(worker_cycle() for _ in range(worker_rounds))
    pipeline._cycle, pipeline._spill_tick = deliver, spill_tick
    lai.flush(60)
    steps_per_record = n / len(records)

    p = print
    p(f"One @lai.step call with a session, µs of CPU per step (best of {rounds} rounds of "
      f"{n:,}; this machine, Python {sys.version.split()[0]})")
    p("")
    p(f"hot path, in the user's thread          {hot['whole']:6.2f}   (floor recorder "
      f"{hot['floor']:.2f}: {hot['whole'] / hot['floor']:.2f}x)")
    for key in ("the wrapper's own", "find the session", "build the start record", "queue it",
                "Step object and parent lookup", "current step set and reset",
                "end it (merged into its start)", "guards (try, restore)"):
        p(f"  {key:<38}{hot[key]:6.2f}")
    p("")
    total = best["whole delivery (worker cycle)"]
    p(f"worker, delivering to the embedded store {total:6.2f}   ({len(records):,} records for "
      f"{n:,} steps: {steps_per_record:.2f} steps a record)")
    pieces = ("check the batch", "records into rows", "SQLite upserts", "SQLite commit")
    for key in pieces:
        p(f"  {key:<38}{best[key]:6.2f}")
    p(f"  {'taking batches off the queue, the rest':<38}"
      f"{total - sum(best[k] for k in pieces):6.2f}")
    p("")
    p(f"whole CPU per recorded step              {hot['whole'] + total:6.2f}")
    if args.long:
        report_long_loop(long_loop(stepped, pipeline, args.long, args.long_rounds),
                         args.long, args.long_rounds)
    if args.long and args.shares_rounds:
        report_shares(shares(stepped, pipeline, args.long, args.shares_rounds),
                      args.long, args.shares_rounds)
    lai.shutdown(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
