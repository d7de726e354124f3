"""Derived data: what the pages that would read every row read instead.

Sorting the sessions list by a total, searching, and the dashboard would
sum or scan every step and event. Instead, for each session, the store keeps

- ``session_totals``: what the list sorts by (cost, tokens, events, errors);
- ``session_text``: its searchable text, each column case-folded as search
  folds it (see lucidic.reading.search);
- ``session_activity``: its events' sums by day, hour, model and kind, with
  each group's first and last start time, and, over all sessions,
  ``hourly_activity``: those sums by day, hour, model, kind and project,
  but those of the ``stale_hours`` (see lucidic._activity_hours);
- ``llm_timings``: its LLM calls' durations and times to first token,
  and, over all sessions, ``timing_counts``: how many of them fall in each
  hour, model and bucket of value (see lucidic.reading.percentiles).

Every write notes the sessions it touched in ``changed_sessions``, in the
same transaction (``Store.note_changed``). A refresher thread in `lucidic ui`
and `lucidic server` (not in the SDK, not in the CLI) rebuilds the derived
rows of sessions that have been quiet for QUIET_SECONDS and removes their
notes, which no write can renew meanwhile (they are locked; a note renewed
all the same, its version bumped, would stay). A page reads the derived
rows of sessions that are not noted and, in the same statement, the raw rows
of those that are: it shows exactly what summing every row would, whether
the refresher has run or not. (Costs are floating-point sums, whose last
binary digit depends on the order they are added in, as it always did; the
dashboard's are sums of sums.)

Each derived value is computed by the same SQL as the raw value a page
reads for a noted session (the functions below), so the two cannot drift
apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .._activity_hours import (
    CALL_WITHOUT_COST,
    CALL_WITHOUT_TOKENS,
    MODEL,
    hourly_sql,
    marking_stale,
    stale_sql,
)
from .._internal import log_rate_limited
from .._timing_buckets import COUNTED, MEASURES, counts_sql
from ..store import Store
from .search import EVENT_TEXT, SESSION_TEXT, STEP_TEXT, TextMatch, fold_sql
from .totals import cost_sum, int_parts, int_sum, saturated

#: A session is refreshed once nothing has been written to it for this long
#: (a running session is read from its rows until then).
QUIET_SECONDS = 2.0
#: Sessions refreshed in one transaction (short: SQLite writers wait for it).
BATCH = 200
#: Every table the refresher keeps, each keyed by session_id.
TABLES = ("session_totals", "session_text", "session_activity", "llm_timings")
#: A session noted as changed (SQL, over its id ``{sid}``).
NOTED = "EXISTS (SELECT 1 FROM changed_sessions n WHERE n.session_id = {sid})"
NOTED_IDS = "SELECT session_id FROM changed_sessions"
#: PostgreSQL's advisory lock key of the refresher of the store in the
#: connection's schema (an advisory lock is the whole database's).
REFRESHER_LOCK = "hashtextextended(current_schema(), 7514204)"
#: An event that counts as an error, over events ``e`` (SQL). An event that
#: is its step's own record (the step has its id: a lucidicai 3.x function
#: call others nest in) fails with its step, which is counted already.
ERROR_EVENT = ("((e.error IS NOT NULL OR e.type = 'error') "
               "AND (e.step_id IS NULL OR e.step_id <> e.id))")


#: Notes from which a page may read every row instead of derived data.
MANY_NOTES = 1000


def reads_every_row(store: Store) -> bool:
    """Whether pages had better read every row than derived data: when at
    least MANY_NOTES sessions, and at least half the store's, are noted (a
    store no UI or server has rebuilt yet, or one they are rebuilding).
    Telling the many noted sessions from the rest then costs more than the
    few kept rows save, and reading every row, as pages did before derived
    data, is exact too. (A cheap question while notes are few: it counts at
    most MANY_NOTES of them.)"""
    noted = store.query(f"SELECT COUNT(*) AS n FROM (SELECT 1 FROM changed_sessions "
                        f"LIMIT {MANY_NOTES}) few")
    if int(noted[0]["n"]) < MANY_NOTES:
        return False
    counts = store.query("SELECT (SELECT COUNT(*) FROM changed_sessions) AS noted, "
                         "(SELECT COUNT(*) FROM sessions) AS sessions")[0]
    return 2 * int(counts["noted"]) >= int(counts["sessions"])


def tokens_sum(store: Store, alias: str = "") -> str:
    """SQL of a session's input and output tokens, saturated at INT_MAX."""
    return saturated(store, f"COALESCE({int_sum(store, alias + 'input_tokens')}, 0) + "
                            f"COALESCE({int_sum(store, alias + 'output_tokens')}, 0)")


