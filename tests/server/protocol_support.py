"""Helpers for the protocol tests: the real lucidicai 1.3.5 client in child
processes against a real server on port 8000, and OTLP requests built by
the OpenTelemetry SDK's own encoders."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from server_support import ROOT, ServerProcess

from helpers import LUCIDICAI_PORT, run_python

SHARED_CASSETTES = Path(os.environ.get("LUCIDIC_SHARED_CASSETTES",
                                       ROOT.parent / "shared" / "cassettes"))


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
