"""Deleting sessions: by id (``delete_sessions``) and by age (``prune``).

A session is deleted with everything that hangs off it: its steps, events,
scores, rubric results and evaluation claims, its uploads (screenshots and
payloads the server keeps, in the database: nothing of ours is on disk),
its OTLP spans' bookkeeping, its note in changed_sessions and every derived
row the refresher keeps for it (lucidic.reading.derived). The sums across
sessions are corrected in the same transaction: timing_counts loses the
counts of its llm_timings rows, and the hours its session_activity rows lay
in are noted stale (lucidic._activity_hours), so pages read those hours from
session_activity until the refresher sums them again.

Experiments and mass simulations are kept: they list the runs still stored
(an experiment's summary, computed when it ended, stays as it was).

A deleted session's id is kept in ``deleted_sessions`` (id, project, time,
nothing else) for good: a record for it arriving later (a spool replayed,
a process still writing) is refused for good instead of bringing back part of
the session (store migration 12's trigger). So are its OTLP traces' rows in
otlp_traces (project, trace id, session id): a late span or Langfuse score of
one of them is refused (lucidic.server.otlp_ingest), not made a new session.

Sessions go a batch at a time (``BATCH``), each batch one transaction, so
that SQLite's writers wait for one batch, never for a whole prune. On
PostgreSQL a batch takes the refresher's lock (one refresher or deletion at
a time per store, however many server replicas share it) and locks its
sessions' rows, which every write of the server's API locks too (see
Store.write_for_project): a write under way is waited for, and one that
comes after finds the session gone.

Never deleted: a session still being written to. ``prune`` takes only
sessions to which nothing was written for the whole period (no record of the
session, its steps or its events, finished or not); ``delete_sessions``
refuses an unfinished session written to in the last RECENT_WRITES seconds,
unless forced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from .._internal import log_rate_limited
from ..store import Store
from .derived import REFRESHER_LOCK, Background, drop

logger = logging.getLogger("lucidic")

#: Sessions deleted in one transaction.
BATCH = 200
#: An unfinished session written to this recently (seconds) is being
#: written to: delete_sessions leaves it unless forced.
RECENT_WRITES = 600.0

#: PostgreSQL's advisory lock key of a prune of the store in the
#: connection's schema: a replica finding another's prune under way leaves
#: the round to it.
PRUNE_LOCK = "hashtextextended(current_schema(), 7514205)"
#: How often a server's retention thread prunes (seconds).
PRUNE_INTERVAL = 3600.0

#: The tables keyed by session_id, beside those of derived data, whose
#: rows go with their session (before steps and events: uploads name those).
_SESSION_TABLES = ("scores", "rubric_results", "evaluations", "events", "steps",
                   "changed_sessions")


@dataclass
class Deletion:
    """What a deletion did: the sessions it ``deleted``, those it did not
    know (``unknown``: never stored, deleted before, or another project's),
    and those it left because they are still being written to (``running``)."""

    deleted: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)


def _marks(store: Store, count: int) -> str:
    return ", ".join([store.placeholder] * count)


def _lock(store: Store, cur: Any) -> None:
    """PostgreSQL: wait for the refresher (of any replica) to finish its
    batch, and keep it out until this one commits: it rebuilds from rows
    this deletes, and sums hours this notes stale."""
    if store.dialect == "postgresql":
        cur.execute(f"SELECT pg_advisory_xact_lock({REFRESHER_LOCK})")


def _last_writes(store: Store, cur: Any, ids: Sequence[str],
                 project: str | None) -> dict[str, tuple[Any, Any, float]]:
    """The stored sessions among ``ids`` (of ``project``): their project,
    whether finished, and when last written (the newest record time of the
    session, its steps and events, or the store's time of its last write
    while that is noted). PostgreSQL: their rows locked."""
    ph = store.placeholder
    scoped = f" AND s.project = {ph}" if project is not None else ""
    params = (*ids, *([project] if project is not None else []))
    if store.dialect == "postgresql":
        # Locked first, in a statement of its own: the one below then reads
        # (a snapshot of its own) what a write this waited for committed.
        cur.execute(f"SELECT s.id FROM sessions s WHERE s.id IN ({_marks(store, len(ids))})"
                    f"{scoped} ORDER BY s.id FOR UPDATE", params)
    cur.execute(
        "SELECT s.id, s.project, s.is_finished, s.updated_at, s.ended_at, "
        "(SELECT MAX(st.updated_at) FROM steps st WHERE st.session_id = s.id), "
        "(SELECT MAX(e.updated_at) FROM events e WHERE e.session_id = s.id), "
        "(SELECT n.noted_at FROM changed_sessions n WHERE n.session_id = s.id) "
        f"FROM sessions s WHERE s.id IN ({_marks(store, len(ids))}){scoped}", params)
    return {row[0]: (row[1], row[2], max(v for v in row[3:] if v is not None) if any(
        v is not None for v in row[3:]) else 0.0) for row in cur.fetchall()}


def _orphans(store: Store, cur: Any, ids: Sequence[str]) -> list[str]:
    """Of ``ids``, those only steps or events name (no session row)."""
    marks = _marks(store, len(ids))
    cur.execute(f"SELECT DISTINCT session_id FROM steps WHERE session_id IN ({marks}) "
                f"UNION SELECT DISTINCT session_id FROM events WHERE session_id IN ({marks})",
                (*ids, *ids))
    return [row[0] for row in cur.fetchall()]


def remove(store: Store, cur: Any, projects: dict[str, Any], now: float) -> None:
    """Inside a write transaction (the refresher's lock held on PostgreSQL):
    delete the sessions ``projects`` names (id -> project) and every row
    that hangs off them, correct the sums across sessions, and keep their ids
    as deleted."""
    ids = sorted(projects)
    if not ids:
        return
    ph = store.placeholder
    marks = _marks(store, len(ids))
    among = f"session_id IN ({marks})"
    cur.executemany("INSERT INTO deleted_sessions (session_id, project, deleted_at) "
                    f"VALUES ({ph}, {ph}, {ph}) ON CONFLICT (session_id) DO NOTHING",
                    [(sid, projects[sid], now) for sid in ids])
    # As the refresher does before rebuilding: what timing_counts counted of
    # their llm_timings rows taken off, and the hours of their
    # session_activity rows to be summed again.
    drop(cur, store, ids)
    for column, table in (("step_id", "steps"), ("event_id", "events")):
        cur.execute(f"DELETE FROM uploads WHERE {column} IN "
                    f"(SELECT id FROM {table} WHERE {among})", ids)
    cur.execute(f"DELETE FROM uploads WHERE {among}", ids)
    # (otlp_spans is keyed by trace, and holds a row for every span ever
    # received. Their traces' rows in otlp_traces are kept, as their ids
    # are: a late span or Langfuse score of such a trace is then refused,
    # rather than making the trace a new session.)
    cur.execute(f"SELECT project, trace_id FROM otlp_traces WHERE {among}", ids)
    traces = [tuple(row) for row in cur.fetchall()]
    if traces:
        cur.executemany(f"DELETE FROM otlp_spans WHERE project = {ph} AND trace_id = {ph}",
                        traces)
    for table in _SESSION_TABLES:
        cur.execute(f"DELETE FROM {table} WHERE {among}", ids)
    cur.execute(f"DELETE FROM sessions WHERE id IN ({marks})", ids)


def delete_sessions(store: Store, session_ids: Iterable[str], *, project: str | None = None,
                    force: bool = False, now: float | None = None) -> Deletion:
    """Delete these sessions (of ``project`` only, when given) with everything
    that hangs off them, BATCH to a transaction. An unfinished session
    written to in the last RECENT_WRITES seconds is left (``running``)
    unless ``force``. Without a project, a session only steps or events name
    (its own record never arrived) is deleted too."""
    result = Deletion()
    ids = sorted(set(session_ids))
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        at = time.time() if now is None else now

        def run(cur: Any, chunk: list[str] = chunk, at: float = at) -> Deletion:
            _lock(store, cur)
            stored = _last_writes(store, cur, chunk, project)
            done = Deletion()
            projects: dict[str, Any] = {}
            for sid, (owner, finished, last) in stored.items():
                if not force and not finished and last >= at - RECENT_WRITES:
                    done.running.append(sid)
                else:
                    projects[sid] = owner
            if project is None:
                rest = [sid for sid in chunk if sid not in stored]
                projects.update(dict.fromkeys(_orphans(store, cur, rest) if rest else ()))
            remove(store, cur, projects, at)
            done.deleted = sorted(projects)
            done.unknown = [sid for sid in chunk if sid not in projects
                            and sid not in done.running]
            return done

        done = store.transaction(run)
        result.deleted += done.deleted
        result.unknown += done.unknown
        result.running += sorted(done.running)
    return result


def _candidates_sql(store: Store, project: str | None, after: tuple[Any, str] | None,
                    limit: int, unstarted: bool = False) -> tuple[str, list[Any]]:
    """The sessions started before the cutoff (the first parameter) and
    written to by no record since, oldest first, after the cursor ``after``
    (started_at, id). ``unstarted``: those that never said when they started
    (made by a score, or for a step that came first), judged by their writes
    alone, in id order (the cursor's id), their last write as their start."""
    ph = store.placeholder
    first = (f"s.started_at IS NULL AND s.updated_at < {ph}" if unstarted
             else f"s.started_at < {ph}")
    where = [first, f"s.updated_at < {ph}", f"COALESCE(s.ended_at, 0) < {ph}",
             f"NOT EXISTS (SELECT 1 FROM steps st WHERE st.session_id = s.id "
             f"AND st.updated_at >= {ph})",
             f"NOT EXISTS (SELECT 1 FROM events e WHERE e.session_id = s.id "
             f"AND e.updated_at >= {ph})",
             f"NOT EXISTS (SELECT 1 FROM changed_sessions n WHERE n.session_id = s.id "
             f"AND n.noted_at >= {ph})"]
    params: list[Any] = []
    if project is not None:
        where.append(f"s.project = {ph}")
        params.append(project)
    if unstarted:
        if after is not None:
            where.append(f"s.id > {ph}")
            params.append(after[1])
        return (f"SELECT s.id, s.project, s.updated_at FROM sessions s "
                f"WHERE {' AND '.join(where)} ORDER BY s.id LIMIT {int(limit)}", params)
    if after is not None:
        where.append(f"(s.started_at > {ph} OR (s.started_at = {ph} AND s.id > {ph}))")
        params += [after[0], after[0], after[1]]
    return (f"SELECT s.id, s.project, s.started_at FROM sessions s WHERE {' AND '.join(where)} "
            f"ORDER BY s.started_at, s.id LIMIT {int(limit)}", params)


@dataclass
class Pruning:
    """What a prune did (or, dry, would do): how many sessions, and the
    oldest and newest start among them."""

    sessions: int = 0
    oldest: float | None = None
    newest: float | None = None
    ids: list[str] = field(default_factory=list)


def prune(store: Store, older_than: float, *, project: str | None = None,
          dry_run: bool = False, now: float | None = None, batch: int = BATCH,
          keep_ids: int = 0, stop: Callable[[], bool] | None = None,
          alone: bool = False, wait: Callable[[float], Any] = time.sleep) -> Pruning:
    """Delete (or with ``dry_run`` only count) the sessions (of ``project``)
    that started more than ``older_than`` seconds ago and to which nothing
    was written since: ended ones, and unfinished ones abandoned as long. A
    batch at a time, each one transaction that chooses its sessions itself
    (a session written to meanwhile is not chosen). ``keep_ids``: how many of
    their ids to give back. ``stop()`` true ends it between batches.
    ``alone`` (PostgreSQL): end, rather than wait, when another prune of
    the store is running a batch (server replicas each run one). SQLite:
    after each batch, ``wait`` as long as it took, so that writers, who
    waited for it, are not left waiting for the next one too."""
    cutoff = (time.time() if now is None else now) - older_than
    result = Pruning()
    after: tuple[float, str] | None = None
    # The sessions that said when they started, then those that never did.
    unstarted = False
    while stop is None or not stop():
        def run(cur: Any, after: tuple[float, str] | None = after, unstarted: bool = unstarted
                ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            if alone and store.dialect == "postgresql":
                cur.execute(f"SELECT pg_try_advisory_xact_lock({PRUNE_LOCK})")
                if not cur.fetchone()[0]:
                    return [], []
            if not dry_run:
                _lock(store, cur)
            sql, params = _candidates_sql(store, project, after, batch, unstarted)
            cur.execute(sql, [cutoff] * 6 + params)
            rows = [tuple(row) for row in cur.fetchall()]
            if dry_run or not rows:
                return rows, rows
            # PostgreSQL: lock them, and keep those still as chosen (a write
            # may have reached one while the choice was made).
            stored = _last_writes(store, cur, [r[0] for r in rows], None)
            chosen = {sid: owner for sid, (owner, _, last) in stored.items() if last < cutoff}
            remove(store, cur, chosen, time.time() if now is None else now)
            return rows, [r for r in rows if r[0] in chosen]

        started = time.monotonic()
        rows, gone = store.transaction(run, write=not dry_run)
        if not dry_run and store.dialect == "sqlite" and len(rows) == batch:
            wait(time.monotonic() - started)
        result.sessions += len(gone)
        starts = [r[2] for r in gone]
        if starts:
            result.oldest = min(starts if result.oldest is None else [result.oldest, *starts])
            result.newest = max(starts if result.newest is None else [result.newest, *starts])
        result.ids += [r[0] for r in gone][:max(0, keep_ids - len(result.ids))]
        if len(rows) < batch:
            if unstarted:
                break
            unstarted, after = True, None
            continue
        after = (rows[-1][2], rows[-1][0])
    return result


class Pruner(Background):
    """Prunes, in a daemon thread, the sessions nothing was written to for
    ``older_than`` seconds: at start, then every ``interval`` seconds, as the
    Refresher refreshes. A failure is logged (rate-limited) and the next
    round tries again. Server replicas sharing a database each run one: a
    round that meets another replica's batch under way leaves the rest to it."""

    name = "lucidic-retention"

    def __init__(self, connection: Callable[[], AbstractContextManager[Store]],
                 older_than: float, *, interval: float = PRUNE_INTERVAL) -> None:
        super().__init__(connection, interval=interval)
        self.older_than = older_than

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._connection() as store:
                    done = prune(store, self.older_than, stop=self._stop.is_set, alone=True,
                                 wait=self._stop.wait)
                if done.sessions:
                    logger.info("lucidic: retention deleted %d session(s) with nothing "
                                "written for %g days", done.sessions, self.older_than / 86400)
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log_rate_limited("retention", "lucidic: pruning old sessions failed (the "
                                 "next round tries again): %r", exc)
            self._stop.wait(self.interval)