#: The totals the sessions list sorts by, each a column of session_totals.
TOTALS = ("cost", "tokens", "events", "errors")


def totals_sql(store: Store, ids: str | None, session_id: str) -> tuple[dict[str, str], str]:
    """Each of TOTALS as SQL, and the joins it needs, summed from the rows of
    the sessions ``ids`` (SQL of their ids; None: every session) for the
    session ``session_id`` (SQL): as the list always summed them."""
    errors = f"SUM(CASE WHEN {ERROR_EVENT} THEN 1 ELSE 0 END)"
    among = {alias: f"{alias}.session_id IN ({ids}) AND " if ids is not None else ""
             for alias in ("e", "st")}
    joins = (f"LEFT JOIN (SELECT e.session_id, {cost_sum('e.cost')} AS cost, "
             f"{tokens_sum(store, 'e.')} AS tokens, COUNT(*) AS events, {errors} AS errors "
             f"FROM events e WHERE {among['e']}1 = 1 GROUP BY e.session_id) ev "
             f"ON ev.session_id = {session_id} "
             "LEFT JOIN (SELECT st.session_id, COUNT(*) AS errors FROM steps st "
             f"WHERE {among['st']}st.error IS NOT NULL "
             f"GROUP BY st.session_id) se ON se.session_id = {session_id}")
    values = {"cost": "COALESCE(ev.cost, 0)", "tokens": "COALESCE(ev.tokens, 0)",
              "events": "COALESCE(ev.events, 0)",
              "errors": "(COALESCE(ev.errors, 0) + COALESCE(se.errors, 0))"}
    return values, joins


def total_sql(store: Store, total: str, every_row: bool = False) -> tuple[str, str]:
    """SQL of one of TOTALS for the session row ``s``, and the joins it
    needs: its session_totals row, or, when it is noted, its rows (with
    ``every_row``, see reads_every_row: its rows)."""
    if every_row:
        values, joins = totals_sql(store, None, "s.id")
        return values[total], joins
    values, joins = totals_sql(store, NOTED_IDS, "s.id")
    return (f"(CASE WHEN n.session_id IS NULL THEN COALESCE(t.{total}, 0) "
            f"ELSE {values[total]} END)",
            "LEFT JOIN session_totals t ON t.session_id = s.id "
            f"LEFT JOIN changed_sessions n ON n.session_id = s.id {joins}")


def search_sql(match: TextMatch, alias: str = "s",
               every_row: bool = False) -> tuple[str, list[Any]]:
    """True for a session (row ``alias``) that ``match`` finds: tested on its
    folded text, confirmed on its rows where that test is not exact (see
    TextMatch.folded); on its rows when it is noted (with ``every_row``,
    see reads_every_row: on its rows)."""
    prefix, prefix_params = match.id_prefix(alias)
    rows, row_params = match.rows(alias)
    if every_row:
        return f"({prefix} OR {rows})", [*prefix_params, *row_params]
    folded, folded_params, exact = match.folded("t.folded")
    derived = (f"EXISTS (SELECT 1 FROM session_text t WHERE t.session_id = {alias}.id "
               f"AND ({folded}))")
    derived_params = folded_params
    if not exact:
        derived, derived_params = f"({derived} AND {rows})", [*folded_params, *row_params]
    noted = NOTED.format(sid=f"{alias}.id")
    # (Not a CASE: SQLite evaluates both sides of an AND or OR in one; in a
    # WHERE clause it stops at the first that decides.)
    return (f"({prefix} OR (NOT {noted} AND {derived}) OR ({noted} AND {rows}))",
            [*prefix_params, *derived_params, *row_params])


def events_in_range(store: Store, project: str | None, since: float,
                until: float) -> tuple[str, list[Any]]:
    """FROM and WHERE of the events in range (of ``project``)."""
    ph = store.placeholder
    if project is None:
        return f"FROM events e WHERE e.started_at >= {ph} AND e.started_at < {ph}", [since, until]
    # Events carry no project: their sessions say.
    return (f"FROM events e JOIN sessions s ON s.id = e.session_id WHERE e.started_at >= {ph} "
            f"AND e.started_at < {ph} AND s.project = {ph}", [since, until, project])


def bucket(store: Store, column: str, seconds: int) -> str:
    """Whole ``seconds`` since the epoch at ``column`` (days, hours), as the
    dashboard has always numbered days."""
    if store.dialect == "postgresql":
        return f"CAST(floor({column} / {seconds}) AS BIGINT)"
    return f"CAST({column} / {seconds} AS INTEGER)"


