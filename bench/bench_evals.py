"""What running a task as an experiment costs, and how fast replay answers.

1. Experiment overhead. The same task over the same cases, run (a) by a plain
   ThreadPoolExecutor of the same size and (b) by lucidic.evals.run_experiment,
   each run a session of the embedded store, scored by one evaluator that
   reads the stored run back. Two tasks: one that returns at once (the
   overhead laid bare) and one that sleeps 50 ms (an LLM call's order of
   magnitude, on the fast side).

2. Replay speed. A task making one OpenAI chat completion: against a loopback
   HTTP server answering at once (the fastest "provider" there can be), then
   the same experiment replayed from the first one's recording (no request).
   Real providers take hundreds of milliseconds a call; the loopback figure
   is the floor replay is compared with.

Rounds alternate the variants so drift hits them alike; figures are medians.

    .venv/bin/python bench/bench_evals.py [--cases 100] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def serve() -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        wbufsize = 1 << 16

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            answer = json.dumps({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                "model": body["model"] + "-2024-07-18",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant",
                                         "content": "echo: " + body["messages"][-1]["content"]}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
            }).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            self.wfile.flush()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _pool(task: Any, cases: list[Any], workers: int) -> list[Any]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(task, [c.input for c in cases]))


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args()
    if args.quick:
        args.cases, args.rounds = 30, 1
    home = tempfile.mkdtemp(prefix="lucidic-bench-evals-")
    os.environ["LUCIDIC_HOME"] = home
    import openai

    from lucidic.evals import Case, evaluator, run_experiment

    @evaluator
    def answered(run: Any) -> bool:
        return run.output is not None and run.session.get("id") == run.session_id

    cases = [Case(f"question {n}", name=f"q{n}") for n in range(args.cases)]
    n = len(cases)

    def instant(text: str) -> str:
        return text.upper()

    def slow(text: str) -> str:
        time.sleep(0.05)
        return text.upper()

    print(f"lucidic.evals, {n} cases, {args.rounds} round(s), Python {sys.version.split()[0]}, "
          f"embedded store in {home}")
    print("\n1. experiment overhead (wall time for all the cases, median)")
    for label, task in (("task returns at once", instant), ("task sleeps 50 ms", slow)):
        for workers in (1, args.concurrency):
            plain_times, experiment_times = [], []
            for _ in range(args.rounds):
                plain_times.append(timed(lambda t=task, w=workers: _pool(t, cases, w)))
                experiment_times.append(timed(lambda t=task, w=workers: run_experiment(
                    t, cases, name="bench", evaluators=[answered], max_concurrency=w)))
            plain = statistics.median(plain_times)
            experiment = statistics.median(experiment_times)
            print(f"  {label}, {workers} at once: plain pool {plain * 1e3:8.1f} ms, "
                  f"run_experiment {experiment * 1e3:8.1f} ms  (x{experiment / plain:.2f}; "
                  f"+{(experiment - plain) / n * 1e3:.2f} ms a run: its session stored, its "
                  "run read back, scored and stored)")

    print("\n2. replay: one chat completion per run, 1 at once")
    server = serve()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_port}/v1",
                           api_key="sk-bench", max_retries=0)

    calls: list[float] = []

    def ask(text: str) -> str:
        start = time.perf_counter()
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
        calls.append(time.perf_counter() - start)
        return answer.choices[0].message.content or ""

    bare_calls, recorded_calls, replayed_calls = [], [], []
    recorded_times, replayed_times = [], []
    recorded: Any = None
    for _ in range(args.rounds):
        calls.clear()
        for case in cases:
            ask(case.input)
        bare_calls += calls
        calls.clear()
        start = time.perf_counter()
        recorded = run_experiment(ask, cases, name="recorded", providers=["openai"],
                                  max_concurrency=1)
        recorded_times.append(time.perf_counter() - start)
        recorded_calls += calls
        calls.clear()
        start = time.perf_counter()
        replayed = run_experiment(ask, cases, name="replayed", providers=["openai"],
                                  max_concurrency=1, replay=recorded.experiment_id)
        replayed_times.append(time.perf_counter() - start)
        replayed_calls += calls
        assert replayed.replayed == n and replayed.replay_misses == 0
        assert [r.output for r in replayed.runs] == [r.output for r in recorded.runs]
    bare = statistics.median(bare_calls)
    live = statistics.median(recorded_calls)
    replay = statistics.median(replayed_calls)
    print("  the call, as the task sees it (median):")
    print(f"    to the loopback server, no lucidic:           {bare * 1e3:7.2f} ms")
    print(f"    to the loopback server, recorded in a run:    {live * 1e3:7.2f} ms")
    print(f"    replayed in a run (no request made):          {replay * 1e3:7.2f} ms "
          f"(x{replay / live:.2f} the recorded call, x{replay / bare:.2f} the bare one)")
    whole_recorded = statistics.median(recorded_times) / n
    whole_replayed = statistics.median(replayed_times) / n
    print(f"  a whole run, call included: recorded {whole_recorded * 1e3:.2f} ms, "
          f"replayed {whole_replayed * 1e3:.2f} ms")
    print("  (a real provider answers in hundreds of milliseconds; a replayed call costs about "
          "what a loopback round trip does: the client library's own work, and no money)")
    server.shutdown()


if __name__ == "__main__":
    main()
