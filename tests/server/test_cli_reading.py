"""`lucidic sessions list --status/--search/--limit` read through the one
reading layer: the same answers from the embedded store and from a server
(where more than one page of the API is followed by its cursor)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from server_support import make_key

from helpers import child_env
from lucidic.store import Store

OUTCOMES = {"ok": {"is_finished": True, "is_successful": True},
            "bad": {"is_finished": True, "is_successful": False},
            "done": {"is_finished": True}, "open": {}}


def _cli(home: Path, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lucidic", "sessions", "list", *args],
                          capture_output=True, text=True, env=child_env(home, env), timeout=60)


def _listed(home: Path, *args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    result = _cli(home, *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, Any]] = json.loads(result.stdout)
    return listed


def _record(store: Store, project: str | None = None) -> None:
    records = []
    for i, (name, outcome) in enumerate(OUTCOMES.items()):
        records.append(("session", name, 1000.0 + i,
                        {"project": project or "default", "started_at": 1000.0 + i,
                         "name": f"{name} Задача", **outcome}))
    records.append(("event", "e1", 1000.0, {"session_id": "bad", "type": "llm",
                                             "error": "RateLimitError: slow down",
                                             "output": {"content": "你好, world"}}))
    if project is None:
        store.write(records)
    else:
        store.write_for_project(records, project)


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_status_search_and_limit(where: str, lucidic_home: Path, sqlite_url: str,
                                 start_server: Any) -> None:
    env: dict[str, str] | None = None
    if where == "embedded":
        store = Store(lucidic_home / "lucidic.db")
        _record(store)
    else:
        server = start_server(sqlite_url)
        env = {"LUCIDIC_BASE_URL": server.url, "LUCIDIC_API_KEY": make_key(sqlite_url, "p")}
        store = Store(sqlite_url)
        _record(store, "p")
    store.close()

    def names(*args: str) -> list[str]:
        return [s["name"].split()[0] for s in _listed(lucidic_home, *args, env=env)]

    assert names() == ["open", "done", "bad", "ok"]
    assert names("--status", "successful") == ["ok"]
    assert names("--status", "failed") == ["bad"]
    assert names("--status", "finished") == ["done"]
    assert names("--status", "running") == ["open"]
    assert names("--search", "ratelimiterror") == ["bad"]
    assert names("--search", "你好") == ["bad"]
    assert names("--search", "задача", "--limit", "2") == ["open", "done"]
    assert names("--search", "nowhere") == []
    refused = _cli(lucidic_home, "--limit", "0", env=env)
    assert refused.returncode == 2 and "at least 1" in refused.stderr


def test_more_than_one_api_page_is_followed(lucidic_home: Path, sqlite_url: str,
                                             start_server: Any) -> None:
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "p")
    store = Store(sqlite_url)
    store.write_for_project([("session", f"s{i:04d}", 1.0 + i, {"started_at": 1.0 + i})
                             for i in range(620)], "p")
    store.close()
    env = {"LUCIDIC_BASE_URL": server.url, "LUCIDIC_API_KEY": key}
    listed = _listed(lucidic_home, "--limit", "600", env=env)
    assert [s["id"] for s in listed] == [f"s{i:04d}" for i in range(619, 19, -1)]
