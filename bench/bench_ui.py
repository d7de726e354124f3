"""Web UI benchmark: time to first content with 100,000 sessions and with a
session of 10,000 events, on SQLite (`lucidic ui`) and PostgreSQL (`lucidic
server`, signed in).

    .venv/bin/python bench/bench_ui.py                # 100,000 sessions (a few minutes)
    .venv/bin/python bench/bench_ui.py --quick        # 10,000 sessions
    .venv/bin/python bench/bench_ui.py --pg postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/bench_ui.py --rebuild --pg postgresql://postgres@127.0.0.1:5432/test

A store is filled with SESSIONS sessions (each with a task, tags, an agent,
two steps and four events, one of them an LLM call with its messages) and
one session of 10,000 events in 100 steps. Then, over real HTTP on
loopback, each page is fetched ROUNDS times and the median time until its
whole HTML has arrived is printed: the server renders the content, so that
is when the browser can paint it. With chromium present, the browser's own
first-contentful-paint is measured too.

Ratios printed side by side: page 1,000 of the list against page 1 (keyset
paging: as fast deep as at the top) and against the same page fetched by
OFFSET through the JSON API; the 10,000-event session against a 6-record
one (the tree is windowed: 300 rows, the rest on demand).

With --rebuild, only the rebuild of the freshly written store's derived data
is timed instead: from the start of `lucidic ui` (SQLite) or `lucidic
server` (PostgreSQL) until its refresher has rebuilt every session AND
summed again every stale hour (lucidic.reading.derived).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lucidic.store import Store  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
T0 = time.time() - 30 * 86400
WORDS = ("plan", "search", "book", "refund", "summarise", "translate", "review", "deploy",
         "invoice", "schedule", "Kyoto", "Oslo", "Lima", "report", "ticket", "customer")


def fill(store: Store, sessions: int, project: str | None) -> tuple[str, str]:
    """SESSIONS ordinary sessions and a 10,000-event one; their ids
    (the big one, and a small one)."""
    rng = random.Random(7)
    batch: list[Any] = []

    def flush() -> None:
        if project is None:
            store.write(batch)
        else:
            store.write_for_project(batch, project)
        batch.clear()

    small = ""
    for i in range(sessions):
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        small = small or sid
        at = T0 + i * (30 * 86400 / sessions)
        words = rng.sample(WORDS, 3)
        batch.append(("session", sid, at, {
            "project": project or "default", "started_at": at, "ended_at": at + 4.0,
            "is_finished": True, "is_successful": i % 7 != 0, "agent_id": f"agent-{i % 5}",
            "name": f"{words[0].title()} {words[1]} #{i}", "task": " ".join(words),
            "tags": ["bench", words[2]]}))
        for s in range(2):
            batch.append(("step", f"{sid}-s{s}", at + s, {
                "session_id": sid, "action": f"step {s}", "started_at": at + s,
                "ended_at": at + s + 1.5, "is_finished": True}))
        for e in range(4):
            fields: dict[str, Any] = {"session_id": sid, "step_id": f"{sid}-s{e % 2}",
                                      "started_at": at + e * 0.5, "ended_at": at + e * 0.5 + 0.4,
                                      "is_finished": True, "type": "generic",
                                      "description": f"{words[e % 3]} done"}
            if e == 1:
                fields.update(type="llm", provider="openai", model="gpt-4o-mini",
                              duration=0.4, time_to_first_token=0.1, input_tokens=420,
                              output_tokens=96, cost=0.000121,
                              input=[{"role": "user", "content": f"Please {' '.join(words)} "
                                      + "with care. " * 20}],
                              output={"role": "assistant", "content": "Done. " * 30})
            batch.append(("event", f"{sid}-e{e}", at + e, fields))
        if len(batch) >= 5000:
            flush()
    big = str(uuid.uuid4())
    at = time.time() - 3600
    batch.append(("session", big, at, {"project": project or "default", "started_at": at,
                                       "ended_at": at + 600, "is_finished": True,
                                       "is_successful": True, "name": "10,000 events"}))
    for i in range(10_000):
        step = f"{big}-s{i // 100}"
        if i % 100 == 0:
            batch.append(("step", step, at + i * 0.05, {
                "session_id": big, "action": f"batch {i // 100}", "started_at": at + i * 0.05,
                "ended_at": at + i * 0.05 + 5, "is_finished": True}))
        batch.append(("event", f"{big}-e{i}", at + i * 0.05, {
            "session_id": big, "step_id": step, "type": "generic", "description": f"item {i}",
            "result": "ok", "started_at": at + i * 0.05, "ended_at": at + i * 0.05 + 0.01,
            "is_finished": True}))
        if len(batch) >= 5000:
            flush()
    flush()
    return big, small


def wait_for_derived(db_url: str, since: float | None = None) -> float:
    """Until the app's refresher has rebuilt the derived data of every session
    written and summed again every hour they made stale
    (lucidic.reading.derived; pages are exact before, but slower). The
    seconds it took, from ``since`` (a time.perf_counter()) or from now."""
    from lucidic.reading.derived import pending

    store = Store(db_url)
    try:
        start = time.perf_counter() if since is None else since
        while pending(store) or store.query("SELECT COUNT(*) AS n FROM stale_hours")[0]["n"]:
            time.sleep(0.5)
        took = time.perf_counter() - start
        print(f"derived data of every session rebuilt by the refresher in {took:.1f} s")
        return took
    finally:
        store.close()


def timed(http: requests.Session, url: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        response = http.get(url, timeout=120)
        response.content  # noqa: B018 - the whole body, as a browser waits for it
        times.append(time.perf_counter() - start)
        assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return statistics.median(times)


def deep_cursor(db_url: str, project: str | None, pages: int) -> str:
    """The cursor the UI's "Next page" link carries on page PAGES - 1."""
    from lucidic.reading import Reader, SessionQuery
    from lucidic.reading.sessions import encode_cursor

    store = Store(db_url)
    try:
        last = Reader(store).sessions(SessionQuery(project=project,
                                                    limit=(pages - 1) * 50)).sessions[-1]
    finally:
        store.close()
    return encode_cursor(last["started_at"], last["id"], time.time())