def activity_columns(store: Store) -> dict[str, str]:
    """session_activity's sums over events ``e`` of one group (SQL)."""
    return {
        "first_at": "MIN(e.started_at)", "last_at": "MAX(e.started_at)",
        "events": "COUNT(*)",
        "errors": f"SUM(CASE WHEN {ERROR_EVENT} THEN 1 ELSE 0 END)",
        "failed": "SUM(CASE WHEN e.error IS NOT NULL THEN 1 ELSE 0 END)",
        "cost": cost_sum("e.cost"),
        **{f"{name}_{part}": f"SUM({sql})" for name in ("input", "output")
           for part, sql in zip(("hi", "lo"), int_parts(f"e.{name}_tokens"), strict=True)},
        "without_tokens": f"SUM(CASE WHEN {CALL_WITHOUT_TOKENS} THEN 1 ELSE 0 END)",
        "without_cost": f"SUM(CASE WHEN {CALL_WITHOUT_COST} THEN 1 ELSE 0 END)",
    }


def activity_groups(store: Store) -> dict[str, str]:
    """session_activity's grouping columns over events ``e`` (SQL)."""
    return {"day": bucket(store, "e.started_at", 86400),
            "hour": bucket(store, "e.started_at", 3600), "model": MODEL,
            "is_llm": "CASE WHEN e.type = 'llm' THEN 1 ELSE 0 END"}


def refresh(store: Store, *, quiet: float = QUIET_SECONDS, limit: int = BATCH,
            now: float | None = None) -> int:
    """Rebuild the derived rows of up to ``limit`` noted sessions on which
    nothing was written for ``quiet`` seconds, and remove their notes (a
    note renewed meanwhile stays); with none to rebuild, sum stale hours
    again. How many sessions it rebuilt, or else hours it summed."""
    if not store.writable():
        return 0  # (a read-only store: pages read the noted sessions' own rows)
    ph = store.placeholder
    cutoff = (time.time() if now is None else now) - quiet
    texts = _texts(store)  # (which may ask PostgreSQL how it folds: not in the transaction)

    def run(cur: Any) -> int:
        if store.dialect == "postgresql":
            # One refresher at a time for this store (server replicas each
            # run one); a store in another schema of the database has its own.
            cur.execute(f"SELECT pg_try_advisory_xact_lock({REFRESHER_LOCK})")
            if not cur.fetchone()[0]:
                return 0
            cur.execute("SET LOCAL jit = off")  # (compiling took longer than running)
        # Locked (PostgreSQL; SQLite's write transaction holds the file): a
        # writer's note for one of them waits until these are rebuilt and
        # removed, then is made again. One being written is left for later.
        lock = " FOR UPDATE SKIP LOCKED" if store.dialect == "postgresql" else ""
        cur.execute(f"SELECT session_id, version FROM changed_sessions WHERE noted_at <= {ph} "
                    f"ORDER BY noted_at LIMIT {ph}{lock}", (cutoff, limit))
        notes = cur.fetchall()
        if not notes:
            return _sum_stale_hours(cur, store)
        ids = [row[0] for row in notes]
        if store.dialect == "postgresql":
            _analyse_grown(cur)
            _rebuild_returning(cur, store, ids, texts)
        else:
            _rebuild(cur, store, ids, texts)
        cur.executemany(f"DELETE FROM changed_sessions WHERE session_id = {ph} "
                        f"AND version = {ph}", [tuple(row) for row in notes])
        return len(notes)

    return int(store.transaction(run))


def drop(cur: Any, store: Store, ids: list[str]) -> None:
    """Delete the derived rows of the sessions ``ids`` in the caller's
    transaction. timing_counts counts llm_timings' rows: what they counted
    is taken off. hourly_activity sums session_activity's rows: the hours
    they were in are noted stale, to be summed again. On PostgreSQL both
    come from the rows the DELETEs return: no statement looks the batch's
    rows up again (until PostgreSQL has analysed a table, each lookup may
    scan it whole)."""
    among = f"session_id IN ({', '.join([store.placeholder] * len(ids))})"
    if store.dialect == "postgresql":
        cur.execute(f"WITH gone AS (DELETE FROM llm_timings WHERE {among} "
                    f"RETURNING {COUNTED}) {counts_sql('1 = 1', -1, 'gone')}", ids)
        cur.execute(marking_stale(f"DELETE FROM session_activity WHERE {among}"), ids)
        for table in ("session_totals", "session_text"):
            cur.execute(f"DELETE FROM {table} WHERE {among}", ids)
        return
    cur.execute(counts_sql(among, -1), ids * len(MEASURES))
    cur.execute(stale_sql(among), ids)
    for table in TABLES:
        cur.execute(f"DELETE FROM {table} WHERE {among}", ids)


