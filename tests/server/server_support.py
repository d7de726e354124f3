"""Helpers for the server tests: a real `lucidic server` in a child process, a
thin API client, keys."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from lucidic.store import Store

ROOT = Path(__file__).resolve().parents[2]
PG_ENV = "LUCIDIC_TEST_DATABASE_URL"
PG_SKIP = f"PostgreSQL tests need {PG_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`lucidic server` in a child process."""

    def __init__(self, db_url: str, port: int | None = None, *, log: Path,
                 extra_args: list[str] | None = None) -> None:
        self.db_url = db_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDIC_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lucidic", "server", "--db", self.db_url,
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
                 *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n"
                                     f"{self.log.read_text(errors='replace')}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server did not start:\n{self.log.read_text(errors='replace')}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, connections cut."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def raw_connection(db_url: str) -> tuple[Any, str]:
    """A plain autocommit connection to the database (no Store, no
    migrations), and its parameter placeholder."""
    if db_url.startswith("postgresql"):
        import psycopg

        return psycopg.connect(db_url, autocommit=True), "%s"
    import sqlite3

    return sqlite3.connect(db_url[len("sqlite:///"):], isolation_level=None), "?"


def make_key(db_url: str, project: str) -> str:
    store = Store(db_url)
    try:
        return store.create_api_key(project)[1]
    finally:
        store.close()


def sdk_env(server: ServerProcess, key: str, **extra: str) -> dict[str, str]:
    return {"LUCIDIC_BASE_URL": server.url, "LUCIDIC_API_KEY": key, **extra}


class Api:
    """A thin client for the server's REST API, for assertions."""

    def __init__(self, base_url: str, key: str | None) -> None:
        self.base_url = base_url
        self.http = requests.Session()
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(self.base_url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.post(self.base_url + path, timeout=30, **kwargs)

    def records(self, *records: dict[str, Any]) -> requests.Response:
        return self.post("/api/v1/records", json={"records": list(records)})

    def tree(self, session_id: str) -> dict[str, Any]:
        response = self.get(f"/api/v1/sessions/{session_id}/tree")
        assert response.status_code == 200, response.text
        tree: dict[str, Any] = response.json()
        return tree
