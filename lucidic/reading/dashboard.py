"""Aggregates over a time range: cost and tokens per day and per model, LLM
latency and time to first token per model (p50, p95), and error rates; with
how many LLM calls reported no token counts, and no cost, which those sums
could not include.

Everything is computed by the database in a handful of statements, the same
SQL on SQLite and PostgreSQL, all reading one snapshot; percentiles are
nearest-rank, found from counts by bucket of value and then read from that
bucket alone (lucidic.reading.percentiles). The sums and timings are read
from what lucidic.reading.derived keeps, and from the events of sessions
changed since (exact either way; costs are sums of sums, which may differ
from one sum in the last binary digit): the sums of whole hours in range
from hourly_activity, a row per hour, model and kind; those of the hours at
its ends, of stale hours (not summed again since the refresher rebuilt a
session with groups in them), and of the hours a session changed since has
kept groups in, from session_activity, a row per session too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._activity_hours import CALL_WITHOUT_COST, CALL_WITHOUT_TOKENS, SUMS
from .._timing_buckets import HOUR
from ..limits import INT_MAX, INT_MIN
from ..store import Store
from .derived import (
    ERROR_EVENT,
    NOTED_IDS,
    activity_groups,
    bucket,
    events_in_range,
    reads_every_row,
)
from .percentiles import Query, percentiles
from .totals import PART, clamped_cost, int_parts

DAY = 86400.0


@dataclass
class Dashboard:
    since: float
    until: float
    days: list[dict[str, Any]]       # one per UTC day in range, empty days included
    models: list[dict[str, Any]]     # per model: calls, tokens, cost, errors, latency
    sessions: dict[str, Any]         # counts by status and the failure rate
    llm_calls: int
    llm_errors: int
    total_cost: float
    llm_cost: float                  # the part of total_cost the models' calls cost
    total_tokens: int
    # LLM calls answered without token counts, and without a cost: the sums
    # above (and each day's and model's) are not all that was used.
    llm_calls_without_tokens: int = 0
    llm_calls_without_cost: int = 0

    @property
    def llm_error_rate(self) -> float | None:
        return self.llm_errors / self.llm_calls if self.llm_calls else None


def dashboard(store: Store, project: str | None, since: float, until: float) -> Dashboard:
    if not until > since:
        raise ValueError("the dashboard's range must end after it starts")
    ph = store.placeholder
    scoped = [project] if project is not None else []
    every_row = reads_every_row(store)
    facts, fact_params = _facts(store, project, since, until, every_row)
    sums = ", ".join(f"SUM({column}) AS {column}" for column in SUMS)
    statements = [
        # Summed once by day, model and kind; per day and per model below.
        (f"SELECT day, model, is_llm, {sums} FROM ({facts}) f GROUP BY day, model, is_llm",
         fact_params),
        ("SELECT "
         f"SUM(CASE WHEN s.is_finished = 1 AND s.is_successful = 0 THEN 1 ELSE 0 END) AS failed, "
         f"SUM(CASE WHEN s.is_finished = 1 AND s.is_successful = 1 THEN 1 ELSE 0 END) "
         "AS successful, "
         f"SUM(CASE WHEN s.is_finished = 1 AND s.is_successful IS NULL THEN 1 ELSE 0 END) "
         "AS finished, "
         "SUM(CASE WHEN s.is_finished IS NULL OR s.is_finished = 0 THEN 1 ELSE 0 END) AS running, "
         f"COUNT(*) AS total FROM sessions s WHERE s.started_at >= {ph} AND s.started_at < {ph}"
         + (f" AND s.project = {ph}" if project is not None else ""), [since, until, *scoped]),
    ]

    def read(query: Query) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
        found = [query(sql, params) for sql, params in statements]
        return found, {name: percentiles(query, store, project, since, until, column,
                                         every_row)
                       for name, column in (("duration", "duration"),
                                            ("ttft", "time_to_first_token"))}

    (groups, sessions), timings = store.snapshot(read, compiled=False)
    per_day, per_model = _per_day_and_model(groups)
    for row in per_model:
        for name, found in timings.items():
            row[f"{name}_p50"], row[f"{name}_p95"] = found.get(row["model"], (None, None))
    days = _fill_days(per_day, since, until)
    counts: dict[str, Any] = ({k: int(v or 0) for k, v in sessions[0].items()} if sessions
                              else {})
    ended = counts.get("failed", 0) + counts.get("successful", 0)
    counts["failure_rate"] = counts.get("failed", 0) / ended if ended else None
    return Dashboard(
        since=since, until=until, days=days, models=per_model, sessions=counts,
        llm_calls=sum(int(d["llm_calls"]) for d in days),
        llm_errors=sum(int(d["llm_errors"]) for d in days),
        total_cost=float(sum(d["cost"] for d in days)),
        llm_cost=float(sum(m["cost"] for m in per_model)),
        total_tokens=_within_64_bits(sum(int(d["input_tokens"]) + int(d["output_tokens"])
                                         for d in days)),
        **{key: sum(int(d[key]) for d in days) for key in _WITHOUT.values()})


def _facts(store: Store, project: str | None, since: float, until: float,
           every_row: bool = False) -> tuple[str, list[Any]]:
    """Rows of (day, model, is_llm, and SUMS) that sum to the events in
    range: hourly_activity's rows of the whole hours in it, and
    session_activity's groups that lie in it in the other hours; but those
    of sessions noted as changed or with a group across an end of the
    range, whose events in range are read one by one instead, and in stale
    hours and the hours such a session has groups in, session_activity's
    groups of the other sessions. (A group across an end is in the hour of
    that end: all its events are.) With ``every_row`` (see
    reads_every_row), every event in range."""
    events, event_params = events_in_range(store, project, since, until)
    groups = activity_groups(store)
    parts = [f"{sql} AS {name}_{part}" for name in ("input", "output")
             for part, sql in zip(("hi", "lo"), int_parts(f"e.{name}_tokens"), strict=True)]
    raw = (f"SELECT {groups['day']} AS day, {groups['model']} AS model, "
           f"{groups['is_llm']} AS is_llm, 1 AS events, "
           f"CASE WHEN {ERROR_EVENT} THEN 1 ELSE 0 END AS errors, "
           f"CASE WHEN e.error IS NOT NULL THEN 1 ELSE 0 END AS failed, "
           f"{clamped_cost('e.cost')} AS cost, {', '.join(parts)}, "
           f"CASE WHEN {CALL_WITHOUT_TOKENS} THEN 1 ELSE 0 END AS without_tokens, "
           f"CASE WHEN {CALL_WITHOUT_COST} THEN 1 ELSE 0 END AS without_cost {events}")
    if every_row:
        return raw, event_params
    ph = store.placeholder
    hour = bucket(store, f"CAST({ph} AS DOUBLE PRECISION)", 3600)
    read_raw = (f"{NOTED_IDS} UNION SELECT session_id FROM session_activity "
                f"WHERE hour IN ({hour}, {hour}) AND ((first_at < {ph} AND last_at >= {ph}) "
                f"OR (first_at < {ph} AND last_at >= {ph}))")
    raw_params = [since, until, since, since, until, until]
    scoped = [project] if project is not None else []
    kept = (f"SELECT d.day, d.model, d.is_llm, {', '.join(f'd.{c}' for c in SUMS)} "
            f"FROM session_activity d WHERE d.first_at >= {ph} AND d.last_at < {ph}"
            + (f" AND d.project = {ph}" if project is not None else "")
            + f" AND d.session_id NOT IN ({read_raw})")
    kept_params = [since, until, *scoped, *raw_params]
    # Whole hours from first to last (exclusive), a second clear of the
    # range's ends, so that every event an hour holds lies in range however
    # the database rounds its time / 3600 (and from hour 1: SQLite's hours
    # are truncated, its hour 0 holds the hour before 1970 too).
    first, last = max(1, math.ceil((since + 1) / HOUR)), math.floor((until - 1) / HOUR)
    selects: list[tuple[str, list[Any]]] = [(kept, kept_params)]
    if first < last:
        # Stale hours, and those in which sessions read one by one have
        # kept groups (their sums in hourly_activity count those groups).
        dirty = ("SELECT hour FROM stale_hours UNION SELECT r.hour FROM session_activity r "
                 f"WHERE r.session_id IN ({read_raw})")
        selects = [
            (f"SELECT h.day, h.model, h.is_llm, {', '.join(f'h.{c}' for c in SUMS)} "
             f"FROM hourly_activity h WHERE h.hour >= {ph} AND h.hour < {ph}"
             + (f" AND h.orphan = 0 AND h.project = {ph}" if project is not None else "")
             + f" AND h.hour NOT IN ({dirty})", [first, last, *scoped, *raw_params]),
            # (Every group in range is in an hour from the range's first to
            # its last: the database numbers hours in order of time.)
            (f"{kept} AND d.hour >= {hour} AND d.hour < {ph}", [*kept_params, since, first]),
            (f"{kept} AND d.hour >= {ph} AND d.hour <= {hour}", [*kept_params, last, until]),
            (f"{kept} AND d.hour >= {ph} AND d.hour < {ph} AND d.hour IN ({dirty})",
             [*kept_params, first, last, *raw_params]),
        ]
    selects.append((f"{raw} AND e.session_id IN ({read_raw})", [*event_params, *raw_params]))
    return (" UNION ALL ".join(sql for sql, _ in selects),
            [p for _, params in selects for p in params])


#: The counts of calls without token counts and without a cost, by their
#: names in SUMS and as a day, a model and the dashboard name them.
_WITHOUT = {"without_tokens": "llm_calls_without_tokens",
            "without_cost": "llm_calls_without_cost"}

#: A day's sums before any of its events (and of a day that had none).
_EMPTY_DAY = {"cost": 0.0, "input_tokens": 0, "output_tokens": 0, "llm_calls": 0,
              "llm_errors": 0, "events": 0, "errors": 0,
              **{key: 0 for key in _WITHOUT.values()}}


def _per_day_and_model(groups: list[dict[str, Any]]
                        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The days and the models (LLM calls only, costliest first) of the sums
    by day, model and kind."""
    days: dict[int, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    for group in groups:
        day = days.setdefault(int(group["day"]), {"day": int(group["day"]), **_EMPTY_DAY})
        cost = float(group["cost"] or 0.0)
        tokens = {f"{name}_tokens": int(group[f"{name}_hi"] or 0) * PART
                  + int(group[f"{name}_lo"] or 0) for name in ("input", "output")}
        without = {key: int(group[column] or 0) for column, key in _WITHOUT.items()}
        events, failed = int(group["events"]), int(group["failed"])
        day["cost"] += cost
        day["events"] += events
        day["errors"] += int(group["errors"])
        for name, count in (*tokens.items(), *without.items()):
            day[name] += count
        if int(group["is_llm"]):
            day["llm_calls"] += events
            day["llm_errors"] += failed
            model = models.setdefault(group["model"], {
                "model": group["model"], "calls": 0, "cost": 0.0, "input_tokens": 0,
                "output_tokens": 0, "errors": 0, **{key: 0 for key in _WITHOUT.values()}})
            model["calls"] += events
            model["cost"] += cost
            model["errors"] += failed
            for name, count in (*tokens.items(), *without.items()):
                model[name] += count
    for row in (*days.values(), *models.values()):
        for name in ("input_tokens", "output_tokens"):
            row[name] = _within_64_bits(row[name])
    return ([days[number] for number in sorted(days)],
            sorted(models.values(), key=lambda m: (-m["cost"], -m["calls"])))


def _within_64_bits(number: int) -> int:
    """A total as the database's sums give it: saturated at the 64-bit limits."""
    return max(INT_MIN, min(INT_MAX, number))


def _fill_days(rows: list[dict[str, Any]], since: float, until: float) -> list[dict[str, Any]]:
    by_day = {int(r["day"]): r for r in rows}
    first, last = int(since // DAY), int(-(-until // DAY)) - 1  # the day holding until, exclusive
    if last - first > 400:  # a very long range: only the days that have data
        return [{**r, "day": int(r["day"]), "date": int(r["day"]) * DAY} for r in rows]
    days = []
    for number in range(first, last + 1):
        row = by_day.get(number) or _EMPTY_DAY
        days.append({**row, "day": number, "date": number * DAY})
    return days