def _rebuild(cur: Any, store: Store, ids: list[str], texts: tuple[str, str, str]) -> None:
    """Rebuild the derived rows of the sessions ``ids`` (SQLite): the old
    ones dropped, the new ones counted and their hours noted stale, in this
    transaction."""
    among = f"session_id IN ({', '.join([store.placeholder] * len(ids))})"
    drop(cur, store, ids)
    for sql in rebuild_sql(store, len(ids), texts):
        cur.execute(sql, ids)
    cur.execute(counts_sql(among, 1), ids * len(MEASURES))
    cur.execute(stale_sql(among), ids)


def _rebuild_returning(cur: Any, store: Store, ids: list[str],
                       texts: tuple[str, str, str]) -> None:
    """Rebuild the derived rows of the sessions ``ids`` (PostgreSQL), as
    _rebuild does, but with the counts added, and the hours noted stale,
    from the rows each INSERT returns (as drop does for its DELETEs)."""
    drop(cur, store, ids)
    batch, inserts = _inserts(store, len(ids), texts)
    for table in ("session_totals", "session_text"):
        cur.execute(f"WITH {batch} {inserts[table]}", ids)
    cur.execute(marking_stale(inserts["session_activity"], f"{batch}, "), ids)
    cur.execute(f"WITH {batch}, added AS ({inserts['llm_timings']} RETURNING {COUNTED}) "
                f"{counts_sql('1 = 1', 1, 'added')}", ids)


#: The tables whose statistics the plans of a batch's statements rest on
#: (PostgreSQL): it finds its rows in each by session_id (or hour).
ANALYSED = ("session_activity", "llm_timings", "session_totals", "session_text",
            "hourly_activity", "timing_counts", "stale_hours", "changed_sessions",
            "events", "steps", "sessions")
#: A table is analysed from this many pages on, and again each time it has
#: doubled since (PostgreSQL's autovacuum, if on, analyses it too).
ANALYSED_FROM_PAGES = 128


def _analyse_grown(cur: Any) -> None:
    """ANALYZE each of ANALYSED that has grown to ANALYSED_FROM_PAGES pages,
    or to twice its pages when last analysed (PostgreSQL: pg_class.relpages,
    which ANALYZE and VACUUM set). Until then PostgreSQL plans a lookup of a
    batch's 200 sessions as a scan of the whole table (without statistics,
    it expects each id to match 0.5% of the rows), which made rebuilding a
    fresh store of 100,000 sessions several times as slow. Cheap: the
    tables' sizes, asked of the catalog; skipped for a table the store's
    role does not own (ANALYZE would only warn), or that another ANALYZE or
    a VACUUM holds (SKIP_LOCKED: the batch does not wait behind it, and a
    later one analyses the table)."""
    names = ", ".join(f"'{name}'" for name in ANALYSED)
    cur.execute("SELECT c.relname FROM pg_class c WHERE c.oid IN "
                f"(SELECT to_regclass(name) FROM unnest(ARRAY[{names}]) name) "
                "AND pg_has_role(c.relowner, 'USAGE') AND pg_relation_size(c.oid) >= "
                f"GREATEST(2 * c.relpages, {ANALYSED_FROM_PAGES}) "
                "* current_setting('block_size')::bigint")
    grown = [row[0] for row in cur.fetchall()]
    if grown:
        cur.execute(f"ANALYZE (SKIP_LOCKED) {', '.join(grown)}")


#: Stale hours summed again in one transaction.
HOURS_PER_ROUND = 200


def _sum_stale_hours(cur: Any, store: Store) -> int:
    """Make hourly_activity's rows of up to HOURS_PER_ROUND stale hours the
    sums of session_activity's, and those hours no longer stale. How many."""
    cur.execute(f"SELECT hour FROM stale_hours ORDER BY hour LIMIT {HOURS_PER_ROUND}")
    hours = [int(row[0]) for row in cur.fetchall()]
    if hours:
        marks = ", ".join([store.placeholder] * len(hours))
        cur.execute(f"DELETE FROM hourly_activity WHERE hour IN ({marks})", hours)
        cur.execute(hourly_sql(f"hour IN ({marks})"), hours)
        cur.execute(f"DELETE FROM stale_hours WHERE hour IN ({marks})", hours)
    return len(hours)


def _texts(store: Store) -> tuple[str, str, str]:
    """The folded text of a session's row ``s``, a step ``st``, an event ``ev``."""
    return (fold_sql(store, "s", SESSION_TEXT), fold_sql(store, "st", STEP_TEXT),
            fold_sql(store, "ev", EVENT_TEXT))


