"""Core SDK benchmark: Lucidic against an OpenTelemetry SDK span, in one run.

    .venv/bin/python bench/bench_core.py           # full run (about 2-3 minutes)
    .venv/bin/python bench/bench_core.py --quick   # smaller run (about 30 seconds)

Three parts, each measured side by side in this one process (or in child
processes it starts), so the ratios hold on a noisy machine:

1. Cost per call of a bare function, of ``@lai.step`` with a session current
   (records built, masked, queued, while the worker delivers to the embedded
   SQLite store), of ``@lai.step`` with no session, of ``lai.create_event`` and
   of an OpenTelemetry span (``start_as_current_span``, ``BatchSpanProcessor``,
   an exporter that only counts). Rounds are interleaved and rotated; the
   figure is the median of the rounds (the best round is shown too).
2. Sustained events per second from one process into the embedded store, all
   of them checked with ``COUNT(*)``; and the same tight loop through
   OpenTelemetry's default batch processor, with the spans it dropped.
3. Resident memory of a child process that records a million events while its
   sink fails for real (this process holds ``BEGIN EXCLUSIVE`` on the store, so
   every delivery fails with "database is locked"); then the lock is released,
   a later process delivers the spool, and the store is counted.

5. The hot path against its floor: ``@lai.step`` with a session in a tight loop
   while the worker delivers (nothing paused), side by side with a minimal
   hand-written recorder; the whole CPU time per recorded step, delivery
   included; and what a ``masking_function`` adds beyond its own calls.

Figures are printed next to the targets of DESIGN.md section 7. The script
exits 0 whatever the figures (``--strict`` exits 1 when a target is missed).
Each part uses a fresh LUCIDIC_HOME in a temporary directory.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing


# -- helpers ---------------------------------------------------------------------------

def rss_mb() -> float:
    """Resident memory of this process (VmRSS), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def spool_segments(home: Path) -> list[Path]:
    spool = home / "spool"
    return list(spool.rglob("*.jsonl")) if spool.exists() else []


def count_rows(db: Path, table: str, session_id: str | None = None) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        if session_id is None:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        return int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE session_id = ?",
                                (session_id,)).fetchone()[0])
    finally:
        conn.close()


def timed_loop(fn: Callable[[int], Any], n: int) -> float:
    """Seconds for n calls of fn (the loop's own cost is in every variant alike,
    and cancels out of the differences)."""
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return time.perf_counter() - start


