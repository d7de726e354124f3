"""Record what the newest lucidicai release sends, for
test_lucidicai_protocol.py to replay. Not run by the suite: the newest
release cannot share the test environment with lucidicai 1.3.5 (both are the
``lucidicai`` package), so it runs once, by hand, in a venv of its own:

    python3 -m venv /tmp/lai-new && /tmp/lai-new/bin/pip install lucidicai==3.7.1
    .venv/bin/python -m lucidic server --db sqlite:////tmp/rec.db --port 8765 &
    .venv/bin/lucidic keys create --project recording --db sqlite:////tmp/rec.db
    .venv/bin/lucidic prompts set greeting --project recording --label production \\
        --db sqlite:////tmp/rec.db <(echo 'Hello {{name}}')
    .venv/bin/python tests/server/record_lucidicai_newest.py \\
        --client /tmp/lai-new/bin/python --server http://127.0.0.1:8765 --key lk_...

It puts a recording proxy in front of the server, runs the client's session,
typed events (llm, function, error, generic, one over 64 KB sent to a blob URL),
prompt and end-of-session calls through it, and writes every request
(method, path, query, headers but the key, body) with the server's answer
to lucidicai_newest_requests.json beside this file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests

HERE = Path(__file__).resolve().parent
OUT = HERE / "lucidicai_newest_requests.json"

CLIENT_SCRIPT = r'''
import sys, time
import lucidicai
from lucidicai import LucidicAI

base, key = sys.argv[1], sys.argv[2]
client = LucidicAI(api_key=key, agent_id="agent-newest", base_url=base + "/api",
                   auto_end=False)

@client.event
def lookup(city):
    client.events.create(type="llm_generation", provider="openai", model="gpt-4o-mini",
                         messages=[{"role": "user", "content": f"weather in {city}?"}],
                         output="sunny", input_tokens=12, output_tokens=3)
    return {"city": city, "forecast": "sunny"}


with client.sessions.create(session_name="newest release", task="check the weather",
                            tags=["recorded"]) as session:
    lookup("Oslo")
    # The path the release's own instrumentation takes (telemetry exporter):
    # a payload over 64 KB goes to the blob_url the server answers with.
    from lucidicai.sdk.event import create_event
    create_event(type="llm_generation", session_id=session.session_id, provider="openai",
                 model="gpt-4o-mini", messages=[{"role": "user", "content": "y" * 70000}],
                 output="a summary", input_tokens=17600, output_tokens=3)
    client.events.create(type="generic", details="a note", data={"k": 1})
    client.events.create(type="llm_generation", provider="openai", model="gpt-4o",
                         messages=[{"role": "user", "content": "x" * 70000}],
                         output="a long answer", input_tokens=17500, output_tokens=4)
    try:
        raise ValueError("the tool failed")
    except ValueError as exc:
        client.events.create_error(exc)
    prompt = client.prompts.get("greeting", variables={"name": "Ada"}, label="production")
    print("prompt:", prompt.content)
    session.end(is_successful=True, is_successful_reason="it worked")
client.close()
print("version", lucidicai.__version__)
'''


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", required=True, help="python of a venv with the release")
    parser.add_argument("--server", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    recorded: list[dict[str, object]] = []
    target = args.server.rstrip("/")

    class Proxy(BaseHTTPRequestHandler):
        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() != "content-length"}
            answer = requests.request(self.command, target + self.path, headers=headers,
                                      data=body, timeout=30)
            parts = urlsplit(self.path)
            kept = {k.lower(): ("<API key>" if k.lower() == "authorization" else v)
                    for k, v in headers.items()
                    if k.lower() in ("authorization", "content-type", "content-encoding",
                                     "x-agent-id", "user-agent")}
            recorded.append({
                "method": self.command, "path": parts.path, "query": parts.query,
                "headers": kept,
                "body": body.decode("latin-1"),
                "status": answer.status_code, "answer": answer.text})
            self.send_response(answer.status_code)
            self.send_header("content-type", answer.headers.get("content-type", "text/plain"))
            self.send_header("content-length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay  # noqa: N815 - http.server names

        def log_message(self, *args: object) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{proxy.server_address[1]}"
    run = subprocess.run([args.client, "-c", CLIENT_SCRIPT, base, args.key],
                         capture_output=True, text=True, timeout=120)
    proxy.shutdown()
    print(run.stdout, run.stderr[-3000:])
    version = next((line.split()[1] for line in run.stdout.splitlines()
                    if line.startswith("version ")), "unknown")
    OUT.write_text(json.dumps({"lucidicai": version, "requests": recorded}, indent=1) + "\n")
    print(f"{len(recorded)} requests recorded in {OUT}")


if __name__ == "__main__":
    main()
