"""What a provider adapter adds to an LLM call.

A loopback HTTP server answers every request with a recorded OpenAI chat
completion (the shared recording when ../shared/cassettes is present, else the
project's own cassette), so each call runs the real client library end to end
over real HTTP, with no network latency to hide the overhead. Compared:

  baseline      openai client, no adapter
  no session    adapter installed, no current session (the call goes straight through)
  recorded      adapter installed, in a session: one llm event per call, delivered
                by the background worker to the embedded SQLite store

Rounds alternate between the three (in rotating order) so that drift hits
them alike; the figure
is the median per-call time over the rounds.

    .venv/bin/python bench/bench_providers.py [--calls 400] [--rounds 7]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LUCIDIC_SHARED_CASSETTES", ROOT.parent / "shared" / "cassettes"))


def recorded_body() -> tuple[bytes, str]:
    for path, index, label in (
            (SHARED / "openai" / "chat.yaml", 0, "the shared recording openai/chat.yaml"),
            (ROOT / "cassettes" / "openai" / "chat_rate_limit_429.yaml", 1,
             "cassettes/openai/chat_rate_limit_429.yaml")):
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                interaction = yaml.safe_load(f)["interactions"][index]
            body = interaction["response"]["body"]["string"]
            if isinstance(body, bytes):
                body = gzip.decompress(body)
            body = body if isinstance(body, bytes) else body.encode("utf-8")
            json.loads(body)
            return body, label
    raise SystemExit("no recorded chat completion found")


def serve(body: bytes) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        wbufsize = 1 << 16  # headers and body leave in one segment (no delayed-ACK stalls)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per round and mode")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    os.environ["LUCIDIC_HOME"] = tempfile.mkdtemp(prefix="lucidic-bench-")
    import openai

    import lucidic as lai
    from lucidic import plugins

    body, source = recorded_body()
    server = serve(body)
    client = openai.OpenAI(api_key="sk-bench", max_retries=0,
                           base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    request = {"model": "gpt-3.5-turbo",
               "messages": [{"role": "user", "content": "Tell me a joke about opentelemetry"}]}
    adapter = plugins.get_adapter("openai")

    def run(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            client.chat.completions.create(**request)
        return (time.perf_counter() - start) / calls

    def baseline(calls: int) -> float:
        adapter.uninstrument()
        return run(calls)

    def no_session(calls: int) -> float:
        adapter.instrument()
        return run(calls)

    def recorded(calls: int) -> float:
        adapter.instrument()
        with lai.session("bench"):
            return run(calls)

    modes = {"baseline": baseline, "no session": no_session, "recorded": recorded}
    for mode in modes.values():  # warm up: imports, connections, the worker, the store
        mode(50)
    times: dict[str, list[float]] = {name: [] for name in modes}
    order = list(modes)
    for round_number in range(args.rounds):
        for name in order[round_number % 3:] + order[:round_number % 3]:  # rotate the order
            times[name].append(modes[name](args.calls))
    lai.flush(30)
    adapter.uninstrument()
    server.shutdown()

    base = statistics.median(times["baseline"])
    print(f"provider adapter overhead: openai chat.completions.create, replaying {source} "
          f"from a loopback server ({args.rounds} rounds × {args.calls} calls per mode, "
          f"median per call)")
    for name in modes:
        per_call = statistics.median(times[name])
        extra = (per_call - base) * 1e6
        print(f"  {name:<11} {per_call * 1e6:8.1f} µs/call   ratio {per_call / base:5.3f}   "
              f"{extra:+7.1f} µs")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
