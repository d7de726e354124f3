"""The server's own database failing under a running `lucidic server`: a
table dropped, the disk full, a permission revoked, the database gone
read-only. None of these is the client's data's fault: the server answers
503 (nothing written, retry later) and logs the real cause, the SDK keeps the
records in its spool, and they arrive once the database is mended. (What is
truly the data's fault stays a 422: tests/server/test_api.py.)"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from faults import FullDisk, ReadOnlyDisk, events_of, numbered, wait_until
from server_support import PG_ENV, PG_SKIP, Api, make_key

import lucidic as lai
from lucidic._internal import RATE_LIMIT_SECONDS
from lucidic._runtime import runtime
from lucidic.store import Store


class Fault:
    """One way the server's database fails, with its mending, over the
    database at ``url``; the server's log names it with ``cause``."""

    def __init__(self, url: str, cause: str, fail: Callable[[], None],
                 mend: Callable[[], None]) -> None:
        self.url = url
        self.cause = cause
        self.fail = fail
        self.mend = mend


def _sqlite_table_dropped(tmp_path: Path) -> Iterator[Fault]:
    path = tmp_path / "server.db"
    backup: dict[str, list[Any]] = {}

    def fail() -> None:
        with contextlib.closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as db:
            # the table first, then its indexes; and its rows
            backup["schema"] = [sql for (sql,) in db.execute(
                "SELECT sql FROM sqlite_master WHERE tbl_name = 'events' AND sql IS NOT NULL "
                "ORDER BY type = 'index', name")]
            backup["rows"] = db.execute("SELECT * FROM events").fetchall()
            db.execute("DROP TABLE events")

    def mend() -> None:  # restored from the backup
        with contextlib.closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as db:
            for sql in backup["schema"]:
                db.execute(sql)
            for row in backup["rows"]:
                db.execute(f"INSERT INTO events VALUES ({', '.join('?' * len(row))})", row)

    yield Fault(f"sqlite:///{path}", "no such table: events", fail, mend)


def _sqlite_disk_full(tmp_path: Path) -> Iterator[Fault]:
    with FullDisk(tmp_path / "disk", size="16m") as disk:
        yield Fault(f"sqlite:///{disk.path / 'server.db'}", "database or disk is full",
                    disk.fill, disk.free)