def _inserts(store: Store, count: int,
             texts: tuple[str, str, str]) -> tuple[str, dict[str, str]]:
    """The WITH entry ``batch`` of ``count`` sessions' ids (parameters), and
    the statement inserting each derived table's rows of them (but the WITH)."""
    totals, totals_joins = totals_sql(store, "SELECT session_id FROM batch", "b.session_id")
    sums = activity_columns(store)
    groups = activity_groups(store)
    session_text, step_text, event_text = texts
    joined = ("string_agg(piece, E'\\n')" if store.dialect == "postgresql"
              else "group_concat(piece, char(10))")
    rows = ", ".join([f"({store.placeholder})"] * count)
    return f"batch (session_id) AS (VALUES {rows})", {
        "session_totals":
            f"INSERT INTO session_totals (session_id, {', '.join(totals)}) "
            f"SELECT b.session_id, {', '.join(totals.values())} FROM batch b {totals_joins}",
        "session_text":
            f"INSERT INTO session_text (session_id, folded) "
            f"SELECT session_id, {joined} FROM ("
            f"SELECT s.id AS session_id, {session_text} AS piece FROM sessions s "
            "WHERE s.id IN (SELECT session_id FROM batch) "
            f"UNION ALL SELECT st.session_id, {step_text} FROM steps st "
            "WHERE st.session_id IN (SELECT session_id FROM batch) "
            f"UNION ALL SELECT ev.session_id, {event_text} FROM events ev "
            "WHERE ev.session_id IN (SELECT session_id FROM batch)) pieces GROUP BY session_id",
        "session_activity":
            f"INSERT INTO session_activity (session_id, project, {', '.join(groups)}, "
            f"{', '.join(sums)}) SELECT e.session_id, s.project, {', '.join(groups.values())}, "
            f"{', '.join(sums.values())} FROM events e LEFT JOIN sessions s "
            "ON s.id = e.session_id "
            "WHERE e.session_id IN (SELECT session_id FROM batch) AND e.started_at IS NOT NULL "
            f"GROUP BY e.session_id, s.project, {', '.join(groups.values())}",
        "llm_timings":
            f"INSERT INTO llm_timings (session_id, project, started_at, model, duration, "
            f"time_to_first_token) SELECT e.session_id, s.project, e.started_at, {MODEL}, "
            "e.duration, e.time_to_first_token FROM events e LEFT JOIN sessions s "
            "ON s.id = e.session_id WHERE e.session_id IN (SELECT session_id FROM batch) "
            "AND e.type = 'llm' AND e.started_at IS NOT NULL "
            "AND (e.duration IS NOT NULL OR e.time_to_first_token IS NOT NULL)",
    }


def rebuild_sql(store: Store, count: int, texts: tuple[str, str, str]) -> list[str]:
    """The statements that insert the derived rows of ``count`` sessions,
    each taking their ids as its parameters."""
    batch, inserts = _inserts(store, count, texts)
    return [f"WITH {batch} {inserts[table]}" for table in TABLES]


def pending(store: Store) -> int:
    """How many sessions are noted as changed (read from their rows)."""
    return int(store.query("SELECT COUNT(*) AS n FROM changed_sessions")[0]["n"])


class Background:
    """Work an app runs in a daemon thread (``_run``) until stopped, on
    connections taken from ``connection`` (a callable giving a context
    manager that lends a Store: the app's pool, which thus bounds the
    connections the app holds), a round every ``interval`` seconds."""

    #: The thread's name.
    name = "lucidic-background"

    def __init__(self, connection: Callable[[], AbstractContextManager[Store]], *,
                 interval: float = 1.0) -> None:
        self._connection = connection
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:  # pragma: no cover - each kind has its own
        raise NotImplementedError


class Refresher(Background):
    """Refreshes derived data in a daemon thread until stopped, a batch at a
    time. A failure is logged (rate-limited) and the next round tries again:
    pages stay exact meanwhile, only slower."""

    name = "lucidic-refresher"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while not self._stop.is_set():
                    started = time.monotonic()
                    with self._connection() as store:
                        if not refresh(store):
                            break
                        sqlite = store.dialect == "sqlite"
                    if sqlite:
                        # Writers wait while a batch is rebuilt (SQLite locks
                        # the file): as long again is theirs.
                        self._stop.wait(time.monotonic() - started)
            except Exception as exc:  # noqa: BLE001 - pages read the rows meanwhile
                log_rate_limited("refresher", "lucidic: refreshing derived data failed "
                                 "(pages read every row meanwhile): %r", exc)
            self._stop.wait(self.interval)