def browser_paint(urls: dict[str, str], cookie: tuple[str, str] | None) -> dict[str, float]:
    if not Path(CHROMIUM).is_file():
        return {}
    from playwright.sync_api import sync_playwright

    found: dict[str, float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        context = browser.new_context()
        if cookie:
            first = next(iter(urls.values()))
            context.add_cookies([{"name": cookie[0], "value": cookie[1], "url": first}])
        page = context.new_page()
        for name, url in urls.items():
            paints = []
            for _ in range(3):
                page.goto(url)
                paint = None
                for _ in range(100):  # painted after load: ask until it is recorded
                    paint = page.evaluate("(performance.getEntriesByName("
                                          "'first-contentful-paint')[0] || {}).startTime")
                    if paint is not None:
                        break
                    time.sleep(0.05)
                if paint is not None:
                    paints.append(paint)
            if paints:
                found[name] = statistics.median(paints) / 1000
        browser.close()
    return found


def measure(base: str, http: requests.Session, big: str, small: str, rounds: int,
            api_key: str | None, cookie: tuple[str, str] | None, cursor: str,
            pages: int) -> dict[str, float]:
    deep = f"{base}/?cursor={cursor}"
    results = {
        "sessions list, page 1": timed(http, base + "/", rounds),
        f"sessions list, page {pages} (keyset)": timed(http, deep, rounds),
        "sessions list, search '你好' (not found: reads every session)":
            timed(http, base + "/?q=%E4%BD%A0%E5%A5%BD", max(1, rounds // 3)),
        "sessions list, sorted by cost": timed(http, base + "/?sort=cost", max(1, rounds // 3)),
        "session of 10,000 events": timed(http, f"{base}/sessions/{big}", rounds),
        "session of 6 records": timed(http, f"{base}/sessions/{small}", rounds),
        "dashboard, 30 days": timed(http, base + "/dashboard?range=30d", max(1, rounds // 3)),
    }
    if api_key:
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {api_key}"
        results[f"JSON API, page {pages} by OFFSET"] = timed(
            api, f"{base}/api/v1/sessions?limit=50&offset={(pages - 1) * 50}", rounds)
        results[f"JSON API, page {pages} by cursor"] = timed(
            api, f"{base}/api/v1/sessions?limit=50&cursor={cursor}", rounds)
    for name, value in browser_paint({"browser first paint, sessions list": base + "/",
                                      "browser first paint, 10,000-event session":
                                          f"{base}/sessions/{big}"}, cookie).items():
        results[name] = value
    return results


def cpu_seconds(pid: int) -> float | None:
    """The CPU time (user and system) process ``pid`` has used so far, on
    Linux (None elsewhere): on SQLite, the app's process does the rebuild's
    work itself, and its CPU time varies less with the machine's load than
    the rebuild's wall time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(title: str, results: dict[str, float]) -> None:
    print(f"\n{title}")
    for name, seconds in results.items():
        print(f"  {name:<62} {seconds * 1000:9.1f} ms")
    deep = next(v for k, v in results.items() if "(keyset)" in k)
    first = results["sessions list, page 1"]
    print(f"  ratio deep page / page 1 (keyset)                            {deep / first:9.2f}")
    offset = next((v for k, v in results.items() if "by OFFSET" in k), None)
    cursor = next((v for k, v in results.items() if "by cursor" in k), None)
    if offset and cursor:
        print(f"  ratio JSON deep page: OFFSET / cursor                        "
              f"{offset / cursor:9.2f}")
    print(f"  ratio 10,000-event session / 6-record session                "
          f"{results['session of 10,000 events'] / results['session of 6 records']:9.2f}")


def run_sqlite(sessions: int, rounds: int, rebuild: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="lucidic-bench-ui-") as tmp:
        home = Path(tmp)
        store = Store(home / "lucidic.db")
        start = time.perf_counter()
        big, small = fill(store, sessions, None)
        store.close()
        print(f"SQLite: {sessions:,} sessions and a 10,000-event one written in "
              f"{time.perf_counter() - start:.0f} s")
        env = {**os.environ, "LUCIDIC_HOME": str(home)}
        started = time.perf_counter()
        ui = subprocess.Popen([sys.executable, "-m", "lucidic", "ui", "--port", "0"], env=env,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert ui.stdout is not None
            url = ""
            while not url:
                found = re.search(r"http://\S+/", ui.stdout.readline())
                url = found.group(0).rstrip("/") if found else ""
            if rebuild:
                took = wait_for_derived(f"sqlite:///{home / 'lucidic.db'}", started)
                cpu = cpu_seconds(ui.pid)
                print(f"rebuild, SQLite through lucidic ui ({sessions:,} fresh sessions): "
                      f"{took:.1f} s" + (f" (the ui's CPU: {cpu:.1f} s)" if cpu else ""))
                return
            pages = min(1000, sessions // 50)
            wait_for_derived(f"sqlite:///{home / 'lucidic.db'}")
            cursor = deep_cursor(f"sqlite:///{home / 'lucidic.db'}", None, pages)
            report(f"lucidic ui over SQLite ({sessions:,} sessions), median time until the "
                   "page's HTML has arrived", measure(url, requests.Session(), big, small,
                                                      rounds, None, None, cursor, pages))
        finally:
            ui.terminate()
            ui.wait(10)


def run_postgresql(base_url: str, sessions: int, rounds: int, rebuild: bool = False) -> None:
    import psycopg

    schema = "lucidic_bench_ui_" + uuid.uuid4().hex[:8]
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = f"{base_url}{'&' if '?' in base_url else '?'}options=-csearch_path%3D{schema}"
    server = None
    try:
        store = Store(url)
        start = time.perf_counter()
        big, small = fill(store, sessions, "bench")
        _, key = store.create_api_key("bench")
        store.close()
        print(f"PostgreSQL: {sessions:,} sessions and a 10,000-event one written in "
              f"{time.perf_counter() - start:.0f} s")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")
        from socket import socket

        with socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "lucidic", "server", "--db", url, "--port", str(port),
             "--log-level", "warning"], cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("LUCIDIC_")})
        base = f"http://127.0.0.1:{port}"
        if rebuild:
            took = wait_for_derived(url, started)
            print(f"rebuild, PostgreSQL through lucidic server ({sessions:,} fresh "
                  f"sessions): {took:.1f} s")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT pg_sleep(3)")  # (until the server has reported its counts)
                analysed = conn.execute(
                    "SELECT relname, analyze_count, pg_relation_size(relid) / 8192, "
                    "seq_scan, seq_tup_read FROM pg_stat_user_tables "
                    "WHERE schemaname = current_schema() "
                    "AND relname IN ('session_activity', 'llm_timings') ORDER BY relname"
                ).fetchall()
            # (one ANALYZE the bench's own, before the server started): the
            # rows read by whole scans are the work the machine's load multiplies
            print("  " + "; ".join(
                f"{name}: {pages:,} pages, ANALYZE {count} times, {scans:,} whole scans "
                f"reading {rows:,} rows" for name, count, pages, scans, rows in analysed))
            return
        for _ in range(200):
            try:
                if requests.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        http = requests.Session()
        http.post(base + "/sign-in", data={"api_key": key}, timeout=30)
        cookie = ("lucidic_signin", http.cookies["lucidic_signin"])
        pages = min(1000, sessions // 50)
        wait_for_derived(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")
        cursor = deep_cursor(url, "bench", pages)
        report(f"lucidic server over PostgreSQL ({sessions:,} sessions), signed in, median "
               "time until the page's HTML has arrived",
               measure(base, http, big, small, rounds, key, cookie, cursor, pages))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 sessions, fewer rounds")
    parser.add_argument("--pg", default=os.environ.get("LUCIDIC_TEST_DATABASE_URL"),
                        help="a PostgreSQL URL (a fresh schema is made and dropped)")
    parser.add_argument("--rebuild", action="store_true",
                        help="time only the refresher's rebuild of the fresh store")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args, _ = parser.parse_known_args()
    sessions, rounds = (10_000, 5) if args.quick else (100_000, 9)
    if not args.no_sqlite:
        run_sqlite(sessions, rounds, args.rebuild)
    if args.pg:
        run_postgresql(args.pg, sessions, rounds, args.rebuild)
    else:
        print("\n(PostgreSQL skipped: pass --pg URL or set LUCIDIC_TEST_DATABASE_URL)")


if __name__ == "__main__":
    main()
