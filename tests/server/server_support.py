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


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on ``port``. A port
    free_port() gave out can be taken by another test's server (of this run
    or another) before this one binds it: that server answers /healthz too,
    while this one fails to bind and exits (the test then met 401s, its key
    unknown there). Linux's /proc says whose the socket is; without /proc,
    True."""
    fd_dir = Path(f"/proc/{pid}/fd")
    if not fd_dir.is_dir():
        return True
    inodes = set()
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if (fields[3] == "0A"  # LISTEN
                    and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes):
                return True
    return False


class ServerProcess:
    """`lucidic server` in a child process."""

    def __init__(self, db_url: str, port: int | None = None, *, log: Path,
                 extra_args: list[str] | None = None) -> None:
        self.db_url = db_url
        self.chosen_port = port is None
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDIC_")}
        first = self.proc is None  # a restart keeps its port: its clients know it
        with open(self.log, "ab") as log:
            logged_before = log.tell()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lucidic", "server", "--db", self.db_url,
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
                 *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                said = self.log.read_bytes()[logged_before:].decode(errors="replace")
                if first and self.chosen_port and "address already in use" in said:
                    # Another process took the port free_port() gave out
                    # before this server bound it: another free port.
                    self.port = free_port()
                    self.url = f"http://127.0.0.1:{self.port}"
                    self.proc = None
                    return self.start(max(1.0, deadline - time.monotonic()))
                raise AssertionError(f"server exited ({self.proc.returncode}):\n"
                                     f"{self.log.read_text(errors='replace')}")
            try:
                # Answered by this server, not by another that holds the port.
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200 \
                        and _listens(self.proc.pid, self.port):
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
