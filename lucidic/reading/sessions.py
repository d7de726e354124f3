"""Listing sessions: filters, search, sorting and keyset paging, with totals.

A page is found by walking the sort order from a cursor (the last row's sort
value and id), never by OFFSET, so the thousandth page costs what the first
does; sorting by start time walks the (project, started_at) index and stops
after one page. Totals (steps, events, errors, tokens, cost) are summed for
the page's sessions only; sorting by one, and searching, read what
lucidic.reading.derived keeps per session (exact, as every row would say).
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from .._activity_hours import CALL_WITHOUT_COST, CALL_WITHOUT_TOKENS
from ..limits import INT_MAX
from ..store import Store
from .derived import ERROR_EVENT, TOTALS, reads_every_row, search_sql, total_sql
from .search import TextMatch
from .totals import cost_sum, int_sum

#: A session's status, as a word: exactly one of these holds for each session.
STATUSES = ("running", "successful", "failed", "finished")
_STATUS_SQL = {
    "running": "(s.is_finished IS NULL OR s.is_finished = 0)",
    "successful": "(s.is_finished = 1 AND s.is_successful = 1)",
    "failed": "(s.is_finished = 1 AND s.is_successful = 0)",
    "finished": "(s.is_finished = 1 AND s.is_successful IS NULL)",
}


def status_of(session: dict[str, Any]) -> str:
    """``running``, ``successful``, ``failed``, or ``finished`` (ended with no outcome)."""
    if not session.get("is_finished"):
        return "running"
    outcome = session.get("is_successful")
    return "finished" if outcome is None else ("successful" if outcome else "failed")


#: Sort keys over the session row ``s``: start time and name walk the row
#: (start time down an index); ``{now}`` is the listing's instant.
_ROW_SORTS = {
    "started": "s.started_at",
    "name": "COALESCE(s.name, '')",
    "duration": "(COALESCE(s.ended_at, {now}) - s.started_at)",
}
#: Every sort key: the row's, then the totals (lucidic.reading.derived keeps
#: them per session; a session changed since is summed from its rows).
SORTS = (*_ROW_SORTS, *TOTALS)
#: The largest page the API and the UI hand out.
MAX_LIMIT = 500


class InvalidQueryError(ValueError):
    """A listing was asked for with a filter, sort or cursor that makes no sense."""


@dataclass(frozen=True)
class SessionQuery:
    """Which sessions to list, in which order, from where."""

    project: str | None = None
    status: str | None = None
    agent_id: str | None = None
    experiment_id: str | None = None      # the runs of one experiment
    started_after: float | None = None    # epoch seconds, inclusive
    started_before: float | None = None   # epoch seconds, exclusive
    search: str | None = None
    id_prefix: str | None = None          # sessions whose id starts with this
    mass_sim_id: str | None = None        # the runs of one mass simulation
    sort: str = "started"
    descending: bool = True
    limit: int = 50
    cursor: str | None = None             # from SessionPage.next_cursor
    offset: int = 0                       # the older paging; ignored with a cursor
    counted: bool = True                  # False: no total (a later page of one listing)

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise InvalidQueryError(f"status must be one of {', '.join(STATUSES)}, "
                               f"not {self.status!r}")
        if self.sort not in SORTS:
            raise InvalidQueryError(f"sort must be one of {', '.join(SORTS)}, not {self.sort!r}")
        if int(self.limit) < 1:
            raise InvalidQueryError(f"limit must be at least 1, not {self.limit}")
        if int(self.offset) < 0:
            raise InvalidQueryError("offset must not be negative")
        if self.cursor is not None:
            decode_cursor(self.cursor)


@dataclass
class SessionPage:
    sessions: list[dict[str, Any]]
    #: Pass as SessionQuery.cursor for the next page; None on the last one.
    next_cursor: str | None
    #: How many sessions match (None when searching: that would read
    #: everything; or when the query was not ``counted``).
    total: int | None = None
    query: SessionQuery = field(default_factory=SessionQuery)


def encode_cursor(value: Any, session_id: str, now: float) -> str:
    """The last row's sort value and id, and the instant the listing is taken
    at (a running session's duration grows: every page measures it then)."""
    raw = json.dumps([value, session_id, now], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[Any, str, float]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value, session_id, now = json.loads(raw.decode("utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidQueryError("the page cursor is not one this server made") from exc
    if not isinstance(session_id, str) or not _plain_value(value) or not _plain_value(now) \
            or isinstance(now, str) or not _finite(now):
        raise InvalidQueryError("the page cursor is not one this server made")
    return value, session_id, float(now)


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int no float holds
        return False


def _plain_value(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def _filters(store: Store, query: SessionQuery,
             every_row: bool = False) -> tuple[list[str], list[Any]]:
    ph = store.placeholder
    where = ["s.started_at IS NOT NULL"]
    params: list[Any] = []
    for clause, value in (("s.project = {}", query.project), ("s.agent_id = {}", query.agent_id),
                          ("s.mass_sim_id = {}", query.mass_sim_id),
                          ("s.experiment_id = {}", query.experiment_id),
                          ("s.started_at >= {}", query.started_after),
                          ("s.started_at < {}", query.started_before)):
        if value is not None:
            where.append(clause.format(ph))
            params.append(value)
    if query.status is not None:
        where.append(_STATUS_SQL[query.status])
    if query.id_prefix:
        # substr, not LIKE: an id may hold % or _, and LIKE's case rules differ
        # between the two databases.
        where.append(f"substr(s.id, 1, {len(query.id_prefix)}) = {ph}")
        params.append(query.id_prefix)
    if query.search and query.search.strip():
        sql, search_params = search_sql(TextMatch(store, query.search), "s", every_row)
        where.append(sql)
        params.extend(search_params)
    return where, params


def list_sessions(store: Store, query: SessionQuery) -> SessionPage:
    ph = store.placeholder
    searching = bool(query.search and query.search.strip())
    every_row = (searching or query.sort not in _ROW_SORTS) and reads_every_row(store)
    where, params = _filters(store, query, every_row)
    now = time.time()
    order = "DESC" if query.descending else "ASC"
    keyset: list[Any] = []
    if query.cursor is not None:
        value, last_id, now = decode_cursor(query.cursor)
        keyset = [value, last_id]
    joins = ""
    if query.sort in _ROW_SORTS:
        key = _ROW_SORTS[query.sort].format(now=repr(float(now)))
    else:
        key, joins = total_sql(store, query.sort, every_row)
    if keyset:
        # A row comparison: the database walks its index from the cursor on.
        where = [*where, f"({key}, s.id) {'<' if query.descending else '>'} ({ph}, {ph})"]
    limit = min(int(query.limit), INT_MAX - 1)  # (one more is read: are there more?)
    sql = (f"SELECT s.*, {key} AS sort_key FROM sessions s {joins} "
           f"WHERE {' AND '.join(where)} ORDER BY {key} {order}, s.id {order} LIMIT {ph}"
           + (f" OFFSET {ph}" if query.cursor is None and query.offset else ""))
    all_params = [*params, *keyset, limit + 1]
    if query.cursor is None and query.offset:
        all_params.append(int(query.offset))
    rows = store.query(sql, all_params)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["sort_key"], rows[-1]["id"], now) if more else None
    for row in rows:
        row.pop("sort_key", None)
    add_totals(store, rows)
    total = None
    if not query.search and query.counted:
        filters = where[:-1] if keyset else where
        total = int(store.query(f"SELECT COUNT(*) AS n FROM sessions s WHERE "
                                f"{' AND '.join(filters)}", params)[0]["n"])
    return SessionPage(rows, next_cursor, total, query)


def empty_totals() -> dict[str, Any]:
    return {"step_count": 0, "event_count": 0, "error_count": 0, "total_cost": 0.0,
            "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "cache_write_tokens": 0,
            "reasoning_tokens": 0, "llm_calls_without_tokens": 0, "llm_calls_without_cost": 0}


def add_totals(store: Store, sessions: list[dict[str, Any]]) -> None:
    """Add each session's totals (counts, tokens, cost) to its row, in place,
    with the LLM calls the token and cost sums could not include."""
    if not sessions:
        return
    ids = [s["id"] for s in sessions]
    marks = ", ".join([store.placeholder] * len(ids))
    tokens = "".join(f"COALESCE({int_sum(store, column)}, 0) AS {column}, " for column in (
        "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
        "reasoning_tokens"))
    events, steps = store.query_many([
        ("SELECT session_id, COUNT(*) AS event_count, "
         f"COALESCE({cost_sum('cost')}, 0) AS total_cost, {tokens}"
         f"SUM(CASE WHEN {CALL_WITHOUT_TOKENS} THEN 1 ELSE 0 END) AS llm_calls_without_tokens, "
         f"SUM(CASE WHEN {CALL_WITHOUT_COST} THEN 1 ELSE 0 END) AS llm_calls_without_cost, "
         f"SUM(CASE WHEN {ERROR_EVENT} THEN 1 ELSE 0 END) AS error_count "
         f"FROM events e WHERE session_id IN ({marks}) GROUP BY session_id", ids),
        ("SELECT session_id, COUNT(*) AS step_count, "
         "SUM(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END) AS failed_steps "
         f"FROM steps WHERE session_id IN ({marks}) GROUP BY session_id", ids),
    ])
    totals: dict[str, dict[str, Any]] = {}
    for row in events:
        sid = row.pop("session_id")
        totals[sid] = {**empty_totals(), **{k: v or 0 for k, v in row.items()}}
    for row in steps:
        entry = totals.setdefault(row["session_id"], empty_totals())
        entry["step_count"] = int(row["step_count"])
        entry["error_count"] += int(row["failed_steps"] or 0)
    for session in sessions:
        session.update(totals.get(session["id"]) or empty_totals())
