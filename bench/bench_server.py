"""Server benchmark: SDK processes sending through `lucidic server`.

    .venv/bin/python bench/bench_server.py            # full run (about a minute)
    .venv/bin/python bench/bench_server.py --quick    # smaller run
    .venv/bin/python bench/bench_server.py --pg postgresql://postgres@127.0.0.1:5432/test

Two parts:

1. Sustained ingest: PROCS SDK processes each record EVENTS events in a tight
   loop with LUCIDIC_BASE_URL pointing at a real server on loopback, then
   flush. The figure is every event divided by the wall time from the first
   process's first event to the last process's successful flush, and every
   event is counted in the database afterwards. Into SQLite, and into
   PostgreSQL when --pg (or LUCIDIC_TEST_DATABASE_URL) names one (a fresh
   schema, dropped afterwards).
2. Hot path cost of ``lai.create_event`` in a child process while the server
   is healthy, slow (every request takes 2 s), or down (nothing listens):
   median of interleaved rounds. The worker delivers (or spools) in the
   background; the caller's cost must not change.

The server's own CPU time per event is printed too (on Linux): the
throughput is shared with the SDK processes on the same cores, the server's
CPU is its cost alone.

Figures are printed next to the target of DESIGN.md section 7 (at least
20,000 events/s through the server). Exit status 0 whatever the figures
(``--strict``: 1 when a target is missed).
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_EVENTS_PER_S = 20_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDIC_")}
    env.update({"LUCIDIC_HOME": str(home), "PYTHONPATH": str(ROOT), **extra})
    return env


def start_server(db_url: str, workdir: Path,
                 port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    import requests

    port = port or free_port()
    log = open(workdir / f"server-{port}.log", "wb")  # noqa: SIM115 - lives with the server
    proc = subprocess.Popen([sys.executable, "-m", "lucidic", "server", "--db", db_url,
                             "--port", str(port), "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT,
                            env=child_env(workdir / "server-home", {}), cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the server did not start; see {log.name}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- 1. sustained ingest ------------------------------------------------------------------

PRODUCER = """
import sys, time
import lucidic as lai
count = int(sys.argv[1])
sid = lai.init(session_name="bench", auto_end=False)
start = time.time()
for i in range(count):
    lai.create_event(description="bench event", result="ok")
loop = time.time() - start
ok = lai.flush(300)
print(start, time.time(), loop, ok, sid)
"""


def _cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of a live process so far (Linux's /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def ingest(db_url: str, label: str, procs: int, events: int, workdir: Path) -> float:
    from lucidic.store import Store

    store = Store(db_url)
    key = store.create_api_key("bench")[1]
    store.close()
    server, url = start_server(db_url, workdir)
    server_cpu = _cpu_seconds(server.pid)
    try:
        children = [subprocess.Popen([sys.executable, "-c", PRODUCER, str(events)],
                                     env=child_env(workdir / f"sdk-{label}-{i}",
                                                   {"LUCIDIC_BASE_URL": url,
                                                    "LUCIDIC_API_KEY": key}),
                                     stdout=subprocess.PIPE, text=True)
                    for i in range(procs)]
        results = []
        for child in children:
            out, _ = child.communicate(timeout=600)
            start, end, loop, ok, sid = out.split()
            results.append((float(start), float(end), float(loop), ok == "True"))
        cpu_after = _cpu_seconds(server.pid)
        server_cpu = (cpu_after - server_cpu
                      if server_cpu is not None and cpu_after is not None else None)
    finally:
        stop(server)
    store = Store(db_url)
    stored = store.count("events")
    store.close()
    total = procs * events
    wall = max(r[1] for r in results) - min(r[0] for r in results)
    rate = total / wall
    loops = ", ".join(f"{events / r[2]:,.0f}" for r in results)
    print(f"  {label:<10} {procs} processes x {events:,} events: {rate:,.0f} events/s "
          f"through the server (wall {wall:.2f} s; all flushed: "
          f"{all(r[3] for r in results)}; stored {stored:,}/{total:,}; "
          f"hot loops {loops} events/s)")
    if server_cpu is not None:
        print(f"  {'':<10} the server's CPU: {server_cpu * 1e6 / total:.1f} µs an event "
              "(validating, storing, answering)")
    if stored != total:
        print(f"  !! {total - stored} events missing")
        return 0.0
    return rate


# -- 2. hot path with the server healthy, slow, down ---------------------------------------

HOT_PATH = """
import statistics, sys, time
import lucidic as lai
rounds, per_round = int(sys.argv[1]), int(sys.argv[2])
lai.init(session_name="hot path", auto_end=False)
costs = []
for _ in range(rounds):
    start = time.perf_counter_ns()
    for i in range(per_round):
        lai.create_event(description="hot path", result="ok")
    costs.append((time.perf_counter_ns() - start) / per_round)
    time.sleep(0.02)   # let the worker run: delivering, waiting, or spooling
