"""Protocol benchmark: what existing clients send, through `lucidic server`.

    .venv/bin/python bench/bench_protocols.py            # full run (a few minutes)
    .venv/bin/python bench/bench_protocols.py --quick    # smaller run
    .venv/bin/python bench/bench_protocols.py --pg postgresql://postgres@127.0.0.1:5432/test

Two parts, into SQLite and into PostgreSQL when --pg (or
LUCIDIC_TEST_DATABASE_URL) names one (a fresh schema, dropped afterwards):

1. OTLP ingest: agent traces (a root step, a child step, an LLM span in the
   GenAI conventions with its messages, a tool span; every fourth trace names
   a session) made by the OpenTelemetry SDK and encoded by its OTLP protobuf
   encoder into batches of 512 spans, as its BatchSpanProcessor sends them,
   posted to /v1/traces by THREADS concurrent exporters. The figure is spans
   divided by the wall time of all requests; every span is counted in the
   database afterwards. Beside it, in the same run: the same number of rows
   sent as our own SDK's records to /api/v1/records, so the ratio is what
   the OTLP mapping and its order bookkeeping cost per row.
2. lucidicai protocol: PROCS processes of the real lucidicai 1.3.5 client
   (LUCIDIC_DEBUG=True, so the server listens on port 8000), each running
   ITERATIONS of create_step / create_event / end_event / end_step, five
   synchronous calls each. The figure is calls per second over the wall time.

Exit status 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from bench_server import _drop_pg_schema, _pg_schema, child_env, start_server, stop  # noqa: E402

BATCH = 512
LUCIDICAI_PORT = 8000


# -- 1. OTLP ---------------------------------------------------------------------------

def otlp_batches(traces: int) -> list[bytes]:
    """Protobuf export requests of BATCH spans each, made by the real SDK."""
    import json

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    messages = json.dumps([{"role": "user", "parts": [{"type": "text",
                                                        "content": "plan a trip to Oslo"}]}])
    answer = json.dumps([{"role": "assistant", "parts": [{"type": "text",
                                                           "content": "take the train"}]}])
    for n in range(traces):
        with tracer.start_as_current_span("run agent") as root:
            if n % 4 == 0:
                root.set_attribute("session.id", f"bench-conversation-{n // 40}")
            with tracer.start_as_current_span("plan"):
                with tracer.start_as_current_span("chat gpt-4o-mini") as llm:
                    llm.set_attributes({
                        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                        "gen_ai.input.messages": messages, "gen_ai.output.messages": answer,
                        "gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 12})
                with tracer.start_as_current_span("execute_tool search") as tool:
                    tool.set_attributes({"gen_ai.operation.name": "execute_tool",
                                         "gen_ai.tool.name": "search",
                                         "gen_ai.tool.call.arguments": '{"q": "trains"}',
                                         "gen_ai.tool.call.result": "3 trains"})
    spans = list(exporter.get_finished_spans())  # children first, as exporters send them
    return [encode_spans(spans[i:i + BATCH]).SerializeToString()
            for i in range(0, len(spans), BATCH)]


def native_batches(rows: int, session_id: str) -> list[bytes]:
    """The same number of rows as our SDK's own records."""
    import json

    now = time.time()
    batches = []
    for start in range(0, rows, BATCH):
        records = [{"kind": "event", "id": f"ev-{uuid.uuid4().hex}", "ts": now, "fields": {
            "session_id": session_id, "type": "llm", "model": "gpt-4o-mini",
            "input": [{"role": "user", "content": "plan a trip to Oslo"}],
            "output": {"role": "assistant", "content": "take the train"},
            "input_tokens": 120, "output_tokens": 12, "started_at": now, "ended_at": now}}
            for _ in range(min(BATCH, rows - start))]
        batches.append(json.dumps({"records": records}).encode())
    return batches


def post_all(url: str, path: str, key: str, batches: list[bytes], content_type: str,
             threads: int) -> float:
    import requests

    pending = list(enumerate(batches))
    lock = threading.Lock()
    failures: list[str] = []

    def worker() -> None:
        http = requests.Session()
        http.headers.update({"Authorization": f"Bearer {key}", "Content-Type": content_type})
        while True:
            with lock:
                if not pending:
                    return
                _, data = pending.pop()
            answer = http.post(url + path, data=data, timeout=300)
            if answer.status_code != 200:
                failures.append(answer.text[:200])

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    if failures:
        raise SystemExit(f"requests failed: {failures[:3]}")
    return wall


