"""Helpers for the protocol tests: the real lucidicai 1.3.5 client in child
processes against a real server on port 8000, and OTLP requests built by
the OpenTelemetry SDK's own encoders."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server_support import ROOT, ServerProcess

from helpers import run_python

#: lucidicai 1.3.5 reads no base-URL variable: with LUCIDIC_DEBUG=True it
#: talks to http://localhost:8000/api, so the server under test listens there.
LUCIDICAI_PORT = 8000
_PORT_LOCK = Path(tempfile.gettempdir()) / "lucidic-tests-port-8000.lock"
SHARED_CASSETTES = Path(os.environ.get("LUCIDIC_SHARED_CASSETTES",
                                       ROOT.parent / "shared" / "cassettes"))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def port_8000(timeout: float = 60.0) -> Iterator[None]:
    """Hold port 8000 for this test: test runs of other checkouts on this
    machine wait for each other here rather than collide."""
    with open(_PORT_LOCK, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError("another test run held port 8000 for too long") from None
                time.sleep(0.2)
        try:
            while not _port_free(LUCIDICAI_PORT):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"port {LUCIDICAI_PORT} is taken by another program; lucidicai 1.3.5 "
                        "can only talk to http://localhost:8000, so these tests need it")
                time.sleep(0.2)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_lucidicai(code: str, *, key: str, home: Path, agent_id: str = "agent-1",
                  timeout: float = 90, check: bool = True,
                  args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (which imports lucidicai itself) in a fresh interpreter,
    in its own directory, set up as a lucidicai 1.3.5 user of a self-hosted
    server is."""
    home.mkdir(parents=True, exist_ok=True)
    return run_python(code, home=home, timeout=timeout, check=check, args=args, cwd=home,
                      env={"LUCIDIC_DEBUG": "True", "LUCIDIC_API_KEY": key,
                           "LUCIDIC_AGENT_ID": agent_id})


def last_json(output: str) -> Any:
    """The JSON document a child printed on its last line."""
    return json.loads(output.strip().splitlines()[-1])


def start_on_8000(start_server: Any, db_url: str, **kwargs: Any) -> ServerProcess:
    server: ServerProcess = start_server(db_url, LUCIDICAI_PORT, **kwargs)
    return server


def strip_volatile(node: Any) -> Any:
    """A session tree without what differs between two equal deliveries
    (when rows were written)."""
    if isinstance(node, dict):
        return {k: strip_volatile(v) for k, v in node.items() if k != "updated_at"}
    if isinstance(node, list):
        return [strip_volatile(v) for v in node]
    return node


def count_rows(db_url: str) -> dict[str, int]:
    """Rows per table the protocols write, to show a refusal changed nothing."""
    from lucidic.store import Store

    store = Store(db_url)
    try:
        def run(cur: Any) -> dict[str, int]:
            counts = {}
            for table in ("sessions", "steps", "events", "uploads", "mass_sims", "prompts",
                          "otlp_traces", "otlp_spans"):
                cur.execute(f"SELECT COUNT(*) FROM {table}")
                counts[table] = int(cur.fetchone()[0])
            cur.execute("SELECT COUNT(*) FROM uploads WHERE uploaded_at IS NOT NULL")
            counts["uploaded"] = int(cur.fetchone()[0])
            return counts
        return store.transaction(run, write=False)
    finally:
        store.close()
