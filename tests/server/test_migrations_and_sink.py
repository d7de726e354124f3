"""Schema migrations in place, and the HTTP sink's delivery rules against a real
server (what one request asks again: tests/test_http_retries.py)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from server_support import Api, ServerProcess, free_port, make_key, raw_connection

import lucidic as lai
from helpers import ReadableStore
from lucidic.store import MIGRATIONS, SCHEMA_VERSION


def _make_version_1_database(db_url: str) -> None:
    """What lucidic 0.1's embedded store wrote: schema version 1, with data."""
    conn, ph = raw_connection(db_url)
    version, statements = MIGRATIONS[0]
    assert version == 1
    for statement in statements:
        conn.execute(statement)
    conn.execute("CREATE TABLE lucidic_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO lucidic_meta VALUES ('schema_version', '1')")
    conn.execute(f"INSERT INTO sessions (id, project, agent_id, name, tags, started_at, "
                 f"is_finished, updated_at) VALUES ({', '.join([ph] * 8)})",
                 ("old-session", "default", "agent-7", "From 0.1", '["a", "b"]', 100.0, 0,
                  100.0))
    conn.execute(f"INSERT INTO steps (id, session_id, action, started_at, updated_at) "
                 f"VALUES ({', '.join([ph] * 5)})", ("old-step", "old-session", "plan",
                                                     101.0, 101.0))
    conn.execute(f"INSERT INTO events (id, session_id, step_id, type, input_tokens, cost, "
                 f"started_at, updated_at) VALUES ({', '.join([ph] * 8)})",
                 ("old-event", "old-session", "old-step", "llm", 12, 0.5, 102.0, 102.0))
    conn.close()


def test_a_version_1_database_upgrades_in_place_with_its_data_intact(
        db_url: str, start_server, tmp_path: Path) -> None:
    _make_version_1_database(db_url)
    store = ReadableStore(db_url)  # migrates
    try:
        assert store.schema_version() == SCHEMA_VERSION > 1
        tree = store.session_tree("old-session")
        assert tree is not None and tree["name"] == "From 0.1" and tree["tags"] == ["a", "b"]
        assert tree["steps"][0]["events"][0]["input_tokens"] == 12
        assert tree["steps"][0]["events"][0]["cache_write_tokens"] is None
        assert [p["name"] for p in store.list_projects()] == ["default"]
        # the LLM accounting columns (cache writes, estimated counts) take values
        store.write([("event", "new-event", 103.0, {
            "session_id": "old-session", "type": "llm", "cache_write_tokens": 7,
            "tokens_estimated": True})])
        new = store.get_event("new-event")
        assert new["cache_write_tokens"] == 7 and new["tokens_estimated"] is True
    finally:
        store.close()
    ReadableStore(db_url).close()  # opening again is a no-op

    # Served as it is: a key for the project the old sessions are in reads them.
    server = start_server(db_url)
    api = Api(server.url, make_key(db_url, "default"))
    old = api.tree("old-session")
    assert old["agent_id"] == "agent-7" and old["input_tokens"] == 12
    assert old["steps"][0]["action"] == "plan"
    other = Api(server.url, make_key(db_url, "newcomers"))
    assert other.get("/api/v1/sessions/old-session").status_code == 404


def test_flush_is_true_only_once_the_server_accepted_everything(
        sqlite_url: str, start_server, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    server: ServerProcess = start_server(sqlite_url, port)
    key = make_key(sqlite_url, "flush")
    monkeypatch.setenv("LUCIDIC_BASE_URL", server.url)
    monkeypatch.setenv("LUCIDIC_API_KEY", key)
    sid = lai.init(session_name="outage", auto_end=False)
    server.kill()
    hot_path = []
    for i in range(200):
        started = time.perf_counter()
        lai.create_event(description=f"while down {i}")
        hot_path.append(time.perf_counter() - started)
    assert max(hot_path) < 0.05  # queued, not sent: the server being down costs nothing here
    assert lai.flush(timeout=1.0) is False  # spooled, not accepted
    restarted = start_server(sqlite_url, port)
    assert lai.flush(timeout=30.0) is True
    lai.end_session(is_successful=True)
    assert lai.flush(timeout=10.0) is True
    tree = Api(restarted.url, key).tree(sid)
    assert tree["is_finished"] and len(tree["events"]) == 200


def test_records_with_text_no_database_takes_are_cleaned_before_sending(
        sqlite_url: str, start_server, monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "clean")
    monkeypatch.setenv("LUCIDIC_BASE_URL", server.url)
    monkeypatch.setenv("LUCIDIC_API_KEY", key)
    sid = lai.init(session_name="nul\x00name", session_id=f"s-{uuid.uuid4()}")
    lai.create_event(description="lone \ud800 surrogate", arguments={"x": float("nan")})
    lai.end_session()
    assert lai.flush(10)
    tree = Api(server.url, key).tree(sid)
    assert tree["name"] == "nul\ufffdname"
    (event,) = tree["events"]
    assert event["description"] == "lone \ufffd surrogate"


def test_a_database_url_of_another_kind_is_refused_and_creates_nothing(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    from helpers import child_env
    from lucidic.store import Store, StoreError

    monkeypatch.chdir(tmp_path)
    # The scheme is read in any case, as URLs' schemes are.
    scheme, rest = db_url.split("://", 1)
    Store(f"{scheme.upper()}://{rest}").close()
    for url in ("mysql://user@host/db", "postgresq://typo@127.0.0.1/test", "s3://bucket/x"):
        with pytest.raises(StoreError, match=rf"^cannot open the store at {url}: "
                                             rf"{url.split(':')[0]}:// is not a database"):
            Store(url)
    # Taken for a path it became a SQLite file under a directory "mysql:".
    served = subprocess.run([sys.executable, "-m", "lucidic", "server", "--db",
                             "mysql://user@host/db"], capture_output=True, text=True,
                            timeout=60, env=child_env(tmp_path / "home"), cwd=tmp_path)
    assert served.returncode == 1
    assert "mysql:// is not a database Lucidic stores in" in served.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("home", "server.db")] == []