@contextlib.contextmanager
def _postgresql_role() -> Iterator[tuple[str, Callable[[str], None]]]:
    """A schema owned by a role of its own, not a superuser (so that a
    permission can be taken from it): the server's URL, and a way to run
    statements as the database's administrator."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(PG_SKIP)
    import psycopg

    name = "lucidic_fault_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN")
        admin.execute(f"CREATE SCHEMA {name} AUTHORIZATION {name}")
        host = psycopg.conninfo.conninfo_to_dict(base)
        url = (f"postgresql://{name}@{host.get('host', '127.0.0.1')}:{host.get('port', 5432)}"
               f"/{host['dbname']}?options=-csearch_path%3D{name}")

        def as_admin(sql: str) -> None:
            admin.execute(sql.replace("{schema}", name).replace("{role}", name))

        try:
            yield url, as_admin
        finally:
            admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          f"WHERE usename = '{name}'")
            admin.execute(f"DROP SCHEMA {name} CASCADE")
            admin.execute(f"DROP ROLE {name}")


def _postgresql_table_dropped(tmp_path: Path) -> Iterator[Fault]:
    with _postgresql_role() as (url, as_admin):
        yield Fault(url, 'relation "events" does not exist',
                    lambda: as_admin("CREATE TABLE {schema}.events_kept "
                                     "(LIKE {schema}.events INCLUDING ALL); "
                                     "INSERT INTO {schema}.events_kept "
                                     "SELECT * FROM {schema}.events; "
                                     "DROP TABLE {schema}.events"),
                    lambda: as_admin("ALTER TABLE {schema}.events_kept RENAME TO events; "
                                     "ALTER TABLE {schema}.events OWNER TO {role}"))


def _postgresql_permission_revoked(tmp_path: Path) -> Iterator[Fault]:
    with _postgresql_role() as (url, as_admin):
        yield Fault(url, "permission denied for table events",
                    lambda: as_admin("REVOKE INSERT, UPDATE ON {schema}.events FROM {role}"),
                    lambda: as_admin("GRANT INSERT, UPDATE ON {schema}.events TO {role}"))


def _postgresql_read_only(tmp_path: Path) -> Iterator[Fault]:
    # What a fail-over to a read-only standby looks like to the server: its
    # connections cut, and the new ones refuse every write.
    with _postgresql_role() as (url, as_admin):
        yield Fault(url, "read-only transaction",
                    lambda: as_admin("ALTER ROLE {role} SET default_transaction_read_only = on; "
                                     "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE usename = '{role}'"),
                    lambda: as_admin("ALTER ROLE {role} RESET default_transaction_read_only"))


def _postgresql_disk_full(tmp_path: Path) -> Iterator[Fault]:
    # The store's tables moved onto a tablespace on a small tmpfs, which is
    # then filled: PostgreSQL's own "could not extend file" (SQLSTATE 53100),
    # not a stand-in. Its WAL stays on its own disk, as on a server whose
    # data volume filled up. The tmpfs is mounted outside tmp_path, which the
    # database server's own user could not enter.
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(PG_SKIP)
    import psycopg

    mount = Path(tempfile.mkdtemp(prefix="lucidic-pg-disk-"))
    mount.chmod(0o755)
    name = "lucidic_fault_" + uuid.uuid4().hex[:12]
    try:
        with FullDisk(mount, size="16m") as disk, psycopg.connect(base, autocommit=True) as admin:
            data = Path(str(admin.execute("SHOW data_directory").fetchone()[0]))
            if not data.is_dir():
                pytest.skip("filling PostgreSQL's disk needs it to run on this machine")
            location = disk.path / "tablespace"
            location.mkdir()
            os.chown(location, data.stat().st_uid, data.stat().st_gid)
            admin.execute(f"CREATE TABLESPACE {name} LOCATION '{location}'")
            try:
                with _postgresql_role() as (url, as_admin):
                    def fail() -> None:  # the tables the server made at its start
                        for kind in ("TABLE", "INDEX"):
                            as_admin(f"ALTER {kind} ALL IN TABLESPACE pg_default "
                                     f"OWNED BY {{role}} SET TABLESPACE {name}")
                        disk.fill()

                    yield Fault(url, "No space left on device", fail, disk.free)
            finally:
                admin.execute(f"DROP TABLESPACE {name}")
    finally:
        mount.rmdir()


FAULTS = {"sqlite, a table dropped": _sqlite_table_dropped,
          "sqlite, the disk full": _sqlite_disk_full,
          "postgresql, a table dropped": _postgresql_table_dropped,
          "postgresql, a permission revoked": _postgresql_permission_revoked,
          "postgresql, read-only": _postgresql_read_only,
          "postgresql, the disk full": _postgresql_disk_full}


@pytest.fixture(params=list(FAULTS))
def fault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fault]:
    yield from FAULTS[request.param](tmp_path)


def test_a_database_failing_on_the_servers_side_keeps_the_records_until_it_is_mended(
        fault: Fault, start_server, monkeypatch: pytest.MonkeyPatch) -> None:
    # These were answered 422 "the database refused this request": the SDK
    # took that for its records' fault and set them aside for good.
    server = start_server(fault.url)
    key = make_key(fault.url, "faults")
    monkeypatch.setenv("LUCIDIC_BASE_URL", server.url)
    monkeypatch.setenv("LUCIDIC_API_KEY", key)
    sid = lai.init(session_name="the database fails", auto_end=False)
    lai.create_event(description="event 0")
    assert lai.flush(30) is True

    fault.fail()
    try:
        for n in range(1, 200):
            lai.create_event(description=f"event {n}")
        assert lai.flush(2) is False  # not delivered: waiting, not refused
        (pipeline,) = runtime.pipelines.values()
        assert pipeline.stats.rejected == 0
        api = Api(server.url, key)
        answer = api.records({"kind": "event", "id": "by hand", "ts": 3.0,
                              "fields": {"session_id": sid}})
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert "log" in answer.json()["detail"]
        assert "Retry-After" not in answer.headers  # (which says: busy, back soon)
        # The operator reads the real cause in the server's log, as an error.
        (logged, *_) = [line for line in server.log_text().splitlines()
                        if fault.cause in line]
        assert "ERROR" in logged, server.log_text()
        # ... once every few seconds, not once a request: while it stays
        # broken every client's every retry fails alike.
        def cause_lines() -> int:
            return sum(fault.cause in line for line in server.log_text().splitlines())
        before, started = cause_lines(), time.monotonic()
        answers = [api.records({"kind": "event", "id": f"by hand {n}", "ts": 3.0,
                                "fields": {"session_id": sid}}).status_code for n in range(20)]
        assert answers == [503] * 20
        windows = (time.monotonic() - started) // RATE_LIMIT_SECONDS
        assert cause_lines() - before <= 1 + windows, server.log_text()
    finally:
        fault.mend()

    assert lai.flush(60) is True, server.log_text()
    assert pipeline.stats.rejected == 0
    assert numbered(events_of(fault.url, sid)) == list(range(200))



def _server_connections(admin: Any, application: str) -> int:
    return int(admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                             "= %s", (application,)).fetchone()[0])


def test_after_postgresql_restarts_the_servers_next_requests_are_answered(
        pg_url: str, start_server) -> None:
    # What a restart (or a fail-over) looks like to the server's pool: every
    # idle connection ended. Each was found dead only by the request that
    # used it next: as many requests in a row as the pool held connections
    # answered 503, so that right after a restart `lucidic sessions list`,
    # lai.continue_session() and the lucidicai client's calls failed (three
    # attempts each) although PostgreSQL was back.
    import psycopg

    application = "lucidic_restart_" + uuid.uuid4().hex[:8]
    server = start_server(f"{pg_url}&application_name={application}")
    key = make_key(pg_url, "faults")
    api = Api(server.url, key)
    sid = str(uuid.uuid4())
    assert api.records({"kind": "session", "id": sid, "ts": 1.0,
                        "fields": {"started_at": 1.0}}).status_code == 200
    with psycopg.connect(pg_url, autocommit=True) as admin:
        with ThreadPoolExecutor(8) as pool:  # requests at once: the pool opens several
            while _server_connections(admin, application) < 4:
                assert set(pool.map(lambda _: api.get(f"/api/v1/sessions/{sid}").status_code,
                                    range(64))) == {200}
        ended = [row[0] for row in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (application,)).fetchall()]
        assert len(ended) >= 4
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (ended,))
        # Gone: the ended connections (not every connection of the server:
        # its refresher may have found one of them dead and opened another).
        assert wait_until(lambda: not admin.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (ended,)).fetchall(), 10)
    answers = [api.get(f"/api/v1/sessions/{sid}").status_code for _ in range(10)]
    assert answers == [200] * 10


def test_the_server_holds_no_more_connections_than_its_pool_however_many_requests_come(
        pg_url: str, start_server) -> None:
    # Requests that found no idle connection each opened one while fewer than
    # the pool's size (8) were counted as open, and the count grew only once
    # a connection was made: 16 requests at once held 14 connections, kept
    # idle for good, from each replica toward PostgreSQL's max_connections.
    import psycopg

    application = "lucidic_pool_" + uuid.uuid4().hex[:8]
    server = start_server(f"{pg_url}&application_name={application}")
    api = Api(server.url, make_key(pg_url, "faults"))
    with ThreadPoolExecutor(32) as pool:
        for _ in range(5):
            assert set(pool.map(lambda _: api.get("/api/v1/sessions").status_code,
                                range(64))) == {200}
    with psycopg.connect(pg_url, autocommit=True) as admin:
        assert _server_connections(admin, application) <= 8


def test_a_connection_whose_descriptor_is_above_1023_is_not_taken_for_lost(
        pg_url: str) -> None:
    # The pool asks each idle connection whether PostgreSQL ended it. With
    # select() a descriptor above 1023 (a busy server's, with many clients'
    # sockets open) raised ValueError, taken for "lost": every connection was
    # thrown away and opened again at every request.
    import resource

    from lucidic.store import Store

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("the descriptor limit cannot reach 2048 here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        store = Store(pg_url)
        try:
            store.query("SELECT 1 AS one")
            assert store._conn.fileno() > 1023
            assert store.connection_lost() is False
        finally:
            store.close()
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class CommitCutter:
    """A TCP relay in front of PostgreSQL that, once armed, cuts the next
    writing transaction's connection (one that sent an INSERT) right after
    PostgreSQL has answered its COMMIT, before the answer reaches the client:
    the transaction is committed, and the client cannot know it."""

    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        user = parts.netloc.rpartition("@")[0]
        self.url = urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}".lstrip("@")))
        self.armed = threading.Event()
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        wrote = cutting = False
        # psycopg prepares a statement it has run a few times (the server's
        # refresher runs many on the pool's connections): from then on only
        # its name is sent (a Bind), not its text.
        prepared: dict[bytes, bytes] = {}
        with client, upstream:
            while True:
                for side in select.select([client, upstream], [], [])[0]:
                    data = side.recv(65536)
                    if not data:
                        return
                    if side is client:
                        prepared.update(re.findall(rb"(_pg3_\d+)\x00(INSERT|COMMIT)\b", data))
                        bound = {prepared.get(name) for name in
                                 re.findall(rb"B.{4}\x00(_pg3_\d+)\x00", data, re.DOTALL)}
                        wrote = wrote or b"INSERT" in data or b"INSERT" in bound
                        if b"COMMIT" in data or b"COMMIT" in bound:
                            cutting, wrote = wrote and self.armed.is_set(), False
                        upstream.sendall(data)
                    elif cutting and b"COMMIT\0" in data:  # PostgreSQL's "committed"
                        self.armed.clear()
                        self.cut.set()
                        return
                    else:
                        client.sendall(data)

    def close(self) -> None:
        self.listener.close()


def test_a_connection_cut_while_committing_is_a_503_saying_a_retry_is_safe(
        pg_url: str, start_server) -> None:
    # The answer said "nothing was written", although the commit had gone
    # through: a client believing it could not tell a retry was harmless.
    cutter = CommitCutter(pg_url)
    server = start_server(cutter.url)
    api = Api(server.url, make_key(pg_url, "faults"))
    sid = str(uuid.uuid4())
    records = ({"kind": "session", "id": sid, "ts": 1.0, "fields": {"started_at": 1.0}},
               {"kind": "event", "id": "cut", "ts": 2.0,
                "fields": {"session_id": sid, "description": "sent while the line was cut"}})
    cutter.armed.set()
    answer = api.records(*records)
    assert cutter.cut.is_set()
    assert answer.status_code == 503, answer.text
    detail = answer.json()["detail"]
    assert "nothing was written" not in detail
    assert "may or may not have written it" in detail and "sending it again is safe" in detail
    assert events_of(pg_url, sid) == ["sent while the line was cut"]  # it was written
    assert api.records(*records).status_code == 200  # ... and the retry changes nothing
    assert events_of(pg_url, sid) == ["sent while the line was cut"]
    cutter.close()


def test_a_server_on_a_read_only_sqlite_file_reads_it_and_answers_writes_503(
        tmp_path: Path, start_server) -> None:
    # A store on a read-only filesystem: the server could not start (SQLite
    # could not open the file for its WAL). Now it serves what the store
    # holds, and a write is the database's fault, not the client's: 503.
    with ReadOnlyDisk(tmp_path / "disk") as disk:
        url = f"sqlite:///{disk.path / 'server.db'}"
        key = make_key(url, "read-only")
        sid = str(uuid.uuid4())
        store = Store(url)
        store.write_for_project([("session", sid, 1.0, {"started_at": 1.0,
                                                        "name": "written before"})], "read-only")
        store.close()
        disk.read_only()
        server = start_server(url)
        api = Api(server.url, key)
        assert api.get(f"/api/v1/sessions/{sid}").json()["name"] == "written before"
        answer = api.records({"kind": "event", "id": "refused", "ts": 2.0,
                              "fields": {"session_id": sid}})
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        (logged, *_) = [line for line in server.log_text().splitlines()
                        if "its filesystem is read-only" in line]
        assert "ERROR" in logged and str(disk.path / "server.db") in logged, server.log_text()
        server.stop()
