"""Deleting sessions through a real `lucidic server` (DELETE on our API, the
retention thread of --retention-days, replicas sharing one database) and
through the real `lucidic sessions delete|prune` commands."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from server_support import ROOT, Api, make_key, sdk_env
from test_reliability_server import wait_until

from helpers import child_env
from lucidic._http import HttpSink
from lucidic._pipeline import Pipeline
from lucidic._spool import Spool
from lucidic.reading.derived import refresh
from lucidic.store import Store

DAY = 86400.0


def _cli(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lucidic", *args], capture_output=True,
                          text=True, env=child_env(home, {"TZ": "UTC", **env}), timeout=120,
                          cwd=str(ROOT))


def _session(sid: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"kind": "session", "id": sid, "ts": at, "fields": {"started_at": at, **fields}}


def _step(step_id: str, sid: str, at: float) -> dict[str, Any]:
    return {"kind": "step", "id": step_id, "ts": at,
            "fields": {"session_id": sid, "started_at": at, "action": "act"}}


def _quiet(db_url: str) -> None:
    """Rebuild derived data and drop the notes (whose time says "written just now")."""
    store = Store(db_url)
    while refresh(store, quiet=-60):
        pass
    store.close()


def test_delete_on_the_api_needs_the_key_of_the_sessions_project(
        db_url: str, start_server) -> None:
    server = start_server(db_url)
    mine, theirs = Api(server.url, make_key(db_url, "shop")), \
        Api(server.url, make_key(db_url, "other"))
    now = time.time()
    done, live = str(uuid.uuid4()), str(uuid.uuid4())
    assert mine.records(_session(done, now - 60, is_finished=True, ended_at=now - 30),
                        _step(f"{done}-1", done, now - 50),
                        _session(live, now), _step(f"{live}-1", live, now)).status_code == 200
    _quiet(db_url)
    path = f"/api/v1/sessions/{done}"
    assert Api(server.url, None).http.delete(server.url + path, timeout=10).status_code == 401
    assert Api(server.url, "lk_wrong").http.delete(server.url + path,
                                                   timeout=10).status_code == 401
    other = theirs.http.delete(server.url + path, timeout=10)
    assert other.status_code == 404 and "was not found in this project" in other.json()["detail"]
    assert mine.get(path).status_code == 200   # untouched by the other project's attempt
    deleted = mine.http.delete(server.url + path, timeout=10)
    assert deleted.status_code == 200 and deleted.json() == {"session_id": done,
                                                             "deleted": True}
    assert mine.get(path).status_code == 404
    assert mine.get(f"/api/v1/steps/{done}-1").status_code == 404
    assert mine.http.delete(server.url + path, timeout=10).status_code == 404   # gone already
    unknown = mine.http.delete(server.url + "/api/v1/sessions/never-was", timeout=10)
    assert unknown.status_code == 404
    running = mine.http.delete(server.url + f"/api/v1/sessions/{live}", timeout=10)
    assert running.status_code == 409 and "force=true" in running.json()["detail"]
    forced = mine.http.delete(server.url + f"/api/v1/sessions/{live}",
                              params={"force": "true"}, timeout=10)
    assert forced.status_code == 200
    # a client's late records for it are refused for good, saying so at once
    late = mine.records(_step(f"{live}-2", live, now + 1))
    assert late.status_code == 404 and late.json()["deleted_session_ids"] == [live]
    again = mine.post("/api/v1/sessions", json=_session(live, now))
    assert again.status_code == 409 and "was deleted" in again.json()["detail"]
    listed = mine.get("/api/v1/sessions").json()["sessions"]
    assert [s["id"] for s in listed] == []


def test_the_sdk_sets_aside_records_of_a_session_deleted_on_the_server_at_once(
        sqlite_url: str, start_server, tmp_path: Path) -> None:
    """Not after LATER_GRACE (600 s) of waiting for a session that will
    never come: the server says it was deleted."""
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "shop")
    api = Api(server.url, key)
    gone, kept = str(uuid.uuid4()), str(uuid.uuid4())
    now = time.time()
    api.records(_session(gone, now), _session(kept, now))
    assert api.http.delete(server.url + f"/api/v1/sessions/{gone}",
                           params={"force": "true"}, timeout=10).status_code == 200
    spool = Spool(tmp_path / "spool")
    pipeline = Pipeline(HttpSink(server.url, key), spool)   # later_grace: the default
    pipeline.start()
    for n in range(20):
        pipeline.put(("event", f"{gone}-e{n}", now, {"session_id": gone, "started_at": now}))
        pipeline.put(("event", f"{kept}-e{n}", now, {"session_id": kept, "started_at": now}))
    assert wait_until(lambda: pipeline.stats.rejected == 20, 30)
    assert pipeline.flush(10) is False and pipeline.flush(10) is True
    assert len(api.tree(kept)["events"]) == 20
    assert not spool.has_later()
    pipeline.shutdown(5)


def test_the_retention_thread_prunes_old_sessions_and_replicas_share_the_work(
        db_url: str, start_server) -> None:
    now = time.time()
    store = Store(db_url)
    old = [f"old{n}" for n in range(450)]   # (more than a batch)
    store.write([("session", sid, now - 40 * DAY, {"project": "shop", "is_finished": True,
                                                    "started_at": now - 40 * DAY + n,
                                                    "ended_at": now - 40 * DAY + n})
                 for n, sid in enumerate(old)]
                + [("session", "young", now - DAY, {"project": "shop", "started_at": now - DAY,
                                                   "is_finished": True}),
                   ("session", "long-running", now - 40 * DAY,
                    {"project": "shop", "started_at": now - 40 * DAY}),
                   ("step", "long-running-1", now - DAY, {"session_id": "long-running"})])
    while refresh(store, quiet=-60):
        pass
    servers = [start_server(db_url, extra_args=["--retention-days", "30",
                                                "--log-level", "info"])
               for _ in range(2 if db_url.startswith("postgresql") else 1)]
    assert wait_until(lambda: store.count("sessions") == 2, 60)
    assert {r["id"] for r in store.query("SELECT id FROM sessions")} == {"young",
                                                                        "long-running"}
    deleted = store.query("SELECT COUNT(*) AS n FROM deleted_sessions")[0]["n"]
    assert deleted == len(old)
    for server in servers:
        server.stop()
        log = server.log_text()
        assert "Traceback" not in log and "failed" not in log, log
    said = "".join(server.log_text() for server in servers)
    assert "deleting sessions nothing was written to for 30 days" in said
    store.close()


def test_retention_days_must_be_a_number_of_days(sqlite_url: str, tmp_path: Path) -> None:
    for bad in ("0", "-3", "thirty", "nan"):
        result = _cli(tmp_path, {}, "server", "--db", sqlite_url, "--retention-days", bad)
        assert result.returncode == 2 and "--retention-days" in result.stderr, bad
        assert "must be a number of days" in result.stderr


# -- the commands --------------------------------------------------------------------------

def _embedded(home: Path, now: float) -> Store:
    store = Store(home / "lucidic.db")
    store.write([("session", "old-a", now - 40 * DAY, {"project": "default",
                                                       "started_at": now - 40 * DAY,
                                                       "is_finished": True}),
                 ("event", "old-a-e", now - 40 * DAY, {"session_id": "old-a",
                                                       "started_at": now - 40 * DAY}),
                 ("session", "old-b", now - 35 * DAY, {"project": "default",
                                                       "started_at": now - 35 * DAY}),
                 ("session", "new-c", now - DAY, {"project": "default",
                                                   "started_at": now - DAY,
                                                   "is_finished": True}),
                 ("session", "live-d", now, {"project": "default", "started_at": now})])
    return store


def test_sessions_delete_and_prune_on_the_embedded_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    now = time.time()
    store = _embedded(home, now)
    while refresh(store, quiet=-60):
        pass
    env: dict[str, str] = {}
    bad = _cli(home, env, "sessions", "prune", "--older-than", "30 days")
    assert bad.returncode == 2 and "is not a duration" in bad.stderr
    assert "30d (days)" in bad.stderr
    zero = _cli(home, env, "sessions", "prune", "--older-than", "0d")
    assert zero.returncode == 2 and "no time at all" in zero.stderr
    dry = _cli(home, env, "sessions", "prune", "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would delete 2 session(s) with nothing written for 30 days")
    assert "  old-a\n  old-b\n" in dry.stdout and "dry run: nothing was deleted" in dry.stdout
    assert store.count("sessions") == 4
    unknown = _cli(home, env, "sessions", "delete", "new-c", "no-such-session")
    assert unknown.returncode == 1
    assert "no session 'no-such-session'" in unknown.stderr
    assert "nothing was deleted" in unknown.stderr and store.get_session("new-c")
    running = _cli(home, env, "sessions", "delete", "live-d")
    assert running.returncode == 1 and "still being written to" in running.stderr
    assert "--force" in running.stderr and store.get_session("live-d")
    deleted = _cli(home, env, "sessions", "delete", "new-c", "live-d", "--force")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == "deleted live-d\ndeleted new-c\n"
    pruned = _cli(home, env, "sessions", "prune", "--older-than", "30d", "--vacuum")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith("deleted 2 session(s) with nothing written for 30 days")
    assert "vacuumed " in pruned.stdout
    assert store.count("sessions") == 0 and store.count("events") == 0
    listed = _cli(home, env, "sessions", "list")
    assert listed.stdout.startswith("no sessions in")
    store.close()


def test_sessions_delete_through_the_server_and_prune_on_its_database(
        db_url: str, start_server, tmp_path: Path) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "shop")
    api = Api(server.url, key)
    now = time.time()
    # (started two hours ago, by their records' times: older than the hour below)
    api.records(_session("s-1", now - 7200, is_finished=True),
                _session("s-2", now - 7200, is_finished=True))
    Api(server.url, make_key(db_url, "other")).records(_session("theirs", now - 7200,
                                                                is_finished=True))
    home = tmp_path / "home"
    env = sdk_env(server, key)
    unknown = _cli(home, env, "sessions", "delete", "s-1", "theirs")
    assert unknown.returncode == 1 and "no session 'theirs'" in unknown.stderr
    assert "nothing was deleted" in unknown.stderr
    assert api.get("/api/v1/sessions/s-1").status_code == 200
    deleted = _cli(home, env, "sessions", "delete", "s-1")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == "deleted s-1\n"
    assert api.get("/api/v1/sessions/s-1").status_code == 404
    through = _cli(home, env, "sessions", "prune", "--older-than", "1d")
    assert through.returncode == 2 and "--retention-days" in through.stderr
    # on the server's database itself, one project's
    pruned = _cli(home, {}, "sessions", "prune", "--older-than", "1h", "--db", db_url,
                  "--project", "shop", "--dry-run")
    assert pruned.returncode == 0, pruned.stderr
    # the store wrote it within the hour (its note says when): kept, whatever its records say
    assert "would delete 0 session(s) of project 'shop'" in pruned.stdout
    _quiet(db_url)
    pruned = _cli(home, {}, "sessions", "prune", "--older-than", "1h", "--db", db_url,
                  "--project", "shop")
    assert pruned.stdout.startswith("deleted 1 session(s) of project 'shop'"), pruned.stderr
    store = Store(db_url)
    assert [r["id"] for r in store.query("SELECT id FROM sessions")] == ["theirs"]
    store.close()
    if db_url.startswith("postgresql"):
        vacuum = _cli(home, {}, "sessions", "prune", "--older-than", "1d", "--db", db_url,
                      "--vacuum")
        assert vacuum.returncode == 2 and "autovacuum" in vacuum.stderr


@pytest.mark.parametrize("unused", [None])
def test_sessions_help_names_delete_and_prune(tmp_path: Path, unused: Any) -> None:
    shown = _cli(tmp_path, {}, "sessions", "--help")
    assert "delete" in shown.stdout and "prune" in shown.stdout
    server = _cli(tmp_path, {}, "server", "--help")
    assert "--retention-days N" in server.stdout


def test_other_protocols_writing_to_a_deleted_session_are_refused_not_failed(
        sqlite_url: str, start_server) -> None:
    """lucidicai and OTLP clients naming a deleted session get a definite
    refusal (no 5xx, which they would retry for ever), and nothing comes back."""
    from test_otlp import agent_trace, body, make_spans, post

    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "shop")
    api = Api(server.url, key)
    lucidicai = {"Authorization": f"Api-Key {key}"}
    sid = str(uuid.uuid4())
    started = api.post("/api/initsession", json={"session_id": sid, "session_name": "x"},
                       headers=lucidicai)
    assert started.status_code == 200, started.text
    assert post(server, key, body(make_spans(agent_trace("conv-1")))).status_code == 200
    assert api.http.delete(server.url + f"/api/v1/sessions/{sid}", params={"force": "true"},
                           timeout=10).status_code == 200
    assert api.http.delete(server.url + "/api/v1/sessions/conv-1", params={"force": "true"},
                           timeout=10).status_code == 200
    again = api.post("/api/initsession", json={"session_id": sid, "session_name": "x"},
                     headers=lucidicai)
    step = api.post("/api/initstep", json={"session_id": sid}, headers=lucidicai)
    spans = post(server, key, body(make_spans(agent_trace("conv-1"))))
    for answer in (again, step, spans):
        assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    # Langfuse: a score on the deleted session is refused alone (207), the other kept
    from test_langfuse import basic

    scored = requests.post(server.url + "/api/public/scores", headers=basic(key), timeout=30,
                           json=[{"sessionId": sid, "name": "q", "value": 1},
                                 {"sessionId": "lf-new", "name": "q", "value": 1}])
    assert scored.status_code == 207, scored.text
    assert scored.json()["rejected"] == 1 and "was deleted" in scored.text
    store = Store(sqlite_url)
    assert store.get_session(sid) is None and store.get_session("conv-1") is None
    assert store.count("steps") == store.count("events") == 0
    store.close()
    assert "Traceback" not in server.log_text()


def test_continuing_a_session_deleted_on_the_server_says_it_was_deleted(
        db_url: str, start_server, tmp_path: Path) -> None:
    server = start_server(db_url)
    key = make_key(db_url, "shop")
    mine, theirs = Api(server.url, key), Api(server.url, make_key(db_url, "other"))
    sid = str(uuid.uuid4())
    assert mine.records(_session(sid, time.time())).status_code == 200
    assert mine.http.delete(server.url + f"/api/v1/sessions/{sid}",
                            params={"force": "true"}, timeout=10).status_code == 200
    path = f"/api/v1/sessions/{sid}/continuable"
    answer = mine.get(path)
    assert answer.status_code == 410 and "was deleted" in answer.json()["detail"]
    assert theirs.get(path).status_code == 404   # another project's: unknown to this key
    from helpers import run_python

    tried = run_python(f"""
        import lucidic as lai
        from lucidic.errors import InvalidOperationError
        try:
            lai.continue_session({sid!r})
        except InvalidOperationError as exc:
            print("refused:", exc)
    """, home=tmp_path / "home", env=sdk_env(server, key))
    assert tried.stdout.startswith(f"refused: session {sid!r} was deleted"), \
        tried.stdout + tried.stderr