class CountingExporter:
    """An OpenTelemetry span exporter that does nothing but count (and, with
    ``latency``, waits that long per batch, like a network round trip)."""

    def __init__(self, latency: float = 0.0) -> None:
        self.exported = 0
        self.latency = latency

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        if self.latency:
            time.sleep(self.latency)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def otel_tracer(latency: float = 0.0) -> tuple[Any, Any, CountingExporter]:
    """A tracer provider with a default-configured BatchSpanProcessor."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # It logs "Queue full, dropping Span." per drop; the table counts them instead.
    logging.getLogger("opentelemetry.sdk").setLevel(logging.ERROR)
    exporter = CountingExporter(latency)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, provider.get_tracer("lucidic-bench"), exporter


def fresh_home(tag: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=f"lucidic-bench-{tag}-"))
    os.environ["LUCIDIC_HOME"] = str(home)
    return home


# -- 1. cost per call -------------------------------------------------------------------

def part_call_costs(rounds: int, cheap_n: int, costly_n: int) -> dict[str, Any]:
    import lucidic as lai
    from lucidic._runtime import runtime  # read-only: delivery counters for the report

    home = fresh_home("calls")
    db = home / "lucidic.db"

    def bare(x: int) -> int:
        return x

    @lai.step
    def stepped(x: int) -> int:
        return x

    @lai.step
    def stepped_masked(x: int) -> int:
        return x

    provider, tracer, exporter = otel_tracer()

    def otel_span(x: int) -> int:
        with tracer.start_as_current_span("bare"):
            return bare(x)

    sid = lai.init(session_name="bench: call costs")
    lai.detach()  # no session is current outside the `continued` blocks below
    def identity(text: str) -> str:
        return text

    masked_sid = lai.init(session_name="bench: call costs, masked",
                          masking_function=identity)
    lai.detach()
    pipeline = next(iter(runtime.pipelines.values()))

    def event(x: int) -> None:
        lai.create_event(description="tool call")

    samples: dict[str, list[float]] = {k: [] for k in (
        "bare", "step_nosession", "step_session", "step_session_masked", "create_event",
        "otel_span")}
    allin: dict[str, list[float]] = {k: [] for k in ("step_session", "create_event",
                                                     "otel_span")}
    delivered_during = 0
    spooled_during = 0
    otel_ended = 0
    calls = {"step_session": 0, "step_session_masked": 0, "create_event": 0}

    def lucidic_round(name: str, fn: Callable[[int], Any], session_id: str,
                      **options: Any) -> None:
        nonlocal delivered_during, spooled_during
        with lai.continued(session_id, **options):
            delivered, spooled = pipeline.stats.delivered, pipeline.stats.spooled
            start = time.perf_counter()
            seconds = timed_loop(fn, costly_n)
            delivered_during += pipeline.stats.delivered - delivered
            spooled_during += pipeline.stats.spooled - spooled
            ok = lai.flush(timeout=120)
            everything = time.perf_counter() - start
        if not ok:
            raise SystemExit(f"lai.flush() did not deliver the {name} round")
        calls[name] += costly_n
        samples[name].append(seconds / costly_n)
        if name in allin:
            allin[name].append(everything / costly_n)

    def otel_round() -> None:
        nonlocal otel_ended
        start = time.perf_counter()
        seconds = timed_loop(otel_span, costly_n)
        provider.force_flush(120_000)
        everything = time.perf_counter() - start
        otel_ended += costly_n
        samples["otel_span"].append(seconds / costly_n)
        allin["otel_span"].append(everything / costly_n)

    variants: list[Callable[[], None]] = [
        lambda: samples["bare"].append(timed_loop(bare, cheap_n) / cheap_n),
        lambda: samples["step_nosession"].append(timed_loop(stepped, cheap_n) / cheap_n),
        lambda: lucidic_round("step_session", stepped, sid),
        lambda: lucidic_round("step_session_masked", stepped_masked, masked_sid,
                              masking_function=identity),
        lambda: lucidic_round("create_event", event, sid),
        otel_round,
    ]
    # warm-up (imports, first connections, code paths), not measured
    timed_loop(bare, 1000), timed_loop(stepped, 1000), timed_loop(otel_span, 1000)
    with lai.continued(sid):
        timed_loop(stepped, 1000)
        timed_loop(event, 1000)
        lai.flush(timeout=60)
    provider.force_flush(60_000)
    warm = {"step": 1000, "event": 1000}
    exported_before = exporter.exported

    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for run in order:
            gc.collect()
            run()

    provider.force_flush(120_000)
    otel_exported = exporter.exported - exported_before
    provider.shutdown()
    ok = lai.flush(timeout=120)
    steps_stored = count_rows(db, "steps", sid) + count_rows(db, "steps", masked_sid)
    events_stored = count_rows(db, "events", sid)
    steps_sent = calls["step_session"] + calls["step_session_masked"] + warm["step"]
    events_sent = calls["create_event"] + warm["event"]
    med = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    best = {k: min(v) * 1e6 for k, v in samples.items()}
    return {
        "median_us": med, "min_us": best,
        "allin_median_us": {k: statistics.median(v) * 1e6 for k, v in allin.items()},
        "rounds": rounds, "cheap_n": cheap_n, "costly_n": costly_n,
        "flush_ok": ok, "steps_stored": steps_stored, "steps_sent": steps_sent,
        "events_stored": events_stored, "events_sent": events_sent,
        "delivered_during_timing": delivered_during, "spooled_during_timing": spooled_during,
        "steps_during_timing": calls["step_session"] + calls["step_session_masked"],
        "events_during_timing": calls["create_event"],
        "otel_ended": otel_ended, "otel_exported": otel_exported,
        "otel_dropped": otel_ended - otel_exported, "home": home,
    }


# -- 2. sustained ingest ----------------------------------------------------------------

#: Seconds the second OpenTelemetry exporter spends per batch: a round trip to
#: a collector on the local network.
OTEL_SLOW_EXPORT = 0.010


def part_ingest(n: int) -> dict[str, Any]:
    import lucidic as lai
    from lucidic._runtime import runtime

    home = fresh_home("ingest")
    db = home / "lucidic.db"
    sid = lai.init(session_name="bench: sustained ingest")
    pipeline = runtime.pipelines[next(k for k, p in runtime.pipelines.items()
                                      if str(home) in str(p.spool.directory))]
    stats0 = (pipeline.stats.delivered, pipeline.stats.spooled)
    create_event = lai.create_event
    gc.collect()
    start = time.perf_counter()
    for _ in range(n):
        create_event(description="tool call")
    loop_done = time.perf_counter()
    flushed = lai.flush(timeout=300)
    end = time.perf_counter()
    delivered_in_loop = None  # filled below from counters
    stats1 = (pipeline.stats.delivered, pipeline.stats.spooled)
    lai.detach()
    stored = count_rows(db, "events", sid)
    delivered_in_loop = stats1[0] - stats0[0]
    result = {
        "n": n, "seconds": end - start, "loop_seconds": loop_done - start,
        "flush_seconds": end - loop_done, "flushed": flushed, "stored": stored,
        "events_per_s": n / (end - start), "spooled": stats1[1] - stats0[1],
        "delivered": delivered_in_loop, "home": home,
    }

    for key, latency in (("otel", 0.0), ("otel_slow", OTEL_SLOW_EXPORT)):
        provider, tracer, exporter = otel_tracer(latency)
        start_span = tracer.start_as_current_span
        gc.collect()
        start = time.perf_counter()
        for _ in range(n):
            with start_span("tool call"):
                pass
        provider.force_flush(120_000)
        end = time.perf_counter()
        provider.shutdown()
        result.update({f"{key}_exported": exporter.exported,
                       f"{key}_dropped": n - exporter.exported,
                       f"{key}_per_s": n / (end - start)})
    return result


# -- 3. memory with the sink down ---------------------------------------------------------

def child_spill(n: int, checkpoints: list[int]) -> None:
    """Record n events while the store is locked by the parent; print JSON."""
    import lucidic as lai

    home = Path(os.environ["LUCIDIC_HOME"])
    out: dict[str, Any] = {"rss_start_mb": rss_mb()}
    t0 = time.perf_counter()
    sid = lai.init(session_name="bench: memory with the sink down", auto_end=False)
    out["init_seconds"] = time.perf_counter() - t0
    out["session_id"] = sid
    out["rss_after_init_mb"] = rss_mb()
    create_event = lai.create_event
    samples = []
    done = 0
    start = time.perf_counter()
    for checkpoint in checkpoints:
        for _ in range(checkpoint - done):
            create_event(description="tool call")
        done = checkpoint
        samples.append({"events": checkpoint, "rss_mb": rss_mb(),
                        "spool_mb": dir_bytes(home / "spool") / 2**20,
                        "seconds": time.perf_counter() - start})
    out["samples"] = samples
    t0 = time.perf_counter()
    out["flush_ok"] = lai.flush(timeout=1.0)  # must fail fast-ish: the sink is down
    out["shutdown_ok"] = lai.shutdown(timeout=3.0)
    out["shutdown_seconds"] = time.perf_counter() - t0
    out["spool_mb_at_exit"] = dir_bytes(home / "spool") / 2**20
    print(json.dumps(out), flush=True)


def child_deliver(timeout: float) -> None:
    """A later process: starting a session starts the worker, which replays
    every orphaned spool segment. Waits until the spool is empty."""
    import lucidic as lai

    home = Path(os.environ["LUCIDIC_HOME"])
    start = time.perf_counter()
    lai.init(session_name="bench: spool delivery")
    deadline = start + timeout
    while spool_segments(home) and time.perf_counter() < deadline:
        time.sleep(0.1)
    ok = lai.flush(timeout=30) and not spool_segments(home)
    lai.end_session(is_successful=ok)
    print(json.dumps({"seconds": time.perf_counter() - start, "ok": ok,
                      "left": len(spool_segments(home))}), flush=True)


def run_child(args: list[str], env: dict[str, str], timeout: float, script: Path = HERE
              ) -> dict[str, Any]:
    """Run a bench script (this one unless told) as a child; its last line of JSON."""
    proc = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def part_memory(n: int, checkpoints: list[int]) -> dict[str, Any]:
    from lucidic.store import Store

    home = Path(tempfile.mkdtemp(prefix="lucidic-bench-memory-"))
    db = home / "lucidic.db"
    Store(db).close()  # the schema exists; now make every write fail
    lock = sqlite3.connect(db, timeout=0, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    env = dict(os.environ, LUCIDIC_HOME=str(home), LUCIDIC_FLUSH_TIMEOUT="3")
    started = time.perf_counter()
    try:
        spill = run_child(["--child-spill", str(n), ",".join(map(str, checkpoints))], env,
                          timeout=600)
        stored_while_down = int(lock.execute(
            "SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    spill_seconds = time.perf_counter() - started
    segments = len(spool_segments(home))
    deliver = run_child(["--child-deliver", "600"], env, timeout=700)
    stored = count_rows(db, "events", spill["session_id"])
    result = {"n": n, "spill": spill, "stored_while_down": stored_while_down,
              "segments": segments, "deliver": deliver, "stored": stored,
              "spill_seconds": spill_seconds, "home": home}
    return result


# -- report ------------------------------------------------------------------------------

def part_import(runs: int) -> dict[str, Any]:
    """`import lucidic` in fresh interpreters, as -X importtime reports it
    (cumulative, the package and everything it pulled in). Measured as an
    installed package runs: with bytecode caches, written by a first run (an
    environment with PYTHONDONTWRITEBYTECODE would otherwise time compiling)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    command = [sys.executable, "-X", "importtime", "-c", "import lucidic"]
    subprocess.run(command, capture_output=True, check=True, env=env)  # warm the caches
    totals = []
    for _ in range(runs):
        out = subprocess.run(command, capture_output=True, text=True, check=True,
                             env=env).stderr
        line = [row for row in out.splitlines() if row.rstrip().endswith("| lucidic")][-1]
        totals.append(int(line.split("|")[1]) / 1000)
    return {"ms": statistics.median(totals), "best_ms": min(totals), "runs": runs}


