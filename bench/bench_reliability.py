"""What a crash can cost: durable mode per call, and the SIGKILL loss window.

    .venv/bin/python bench/bench_reliability.py           # full run (about a minute)
    .venv/bin/python bench/bench_reliability.py --quick   # smaller run

1. Cost per ``lai.create_event`` into a healthy embedded store, in child
   processes measured side by side in this run: the default pipeline, and
   durable mode (``LUCIDIC_DURABLE=1``: each record is written to the spool,
   one ``write()``, before the call returns). Beside them, the floor of what
   durable mode adds: one bare ``os.write`` of a record-sized line per call.
2. The SIGKILL loss window. A child records events (at a steady ~10,000/s, and
   in a tight loop) while this process holds the store locked, so nothing is
   delivered and everything must be kept by the spool; it reports how many it
   has recorded, and when, as it goes. It is killed with SIGKILL; the lock is
   released, a later process delivers the spool, and the store is read: the
   window is the time between the kill and the newest event that survived.
   The same with durable mode, where the loss is counted in events.

The script exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench_core  # noqa: E402 - beside this file: its child-process runner

# -- 1. cost per call ---------------------------------------------------------------------

def child_calls(n: int) -> None:
    import lucidic as lai

    lai.init(session_name="bench: cost per call")
    create_event = lai.create_event
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            create_event(description="tool call")
        rounds.append((time.perf_counter() - start) / n)
        lai.flush(60)
    print(json.dumps({"per_call_us": statistics.median(rounds) * 1e6,
                      "best_us": min(rounds) * 1e6}), flush=True)


def child_write_floor(n: int) -> None:
    fd = os.open(os.path.join(os.environ["LUCIDIC_HOME"], "floor"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    line = b'["event","0123456789abcdef1",1700000000.0,{"description":"tool call"}]\n'
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            os.write(fd, line)
        rounds.append((time.perf_counter() - start) / n)
    print(json.dumps({"per_call_us": statistics.median(rounds) * 1e6,
                      "best_us": min(rounds) * 1e6}), flush=True)


def run_child(args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    return bench_core.run_child(args, env, timeout, script=HERE)


def part_costs(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, extra, args in (
            ("default", {}, ["--child-calls", str(n)]),
            ("durable", {"LUCIDIC_DURABLE": "1"}, ["--child-calls", str(n)]),
            ("write_floor", {}, ["--child-floor", str(n)])):
        home = tempfile.mkdtemp(prefix=f"lucidic-bench-{name}-")
        env = {**os.environ, "LUCIDIC_HOME": home, **extra}
        out[name] = run_child(args, env, timeout=600)
    return out


# -- 2. the SIGKILL loss window ---------------------------------------------------------------

def child_record(steady: bool) -> None:
    import lucidic as lai

    sid = lai.init(session_name="bench: sigkill")
    print(sid, flush=True)
    i = 0
    chunk = 100 if steady else 1000
    while True:
        for _ in range(chunk):
            lai.create_event(description=str(i))
            i += 1
        print(i, time.time(), flush=True)
        if steady:
            time.sleep(0.01)


def one_kill(steady: bool, durable: bool, run_seconds: float) -> dict[str, Any]:
    from lucidic.store import Store

    home = Path(tempfile.mkdtemp(prefix="lucidic-bench-kill-"))
    db = home / "lucidic.db"
    Store(db).close()
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    env = {**os.environ, "LUCIDIC_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    if durable:
        env["LUCIDIC_DURABLE"] = "1"
    proc = subprocess.Popen([sys.executable, str(HERE), "--child-record",
                             "steady" if steady else "tight"],
                            env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    sid = proc.stdout.readline().strip()
    progress: list[tuple[int, float]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            words = line.split()
            if len(words) == 2:  # not a line cut short by the kill
                progress.append((int(words[0]), float(words[1])))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not progress:
        time.sleep(0.01)
    time.sleep(run_seconds)
    killed_at = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join(5)
    lock.execute("ROLLBACK")
    lock.close()
    # The next process replays what the killed one spooled, between its own
    # records; its flush covers only those, so it runs on (until its stdin
    # closes) while the spool empties.
    later = subprocess.Popen([sys.executable, "-c", "import sys, lucidic as lai; "
                              "lai.init(session_name='later'); sys.stdin.read(); "
                              "lai.flush(120)"],
                             env={**os.environ, "LUCIDIC_HOME": str(home)},
                             stdin=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while any((home / "spool").rglob("*.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)
    later.communicate(timeout=300)
    assert later.returncode == 0
    stored = sqlite3.connect(db)
    numbers = sorted(int(d) for (d,) in stored.execute(
        "SELECT description FROM events WHERE session_id = ?", (sid,)))
    stored.close()
    kept = len(numbers)
    assert numbers == list(range(kept)), "a gap: records lost in the middle"
    recorded = max(c for c, _ in progress)
    # When the newest surviving event was made: the first report covering it.
    made_at = next((at for count, at in progress if count >= kept), killed_at)
    return {"recorded": recorded, "kept": kept,
            "reported_lost": max(0, max((c for c, at in progress if at <= killed_at),
                                        default=0) - kept),
            "window_s": max(0.0, killed_at - made_at) if kept < recorded else 0.0}


def part_kills(runs: int, run_seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, steady, durable in (("steady", True, False), ("tight", False, False),
                                  ("durable_steady", True, True)):
        out[name] = [one_kill(steady, durable, run_seconds) for _ in range(runs)]
    return out


# -- report ---------------------------------------------------------------------------------

def report(costs: dict[str, Any], kills: dict[str, Any]) -> None:
    from lucidic._pipeline import LOSS_WINDOW

    default, durable, floor = (costs[k]["per_call_us"]
                               for k in ("default", "durable", "write_floor"))
    print("1. lai.create_event into a healthy embedded store (median of 5 rounds)")
    print(f"   default     {default:6.2f} us/call")
    print(f"   durable     {durable:6.2f} us/call   (x{durable / default:.2f}, "
          f"+{durable - default:.2f} us)")
    print(f"   one bare os.write of a record line: {floor:.2f} us")
    print()
    print(f"2. SIGKILL with the store locked (documented window: {LOSS_WINDOW * 1000:.0f} ms)")
    for name, results in kills.items():
        windows = [r["window_s"] * 1000 for r in results]
        lost = [r["reported_lost"] for r in results]
        recorded = [r["recorded"] for r in results]
        print(f"   {name:15} window max {max(windows):5.0f} ms, median "
              f"{statistics.median(windows):5.0f} ms; events lost that the child had "
              f"reported as recorded: max {max(lost):,} (of ~{statistics.median(recorded):,.0f})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child-calls", type=int)
    parser.add_argument("--child-floor", type=int)
    parser.add_argument("--child-record")
    args = parser.parse_args(argv)
    if args.child_calls:
        child_calls(args.child_calls)
        return 0
    if args.child_floor:
        child_write_floor(args.child_floor)
        return 0
    if args.child_record:
        child_record(args.child_record == "steady")
        return 0
    costs = part_costs(20_000 if args.quick else 100_000)
    kills = part_kills(2 if args.quick else 5, 2.0)
    report(costs, kills)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
