"""The storage layer: one schema, written once, for the embedded store and the
server alike.

Records arrive as ``(kind, id, ts, fields)`` tuples, possibly more than once
(retries, spool replays) and out of order (several processes, spooled records
replayed late). Every write is therefore an idempotent upsert whose merge does
not depend on arrival order: a field carried by a record replaces the stored
value only if the record is at least as new as the row (``updated_at``), or if
nothing is stored there yet. A record never clears a field; absent fields are
left alone.

The SQL is portable between SQLite and PostgreSQL (``ON CONFLICT ... DO
UPDATE``, ``excluded.``, ``CASE``), so one set of statements serves both; only
where the rows come from differs. SQLite binds one row at a time
(``executemany``, which costs little in-process); PostgreSQL receives each
group of rows as one JSON document read by ``json_to_recordset``, one
statement and one round trip per group, which takes about half the CPU of a
pipelined ``executemany`` on both sides of the connection.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import secrets
import select
import sqlite3
import sys
import threading
import time
import urllib.parse
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

from . import evalstore
from ._activity_hours import CALL_WITHOUT_COST, CALL_WITHOUT_TOKENS, hourly_sql, without_sql
from ._storable import clean_json, clean_text, encodable
from ._timing_buckets import counts_sql as _timing_counts_sql
from .columns import BOOL_COLUMNS, COLUMN_TYPES, JSON_COLUMNS, ColumnType, sql_type
from .limits import INT_MAX, INT_MIN

__all__ = [
    "EVENT_COLUMNS",
    "SESSION_COLUMNS",
    "STEP_COLUMNS",
    "Record",
    "DeletedSessionError",
    "Store",
    "IdInUseError",
    "StoreError",
    "UnknownSessionError",
    "WRITER_COLUMNS",
    "clean_json",
    "clean_text",
    "hash_api_key",
]

#: (kind, id, ts, fields) — the unit that flows from the hot path to a store.
Record = tuple[str, str, float, dict[str, Any]]
#: How many parts a record has (the pipeline's queue and the spool's
#: encoder take records apart and make them again).
RECORD_PARTS = 4
#: Rows of one shape an SQLite upsert statement takes at most (a power of
#: two; fewer when a row's values would pass the parameters a statement may
#: bind). The pipeline's batches and the spool's lines hold as many records,
#: so a full batch of alike records is one statement: the driver lets go of
#: the interpreter once a statement, and while a busy user thread holds it,
#: the worker waits up to a switch interval (5 ms) to get it back each time.
ROWS_PER_STATEMENT = 2048
T = TypeVar("T")


class StoreError(Exception):
    """The store could not be reached or refused a write.

    ``transient`` tells the two apart: True when a retry may succeed (the
    database locked or unreachable, or failing on its own side until someone
    mends it); False when it refused what it was given, which no retry will
    change. ``broken`` marks, among the transient, a database failing on its
    own side: its schema broken (a table or column missing), a write it may
    not make (no permission, read-only), no space left, a damaged file. No
    record is at fault, but only an operator can mend it, so the server logs
    the cause as an error.

    ``may_have_written`` is True when the COMMIT went out but no answer came
    back (the connection cut): the database may have committed it or not.
    Otherwise a failed transaction wrote nothing."""

    def __init__(self, message: str, *, transient: bool = True, broken: bool = False) -> None:
        super().__init__(message)
        self.transient = transient or broken
        self.broken = broken
        self.may_have_written = False


#: SQLite's primary result codes that say "not now": busy, locked, out of
#: memory, interrupted, lock protocol, schema changed under the statement.
_SQLITE_BUSY = frozenset({5, 6, 7, 9, 15, 17})
#: ... and those that say "not this": a value too big, a constraint, a
#: datatype mismatch. Every other code is the database failing on its own
#: side (read-only, I/O error, damaged, full, cannot open, no permission),
#: and so is SQLITE_ERROR ("no such table", "no such column": the schema
#: broken under us), but for the integer overflow of a sum, which SQLite
#: raises as an SQLITE_ERROR too.
_SQLITE_DATA = frozenset({18, 19, 20})
#: PostgreSQL's SQLSTATE classes of the data's fault: data exceptions (a
#: number out of range, a NUL in a text), integrity constraints, a value past
#: a limit (an index row too large).
_PG_DATA = frozenset({"22", "23", "54"})
#: ... and of "not now": the connection lost, a transaction rolled back
#: (serialisation, deadlock), resources short (but a full disk), a lock not
#: available, an operator's intervention (a shutdown, a cancelled query).
#: Every other class is the database failing on its own side: 42 (a table or
#: column missing, permission denied), 25 (a read-only transaction: a
#: standby), 58 (I/O), XX (damaged data)...
_PG_BUSY = frozenset({"08", "40", "53", "55", "57"})
_PG_DISK_FULL = "53100"
#: What the filesystem says of a path it refuses until someone mends it (the
#: store's directory on a read-only filesystem, not allowed, no space left, a
#: file where a directory should be): the database failing on its own side,
#: as SQLite's own codes for these are. Other OSErrors (out of file
#: descriptors, interrupted) are "not now".
_OS_BROKEN = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT,
                        errno.EIO, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG,
                        errno.ELOOP})

#: Python 3.10's sqlite3 errors carry no result code, only SQLite's message:
#: the fixed texts of the codes that are not SQLITE_ERROR (sqlite3_errstr),
#: which is the only code whose message is the statement's own.
_SQLITE_CODE_OF_MESSAGE = {
    "database is locked": 5, "database table is locked": 6, "out of memory": 7,
    "attempt to write a readonly database": 8, "interrupted": 9, "disk I/O error": 10,
    "database disk image is malformed": 11, "database or disk is full": 13,
    "unable to open database file": 14, "locking protocol": 15,
    "database schema has changed": 17, "string or blob too big": 18, "datatype mismatch": 20,
    "authorization denied": 23, "not authorized": 23, "file is not a database": 26,
}


def _sqlite_code_from_message(exc: sqlite3.Error) -> int | None:
    """An OperationalError's result code, read from its message (SQLITE_ERROR
    for a text that is not one of the fixed ones); None for other errors,
    the data's (IntegrityError, DataError) or the sqlite3 module's own."""
    if not isinstance(exc, sqlite3.OperationalError):
        return None
    message = str(exc)
    for text, code in _SQLITE_CODE_OF_MESSAGE.items():
        if message.startswith(text):
            return code
    return 1


def _fault(exc: BaseException) -> str:
    """Whose fault a driver error is: "busy" (not now), "data" (not this),
    or "broken" (the database, until someone mends it)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
        if code is None and sys.version_info < (3, 11):
            code = _sqlite_code_from_message(exc)
        if code is None:  # the sqlite3 module's own check
            return "busy" if isinstance(exc, sqlite3.OperationalError) else "data"
        code &= 0xFF
        if code in _SQLITE_BUSY:
            return "busy"
        if code in _SQLITE_DATA or (code == 1 and "integer overflow" in str(exc)):
            return "data"
        return "broken"
    if isinstance(exc, (ValueError, TypeError, OverflowError)):
        return "data"
    if isinstance(exc, OSError) and exc.errno in _OS_BROKEN:
        return "broken"
    if type(exc).__module__.startswith("psycopg"):
        sqlstate = getattr(exc, "sqlstate", None)
        if not sqlstate:  # raised by psycopg itself, before or without the server
            names = {c.__name__ for c in type(exc).__mro__}
            if names & {"OperationalError", "InterfaceError"}:
                return "busy"  # the connection lost or not made
            return "data" if "DataError" in names else "broken"
        if sqlstate[:2] in _PG_DATA:
            return "data"
        return "busy" if sqlstate[:2] in _PG_BUSY and sqlstate != _PG_DISK_FULL else "broken"
    return "busy"  # unknown: retrying loses nothing


def _store_error(message: str, exc: BaseException) -> StoreError:
    fault = _fault(exc)
    return StoreError(message, transient=fault != "data", broken=fault == "broken")


def _unanswered(exc: BaseException) -> bool:
    """Whether a statement that raised ``exc`` got no answer from the
    database (a PostgreSQL connection lost on the way). An error the database
    answered, or any of SQLite's, means a COMMIT did not happen."""
    return type(exc).__module__.startswith("psycopg") and not getattr(exc, "sqlstate", None)