print(statistics.median(costs), min(costs))
lai.flush(0.5)
"""


class _Slow(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        time.sleep(2.0)
        body = b'{"project": "bench", "key_id": "k", "accepted": 0}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up waiting: that is the point of this backend

    do_GET = do_POST = _answer  # noqa: N815 - the http.server API

    def log_message(self, *args: Any) -> None:
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            pass


def hot_path(db_url: str, rounds: int, per_round: int, workdir: Path) -> dict[str, float]:
    from lucidic.store import Store

    store = Store(db_url)
    key = store.create_api_key("hot")[1]
    store.close()
    server, healthy_url = start_server(db_url, workdir)
    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    slow_url = f"http://127.0.0.1:{slow.server_address[1]}"
    down_url = f"http://127.0.0.1:{free_port()}"
    figures: dict[str, list[float]] = {"healthy": [], "slow": [], "down": []}
    try:
        for repeat in range(3):  # interleaved, so drift hits every case alike
            for name, url in (("healthy", healthy_url), ("slow", slow_url), ("down", down_url)):
                out = subprocess.run(
                    [sys.executable, "-c", HOT_PATH, str(rounds), str(per_round)],
                    env=child_env(workdir / f"hot-{name}-{repeat}",
                                  {"LUCIDIC_BASE_URL": url, "LUCIDIC_API_KEY": key,
                                   "LUCIDIC_FLUSH_TIMEOUT": "0.5"}),
                    capture_output=True, text=True, timeout=300, check=True).stdout
                figures[name].append(float(out.split()[0]))
    finally:
        stop(server)
        slow.shutdown()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    base = medians["healthy"]
    for name, value in medians.items():
        print(f"  lai.create_event, server {name:<8} {value / 1000:6.2f} µs/call "
              f"({value / base:.2f}x healthy)")
    return medians


def _pg_schema(base: str) -> tuple[str, str]:
    import psycopg

    schema = "lucidic_bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", schema


def _drop_pg_schema(base: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--pg", default=os.environ.get("LUCIDIC_TEST_DATABASE_URL"),
                        help="a PostgreSQL URL to benchmark too")
    args = parser.parse_args(argv)
    events = 25_000 if args.quick else 100_000
    rounds, per_round = (15, 2000) if args.quick else (40, 2000)

    import platform

    print(f"lucidic server benchmark: Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs (server and SDK processes share them)")
    workdir = Path(tempfile.mkdtemp(prefix="lucidic-bench-server-"))
    missed = False
    try:
        print("1. sustained ingest (target >= 20,000 events/s)")
        rates = {"sqlite": ingest(f"sqlite:///{workdir / 'bench.db'}", "SQLite", args.procs,
                                  events, workdir)}
        if args.pg:
            url, schema = _pg_schema(args.pg)
            try:
                rates["postgresql"] = ingest(url, "PostgreSQL", args.procs, events, workdir)
            finally:
                _drop_pg_schema(args.pg, schema)
        else:
            print("  PostgreSQL: skipped (pass --pg URL or set LUCIDIC_TEST_DATABASE_URL)")
        for name, rate in rates.items():
            ok = rate >= TARGET_EVENTS_PER_S
            missed |= not ok
            print(f"  {name}: {'meets' if ok else 'MISSES'} the target ({rate:,.0f} events/s)")
        print("2. hot path cost with the server healthy, slow (2 s per request), down")
        medians = hot_path(f"sqlite:///{workdir / 'hot.db'}", rounds, per_round, workdir)
        worst = max(medians["slow"], medians["down"]) / medians["healthy"]
        print(f"  worst ratio to healthy: {worst:.2f}x "
              f"({'unchanged' if worst < 1.5 else 'CHANGED'}, within 1.5x)")
        missed |= worst >= 1.5
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if (missed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