# -- 5. the hot path against its floor, with the worker delivering --------------------------

class FloorRecorder:
    """The least a nested step must do, written by hand: read the session and the
    parent step from context variables, make an id, take two timestamps, queue
    two dicts on a deque, and set and restore the current step around the call.
    Nothing delivers what it queues; the deque is cleared between rounds."""

    def __init__(self) -> None:
        import collections
        import contextvars
        import itertools
        import secrets

        self.session: contextvars.ContextVar[str | None] = contextvars.ContextVar(
            "floor_session", default=None)
        self.parent: contextvars.ContextVar[str | None] = contextvars.ContextVar(
            "floor_parent", default=None)
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def step(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        session, parent, queue = self.session, self.parent, self.queue
        prefix, counter, name, now = self._prefix, self._counter, fn.__name__, time.time

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            step_id = f"{prefix}{next(counter):x}"
            queue.append({"kind": "step", "id": step_id, "session_id": session.get(),
                          "parent_id": parent.get(), "name": name, "started_at": now()})
            token = parent.set(step_id)
            try:
                return fn(*args, **kwargs)
            finally:
                parent.reset(token)
                queue.append({"kind": "step", "id": step_id, "ended_at": now()})
        return wrapper


def part_hot_path(rounds: int, n: int) -> dict[str, Any]:
    """``@lai.step`` with a session in a tight loop of n calls while the worker
    delivers to the embedded store as it does in production (nothing paused),
    side by side with the floor recorder; the whole CPU cost of a recorded step
    (process CPU time, every thread, over the loop and the flush that delivers
    it); and what a ``masking_function`` adds beyond its own calls."""
    import lucidic as lai
    from lucidic._runtime import runtime  # read-only: delivery counters for the report

    home = fresh_home("hotpath")
    floor = FloorRecorder()

    def body(x: int) -> int:
        return x

    floor_step = floor.step(body)
    stepped = lai.step(body)
    mask_calls = 0

    def identity(text: str) -> str:
        return text

    def counting_identity(text: str) -> str:
        nonlocal mask_calls
        mask_calls += 1
        return text

    sid = lai.init(session_name="bench: hot path")
    lai.detach()
    masked_sid = lai.init(session_name="bench: hot path, masked")
    lai.detach()
    pipeline = next(p for p in runtime.pipelines.values()
                    if str(home) in str(p.spool.directory))
    samples: dict[str, list[float]] = {"floor": [], "step": [], "step_masked": [],
                                       "masking_added": [], "cpu_per_step": []}
    delivered_during: list[float] = []

    def floor_round() -> None:
        floor.queue.clear()
        token = floor.session.set("floor-session")
        try:
            samples["floor"].append(timed_loop(floor_step, n) / n)
        finally:
            floor.session.reset(token)
        floor.queue.clear()

    def step_round() -> None:
        with lai.continued(sid):
            delivered = pipeline.stats.delivered
            cpu = time.process_time()
            samples["step"].append(timed_loop(stepped, n) / n)
            delivered_during.append((pipeline.stats.delivered - delivered) / n)
            if not lai.flush(timeout=120):
                raise SystemExit("lai.flush() did not deliver the hot-path round")
            samples["cpu_per_step"].append((time.process_time() - cpu) / n)

    def masked_round() -> None:
        # Chunks of masked and unmasked steps in turn, each timed: what masking
        # adds is their difference a few milliseconds apart, steadier on a
        # noisy machine than the difference of two rounds' medians. (A
        # binding's masking function is its own: continued() takes it again.)
        chunk = min(n, 2000)
        masked = unmasked = 0.0
        for j in range(n // chunk):
            for mask in ((identity, None) if j % 2 else (None, identity)):
                if mask is None:
                    with lai.continued(sid):
                        unmasked += timed_loop(stepped, chunk)
                else:
                    with lai.continued(masked_sid, masking_function=mask):
                        masked += timed_loop(stepped, chunk)
        steps = n // chunk * chunk
        samples["step_masked"].append(masked / steps)
        samples["masking_added"].append((masked - unmasked) / steps)
        if not lai.flush(timeout=120):
            raise SystemExit("lai.flush() did not deliver the masked round")

    # How many times a step calls the masking function, and what those calls cost alone.
    counted_sid = lai.init(session_name="bench: masking calls")
    lai.detach()
    with lai.continued(counted_sid, masking_function=counting_identity):
        timed_loop(stepped, 1000)
    calls_per_step = mask_calls / 1000
    identity_cost = min(timed_loop(lambda i: identity("text"), 200_000) / 200_000
                        for _ in range(5)) - min(timed_loop(lambda i: i, 200_000) / 200_000
                                                 for _ in range(5))
    lai.flush(timeout=60)
    variants = [floor_round, step_round, masked_round]
    for variant in variants:  # warm-up
        variant()
    for key in samples:
        samples[key].clear()
    delivered_during.clear()
    for r in range(rounds):
        for run in variants[r % 3:] + variants[:r % 3]:
            gc.collect()
            run()
    med = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    return {"n": n, "rounds": rounds, "median_us": med,
            "min_us": {k: min(v) * 1e6 for k, v in samples.items()},
            "delivered_during": statistics.median(delivered_during),
            "mask_calls_per_step": calls_per_step, "identity_us": identity_cost * 1e6,
            "home": home}


#: Where issue 11 set its timed targets the floor recorder took about 1 µs a
#: step (0.93-0.99); this machine's speed moves 2-3x from day to day, so each
#: target is also shown as that many floors of the same run.
TARGET_FLOOR_US = 1.0


def report_hot_path(hot: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Part 5's lines, and the targets it missed."""
    med, best = hot["median_us"], hot["min_us"]
    floor = med["floor"]
    ratio = med["step"] / floor
    masking_extra = med["masking_added"] - hot["mask_calls_per_step"] * hot["identity_us"]
    cpu_floors = med["cpu_per_step"] / floor
    masking_floors = masking_extra / floor
    cpu_target, masking_target = 6.0, 0.3
    cpu_floors_target = cpu_target / TARGET_FLOOR_US
    masking_floors_target = masking_target / TARGET_FLOOR_US
    lines = [
        "",
        f"5. The hot path against its floor ({hot['rounds']} interleaved rounds of "
        f"{hot['n']:,} calls; median [best round]), the worker delivering meanwhile "
        f"({hot['delivered_during']:.2f} records delivered inside a round per step it records)",
        f"   {'floor recorder (hand-written, see FloorRecorder)':<52}{floor:>7.3f}  "
        f"[{best['floor']:.3f}]",
        f"   {'@lai.step, session, worker delivering':<52}{med['step']:>7.3f}  "
        f"[{best['step']:.3f}]   {ratio:.2f}x floor   target <= 2.5x   "
        f"{verdict(ratio <= 2.5)}",
        f"   {'whole CPU per recorded step (delivery included)':<52}"
        f"{med['cpu_per_step']:>7.3f}  [{best['cpu_per_step']:.3f}]   target <= 6 µs   "
        f"{verdict(med['cpu_per_step'] <= cpu_target)}",
        f"   {'':<52}{cpu_floors:>7.2f}x floor   target <= {cpu_floors_target:.1f}x "
        f"(6 µs at a {TARGET_FLOOR_US:g} µs floor)   {verdict(cpu_floors <= cpu_floors_target)}",
        f"   {'masking_function (identity) adds beyond its calls':<52}{masking_extra:>7.3f}"
        f"   ({hot['mask_calls_per_step']:.0f} calls/step at {hot['identity_us']:.3f} µs; "
        f"chunks of 2,000 masked and unmasked in turn)   target <= 0.3 µs   "
        f"{verdict(masking_extra <= masking_target)}",
        f"   {'':<52}{masking_floors:>7.2f}x floor   target <= {masking_floors_target:.1f}x "
        f"(0.3 µs at a {TARGET_FLOOR_US:g} µs floor)   "
        f"{verdict(masking_floors <= masking_floors_target)}",
    ]
    missed = []
    if ratio > 2.5:
        missed.append(f"hot path {ratio:.2f}x its floor")
    if med["cpu_per_step"] > cpu_target:
        missed.append(f"{med['cpu_per_step']:.1f} µs CPU per step (absolute)")
    if cpu_floors > cpu_floors_target:
        missed.append(f"{cpu_floors:.1f} floors of CPU per step")
    if masking_extra > masking_target:
        missed.append(f"masking adds {masking_extra:.2f} µs (absolute)")
    if masking_floors > masking_floors_target:
        missed.append(f"masking adds {masking_floors:.2f} floors")
    return lines, missed


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(calls: dict[str, Any], ingest: dict[str, Any], memory: dict[str, Any],
           hot: dict[str, Any], elapsed: float, quick: bool, imported: dict[str, Any]
           ) -> list[str]:
    import platform

    import opentelemetry.sdk.version as otel_version

    import lucidic

    missed: list[str] = []
    med, best = calls["median_us"], calls["min_us"]
    ratio = med["step_session"] / med["otel_span"]
    ratio_best = best["step_session"] / best["otel_span"]
    overhead = med["step_nosession"] - med["bare"]
    overhead_best = best["step_nosession"] - best["bare"]
    lines = []
    p = lines.append
    p(f"Lucidic core benchmark{' (--quick)' if quick else ''}: Python "
      f"{platform.python_version()}, {os.cpu_count()} CPUs, lucidic "
      f"{getattr(lucidic, '__version__', '?')}, opentelemetry-sdk {otel_version.__version__}")
    p("")
    p(f"1. Cost per call, µs ({calls['rounds']} interleaved rounds of "
      f"{calls['cheap_n']:,} / {calls['costly_n']:,} calls; median [best round])")
    p(f"   {'bare function':<44}{med['bare']:>8.3f}  [{best['bare']:.3f}]")
    p(f"   {'@lai.step, no session':<44}{med['step_nosession']:>8.3f}  "
      f"[{best['step_nosession']:.3f}]")
    p(f"   {'@lai.step, session (hot path)':<44}{med['step_session']:>8.3f}  "
      f"[{best['step_session']:.3f}]   incl. delivery: "
      f"{calls['allin_median_us']['step_session']:.2f}")
    p(f"   {'@lai.step, session + masking_function':<44}{med['step_session_masked']:>8.3f}  "
      f"[{best['step_session_masked']:.3f}]")
    p(f"   {'lai.create_event(description=...), session':<44}{med['create_event']:>8.3f}  "
      f"[{best['create_event']:.3f}]   incl. delivery: "
      f"{calls['allin_median_us']['create_event']:.2f}")
    p(f"   {'OTel start_as_current_span + BatchSpanProc.':<44}{med['otel_span']:>8.3f}  "
      f"[{best['otel_span']:.3f}]   incl. export:   "
      f"{calls['allin_median_us']['otel_span']:.2f}")
    ok1 = ratio <= 0.2
    ok2 = overhead <= 0.5
    p(f"   step with session / OTel span   {ratio:6.3f}  [{ratio_best:.3f}]   target <= 0.2"
      f"    {verdict(ok1)}")
    p(f"   no-session step - bare (µs)     {overhead:6.3f}  [{overhead_best:.3f}]   "
      f"target <= 0.5    {verdict(ok2)}")
    stored_ok = (calls["flush_ok"] and calls["steps_stored"] == calls["steps_sent"]
                 and calls["events_stored"] == calls["events_sent"])
    # (A step is one record when its end is queued before the worker takes its
    # start, else two.)
    p(f"   worker delivered {calls['delivered_during_timing']:,} records inside the timed "
      f"loops of {calls['steps_during_timing']:,} steps and {calls['events_during_timing']:,} "
      f"events (written to the spool meanwhile: {calls['spooled_during_timing']:,}); after "
      f"flush: steps "
      f"{calls['steps_stored']:,}/{calls['steps_sent']:,}, events "
      f"{calls['events_stored']:,}/{calls['events_sent']:,} stored  {verdict(stored_ok)}")
    p(f"   OTel: {calls['otel_ended']:,} spans ended, {calls['otel_exported']:,} exported, "
      f"{calls['otel_dropped']:,} dropped by its queue")
    if not ok1:
        missed.append(f"step/OTel ratio {ratio:.3f} > 0.2")
    if not ok2:
        missed.append(f"no-session overhead {overhead:.3f} µs > 0.5 µs")
    if not stored_ok:
        missed.append("section 1: not every record was stored")

    p("")
    p(f"2. Sustained ingest, {ingest['n']:,} events in a tight loop, one process")
    all_stored = ingest["flushed"] and ingest["stored"] == ingest["n"]
    ok3 = ingest["events_per_s"] >= 50_000 and all_stored
    p(f"   lucidic -> embedded store   {ingest['events_per_s']:>10,.0f} events/s   "
      f"(loop {ingest['loop_seconds']:.2f} s + flush {ingest['flush_seconds']:.2f} s)   "
      f"stored/sent {ingest['stored']:,}/{ingest['n']:,}   target >= 50,000/s, all stored"
      f"   {verdict(ok3)}")
    p(f"     worker delivered {ingest['delivered']:,} records; the spill thread wrote "
      f"{ingest['spooled']:,} to the spool (copies of what waited 0.1 s, and what "
      f"overflowed the queue); flush returned {ingest['flushed']}")
    for key, label in (("otel", "counting exporter"),
                       ("otel_slow", f"exporter taking {OTEL_SLOW_EXPORT * 1000:.0f} ms/batch")):
        p(f"   OTel BatchSpanProcessor (default settings), {label}: "
          f"{ingest[key + '_per_s']:,.0f} spans/s, exported {ingest[key + '_exported']:,}/"
          f"{ingest['n']:,}, dropped {ingest[key + '_dropped']:,} "
          f"({100 * ingest[key + '_dropped'] / ingest['n']:.0f}%)")
    if not ok3:
        missed.append(f"ingest {ingest['events_per_s']:,.0f} events/s"
                      + ("" if all_stored else ", not all stored"))

    p("")
    spill = memory["spill"]
    s = spill["samples"]
    growth = s[-1]["rss_mb"] - s[0]["rss_mb"]
    flat = growth <= max(10.0, 0.1 * s[0]["rss_mb"])
    exact = memory["stored"] == memory["n"]
    p(f"3. Memory with the sink down ({memory['n']:,} events; store held by BEGIN "
      f"EXCLUSIVE, every delivery fails 'database is locked')")
    p(f"   RSS at start {spill['rss_start_mb']:.1f} MiB, after init "
      f"{spill['rss_after_init_mb']:.1f} MiB (init waited {spill['init_seconds']:.1f} s "
      f"on the locked store)")
    for sample in s:
        p(f"   {sample['events']:>9,} events   RSS {sample['rss_mb']:7.1f} MiB   spool on disk "
          f"{sample['spool_mb']:7.1f} MiB   ({sample['events'] / sample['seconds']:,.0f} "
          f"events/s)")
    p(f"   RSS growth {s[0]['events']:,} -> {s[-1]['events']:,} events: {growth:+.1f} MiB   "
      f"target: flat (<= 10 MiB or 10%)   {verdict(flat)}")
    p(f"   stored while the sink was down: {memory['stored_while_down']:,}; shutdown took "
      f"{spill['shutdown_seconds']:.1f} s (flush ok: {spill['shutdown_ok']}), spool at exit "
      f"{spill['spool_mb_at_exit']:.1f} MiB in {memory['segments']} segments")
    p(f"   after the lock was released a later process delivered the spool in "
      f"{memory['deliver']['seconds']:.1f} s: stored {memory['stored']:,}/{memory['n']:,} "
      f"(exactly once: {exact})   {verdict(exact and memory['deliver']['ok'])}")
    if not flat:
        missed.append(f"memory grew {growth:+.1f} MiB while spilling")
    if not (exact and memory["deliver"]["ok"]):
        missed.append(f"spool delivery stored {memory['stored']:,}/{memory['n']:,}")

    p("")
    fast = imported["ms"] < 100
    p(f"4. import lucidic (fresh interpreter, -X importtime, median of {imported['runs']}): "
      f"{imported['ms']:.1f} ms [{imported['best_ms']:.1f}]   target < 100 ms   "
      f"{verdict(fast)}")
    if not fast:
        missed.append(f"import {imported['ms']:.0f} ms")

    hot_lines, hot_missed = report_hot_path(hot)
    lines += hot_lines
    missed += hot_missed
    p("")
    p(f"Targets missed: {'; '.join(missed) if missed else 'none'}   "
      f"(total {elapsed:.0f} s)")
    print("\n".join(lines), flush=True)
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores")
    parser.add_argument("--child-spill", nargs=2, metavar=("N", "CHECKPOINTS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--child-deliver", metavar="TIMEOUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_spill:
        child_spill(int(args.child_spill[0]), [int(c) for c in args.child_spill[1].split(",")])
        return 0
    if args.child_deliver:
        child_deliver(float(args.child_deliver))
        return 0

    started = time.perf_counter()
    if args.quick:
        calls = part_call_costs(rounds=5, cheap_n=50_000, costly_n=2_000)
        ingest = part_ingest(50_000)
        # the first sample comes after the bounded queue (65,536 records) is full
        memory = part_memory(200_000, [100_000, 150_000, 200_000])
        hot = part_hot_path(rounds=5, n=20_000)
    else:
        calls = part_call_costs(rounds=9, cheap_n=200_000, costly_n=10_000)
        ingest = part_ingest(500_000)
        memory = part_memory(1_000_000, [100_000, 500_000, 1_000_000])
        hot = part_hot_path(rounds=7, n=100_000)
    import lucidic as lai

    lai.shutdown(timeout=5)
    imported = part_import(5 if args.quick else 9)
    missed = report(calls, ingest, memory, hot, time.perf_counter() - started, args.quick,
                    imported)
    if not args.keep:
        for part in (calls, ingest, memory, hot):
            shutil.rmtree(part["home"], ignore_errors=True)
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
