"""The dashboard's p50 and p95 of LLM latency and time to first token per
model: exact nearest-rank percentiles (the value at rank ceil(p * n) of a
model's n values), without ranking every call in the range.

Two steps, in one snapshot. First, how many calls of each model fall in each
bucket of value (lucidic._timing_buckets): summed from timing_counts for the
whole hours inside the range, plus the calls of llm_timings in the hours at
its ends, less the kept calls of sessions noted as changed, plus those
sessions' calls read from their events. Counting up the buckets finds the
one that holds each rank, and the rank within it. Then only that bucket's
calls are read, in order of value from the (model, value) index, to the
rank: what numbering every call in order would have found.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from .._activity_hours import MODEL
from .._timing_buckets import HOUR, MEASURES, bucket_bounds, bucket_sql, hour_sql
from ..store import Store
from .derived import NOTED_IDS, events_in_range

Query = Callable[[str, Sequence[Any]], list[dict[str, Any]]]
#: The percentiles the dashboard shows.
PERCENTS = (50, 95)


def rank(count: int, percent: int) -> int:
    """The nearest rank of ``percent`` among ``count`` values: ceil(p * n)."""
    return (count * percent + 99) // 100


def percentiles(query: Query, store: Store, project: str | None, since: float,
                until: float, column: str,
                every_row: bool = False) -> dict[str, tuple[float | None, float | None]]:
    """(p50, p95) of ``column`` (duration, time_to_first_token) per model
    of the LLM calls in range that have one, read with ``query`` (of
    Store.snapshot: the counts and the values must be of one snapshot).
    With ``every_row`` (see derived.reads_every_row), from every event in
    range, numbered in order."""
    if every_row:
        return _ranked(query, store, project, since, until, column)
    sql, params = _counts(store, project, since, until, column)
    buckets: dict[str, list[tuple[int, int]]] = {}
    for row in query(sql, params):
        if int(row["calls"]):
            buckets.setdefault(row["model"], []).append((int(row["bucket"]), int(row["calls"])))
    found: dict[str, tuple[float | None, float | None]] = {}
    for model, counted in buckets.items():
        counted.sort()
        total = sum(calls for _, calls in counted)
        values = [_value_at(query, store, project, since, until, column, model, counted,
                            rank(total, percent)) for percent in PERCENTS]
        found[model] = (values[0], values[1])
    return found


def _value_at(query: Query, store: Store, project: str | None, since: float, until: float,
              column: str, model: str, counted: list[tuple[int, int]], wanted: int) -> float:
    """The value at rank ``wanted`` of ``model``'s calls, whose counts by
    bucket (in order) are ``counted``."""
    below, at = 0, 0
    while below + counted[at][1] < wanted:
        below += counted[at][1]
        at += 1
    found, calls = counted[at]
    # Walked in order from the nearer end of the bucket.
    skip, order = wanted - below - 1, ""
    if skip > calls // 2:
        skip, order = calls - (wanted - below), " DESC"
    ph = store.placeholder
    low, high = bucket_bounds(found)
    bounds = "".join(f" AND {{v}} {op} {ph}" for op, bound in ((">=", low), ("<", high))
                     if bound is not None)
    bound_params = [bound for bound in (low, high) if bound is not None]
    scope, scope_params = _scope(store, project)
    events, event_params = events_in_range(store, project, since, until)
    kept = f"d.{column}"
    sql = (f"SELECT {kept} AS value FROM llm_timings d WHERE d.model = {ph}"
           f"{bounds.format(v=kept)} AND d.started_at >= {ph} AND d.started_at < {ph}"
           f"{scope} AND d.session_id NOT IN ({NOTED_IDS}) UNION ALL "
           f"SELECT e.{column} {events} AND e.type = 'llm' AND {MODEL} = {ph}"
           f"{bounds.format(v=f'e.{column}')} AND e.session_id IN ({NOTED_IDS}) "
           f"ORDER BY 1{order} LIMIT 1 OFFSET {ph}")
    rows = query(sql, [model, *bound_params, since, until, *scope_params, *event_params,
                       model, *bound_params, skip])
    return float(rows[0]["value"])


def _ranked(query: Query, store: Store, project: str | None, since: float, until: float,
            column: str) -> dict[str, tuple[float | None, float | None]]:
    """Each model's values at the ranks of PERCENTS, found by numbering its
    values in order."""
    events, params = events_in_range(store, project, since, until)
    ranks = " OR ".join(f"rn = (n * {percent} + 99) / 100" for percent in PERCENTS)
    rows = query("SELECT model, rn, n, value FROM ("
                 "SELECT model, value, ROW_NUMBER() OVER (PARTITION BY model ORDER BY value) "
                 "AS rn, COUNT(*) OVER (PARTITION BY model) AS n FROM ("
                 f"SELECT {MODEL} AS model, e.{column} AS value {events} AND e.type = 'llm' "
                 f"AND e.{column} IS NOT NULL) v) ranked WHERE {ranks}", params)
    found: dict[str, list[float | None]] = {}
    for row in rows:
        slots = found.setdefault(row["model"], [None] * len(PERCENTS))
        for slot, percent in enumerate(PERCENTS):
            if int(row["rn"]) == rank(int(row["n"]), percent):
                slots[slot] = float(row["value"])
    return {model: (p50, p95) for model, (p50, p95) in found.items()}


def _scope(store: Store, project: str | None, alias: str = "d") -> tuple[str, list[Any]]:
    if project is None:
        return "", []
    return f" AND {alias}.project = {store.placeholder}", [project]


def _counts(store: Store, project: str | None, since: float, until: float,
            column: str) -> tuple[str, list[Any]]:
    """(model, bucket, calls) of the calls in range that have ``column``."""
    ph = store.placeholder
    kept, value = f"d.{column}", f"e.{column}"
    scope, scope_params = _scope(store, project)
    hour = hour_sql("d.started_at")
    # Whole hours from first to last (exclusive), a second clear of the
    # range's ends, so that every call an hour counts lies in range however
    # the database rounds its time / 3600; the calls of llm_timings in hours
    # outside them are read one by one.
    first, last = math.ceil((since + 1) / HOUR), math.floor((until - 1) / HOUR)
    parts: list[tuple[str, list[Any]]] = []
    ends: list[tuple[float, float, str, list[Any]]] = [(since, until, "", [])]
    if first < last:
        counts_scope = (f" AND c.orphan = 0 AND c.project = {ph}" if project is not None
                        else "")
        parts += [
            (f"SELECT c.model AS model, c.bucket AS bucket, c.calls AS calls "
             f"FROM timing_counts c WHERE c.measure = {ph} AND c.hour >= {ph} "
             f"AND c.hour < {ph}{counts_scope}",
             [MEASURES[column], first, last, *scope_params]),
            # Noted sessions' kept calls, counted there: their events say now.
            (f"SELECT d.model AS model, {bucket_sql(kept)} AS bucket, -1 AS calls "
             f"FROM llm_timings d WHERE {kept} IS NOT NULL AND d.session_id IN ({NOTED_IDS}) "
             f"AND {hour} >= {ph} AND {hour} < {ph}{scope}",
             [first, last, *scope_params]),
        ]
        ends = [(since, first * HOUR + 1.0, f" AND {hour} < {ph}", [first]),
                (last * HOUR - 1.0, until, f" AND {hour} >= {ph}", [last])]
    for start, end, outside, outside_params in ends:
        parts.append((f"SELECT d.model AS model, {bucket_sql(kept)} AS bucket, 1 AS calls "
                      f"FROM llm_timings d WHERE {kept} IS NOT NULL AND d.started_at >= {ph} "
                      f"AND d.started_at < {ph}{outside}{scope} "
                      f"AND d.session_id NOT IN ({NOTED_IDS})",
                      [start, end, *outside_params, *scope_params]))
    events, event_params = events_in_range(store, project, since, until)
    parts.append((f"SELECT {MODEL} AS model, {bucket_sql(value)} AS bucket, 1 AS calls "
                  f"{events} AND e.type = 'llm' AND {value} IS NOT NULL "
                  f"AND e.session_id IN ({NOTED_IDS})", event_params))
    union = " UNION ALL ".join(sql for sql, _ in parts)
    return (f"SELECT model, bucket, SUM(calls) AS calls FROM ({union}) counted "
            "GROUP BY model, bucket", [p for _, params in parts for p in params])