def otlp(db_url: str, label: str, traces: int, threads: int, workdir: Path) -> None:
    from lucidic.store import Store

    store = Store(db_url)
    key = store.create_api_key("bench")[1]
    native_key = store.create_api_key("native")[1]
    store.close()
    batches = otlp_batches(traces)
    spans = traces * 4
    server, url = start_server(db_url, workdir)
    try:
        wall = post_all(url, "/v1/traces", key, batches, "application/x-protobuf", threads)
        import requests

        sid = str(uuid.uuid4())
        requests.post(url + "/api/v1/records", timeout=30, headers={
            "Authorization": f"Bearer {native_key}"}, json={"records": [
                {"kind": "session", "id": sid, "ts": time.time(), "fields": {"name": "n"}}]})
        native_wall = post_all(url, "/api/v1/records", native_key,
                               native_batches(spans, sid), "application/json", threads)
    finally:
        stop(server)
    store = Store(db_url)
    stored = store.count("steps") + store.count("events")
    store.close()
    rate, native = spans / wall, spans / native_wall
    print(f"  {label:<10} OTLP/protobuf {rate:,.0f} spans/s ({spans:,} spans in "
          f"{len(batches)} requests of {BATCH}, {threads} exporters, {wall:.2f} s); "
          f"as our own records {native:,.0f} rows/s; ratio {rate / native:.2f}; "
          f"rows stored {stored:,}/{spans * 2:,}")


# -- 2. lucidicai ----------------------------------------------------------------------

LUCIDICAI_CLIENT = """
import sys, time
import lucidicai as lai
iterations = int(sys.argv[1])
lai.init(session_name="bench")
start = time.time()
for i in range(iterations):
    lai.create_step(state="working", action=f"step {i}")
    lai.create_event(description="did a thing", result="ok")
    lai.end_event()
    lai.end_step()
end = time.time()
lai.end_session(is_successful=True)
print(start, end)
"""


def lucidicai(db_url: str, label: str, procs: int, iterations: int, workdir: Path) -> None:
    from lucidic.store import Store

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", LUCIDICAI_PORT))
        except OSError:
            print(f"  {label:<10} lucidicai: skipped, port {LUCIDICAI_PORT} is taken")
            return
    store = Store(db_url)
    key = store.create_api_key("lucidicai")[1]
    before = store.count("events")
    store.close()
    server, _ = start_server(db_url, workdir, LUCIDICAI_PORT)
    try:
        env = {"LUCIDIC_DEBUG": "True", "LUCIDIC_API_KEY": key, "LUCIDIC_AGENT_ID": "bench"}
        children = [subprocess.Popen([sys.executable, "-c", LUCIDICAI_CLIENT, str(iterations)],
                                     env=child_env(workdir / f"lai-{label}-{i}", env),
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
                    for i in range(procs)]
        spans = []
        for child in children:
            out, _ = child.communicate(timeout=900)
            start, end = (float(x) for x in out.split()[-2:])
            spans.append((start, end))
    finally:
        stop(server)
    store = Store(db_url)
    events = store.count("events") - before
    store.close()
    calls = procs * iterations * 5
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    print(f"  {label:<10} lucidicai 1.3.5: {calls / wall:,.0f} calls/s ({procs} client "
          f"processes x {iterations:,} x 5 calls, {wall:.2f} s); events stored "
          f"{events:,}/{procs * iterations:,}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--pg", default=os.environ.get("LUCIDIC_TEST_DATABASE_URL"),
                        help="a PostgreSQL URL to benchmark too")
    args = parser.parse_args(argv)
    traces = 2_500 if args.quick else 12_500
    iterations = 150 if args.quick else 600

    import platform

    print(f"lucidic protocol benchmark: Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs (server and clients share them)")
    workdir = Path(tempfile.mkdtemp(prefix="lucidic-bench-protocols-"))
    backends: list[tuple[str, str, Any]] = [("SQLite", f"sqlite:///{workdir / 'o.db'}", None)]
    try:
        if args.pg:
            url, schema = _pg_schema(args.pg)
            backends.append(("PostgreSQL", url, schema))
        else:
            print("  PostgreSQL: skipped (pass --pg URL or set LUCIDIC_TEST_DATABASE_URL)")
        print("1. OTLP/HTTP ingest at /v1/traces")
        for label, url, _ in backends:
            otlp(url, label, traces, args.threads, workdir)
        print("2. the lucidicai 1.3.5 client's calls under /api")
        for label, url, _ in backends:
            lucidicai(url, label, args.procs, iterations, workdir)
    finally:
        for _, _, schema in backends:
            if schema is not None:
                _drop_pg_schema(args.pg, schema)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