class _PassthroughError(Exception):
    """Carries a caller's own exception out of a transaction, unwrapped."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _is_driver_error(exc: BaseException) -> bool:
    """Whether an exception raised inside a caller's transaction is the
    database's (or the driver's, refusing a value: ValueError, OverflowError).
    A TypeError is not: the drivers name a value they cannot bind with their
    own errors, so it is the caller's own failure (a bug, or a stored value
    of a type no code expects), which must not be answered as the request's
    fault."""
    return (isinstance(exc, (sqlite3.Error, StoreError, ValueError, OverflowError))
            or type(exc).__module__.startswith("psycopg"))


class UnknownSessionError(StoreError):
    """A scoped write named sessions that do not exist in the writer's project
    (unknown, or another project's: the two cannot be told apart). Of those,
    ``deleted`` were deleted (lucidic.reading.retention): no record will
    ever bring them back, so their records are refused for good."""

    def __init__(self, session_ids: Sequence[str], deleted: Sequence[str] = ()) -> None:
        self.session_ids = list(session_ids)
        self.deleted = list(deleted)
        shown = ", ".join(repr(s) for s in self.session_ids[:5])
        more = f" and {len(self.session_ids) - 5} more" if len(self.session_ids) > 5 else ""
        gone = f" ({len(self.deleted)} of them deleted)" if self.deleted else ""
        super().__init__(f"session {shown}{more} was not found in this project{gone}")


class DeletedSessionError(UnknownSessionError):
    """A write named sessions that were deleted (``session_ids``; empty when
    the database said so without naming them): nothing was written, and no
    retry will change that. A deleted session's id stays taken, so that a
    record arriving late (a spool replayed, a process still writing) is
    refused rather than bringing back part of the session."""

    def __init__(self, session_ids: Sequence[str]) -> None:
        super().__init__(session_ids, session_ids)
        shown = ", ".join(repr(s) for s in self.session_ids[:5]) or "a session"
        more = f" and {len(self.session_ids) - 5} more" if len(self.session_ids) > 5 else ""
        self.args = (f"{shown}{more} was deleted: records for a deleted session are refused",)
        self.transient = False


#: What the database says when a write names a deleted session (migration 12's trigger).
_DELETED_MARK = "lucidic: a record names a deleted session"


class IdInUseError(StoreError):
    """A write named ids held by rows it may not touch: a session of another
    project, a step or event of another session. Nothing was written, and no
    retry will change that. The same words whoever holds the id (this
    project's other session, or another project), so that a refusal tells
    nothing about them."""

    def __init__(self, records: Sequence[tuple[str, str]]) -> None:
        self.records = list(records)
        shown = ", ".join(f"{kind} {rid!r}" for kind, rid in self.records[:5])
        more = f" and {len(self.records) - 5} more" if len(self.records) > 5 else ""
        super().__init__(f"{shown}{more}: the id is already in use by another session or "
                         "project, and a record can only create or change its own",
                         transient=False)


#: API keys: a fixed prefix (so a leaked key is recognisable) and 256 random bits.
API_KEY_PREFIX = "lk_"


def hash_api_key(key: str) -> str:
    """What the store keeps of a key: its SHA-256 (the key is random, so no
    salt or slow hash is needed to make the hash useless to a thief)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


# Column lists: every column but ``id`` and ``updated_at``. The first entry of
# each list is the guard column: an upsert may only touch a row whose guard
# matches (a step cannot move to another session, a session to another project).
# The _V1 / _1 lists are the tables as migration 1 created them (frozen: later
# columns are added by their own migrations, never by editing these).
_V1_SESSION_COLUMNS = (
    "project", "agent_id", "name", "task", "tags", "started_at", "ended_at",
    "is_finished", "is_successful", "is_successful_reason", "session_eval",
    "session_eval_reason",
)
_V1_STEP_COLUMNS = (
    "session_id", "parent_step_id", "state", "action", "goal", "eval_score",
    "eval_description", "screenshot", "screenshot_path", "function_name",
    "started_at", "ended_at", "is_finished", "error",
)
#: The events table as migration 1 made it (never change it: migrations
#: after 1 add columns to it).
_EVENT_COLUMNS_1 = (
    "session_id", "step_id", "type", "description", "result", "model",
    "request_model", "provider", "input", "output", "input_tokens",
    "output_tokens", "cached_tokens", "reasoning_tokens", "cost", "duration",
    "time_to_first_token", "function_name", "arguments", "screenshots",
    "error", "started_at", "ended_at", "is_finished",
)
#: LLM accounting (migration 3): prompt-cache writes, counted apart from the
#: reads in cached_tokens and priced at their own rate; and whether the
#: token counts were estimated by Lucidic rather than reported by the API.
_EVENT_ACCOUNTING_COLUMNS = ("cache_write_tokens", "tokens_estimated")
#: Which process wrote a step or event: its host, its pid and the agent it
#: recorded for (migration 4). Stamped by the SDK on the record that creates
#: the row; see lucidic._runtime.writer.
WRITER_COLUMNS = ("writer_host", "writer_pid", "writer_agent")
#: Columns added by migration 7. ``mass_sim_id``, ``experiment_id`` and
#: ``rubrics`` are what the lucidicai client's initsession names (evaluations
#: build on them); ``attributes`` keeps what a row's source said that has no
#: column of its own (OTLP span attributes, lucidicai fields we do not model).
_PROTOCOL_SESSION_COLUMNS = ("mass_sim_id", "experiment_id", "rubrics", "attributes")
_PROTOCOL_STEP_COLUMNS = ("attributes",)
_PROTOCOL_EVENT_COLUMNS = ("attributes",)
#: Columns added by migration 8 (lucidic.evalstore): a run's case and outcome
#: on its session, and on an event the recorded event a replayed answer came from.
_RUN_SESSION_COLUMNS = tuple(evalstore.SESSION_RUN_COLUMNS)
_REPLAY_EVENT_COLUMNS = tuple(evalstore.EVENT_REPLAY_COLUMNS)
SESSION_COLUMNS = (*_V1_SESSION_COLUMNS, *_PROTOCOL_SESSION_COLUMNS, *_RUN_SESSION_COLUMNS)
STEP_COLUMNS = (*_V1_STEP_COLUMNS, *WRITER_COLUMNS, *_PROTOCOL_STEP_COLUMNS)
EVENT_COLUMNS = (*_EVENT_COLUMNS_1, *_EVENT_ACCOUNTING_COLUMNS, *WRITER_COLUMNS,
                 *_PROTOCOL_EVENT_COLUMNS, *_REPLAY_EVENT_COLUMNS)
#: A screenshot the server keeps (uploaded by lucidicai to a signed URL) is
#: referenced from a step's ``screenshot`` or an event's ``screenshots`` by this
#: path and its object key; GET on it serves the image (see lucidic.server.uploads).
SCREENSHOT_PATH = "/api/v1/screenshots/"

_TABLES = {"session": ("sessions", SESSION_COLUMNS), "step": ("steps", STEP_COLUMNS),
           "event": ("events", EVENT_COLUMNS)}
#: Every kind of record a store takes.
RECORD_KINDS = frozenset({*_TABLES, *evalstore.KINDS})
_KIND_COLUMNS = {kind: frozenset(columns) for kind, (_, columns) in _TABLES.items()}
#: The guard column of each kind's table (see _upsert_sql).
_GUARDS = {kind: columns[0] for kind, (_, columns) in _TABLES.items()}


def _create_table(table: str, columns: Sequence[str]) -> str:
    cols = ",\n  ".join(f"{c} {sql_type(c)}" for c in columns)
    guard = columns[0]
    return (f"CREATE TABLE IF NOT EXISTS {table} (\n  id TEXT PRIMARY KEY,\n  {cols},\n"
            f"  updated_at DOUBLE PRECISION NOT NULL\n)").replace(
        f"{guard} TEXT", f"{guard} TEXT NOT NULL", 1)


#: Ordered schema migrations; each runs once, in a transaction, and the
#: version reached is kept in lucidic_meta. Never edit a released entry: add one.
MIGRATIONS: list[tuple[int, list[str | dict[str, str]]]] = [
    (1, [
        _create_table("sessions", _V1_SESSION_COLUMNS),
        _create_table("steps", _V1_STEP_COLUMNS),
        _create_table("events", _EVENT_COLUMNS_1),
        "CREATE INDEX IF NOT EXISTS sessions_started ON sessions (project, started_at)",
        "CREATE INDEX IF NOT EXISTS sessions_agent ON sessions (project, agent_id)",
        "CREATE INDEX IF NOT EXISTS steps_session ON steps (session_id)",
        "CREATE INDEX IF NOT EXISTS events_session ON events (session_id)",
    ]),
    # The server's accounts: projects, and API keys kept only as a hash. The
    # projects already named by stored sessions (an embedded store being
    # moved behind a server) are registered, so keys can be made for them.
    (2, [
        "CREATE TABLE IF NOT EXISTS projects (\n  name TEXT PRIMARY KEY,\n"
        "  created_at DOUBLE PRECISION NOT NULL\n)",
        "CREATE TABLE IF NOT EXISTS api_keys (\n  id TEXT PRIMARY KEY,\n"
        "  project TEXT NOT NULL REFERENCES projects (name),\n"
        "  key_hash TEXT NOT NULL UNIQUE,\n  label TEXT,\n"
        "  created_at DOUBLE PRECISION NOT NULL,\n  revoked_at DOUBLE PRECISION\n)",
        "CREATE INDEX IF NOT EXISTS api_keys_project ON api_keys (project)",
        "INSERT INTO projects (name, created_at) "
        "SELECT project, COALESCE(MIN(started_at), 0) FROM sessions GROUP BY project "
        "ON CONFLICT (name) DO NOTHING",
    ]),
    # LLM accounting: cache-write tokens, and token counts marked as estimated.
    (3, [f"ALTER TABLE events ADD COLUMN {column} {sql_type(column)}"
         for column in _EVENT_ACCOUNTING_COLUMNS]),
    # The writer of each step and event (host, pid, agent), for the hand-over
    # view; rows written before this migration have none.
    (4, [
        *(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type(column)}"
          for table in ("steps", "events") for column in WRITER_COLUMNS),
    ]),
    # Web UI sign-in: a browser trades an API key for a random token kept in
    # an HttpOnly cookie; only the token's hash is stored, so that signing out
    # (or revoking the key) ends it on every server replica at once.
    (5, [
        "CREATE TABLE IF NOT EXISTS web_sessions (\n  token_hash TEXT PRIMARY KEY,\n"
        "  key_id TEXT NOT NULL REFERENCES api_keys (id),\n"
        "  created_at DOUBLE PRECISION NOT NULL,\n  expires_at DOUBLE PRECISION NOT NULL\n)",
        "CREATE INDEX IF NOT EXISTS web_sessions_key ON web_sessions (key_id)",
    ]),
    # Listing sessions newest first, a page at a time from a (started_at, id)
    # cursor: walked down an index, with or without a project, never sorted;
    # and the agents to filter by.
    (6, [
        "CREATE INDEX IF NOT EXISTS sessions_started_id ON sessions (started_at, id)",
        "CREATE INDEX IF NOT EXISTS sessions_project_started_id "
        "ON sessions (project, started_at, id)",
        "DROP INDEX IF EXISTS sessions_started",
        # the agents filter's choices, found without a project (lucidic ui)
        "CREATE INDEX IF NOT EXISTS sessions_agent_id ON sessions (agent_id)",
    ]),
    # What existing clients send (lucidicai's wire protocol and OTLP): the
    # session columns initsession names, kept attributes, mass simulations,
    # the prompt store, uploads (screenshots, large event payloads) held until
    # a signed URL delivers them, and the bookkeeping that makes OTLP ingest
    # independent of the order spans arrive in.
    (7, [
        *(f"ALTER TABLE {table} ADD COLUMN {column} TEXT"
          for table, columns in (("sessions", _PROTOCOL_SESSION_COLUMNS),
                                 ("steps", _PROTOCOL_STEP_COLUMNS),
                                 ("events", _PROTOCOL_EVENT_COLUMNS))
          for column in columns),
        "CREATE INDEX IF NOT EXISTS sessions_mass_sim ON sessions (project, mass_sim_id)",
        "CREATE INDEX IF NOT EXISTS sessions_experiment ON sessions (project, experiment_id)",
        "CREATE TABLE IF NOT EXISTS mass_sims (\n  id TEXT PRIMARY KEY,\n"
        "  project TEXT NOT NULL,\n  name TEXT,\n  task TEXT,\n  tags TEXT,\n"
        "  total_num_sims BIGINT,\n  agent_id TEXT,\n"
        "  created_at DOUBLE PRECISION NOT NULL\n)",
        "CREATE INDEX IF NOT EXISTS mass_sims_project ON mass_sims (project, created_at)",
        "CREATE TABLE IF NOT EXISTS prompts (\n  project TEXT NOT NULL,\n  name TEXT NOT NULL,\n"
        "  version BIGINT NOT NULL,\n  content TEXT NOT NULL,\n"
        "  created_at DOUBLE PRECISION NOT NULL,\n  PRIMARY KEY (project, name, version)\n)",
        "CREATE TABLE IF NOT EXISTS prompt_labels (\n  project TEXT NOT NULL,\n"
        "  name TEXT NOT NULL,\n  label TEXT NOT NULL,\n  version BIGINT NOT NULL,\n"
        "  updated_at DOUBLE PRECISION NOT NULL,\n  PRIMARY KEY (project, name, label)\n)",
        # BYTEA: PostgreSQL's bytes; SQLite stores the bytes as a BLOB under any type name.
        "CREATE TABLE IF NOT EXISTS uploads (\n  id TEXT PRIMARY KEY,\n"
        "  project TEXT NOT NULL,\n  purpose TEXT NOT NULL,\n  session_id TEXT,\n"
        "  step_id TEXT,\n  event_id TEXT,\n  nth BIGINT,\n"
        "  created_at DOUBLE PRECISION NOT NULL,\n  expires_at DOUBLE PRECISION NOT NULL,\n"
        "  uploaded_at DOUBLE PRECISION,\n  content_type TEXT,\n  size BIGINT,\n"
        "  data BYTEA\n)",
        "CREATE INDEX IF NOT EXISTS uploads_step ON uploads (step_id)",
        "CREATE INDEX IF NOT EXISTS uploads_event ON uploads (event_id)",
        "CREATE TABLE IF NOT EXISTS otlp_traces (\n  project TEXT NOT NULL,\n"
        "  trace_id TEXT NOT NULL,\n  session_id TEXT NOT NULL,\n"
        "  is_placeholder SMALLINT NOT NULL,\n  named_start DOUBLE PRECISION,\n"
        "  named_span TEXT,\n  PRIMARY KEY (project, trace_id)\n)",
        "CREATE TABLE IF NOT EXISTS otlp_spans (\n  project TEXT NOT NULL,\n"
        "  trace_id TEXT NOT NULL,\n  span_id TEXT NOT NULL,\n  parent_span_id TEXT,\n"
        "  is_step SMALLINT NOT NULL,\n  PRIMARY KEY (project, trace_id, span_id)\n)",
    ]),
    # Evaluations: a run's case and outcome on its session, replayed events,
    # experiments, scores, rubric results and evaluation claims.
    (8, list(evalstore.MIGRATION)),
    # Derived data (lucidic.reading.derived): every write notes the sessions
    # it touched in changed_sessions, in its own transaction; a refresher in
    # `lucidic ui` and `lucidic server` rebuilds what pages read in place of
    # every row, and removes the notes. Every session stored before this
    # migration is noted, so an upgraded store reads exact at once.
    (9, [
        "CREATE TABLE IF NOT EXISTS changed_sessions (\n  session_id TEXT PRIMARY KEY,\n"
        "  noted_at DOUBLE PRECISION NOT NULL,\n  version BIGINT NOT NULL\n)",
        "INSERT INTO changed_sessions (session_id, noted_at, version) "
        "SELECT id, 0, 1 FROM sessions UNION SELECT session_id, 0, 1 FROM steps "
        "UNION SELECT session_id, 0, 1 FROM events",
        # the refresher takes the quiet ones, oldest first
        "CREATE INDEX IF NOT EXISTS changed_sessions_noted ON changed_sessions (noted_at)",
        # What the sessions list sorts by (see reading.sessions.SORTS).
        "CREATE TABLE IF NOT EXISTS session_totals (\n  session_id TEXT PRIMARY KEY,\n"
        "  cost DOUBLE PRECISION NOT NULL,\n  tokens BIGINT NOT NULL,\n"
        "  events BIGINT NOT NULL,\n  errors BIGINT NOT NULL\n)",
        # The session's, its steps' and its events' searchable text, each
        # column case-folded as search folds it, one per line.
        "CREATE TABLE IF NOT EXISTS session_text (\n  session_id TEXT PRIMARY KEY,\n"
        "  folded TEXT NOT NULL\n)",
        # The dashboard's sums: a session's events by day, hour, model and
        # whether they are LLM calls, with the first and last start time of
        # each group; token sums in their high and low 32 bits (summed apart,
        # as reading.totals.int_sum does, so sums of them are exact).
        "CREATE TABLE IF NOT EXISTS session_activity (\n  session_id TEXT NOT NULL,\n"
        "  project TEXT,\n  day BIGINT NOT NULL,\n  hour BIGINT NOT NULL,\n"
        "  model TEXT NOT NULL,\n  is_llm SMALLINT NOT NULL,\n"
        "  first_at DOUBLE PRECISION NOT NULL,\n  last_at DOUBLE PRECISION NOT NULL,\n"
        "  events BIGINT NOT NULL,\n  errors BIGINT NOT NULL,\n  failed BIGINT NOT NULL,\n"
        "  cost DOUBLE PRECISION,\n  input_hi BIGINT,\n  input_lo BIGINT,\n"
        "  output_hi BIGINT,\n  output_lo BIGINT\n)",
        "CREATE INDEX IF NOT EXISTS session_activity_session ON session_activity (session_id)",
        "CREATE INDEX IF NOT EXISTS session_activity_hour ON session_activity (hour)",
        # Each LLM call's timings, for the dashboard's percentiles.
        "CREATE TABLE IF NOT EXISTS llm_timings (\n  session_id TEXT NOT NULL,\n"
        "  project TEXT,\n  started_at DOUBLE PRECISION NOT NULL,\n  model TEXT NOT NULL,\n"
        "  duration DOUBLE PRECISION,\n  time_to_first_token DOUBLE PRECISION\n)",
        "CREATE INDEX IF NOT EXISTS llm_timings_session ON llm_timings (session_id)",
        "CREATE INDEX IF NOT EXISTS llm_timings_started ON llm_timings (started_at)",
    ]),
    # The dashboard's percentiles without ranking every LLM call: how many
    # calls of llm_timings fall in each hour, model and duration bucket (see
    # lucidic.reading.percentiles), kept by the refresher beside llm_timings,
    # so that only the calls of the bucket holding a rank are read, in order
    # of (model, value). Filled from llm_timings as it stands.
    (10, [
        "CREATE TABLE IF NOT EXISTS timing_counts (\n  measure SMALLINT NOT NULL,\n"
        "  hour BIGINT NOT NULL,\n  model TEXT NOT NULL,\n  bucket BIGINT NOT NULL,\n"
        # a call of a session without a session row has no project: orphan 1
        "  orphan SMALLINT NOT NULL,\n  project TEXT NOT NULL,\n  calls BIGINT NOT NULL,\n"
        "  PRIMARY KEY (measure, hour, model, bucket, orphan, project)\n)",
        _timing_counts_sql("1 = 1"),
        "CREATE INDEX IF NOT EXISTS llm_timings_duration ON llm_timings (model, duration)",
        "CREATE INDEX IF NOT EXISTS llm_timings_ttft ON llm_timings "
        "(model, time_to_first_token)",
    ]),
    # The dashboard's sums by hour across sessions, and how many LLM calls
    # reported no token counts or no cost: session_activity counts those
    # calls of each group (filled from the events of its rows as they
    # stand), and hourly_activity sums its rows by day, hour, model, kind
    # and project (see lucidic._activity_hours), kept by the refresher
    # beside session_activity with the hours to sum again in stale_hours,
    # so that a page sums a row per hour, not one per session and hour.
    # Filled from session_activity as it stands.
    (11, [
        "ALTER TABLE session_activity ADD COLUMN without_tokens BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE session_activity ADD COLUMN without_cost BIGINT NOT NULL DEFAULT 0",
        without_sql("without_tokens", CALL_WITHOUT_TOKENS),
        without_sql("without_cost", CALL_WITHOUT_COST),
        "CREATE TABLE IF NOT EXISTS hourly_activity (\n  day BIGINT NOT NULL,\n"
        "  hour BIGINT NOT NULL,\n  model TEXT NOT NULL,\n  is_llm SMALLINT NOT NULL,\n"
        # a session without a session row has no project: orphan 1
        "  orphan SMALLINT NOT NULL,\n  project TEXT NOT NULL,\n"
        "  events BIGINT NOT NULL,\n  errors BIGINT NOT NULL,\n  failed BIGINT NOT NULL,\n"
        "  cost DOUBLE PRECISION,\n  input_hi BIGINT,\n  input_lo BIGINT,\n"
        "  output_hi BIGINT,\n  output_lo BIGINT,\n  without_tokens BIGINT NOT NULL,\n"
        "  without_cost BIGINT NOT NULL,\n"
        "  PRIMARY KEY (hour, day, model, is_llm, orphan, project)\n)",
        hourly_sql("1 = 1"),
        "CREATE TABLE IF NOT EXISTS stale_hours (\n  hour BIGINT PRIMARY KEY\n)",
    ]),
    # Deleting sessions (lucidic.reading.retention): the ids of deleted
    # sessions, each kept for good, and a trigger that refuses a write naming
    # one (every write notes its sessions in changed_sessions, so the
    # trigger runs once a session and batch, not once a row); and the
    # indexes that find a session's rows in the tables keyed otherwise.
    (12, [
        "CREATE TABLE IF NOT EXISTS deleted_sessions (\n  session_id TEXT PRIMARY KEY,\n"
        "  project TEXT,\n  deleted_at DOUBLE PRECISION NOT NULL\n)",
        {"sqlite": "CREATE TRIGGER IF NOT EXISTS changed_sessions_not_deleted BEFORE INSERT "
                   "ON changed_sessions WHEN EXISTS (SELECT 1 FROM deleted_sessions d "
                   "WHERE d.session_id = NEW.session_id) "
                   f"BEGIN SELECT RAISE(ABORT, '{_DELETED_MARK}'); END",
         "postgresql": "CREATE OR REPLACE FUNCTION lucidic_refuse_deleted() RETURNS trigger "
                       "LANGUAGE plpgsql AS $$ BEGIN IF EXISTS (SELECT 1 FROM deleted_sessions "
                       "d WHERE d.session_id = NEW.session_id) THEN RAISE EXCEPTION "
                       f"'{_DELETED_MARK} (%)', NEW.session_id; END IF; RETURN NEW; END $$"},
        {"postgresql": "DROP TRIGGER IF EXISTS changed_sessions_not_deleted ON changed_sessions"},
        {"postgresql": "CREATE TRIGGER changed_sessions_not_deleted BEFORE INSERT ON "
                       "changed_sessions FOR EACH ROW EXECUTE FUNCTION lucidic_refuse_deleted()"},
        "CREATE INDEX IF NOT EXISTS uploads_session ON uploads (session_id)",
        "CREATE INDEX IF NOT EXISTS otlp_traces_session ON otlp_traces (session_id)",
        "CREATE INDEX IF NOT EXISTS scores_session_id ON scores (session_id)",
        "CREATE INDEX IF NOT EXISTS rubric_results_session ON rubric_results (session_id)",
        "CREATE INDEX IF NOT EXISTS evaluations_session ON evaluations (session_id)",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


#: How a note already there is renewed: once a second at most (rewriting it
#: at every batch of a running session would cost the write path a page).
_NOTE_RENEWED = ("ON CONFLICT (session_id) DO UPDATE SET noted_at = excluded.noted_at, "
                 "version = changed_sessions.version + 1 "
                 "WHERE changed_sessions.noted_at < excluded.noted_at - 1")
#: Store.note_changed's statement on PostgreSQL, of (time, sorted ids).
_NOTE_PG = ("INSERT INTO changed_sessions (session_id, noted_at, version) "
            "SELECT session_id, %s, 1 FROM unnest(%s::text[]) WITH ORDINALITY "
            f"AS n (session_id, position) ORDER BY position {_NOTE_RENEWED}")
_NOTES_PER_STATEMENT = 500


def _upsert_sql(table: str, guard: str, columns: Sequence[str], placeholder: str,
                rows_from_json: bool = False, rows: int = 1,
                shared: Sequence[int] = ()) -> str:
    """The upsert for records carrying ``columns`` (``rows`` of them at a time).

    One statement per record shape (the fields a record carries): binding
    only those is several times faster than binding every column. A NULL
    bound for a field (a record's None) leaves the stored value alone, as a
    field the record does not carry does. With ``rows_from_json``
    (PostgreSQL only) the statement takes every row at once, as one JSON
    array of objects keyed by column. ``shared`` (SQLite only): the
    positions in a row (0 is the id) whose value every row has alike, bound
    once as the statement's first parameters (?1, ?2...) and named by number
    in each row, the others following in order. (Those come first in each
    row: a plain ? takes the number after the highest seen, and SQLite looks
    up each numbered one in a list of the numbered ones, which must stay short.)"""
    names = ("id", *columns, "updated_at")
    if shared:
        names = (*(names[i] for i in shared),
                 *(name for i, name in enumerate(names) if i not in shared))
    if rows_from_json:
        types = ", ".join(f"{c} {sql_type(c)}" for c in names)
        source = f"SELECT * FROM json_to_recordset({placeholder}::json) AS r ({types})"
    else:
        row = ", ".join([*(f"?{n}" for n in range(1, len(shared) + 1)),
                         *[placeholder] * (len(names) - len(shared))])
        source = f"VALUES {', '.join([f'({row})'] * rows)}"
    sets = [
        f"{c} = CASE WHEN excluded.{c} IS NULL THEN {table}.{c} "
        f"WHEN {table}.{c} IS NULL OR excluded.updated_at >= {table}.updated_at "
        f"THEN excluded.{c} ELSE {table}.{c} END"
        for c in columns if c != guard
    ]
    sets.append(f"updated_at = CASE WHEN excluded.updated_at > {table}.updated_at "
                f"THEN excluded.updated_at ELSE {table}.updated_at END")
    return (f"INSERT INTO {table} ({', '.join(names)}) {source} "
            f"ON CONFLICT (id) DO UPDATE SET {', '.join(sets)} "
            f"WHERE {table}.{guard} = excluded.{guard}")


# -- records into parameter rows ---------------------------------------------------------
#
# The write path's Python, per record, is the store's largest cost after
# SQLite's own: it is kept to what cannot be done in C. Each record is turned
# into a row by a plan made once per (kind, the fields it carries); a group's
# rows are one flat list, whose columns are slices (``rows[i::width]``), so
# that values are checked a whole column at a time (one join, one sum, one
# min and max per group, in C) and statements take their parameters as
# slices; only a group with something to clean (NUL, a lone surrogate, a
# non-finite float, an int beyond 64 bits, a value of another type than its
# column's) is converted value by value.



def _json_param(value: Any) -> str:
    # The usual document needs no cleaning: serialise it as it is (in C) and
    # clean only what that refuses or what holds a NUL or a lone surrogate.
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        if "\\u0000" not in text and (text.isascii() or encodable(text)):
            return text
    except (TypeError, ValueError):
        pass
    return json.dumps(clean_json(value), ensure_ascii=False, default=repr)


def _bool_param(value: Any) -> int | None:
    return None if value is None else 1 if value else 0


def _scalar_param(value: Any) -> Any:
    if type(value) is str:
        # The common case (short ASCII, no NUL) costs two C calls.
        return value if value.isascii() and "\x00" not in value else clean_text(value)
    if isinstance(value, str):
        return clean_text(str(value))
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NULL on both backends (PostgreSQL would keep a NaN, SQLite not)
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        return None  # no backend stores it; keeping it would refuse the whole batch
    return value


def _getter(keys: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A getter of ``keys``, always returning a tuple (itemgetter, in C,
    unless there is only one)."""
    if len(keys) == 1:
        only = keys[0]
        return lambda fields: (fields[only],)
    return itemgetter(*keys) if keys else lambda fields: ()


class _Plan:
    """How the records of one kind that carry one set of fields become rows
    ``id, value..., ts``: which fields are columns (the others are
    dropped), where the guard column sits, and which positions hold JSON,
    flags, text, reals and ints."""

    __slots__ = ("bools", "columns", "exact", "guard_at", "ints", "jsons", "pick", "reals",
                 "texts", "width")

    def __init__(self, kind: str, keys: tuple[str, ...]) -> None:
        known = _KIND_COLUMNS[kind]
        self.columns = tuple(key for key in keys if key in known)
        self.width = len(self.columns) + 2
        #: The record's values in column order, as a tuple (in C).
        self.pick = _getter(self.columns)
        #: The record carries nothing but columns: another record of as many
        #: fields from which ``pick`` finds every column carries the same ones.
        self.exact = self.columns == keys
        guard = _TABLES[kind][1][0]
        self.guard_at = self.columns.index(guard) + 1 if guard in self.columns else 0
        at = {column: i + 1 for i, column in enumerate(self.columns)}
        kinds = {column: _column_kind(column) for column in self.columns}
        self.jsons = tuple(at[c] for c in self.columns if kinds[c] == "json")
        self.bools = tuple(at[c] for c in self.columns if kinds[c] == "bool")
        self.texts = tuple(at[c] for c in self.columns if kinds[c] == "text")
        self.reals = tuple(at[c] for c in self.columns if kinds[c] == "real")
        self.ints = tuple(at[c] for c in self.columns if kinds[c] == "int")

    def scalar_positions(self) -> list[int]:
        return [i + 1 for i, c in enumerate(self.columns) if _column_kind(c) not in
                ("json", "bool")]


_plans: dict[tuple[str, tuple[str, ...]], _Plan] = {}
_MAX_PLANS = 4096
#: The parameters a statement may bind (999 before SQLite 3.32).
_MAX_PARAMETERS = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
#: The page size of a new SQLite file (see Store._open_sqlite).
_PAGE_SIZE = 16384


def _plan(kind: str, keys: tuple[str, ...]) -> _Plan:
    plan = _plans.get((kind, keys))
    if plan is None:
        if kind not in _TABLES:
            raise ValueError(f"unknown record kind {kind!r}")
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()  # records with ever new fields must not grow it without bound
        plan = _plans[(kind, keys)] = _Plan(kind, keys)
    return plan


def _column_kind(column: str) -> str:
    """json, bool, real, int or text: what a column's values must be."""
    kind = COLUMN_TYPES[column]
    if kind.is_json:
        return "json"
    return _KINDS.get(kind, "text")


_KINDS = {ColumnType.BOOL: "bool", ColumnType.REAL: "real", ColumnType.INT: "int"}


_FLOAT_ONLY = frozenset({float})


def _values_clean(plan: _Plan, rows: list[Any]) -> bool:
    """Whether a group's text and number values can be bound as they are:
    text holding no NUL and no lone surrogate, numbers finite and integers
    within 64 bits, each of its column's kind (or None). Checked in C, a
    whole group at once; False sends the group through _scalar_param value
    by value. A column of floats only (a step's times) needs no bounds: any
    finite float is bound as it is (min and max over a step's two times cost
    it about 100 instructions)."""
    width = plan.width
    try:
        if plan.texts:
            text = "".join(filter(None, chain.from_iterable(
                _distinct(rows, i, width) for i in plan.texts)))
            if "\x00" in text or not (text.isascii() or encodable(text)):
                return False
        for positions in (plan.reals, plan.ints):  # apart: a float and an int compare slowly
            numbers = list(filter(None, chain.from_iterable(
                _distinct(rows, i, width) for i in positions)))
            if not numbers:
                continue
            if not math.isfinite(sum(numbers)):
                return False
            if positions is plan.reals and set(map(type, numbers)) <= _FLOAT_ONLY:
                continue
            if min(numbers) < INT_MIN or max(numbers) > INT_MAX:
                return False
    except (TypeError, ValueError, OverflowError):
        return False  # a value of another kind than its column's, or a huge int
    return True


def _distinct(rows: list[Any], at: int, width: int) -> list[Any]:
    """A group's column at ``at``, or only its first value when every row
    has that value (the session, the host, a pid: checked once, not once a
    row)."""
    column = rows[at::width]
    return column[:1] if _all_alike(column) else column


def _all_alike(column: list[Any]) -> bool:
    """Whether every value of a (non-empty) column equals its first: one C pass."""
    return column.count(column[0]) == len(column)


def _finish_group(plan: _Plan, rows: list[Any]) -> None:
    """Make a group's rows bindable, in place: JSON documents as text, flags
    as 0/1, the rest checked a group at a time and cleaned value by value
    only where needed."""
    width = plan.width
    for i in plan.jsons:
        rows[i::width] = [None if value is None else _json_param(value)
                          for value in rows[i::width]]
    for i in plan.bools:
        # As ints: SQLite's driver binds a bool several times slower than an int.
        column = rows[i::width]
        if column.count(True) == len(column):  # every row's flag set (steps that ended)
            rows[i::width] = [1] * len(column)
        else:
            rows[i::width] = [None if value is None else 1 if value else 0 for value in column]
    if not _values_clean(plan, rows):
        for i in plan.scalar_positions():
            rows[i::width] = list(map(_scalar_param, rows[i::width]))


#: The types of value a statement may bind once for every row that has it.
_SHAREABLE = frozenset((str, int))


def _same_values(rows: list[Any], width: int) -> tuple[int, ...]:
    """The positions of the texts and integers that every row of a group
    has alike (not the id); none for a group of one row. (An integer may
    stand for another row's equal float or flag: each column's affinity
    stores them alike.)"""
    if len(rows) < 2 * width:
        return ()
    return tuple(i for i in range(1, width - 1) if type(rows[i]) in _SHAREABLE
                 and _all_alike(rows[i::width]))


#: Rows grouped by (kind, the columns they carry), in arrival order: one flat
#: list of every row's values in turn (id, values in column order, ts; the
#: group's width is its number of columns and two), of which a column is a
#: slice (``rows[i::width]``) and a statement's rows another; or, grouped
#: for JSON, a list of rows keyed by column name (``id`` ... ``updated_at``).
RowGroups = dict[tuple[str, tuple[str, ...]], list[Any]]


def _width(shape: tuple[str, tuple[str, ...]]) -> int:
    return len(shape[1]) + 2


def _check_records(records: Sequence[Record],
                   project: str | None = None) -> set[tuple[str, str]]:
    """Refuse malformed records (ValueError, before anything is written) and
    return the rows named by more than one record of the batch. With
    ``project``, session records need not name one (it is stamped on them).
    A batch of sessions, steps and events only, without a project (the
    SDK's), is looked at in C here: whether each names its session (or
    project) is checked by _group_rows, a column at a time, before anything
    is written (a loop here cost a recorded step about 250 instructions more)."""
    if (project is None and _TABLES.keys() >= set(map(_record_kind, records))
            and set(map(len, records)) <= _RECORD_SIZE):
        return _repeated(records)
    for kind, rid, _, fields in records:
        guard = _GUARDS.get(kind)
        if guard is None:
            if kind in evalstore.KINDS:
                evalstore.check(kind, rid, fields, project)
                continue
            raise ValueError(f"unknown record kind {kind!r}")
        if fields.get(guard) is None and not (project is not None and kind == "session"):
            raise ValueError(f"{kind} record {rid!r} lacks {guard!r}")
    return _repeated(records)


_RECORD_SIZE = frozenset({RECORD_PARTS})


def _repeated(records: Sequence[Record]) -> set[tuple[str, str]]:
    """The rows named by more than one record."""
    ids = list(map(_record_id, records))
    if len(set(ids)) == len(ids):
        return set()  # the usual batch: every row named once (checked in C)
    counts = Counter(zip(map(_record_kind, records), ids, strict=True))
    return {key for key, count in counts.items() if count > 1}


_record_kind = itemgetter(0)
_record_id = itemgetter(1)


def _split(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """Sessions, steps and events apart from the evaluation records."""
    if _TABLES.keys() >= set(map(_record_kind, records)):  # (in C: the usual batch)
        return records, []
    return ([r for r in records if r[0] in _TABLES],
            [r for r in records if r[0] in evalstore.KINDS])


def _coalesce(records: list[Record], mergeable: set[tuple[str, str]]) -> list[Record]:
    """Merge the records of each mergeable row (a step's start and end, an
    event and its update) into one, so the database sees one row where it
    would have seen several. Only rows not stored yet are mergeable: for a
    new row the merge gives exactly what applying the records one by one
    would, whereas over a stored row the older record's fields would take the
    newer one's timestamp and could overwrite a value stored in between."""
    if not mergeable:
        return records
    out: list[Record] = []
    position: dict[tuple[str, str], int] = {}
    for record in records:
        key = (record[0], record[1])
        if key not in mergeable:
            out.append(record)
            continue
        index = position.get(key)
        if index is None:
            position[key] = len(out)
            out.append(record)
            continue
        earlier = out[index]
        guard = _GUARDS[record[0]]
        if earlier[3].get(guard) != record[3].get(guard):
            out.append(record)  # another session or project claims the id: the guard decides
            continue
        older, newer = (earlier, record) if record[2] >= earlier[2] else (record, earlier)
        newer_fields = newer[3]
        if None in newer_fields.values():
            newer_fields = {k: v for k, v in newer_fields.items() if v is not None}
        out[index] = (record[0], record[1], newer[2], {**older[3], **newer_fields})
    return out


def _group_rows(records: list[Record], project: str | None = None, *,
                keyed: bool = False, mergeable: set[tuple[str, str]] | None = None) -> RowGroups:
    """Turn records into parameter rows, grouped by shape (see RowGroups).
    ``project``, when given, overrides the project of session records (the
    server stamps the key's project). Unknown fields are left out; a None
    stands for a field the record does not carry. ``keyed`` makes each row a
    dict keyed by column (for JSON)."""
    groups: RowGroups = {}
    plans: dict[tuple[str, tuple[str, ...]], _Plan] = {}
    plan: _Plan | None = None
    last_kind, width = "", -1
    group: list[Any] = []
    for kind, rid, ts, fields in _coalesce(records, mergeable or set()):
        if project is not None and kind == "session":
            fields = {**fields, "project": project}
        values = None
        if kind == last_kind and len(fields) == width:
            # Records in a row mostly carry the same fields: reuse the plan
            # if it finds every one of its columns (one C call).
            try:
                values = plan.pick(fields)  # type: ignore[union-attr]
            except KeyError:
                pass
        if values is None:
            keys = tuple(fields)
            plan = _plans.get((kind, keys)) or _plan(kind, keys)
            shape = (kind, plan.columns)
            group = groups.setdefault(shape, [])
            plans[shape] = plan
            last_kind, width = (kind, len(fields)) if plan.exact else ("", -1)
            values = plan.pick(fields)
        group.append(rid)
        group.extend(values)
        group.append(ts)
    finished: RowGroups = {}
    for shape, rows in groups.items():
        plan = plans[shape]
        guards = rows[plan.guard_at::plan.width] if plan.guard_at else [None]
        if None in guards:
            rid = rows[guards.index(None) * plan.width]
            raise ValueError(f"{shape[0]} record {rid!r} lacks {_GUARDS[shape[0]]!r}")
        _finish_group(plan, rows)
        columns = _drop_null_columns(plan.columns, rows)
        if keyed:
            names = ("id", *columns, "updated_at")
            width = len(names)
            rows = [dict(zip(names, rows[at:at + width], strict=True))
                    for at in range(0, len(rows), width)]
        bound = (shape[0], columns)
        if bound in finished:
            finished[bound].extend(rows)  # a shape with more columns, all of them None here
        else:
            finished[bound] = rows
    return finished


def _sessions_named(records: list[Record]) -> set[str]:
    """The sessions records name: their own, their steps' and events', and
    the sessions evaluation records are about."""
    core, extra = _split(records)
    named = {rid if kind == "session" else fields["session_id"]
             for kind, rid, _, fields in core}
    named.update(sid for kind, _, _, fields in extra
                 if (sid := evalstore.referenced_session(kind, fields)) is not None)
    return named


def _sessions_grouped(groups: RowGroups) -> set[str]:
    """The sessions that grouped rows touch: taken from the rows a column at
    a time, in C (this runs on the write path of every recorded step)."""
    named: set[str] = set()
    for (kind, columns), rows in groups.items():
        column = "id" if kind == "session" else "session_id"
        if rows and isinstance(rows[0], dict):  # keyed rows (PostgreSQL)
            ids = list(map(itemgetter(column), rows))
        else:
            at = 0 if kind == "session" else 1 + columns.index(column)
            ids = rows[at::len(columns) + 2]
        # (A batch of one session's steps, the usual one: counted, not hashed.)
        named.update(ids[:1] if ids.count(ids[0]) == len(ids) else ids)
    return named


def _drop_null_columns(columns: tuple[str, ...], rows: list[Any]) -> tuple[str, ...]:
    """Leave out of a group's rows, in place, the columns that are None in
    every row, and return the columns left. To the upsert a NULL means "leave
    the stored value alone", as a column left out does; but SQLite's driver
    binds a None several times slower than a value (it looks for an adapter
    first), and records from other writers than the SDK (the server's
    clients, OTLP spans) name many fields they leave empty."""
    width = len(columns) + 2
    count = len(rows) // width
    nulls = [i for i in range(1, width - 1)  # the values (not id, ts)
             if rows[i] is None and rows[i::width].count(None) == count]
    _drop_columns(rows, width, nulls)
    return tuple(column for i, column in enumerate(columns, 1) if i not in nulls)


def _drop_columns(rows: list[Any], width: int, positions: Sequence[int]) -> int:
    """Delete the columns at ``positions`` (in increasing order) from a
    group's rows, in place; returns the width left."""
    for i in reversed(positions):  # the last first: those before it stay where they are
        del rows[i::width]
        width -= 1
    return width


def _waves(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split rows so that no id appears twice in one part (one statement may
    not upsert a row twice), keeping each id's rows in their order. A batch
    repeats an id only when two records of it disagree on their guard."""
    if len({row["id"] for row in rows}) == len(rows):
        return [rows]
    seen: dict[str, int] = {}
    waves: list[list[dict[str, Any]]] = []
    for row in rows:
        n = seen[row["id"]] = seen.get(row["id"], -1) + 1
        if n == len(waves):
            waves.append([])
        waves[n].append(row)
    return waves


def _rows_json(rows: list[dict[str, Any]]) -> str | None:
    """Rows as one JSON document for ``json_to_recordset``, or None when a value
    is of a type JSON does not know, so that the rows are bound one by one
    instead. (Non-finite floats never get here: _scalar_param makes them NULL.)
    pydantic-core (there whenever psycopg is: both come with the server extra)
    writes it four times faster than the json module; each float as its
    shortest exact repr, as json does."""
    try:
        from pydantic_core import to_json
    except ImportError:  # pragma: no cover - depends on the install
        try:
            return json.dumps(rows, ensure_ascii=False, allow_nan=False,
                              separators=(",", ":"))
        except (TypeError, ValueError):
            return None
    try:
        document = to_json(rows, inf_nan_mode="null")
    except ValueError:  # PydanticSerializationError: a type JSON does not know
        return None
    return document.decode("utf-8")  # as text: psycopg sends bytes as bytea


class Store:
    """A connection to one database, SQLite (embedded) or PostgreSQL (server).

    Thread-safe: calls are serialised on one connection. SQLite runs in WAL
    mode, so any number of processes may hold a Store on the same file.
    """

    def __init__(self, url_or_path: str | Path, *, busy_timeout: float = 2.0) -> None:
        self.url = str(url_or_path)
        self._lock = threading.Lock()
        self._closed = False
        #: Why this connection can only read (None: it may write): an SQLite
        #: file that cannot be written, opened to be read.
        self.read_only: str | None = None
        self._immutable = False
        try:
            if self.url.lower().startswith(("postgresql://", "postgres://")):
                # libpq knows the scheme in lower case only.
                self._connect_postgresql("postgresql://" + self.url.partition("://")[2])
            else:
                self._connect_sqlite(_sqlite_path(self.url), busy_timeout)
            self._migrate()
        except StoreError:
            raise
        except Exception as exc:
            raise _store_error(f"cannot open the store at {self.url}: {exc}", exc) from exc
        self._upserts: dict[tuple[tuple[str, tuple[str, ...]], bool, int, tuple[int, ...]],
                            str] = {}

    # -- connections --------------------------------------------------------

    def _connect_sqlite(self, path: str, busy_timeout: float) -> None:
        if path != ":memory:":
            directory = Path(path).parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _store_error(f"cannot open the store at {self.url}: its directory "
                                   f"{directory} does not exist and cannot be made ({exc})",
                                   exc) from exc
        self.dialect = "sqlite"
        self._ph = "?"
        self._sqlite = (path, busy_timeout)
        self._open_sqlite()
        _sqlite_stores.add(self)

    def _open_sqlite(self) -> None:
        path, busy_timeout = self._sqlite
        self.read_only = None
        self._immutable = False
        # isolation_level=None: we issue BEGIN ourselves, so a batch is one
        # transaction and nothing is left open between calls.
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            # For a file not made yet (a no-op on one that exists): 16 KiB pages
            # rather than 4, so that a commit writes a quarter as many WAL frames
            # (two system calls each) and checkpoints copy fewer pages; it took
            # a commit's share of a recorded step's CPU from 0.6 to 0.25 µs.
            conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as exc:
            conn.close()
            # A file that cannot be written (a read-only filesystem, a volume
            # mounted read-only) can still be read: the CLI and the UI show it.
            opened = _open_read_only(path, busy_timeout, exc)
            if opened is None:
                raise
            conn, self.read_only = opened
            self._immutable = self.read_only == _ON_READ_ONLY_FILESYSTEM
        # Unicode-aware case-insensitive search (SQLite's own LIKE folds ASCII
        # only); used by lucidic.reading for queries in other scripts.
        conn.create_function("lucidic_contains", -1, _contains, deterministic=True)
        conn.create_function("lucidic_fold", -1, _fold, deterministic=True)
        self._conn: Any = conn

    def writable(self) -> bool:
        """Whether the store can be written. One opened read-only is opened
        again first, in case someone has made it writable since (a writer's
        retries then reach it)."""
        with self._lock:
            self._reopen_if_read_only()
            return not self.read_only

    def _reopen_if_read_only(self) -> None:
        if self.dialect == "sqlite" and self.read_only and not self._closed:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            try:
                self._open_sqlite()
            except sqlite3.Error as exc:
                raise _store_error(f"cannot open the store at {self.url}: {exc}", exc) from exc

    def _connect_postgresql(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise StoreError("PostgreSQL needs psycopg: "
                             "pip install 'lucidic-toolkit[server]'") from exc
        from psycopg.types.numeric import NumericLoader

        class _NumberLoader(NumericLoader):
            # SUM() over BIGINT columns is NUMERIC in PostgreSQL; hand back
            # plain ints (and floats), as SQLite does, not Decimal.
            def load(self, data: Any) -> Any:
                value = super().load(data)
                integral = value == value.to_integral_value()
                return int(value) if integral else float(value)

        self.dialect = "postgresql"
        self._ph = "%s"
        self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        self._conn.adapters.register_loader("numeric", _NumberLoader)

    def connection_lost(self) -> bool:
        """True when the database has ended this connection while it sat
        idle: a PostgreSQL server that restarted, or ended the backend,
        wrote so on its socket, which is looked at here without a round trip
        (an idle connection is sent nothing else that matters). A network
        gone quiet says nothing: the next statement finds out."""
        if self.dialect != "postgresql":
            return False
        with self._lock:
            if self._closed or self._conn.closed or self._conn.broken:
                return True
            try:
                # (poll, not select: select refuses a descriptor above 1023,
                # which a busy server's connections reach)
                poller = select.poll()
                poller.register(self._conn.fileno(), select.POLLIN)
                return bool(poller.poll(0))
            except (OSError, ValueError):
                return True

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._conn is not None:
                    self._conn.close()

    # -- fork ----------------------------------------------------------------
    # SQLite keeps, per process, what it knows of each file's locks, shared by
    # every connection to that file. fork() copies that knowledge into the
    # child: a connection of the parent caught inside a transaction leaves the
    # child believing the file locked, for good ("database is locked" for the
    # child's whole life). So the parent forks only between transactions (each
    # store's lock held), and the child closes its copies of the idle
    # connections, which leaves nothing copied behind (closing touches only
    # the child's own locks, never the parent's), and reopens on first use.

    def _hold_for_fork(self) -> bool:
        return self._lock.acquire(timeout=self._sqlite[1] + _FORK_GRACE)

    def _reset_in_child(self, idle: bool) -> None:
        if self._conn is not None and not (idle and self._sqlite[0] == ":memory:"):
            # (An idle in-memory database is the child's own copy: kept.)
            if idle:
                self._conn.close()
            else:
                # Busy at fork (a transaction that outlasted the wait): its
                # state cannot be trusted, nor closed safely; keep it unused.
                _unusable_after_fork.append(self._conn)
            self._conn = None
        self._lock = threading.Lock()

    # -- transactions --------------------------------------------------------

    def _begin(self, cur: Any, exclusive: bool = False) -> None:
        if self.dialect == "sqlite":
            cur.execute("BEGIN IMMEDIATE" if exclusive else "BEGIN")
        else:
            cur.execute("BEGIN")

    def _run(self, fn: Any, *, write: bool) -> Any:
        """Run fn(cursor) in one transaction; map driver errors to StoreError."""
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._conn is None:
                self._open_sqlite()  # first use in a forked child
            if self.read_only and (write or self._immutable and not _on_read_only_filesystem(
                    self._sqlite[0])):
                # (An immutable connection caches what it read for good: once
                # the file can change, it must be opened again.)
                self._reopen_if_read_only()
                if write and self.read_only:
                    raise StoreError(f"the store at {self.url} cannot be written: "
                                     f"{self.read_only}", broken=True)
            cur = self._conn.cursor()
            committing = False
            try:
                self._begin(cur, exclusive=write)
                result = fn(cur)
                committing = True
                cur.execute("COMMIT")
                return result
            except BaseException as exc:
                try:
                    cur.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - the original error matters more
                    pass
                if isinstance(exc, _PassthroughError):
                    raise exc.error from None
                if _DELETED_MARK in str(exc) and not isinstance(exc, StoreError):
                    raise DeletedSessionError([]) from exc
                if isinstance(exc, Exception) and not isinstance(exc, StoreError):
                    error = _store_error(f"{type(exc).__name__}: {exc}", exc)
                    error.may_have_written = committing and _unanswered(exc)
                    raise error from exc
                raise
            finally:
                cur.close()

    def _migrate(self) -> None:
        if self.dialect == "sqlite" and self.read_only:
            current = self.schema_version()
            if current != SCHEMA_VERSION:
                raise StoreError(
                    f"the store at {self.url} has schema version {current} and this lucidic "
                    f"reads version {SCHEMA_VERSION}, but it cannot be written to bring it "
                    f"up to date ({self.read_only}): open it once where it can be written",
                    broken=True)
            return

        def run(cur: Any) -> None:
            if self.dialect == "postgresql":
                # Serialise concurrent servers migrating the same database.
                cur.execute("SELECT pg_advisory_xact_lock(7514203)")
            cur.execute("CREATE TABLE IF NOT EXISTS lucidic_meta "
                        "(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            cur.execute(f"SELECT value FROM lucidic_meta WHERE key = {self._ph}",
                        ("schema_version",))
            row = cur.fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"the database at {self.url} has schema version {current}, newer than "
                    f"this lucidic ({SCHEMA_VERSION}); upgrade lucidic to use it", broken=True)
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    # (a dict: one dialect's own statement, or none)
                    sql = statement.get(self.dialect) if isinstance(statement, dict) \
                        else statement
                    if sql is not None:
                        cur.execute(sql)
                cur.execute(
                    f"INSERT INTO lucidic_meta (key, value) VALUES ({self._ph}, {self._ph}) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    ("schema_version", str(version)))

        self._run(run, write=True)

    def schema_version(self) -> int:
        def run(cur: Any) -> int:
            cur.execute("SELECT value FROM lucidic_meta WHERE key = 'schema_version'")
            row = cur.fetchone()
            return int(row[0]) if row else 0
        return int(self._run(run, write=False))

    # -- writing -------------------------------------------------------------

    def _upsert(self, shape: tuple[str, tuple[str, ...]], rows_from_json: bool = False,
                rows: int = 1, shared: tuple[int, ...] = ()) -> str:
        key = (shape, rows_from_json, rows, shared)
        sql = self._upserts.get(key)
        if sql is None:
            table, columns = _TABLES[shape[0]]
            sql = self._upserts[key] = _upsert_sql(table, columns[0], shape[1], self._ph,
                                                   rows_from_json, rows, shared)
        return sql

    def _execute_rows(self, cur: Any, shape: tuple[str, tuple[str, ...]],
                      rows: list[Any]) -> int:
        """Upsert rows of one shape, many to a statement (up to
        ROWS_PER_STATEMENT, then halving for the rest): per row that costs
        SQLite and its driver a quarter less than a statement each, and the
        driver lets go of the GIL once a statement, so a full batch takes one
        hand-over to the program's threads rather than one a row (each of
        which can keep the worker waiting up to the interpreter's switch
        interval). A text or integer every row has alike (the session, the
        function, the host and pid, a step's end flag) is bound once a
        statement, not once a row: each binding is a call into the driver
        and SQLite, and SQLite copies each text bound. Returns how many rows
        the statements applied."""
        width = _width(shape)
        count = len(rows) // width
        shared = _same_values(rows, width)
        shared_values = [rows[i] for i in shared]
        varying, varying_width = rows, width  # the rows without the shared values
        if shared:
            varying = rows.copy()
            varying_width = _drop_columns(varying, width, shared)
        size = ROWS_PER_STATEMENT
        while size > 1 and size * varying_width + len(shared) > _MAX_PARAMETERS:
            size //= 2
        applied = start = 0
        while start < count:
            while size > count - start:
                size //= 2
            end = start + (count - start) // size * size
            if size == 1:
                params = [rows[at:at + width] for at in range(start * width, end * width, width)]
                sql = self._upsert(shape)
            else:
                step = size * varying_width
                params = [shared_values + varying[at:at + step]
                          for at in range(start * varying_width, end * varying_width, step)]
                sql = self._upsert(shape, rows=size, shared=shared)
            cur.executemany(sql, params)
            applied += cur.rowcount
            start = end
        return applied

    def _group(self, cur: Any, records: list[Record], repeated: set[tuple[str, str]],
               project: str | None = None) -> RowGroups:
        """Rows to write, inside the write transaction: rows named more than
        once are merged where they are not stored yet (see _coalesce)."""
        mergeable = repeated - self._stored(cur, repeated) if repeated else set()
        return _group_rows(records, project, keyed=self.dialect == "postgresql",
                           mergeable=mergeable)

    def _stored(self, cur: Any, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        for kind, (table, _) in _TABLES.items():
            ids = sorted(rid for k, rid in keys if k == kind)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                cur.execute(f"SELECT id FROM {table} WHERE id IN "
                            f"({', '.join([self._ph] * len(chunk))})", tuple(chunk))
                found.update((kind, row[0]) for row in cur.fetchall())
        return found

    def _apply(self, cur: Any, groups: RowGroups, kinds: Sequence[str], *,
               records: Sequence[Record] | None = None, project: str | None = None,
               note: Sequence[str] = ()) -> None:
        """Upsert the rows of ``kinds``. With ``records`` (what the rows came
        from), refuse rows the upserts' guards skipped, which would otherwise
        be "written" without a trace: IdInUseError, and the caller's
        transaction rolls back. Counting what the statements applied costs
        nothing; the ids are looked up only when the count falls short.
        The sessions ``note`` (sorted) are noted as changed (note_changed),
        after the rows: on PostgreSQL by the last upsert, when it takes its
        rows as one JSON document, in the same round trip (a statement of its
        own cost the server 85 µs a request)."""
        expected = applied = 0
        statements: list[tuple[tuple[str, tuple[str, ...]], list[dict[str, Any]]]] = []
        for shape, rows in groups.items():
            if shape[0] not in kinds:
                continue
            if self.dialect != "postgresql":
                expected += len(rows) // _width(shape)
                applied += self._execute_rows(cur, shape, rows)
                continue
            expected += len(rows)
            statements.extend((shape, wave) for wave in _waves(rows))
        noted = False
        for number, (shape, wave) in enumerate(statements, 1):
            document = _rows_json(wave)
            if document is None:
                cur.executemany(self._upsert(shape), [list(row.values()) for row in wave])
            elif number == len(statements) and 0 < len(note) <= _NOTES_PER_STATEMENT:
                # The note's insert runs after the upsert's (PostgreSQL runs a
                # WITH no one reads once the statement is done): rows, then
                # notes, as every writer locks them.
                cur.execute(f"WITH noted AS ({_NOTE_PG}) "
                            + self._upsert(shape, rows_from_json=True),
                            (time.time(), list(note), document))
                noted = True
            else:
                cur.execute(self._upsert(shape, rows_from_json=True), (document,))
            applied += cur.rowcount
        if records is not None and applied < expected:
            refused = self._held_elsewhere(cur, [r for r in records if r[0] in kinds], project)
            if refused:
                raise IdInUseError(refused)
        if not noted:
            self.note_changed(cur, note)

    def _held_elsewhere(self, cur: Any, records: Sequence[Record],
                        project: str | None) -> list[tuple[str, str]]:
        """The records whose row exists under another guard (session of a
        step or event, project of a session)."""
        refused: list[tuple[str, str]] = []
        for kind, (table, columns) in _TABLES.items():
            guard = columns[0]
            claims = [(rid, project if project is not None and kind == "session"
                       else fields.get(guard)) for k, rid, _, fields in records if k == kind]
            ids = sorted({rid for rid, _ in claims})
            stored: dict[str, Any] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                cur.execute(f"SELECT id, {guard} FROM {table} WHERE id IN "
                            f"({', '.join([self._ph] * len(chunk))})", tuple(chunk))
                stored.update(cur.fetchall())
            refused.extend((kind, rid) for rid, owner in claims
                           if rid in stored and stored[rid] != owner)
        return refused

    # -- for the server's protocol modules ---------------------------------------

    def transaction(self, fn: Callable[[Any], T], *, write: bool = True) -> T:
        """Run ``fn(cursor)`` in one transaction, committed if it returns and
        rolled back if it raises. Driver errors become StoreError; any other
        exception ``fn`` raises (a refusal of the caller's) reaches the caller
        unchanged."""
        def guarded(cur: Any) -> T:
            try:
                return fn(cur)
            except Exception as exc:
                if _is_driver_error(exc):
                    raise
                raise _PassthroughError(exc) from exc

        result: T = self._run(guarded, write=write)
        return result

    def apply(self, cur: Any, records: Sequence[Record], project: str | None = None) -> None:
        """Upsert ``records`` inside a transaction opened by ``transaction``,
        as ``write`` does (``project`` stamped on session records), without
        the ownership check of ``write_for_project``: the caller has made it."""
        records = list(records)
        repeated = _check_records(records, project)
        self._apply_all(cur, records, repeated, project)

    def _apply_all(self, cur: Any, records: list[Record], repeated: set[tuple[str, str]],
                   project: str | None, *, strict: bool = False) -> None:
        core, extra = _split(records)
        try:
            groups = self._group(cur, core, repeated, project)
        except ValueError as exc:
            if strict:  # a record without its session: refused as _check_records refuses
                raise _PassthroughError(exc) from exc
            raise
        self._apply(cur, groups, ("session", "step", "event"),
                    records=core if strict else None, project=project,
                    note=sorted(_sessions_grouped(groups)))
        self._after_core(cur, core, extra, project)

    def note_changed(self, cur: Any, session_ids: Iterable[str]) -> None:
        """Note, inside the writing transaction, that these sessions' rows
        changed: what lucidic.reading.derived keeps for them is stale until
        it is rebuilt, and pages read their rows instead. Every write to
        sessions, steps or events calls this. A note that exists needs no
        renewal to stay exact: the refresher removes only notes it locked
        (PostgreSQL: a writer's note waits for its commit, then is made
        again) or read in a transaction no write interleaves (SQLite); its
        time says when the session was last written (to a second), so that
        only quiet sessions are rebuilt. Ids in order, so that concurrent
        writers lock notes in one order."""
        ids = sorted(set(session_ids))
        if not ids:
            return
        now = time.time()
        ph = self._ph
        for start in range(0, len(ids), _NOTES_PER_STATEMENT):
            chunk = ids[start:start + _NOTES_PER_STATEMENT]
            rows = ", ".join([f"({ph}, {ph}, 1)"] * len(chunk))
            cur.execute(f"INSERT INTO changed_sessions (session_id, noted_at, version) "
                        f"VALUES {rows} {_NOTE_RENEWED}",
                        [value for sid in chunk for value in (sid, now)])

    def _after_core(self, cur: Any, core: list[Record], extra: list[Record],
                    project: str | None) -> None:
        """The evaluation records, and the experiments and mass simulations
        the sessions name (see lucidic.evalstore)."""
        sessions = [r for r in core if r[0] == "session"]
        if sessions:
            evalstore.note_references(self, cur, sessions, project)
        if extra:
            scored = {sid for kind, _, _, fields in extra
                      if (sid := evalstore.referenced_session(kind, fields)) is not None}
            deleted = self.deleted_in(cur, sorted(scored)) if scored else []
            if deleted:  # (a score notes no session: the trigger cannot see it)
                raise DeletedSessionError(deleted)
            evalstore.apply(self, cur, extra, project)

    def write(self, records: Iterable[Record]) -> None:
        """Apply records idempotently, all in one transaction. A malformed
        record (unknown kind, no session or project) raises ValueError before
        anything is written; a record whose id another session (or, for a
        session, another project) holds raises IdInUseError, and nothing is
        written."""
        records = list(records)
        repeated = _check_records(records)
        try:
            self._run(lambda cur: self._apply_all(cur, records, repeated, None, strict=True),
                      write=True)
        except DeletedSessionError as exc:
            if exc.session_ids:
                raise
            raise DeletedSessionError(self.deleted_among(_sessions_named(records))) from None

    def deleted_among(self, session_ids: Iterable[str],
                      project: str | None = None) -> list[str]:
        """Which of these sessions were deleted (of ``project``, when given), sorted."""
        wanted = sorted(set(session_ids))
        found: list[str] = self._run(lambda cur: self.deleted_in(cur, wanted, project),
                                     write=False)
        return found

    def deleted_in(self, cur: Any, wanted: Sequence[str],
                   project: str | None = None) -> list[str]:
        """Inside a transaction: which of ``wanted`` (sorted) were deleted
        (of ``project``, when given)."""
        found: list[str] = []
        of_project = "" if project is None else f" AND project = {self._ph}"
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            cur.execute(f"SELECT session_id FROM deleted_sessions WHERE session_id IN "
                        f"({', '.join([self._ph] * len(chunk))}){of_project}",
                        (*chunk, *(() if project is None else (project,))))
            found.extend(row[0] for row in cur.fetchall())
        return sorted(found)

    def write_for_project(self, records: Iterable[Record], project: str) -> None:
        """Apply records on behalf of ``project``, all or nothing: session
        records are stamped with the project, and every session the batch
        names must already be the project's or be created by this batch;
        otherwise nothing is written and UnknownSessionError says which. A
        record whose id is held elsewhere (a session id of another project, a
        step or event id of another session) raises IdInUseError."""
        records = list(records)
        repeated = _check_records(records, project)
        core, extra = _split(records)
        referenced = _sessions_named(records)

        # PostgreSQL: the sessions are locked against their deletion until
        # this commits (a deletion that came first is waited for, and its
        # sessions are then not found), so that no row of this batch can
        # land after a deletion has removed the session's rows. KEY SHARE:
        # writers of the same session do not wait for each other.
        lock = " FOR KEY SHARE" if self.dialect == "postgresql" else ""

        def run(cur: Any) -> None:
            groups = self._group(cur, core, repeated, project)
            self._apply(cur, groups, ("session",), records=core, project=project)
            # After the session upserts (whose guard skips another project's
            # rows), in the same transaction: is every named session ours?
            wanted = sorted(referenced)
            owned: set[str] = set()
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                cur.execute(f"SELECT id FROM sessions WHERE project = {self._ph} AND id IN "
                            f"({', '.join([self._ph] * len(chunk))}){lock}", (project, *chunk))
                owned.update(row[0] for row in cur.fetchall())
            missing = [sid for sid in wanted if sid not in owned]
            if missing:
                deleted = self.deleted_in(cur, missing)
                if deleted == missing:
                    raise DeletedSessionError(missing)
                raise UnknownSessionError(missing, deleted)
            self._apply(cur, groups, ("step", "event"), records=core, project=project,
                        note=sorted(_sessions_grouped(groups)))
            self._after_core(cur, core, extra, project)

        try:
            self._run(run, write=True)
        except DeletedSessionError as exc:
            if exc.session_ids:
                raise
            raise DeletedSessionError(self.deleted_among(referenced)) from None

    def create_session(self, record: Record, project: str) -> bool:
        """Create the session of ``record`` for ``project`` unless a session
        with its id exists, in any project: False then. A repeated creation
        (same project and start time: a retried request) counts as done."""
        _check_records([record], project)
        (shape, row), = _group_rows([record], project).items()  # (one row)
        names = ("id", *shape[1], "updated_at")
        insert = (f"INSERT INTO sessions ({', '.join(names)}) VALUES "
                  f"({', '.join([self._ph] * len(names))}) ON CONFLICT (id) DO NOTHING")

        def run(cur: Any) -> bool:
            cur.execute(insert, row)
            if cur.rowcount == 1:
                self._after_core(cur, [record], [], project)
                self.note_changed(cur, [record[1]])
                return True
            cur.execute(f"SELECT project, started_at FROM sessions WHERE id = {self._ph}",
                        (record[1],))
            stored = cur.fetchone()
            started = record[3].get("started_at")
            return bool(stored and stored[0] == project and started is not None
                        and stored[1] == started)

        return bool(self._run(run, write=True))

    # -- projects and API keys -------------------------------------------------

    def ensure_project(self, name: str) -> None:
        """Create the project unless it exists."""
        self._run(lambda cur: cur.execute(
            f"INSERT INTO projects (name, created_at) VALUES ({self._ph}, {self._ph}) "
            "ON CONFLICT (name) DO NOTHING", (name, time.time())), write=True)

    def list_projects(self) -> list[dict[str, Any]]:
        return self._query("SELECT name, created_at FROM projects ORDER BY name", [])

    def create_api_key(self, project: str, label: str | None = None) -> tuple[dict[str, Any], str]:
        """A new key for ``project`` (created if need be). Returns the key's
        public description and the key itself, which is not kept anywhere."""
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        info = {"id": "key_" + secrets.token_hex(8), "project": project, "label": label,
                "created_at": time.time(), "revoked_at": None}

        def run(cur: Any) -> None:
            cur.execute(f"INSERT INTO projects (name, created_at) VALUES ({self._ph}, {self._ph}) "
                        "ON CONFLICT (name) DO NOTHING", (project, info["created_at"]))
            cur.execute("INSERT INTO api_keys (id, project, key_hash, label, created_at) "
                        f"VALUES ({', '.join([self._ph] * 5)})",
                        (info["id"], project, hash_api_key(key), label, info["created_at"]))

        self._run(run, write=True)
        return info, key

    def list_api_keys(self, project: str | None = None) -> list[dict[str, Any]]:
        """Every key's public description (never its hash), oldest first."""
        sql = "SELECT id, project, label, created_at, revoked_at FROM api_keys"
        params: list[Any] = []
        if project is not None:
            sql += f" WHERE project = {self._ph}"
            params.append(project)
        return self._query(sql + " ORDER BY created_at, id", params)

    def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key for good; False if there is no such key."""
        def run(cur: Any) -> bool:
            cur.execute(f"UPDATE api_keys SET revoked_at = {self._ph} WHERE id = {self._ph} "
                        "AND revoked_at IS NULL", (time.time(), key_id))
            cur.execute(f"SELECT 1 FROM api_keys WHERE id = {self._ph}", (key_id,))
            return cur.fetchone() is not None
        return bool(self._run(run, write=True))

    def authenticate(self, key: str) -> dict[str, Any] | None:
        """The live (not revoked) key matching ``key``: its id and project."""
        rows = self._query(f"SELECT id, project FROM api_keys WHERE key_hash = {self._ph} "
                           "AND revoked_at IS NULL", [hash_api_key(key)])
        return rows[0] if rows else None

    # -- reading -------------------------------------------------------------

    def get_session(self, session_id: str, project: str | None = None) -> dict[str, Any] | None:
        """The session's own row (no totals), or None if unknown (or in another
        project, which callers must not be able to tell apart)."""
        sql = f"SELECT * FROM sessions WHERE id = {self._ph}"
        params: list[Any] = [session_id]
        if project is not None:
            sql += f" AND project = {self._ph}"
            params.append(project)
        rows = self._query(sql, params)
        return rows[0] if rows else None

    # Everything else is read through the reading layer (lucidic.reading),
    # which builds on these: Reader(store).tree(session_id) and the like.

    def get_step(self, step_id: str, project: str | None = None) -> dict[str, Any] | None:
        """One step; with ``project``, only if its session is in that project."""
        return self._child("steps", step_id, project)

    def get_event(self, event_id: str, project: str | None = None) -> dict[str, Any] | None:
        """One event, every column; with ``project``, only if its session is
        in that project."""
        return self._child("events", event_id, project)

    def _child(self, table: str, record_id: str, project: str | None) -> dict[str, Any] | None:
        ph = self._ph
        if project is None:
            rows = self._query(f"SELECT * FROM {table} WHERE id = {ph}", [record_id])
        else:
            rows = self._query(
                f"SELECT c.* FROM {table} c JOIN sessions s ON s.id = c.session_id "
                f"WHERE c.id = {ph} AND s.project = {ph}", [record_id, project])
        return rows[0] if rows else None

    def count(self, table: str) -> int:
        if table not in ("sessions", "steps", "events"):
            raise ValueError(table)
        return int(self._run(lambda cur: _fetch_count(cur, table), write=False))

    @property
    def placeholder(self) -> str:
        """The driver's parameter mark: ``?`` (SQLite) or ``%s`` (PostgreSQL)."""
        return self._ph

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run one read statement; rows as dicts, JSON columns decoded."""
        return self._query(sql, params)

    def query_many(self, statements: Sequence[tuple[str, Sequence[Any]]]
                   ) -> list[list[dict[str, Any]]]:
        """Several read statements in one transaction (one snapshot)."""
        return self.snapshot(lambda query: [query(sql, params) for sql, params in statements])

    def snapshot(self, fn: Callable[[Callable[[str, Sequence[Any]], list[dict[str, Any]]]], T],
                 *, compiled: bool = True) -> T:
        """``fn(query)``, where ``query(sql, params)`` gives rows as ``query``
        does, every statement reading one snapshot of the database: what a
        statement asks may follow from what an earlier one found. Not
        ``compiled``: PostgreSQL plans its statements without JIT compiling
        them (for statements of many parts that run in milliseconds, which
        it may compile for a second or more when its estimates are far off,
        as they are for tables the refresher has just rewritten)."""
        def run(cur: Any) -> T:
            if self.dialect == "postgresql":
                # (READ COMMITTED, the default, takes a snapshot per statement.)
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                if not compiled:
                    cur.execute("SET LOCAL jit = off")
            return fn(lambda sql, params: _fetch_rows(cur, sql, params))
        result: T = self._run(run, write=False)
        return result

    def _query(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._run(lambda cur: _fetch_rows(cur, sql, params),
                                                 write=False)
        return result

    @property
    def sqlite_file(self) -> str | None:
        """The SQLite file this store is (None: PostgreSQL, or in memory)."""
        if self.dialect != "sqlite" or self._sqlite[0] == ":memory:":
            return None
        return self._sqlite[0]

    def vacuum(self) -> None:
        """SQLite: write the file again without its free pages (deleting rows
        frees pages the file keeps for new rows, never shrinking), and empty
        the write-ahead log. Writers wait meanwhile; it needs as much free
        disk as the file takes. Nothing to do on PostgreSQL (autovacuum)."""
        if self.dialect != "sqlite":
            return
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._conn is None:
                self._open_sqlite()
            try:
                self._conn.execute("VACUUM")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise _store_error(f"cannot vacuum {self.url}: {exc}", exc) from exc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement in its own transaction; the rows it touched."""
        def run(cur: Any) -> int:
            cur.execute(sql, tuple(params))
            return int(cur.rowcount)
        return int(self._run(run, write=True))


def _fetch_rows(cur: Any, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    cur.execute(sql, tuple(params))
    names = [d[0] for d in cur.description]
    return [_decode_row(dict(zip(names, row, strict=True))) for row in cur.fetchall()]


def _fetch_count(cur: Any, table: str) -> int:
    cur.execute(f"SELECT COUNT(*) FROM {table}")
    return int(cur.fetchone()[0])


def _decode_row(row: dict[str, Any]) -> dict[str, Any]:
    for column in JSON_COLUMNS.intersection(row):
        if row[column] is not None:
            try:
                row[column] = json.loads(row[column])
            except ValueError:
                pass
    for column in BOOL_COLUMNS.intersection(row):
        if row[column] is not None:
            row[column] = bool(row[column])
    if "is_finished" in row and row["is_finished"] is None:
        row["is_finished"] = False
    if row.get("started_at") is not None and row.get("ended_at") is not None \
            and "duration" not in row:
        took = row["ended_at"] - row["started_at"]
        row["duration"] = took if took >= 0 else None  # ended before it started: unknown
    return row


def _contains(needle: Any, *texts: Any) -> int:
    """1 when any text, case-folded, contains ``needle`` (already folded)."""
    if not needle:
        return 0
    for text in texts:
        if isinstance(text, str) and needle in text.casefold():
            return 1
    return 0


def _fold(*texts: Any) -> str:
    """The texts given, case-folded as ``_contains`` folds them, one a line."""
    return "\n".join(text.casefold() for text in texts if isinstance(text, str))


#: SQLite's result codes for a file it may not write, or could not open so.
_SQLITE_READONLY, _SQLITE_CANTOPEN = 8, 14
_ON_READ_ONLY_FILESYSTEM = "its filesystem is read-only"


def _open_read_only(path: str, busy_timeout: float, exc: sqlite3.OperationalError
                    ) -> tuple[sqlite3.Connection, str] | None:
    """A read-only connection to the SQLite file at ``path``, which failed
    to open for writing with ``exc``, and why it cannot be written; None
    when it is not a file that exists but cannot be written.

    ``mode=ro`` needs the WAL's shared-memory file, which a read-only
    directory cannot have made for it; on a read-only filesystem the file is
    opened ``immutable`` instead (no locks, no shared memory): nobody can
    write it there, so nobody can change it under the reader, unless it holds
    a WAL that a writer left behind, whose transactions immutable would not
    see."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        code = _sqlite_code_from_message(exc)
    if path == ":memory:" or not os.path.isfile(path) or \
            (code or 0) & 0xFF not in (_SQLITE_READONLY, _SQLITE_CANTOPEN):
        return None
    reason = f"SQLite cannot open it for writing ({exc})"
    uri = "file:" + urllib.parse.quote(os.path.abspath(path))
    for mode in ("mode=ro", "immutable=1"):
        if mode == "immutable=1":
            if not _on_read_only_filesystem(path):
                return None
            if os.path.exists(path + "-wal") and os.path.getsize(path + "-wal") > 0:
                return None
            reason = _ON_READ_ONLY_FILESYSTEM
        conn = sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=busy_timeout,
                               isolation_level=None, check_same_thread=False)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            conn.close()
            continue
        return conn, reason
    return None


def _on_read_only_filesystem(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _sqlite_path(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    if scheme.lower() != "sqlite":
        # Taken for a path, "mysql://host/db" would quietly become a SQLite
        # file in a directory named "mysql:".
        raise StoreError(f"cannot open the store at {url}: {scheme}:// is not a database "
                         "Lucidic stores in; use a file path, sqlite:///PATH or "
                         "postgresql://...")
    return rest.removeprefix("/") or ":memory:"


# -- fork (see Store._hold_for_fork) -------------------------------------------

#: Every SQLite store, so fork() can leave each usable in the child.
_sqlite_stores: weakref.WeakSet[Store] = weakref.WeakSet()
_held_for_fork: list[Store] = []
_unusable_after_fork: list[Any] = []
#: How much longer than its busy timeout a transaction may hold up a fork().
_FORK_GRACE = 5.0


def _before_fork() -> None:
    for store in list(_sqlite_stores):
        if store._hold_for_fork():
            _held_for_fork.append(store)


def _after_fork_in_parent() -> None:
    for store in _held_for_fork:
        store._lock.release()
    _held_for_fork.clear()


def _after_fork_in_child() -> None:
    held = {id(store) for store in _held_for_fork}
    for store in list(_sqlite_stores):
        store._reset_in_child(idle=id(store) in held)
    _held_for_fork.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
