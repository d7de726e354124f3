"""Aggregates over a time range: cost and tokens per day and per model, LLM
latency and time to first token per model (p50, p95), and error rates.

Everything is computed by the database in a handful of statements, the same
SQL on SQLite and PostgreSQL; percentiles are nearest-rank, picked with
window functions so that no call's duration travels to Python. The sums and
timings are read from what lucidic.reading.derived keeps per session, and
from the events of sessions changed since (exact either way; costs are
sums of sums, which may differ from one sum in the last binary digit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..limits import INT_MAX, INT_MIN
from ..store import Store
from .derived import ERROR_EVENT, MODEL, NOTED_IDS, activity_groups, bucket
from .totals import clamped_cost, int_parts, parts_sum

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
    total_tokens: int

    @property
    def llm_error_rate(self) -> float | None:
        return self.llm_errors / self.llm_calls if self.llm_calls else None


def dashboard(store: Store, project: str | None, since: float, until: float) -> Dashboard:
    if not until > since:
        raise ValueError("the dashboard's range must end after it starts")
    ph = store.placeholder
    scoped = [project] if project is not None else []
    facts, fact_params = _facts(store, project, since, until)
    tokens = "".join(
        f"COALESCE({parts_sum(store, f'{name}_hi', f'{name}_lo')}, 0) AS {name}_tokens, "
        for name in ("input", "output"))
    cost = "COALESCE(SUM(cost), 0) AS cost"
    timings = {column: _timings(store, project, since, until, column)
               for column in ("duration", "time_to_first_token")}
    per_day, per_model, latency, ttft, sessions = store.query_many([
        (f"SELECT day, {cost}, {tokens}"
         "SUM(CASE WHEN is_llm = 1 THEN events ELSE 0 END) AS llm_calls, "
         "SUM(CASE WHEN is_llm = 1 THEN failed ELSE 0 END) AS llm_errors, "
         "SUM(events) AS events, SUM(errors) AS errors "
         f"FROM ({facts}) f GROUP BY day ORDER BY day", fact_params),
        (f"SELECT model, SUM(events) AS calls, {cost}, {tokens}SUM(failed) AS errors "
         f"FROM ({facts}) f WHERE is_llm = 1 GROUP BY model ORDER BY cost DESC, calls DESC",
         fact_params),
        *((_percentiles_sql(sql), params) for sql, params in timings.values()),
        ("SELECT "
         f"SUM(CASE WHEN s.is_finished = 1 AND s.is_successful = 0 THEN 1 ELSE 0 END) AS failed, "
         f"SUM(CASE WHEN s.is_finished = 1 AND s.is_successful = 1 THEN 1 ELSE 0 END) "
         "AS successful, "
         f"SUM(CASE WHEN s.is_finished = 1 AND s.is_successful IS NULL THEN 1 ELSE 0 END) "
         "AS finished, "
         "SUM(CASE WHEN s.is_finished IS NULL OR s.is_finished = 0 THEN 1 ELSE 0 END) AS running, "
         f"COUNT(*) AS total FROM sessions s WHERE s.started_at >= {ph} AND s.started_at < {ph}"
         + (f" AND s.project = {ph}" if project is not None else ""), [since, until, *scoped]),
    ])
    percentiles = {"duration": _by_model(latency), "ttft": _by_model(ttft)}
    for row in per_model:
        for name, found in percentiles.items():
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
        total_tokens=_within_64_bits(sum(int(d["input_tokens"]) + int(d["output_tokens"])
                                         for d in days)))


def _raw_events(store: Store, project: str | None, since: float,
                until: float) -> tuple[str, list[Any]]:
    """FROM and WHERE of the events in range (of ``project``)."""
    ph = store.placeholder
    if project is None:
        return f"FROM events e WHERE e.started_at >= {ph} AND e.started_at < {ph}", [since, until]
    # Events carry no project: their sessions say.
    return (f"FROM events e JOIN sessions s ON s.id = e.session_id WHERE e.started_at >= {ph} "
            f"AND e.started_at < {ph} AND s.project = {ph}", [since, until, project])


def _derived(store: Store, table: str, first: str, last: str, project: str | None,
             since: float, until: float) -> tuple[str, list[Any]]:
    """FROM and WHERE of a derived table's rows that lie in range (of ``project``)."""
    ph = store.placeholder
    scope = f" AND d.project = {ph}" if project is not None else ""
    return (f"FROM {table} d WHERE d.{first} >= {ph} AND d.{last} < {ph}{scope}",
            [since, until, *([project] if project is not None else [])])


def _facts(store: Store, project: str | None, since: float,
           until: float) -> tuple[str, list[Any]]:
    """Rows of (day, model, is_llm, events, errors, failed, cost, token parts)
    that sum to the events in range: session_activity's groups that lie in
    it, but those of sessions noted as changed or with a group across an end
    of the range, whose events in range are read one by one instead. (A
    group across an end is in the hour of that end: all its events are.)"""
    ph = store.placeholder
    hour = bucket(store, f"CAST({ph} AS DOUBLE PRECISION)", 3600)
    read_raw = (f"{NOTED_IDS} UNION SELECT session_id FROM session_activity "
                f"WHERE hour IN ({hour}, {hour}) AND ((first_at < {ph} AND last_at >= {ph}) "
                f"OR (first_at < {ph} AND last_at >= {ph}))")
    raw_params = [since, until, since, since, until, until]
    derived, derived_params = _derived(store, "session_activity", "first_at", "last_at",
                                       project, since, until)
    events, event_params = _raw_events(store, project, since, until)
    groups = activity_groups(store)
    parts = [sql for name in ("input", "output") for sql in int_parts(f"e.{name}_tokens")]
    sql = (f"SELECT d.day, d.model, d.is_llm, d.events, d.errors, d.failed, d.cost, "
           f"d.input_hi, d.input_lo, d.output_hi, d.output_lo {derived} "
           f"AND d.session_id NOT IN ({read_raw}) UNION ALL "
           f"SELECT {groups['day']}, {groups['model']}, {groups['is_llm']}, 1, "
           f"CASE WHEN {ERROR_EVENT} THEN 1 ELSE 0 END, "
           f"CASE WHEN e.error IS NOT NULL THEN 1 ELSE 0 END, {clamped_cost('e.cost')}, "
           f"{', '.join(parts)} {events} AND e.session_id IN ({read_raw})")
    return sql, [*derived_params, *raw_params, *event_params, *raw_params]


def _timings(store: Store, project: str | None, since: float, until: float,
             column: str) -> tuple[str, list[Any]]:
    """(model, value) of ``column`` for each LLM call in range: from
    llm_timings, but for sessions noted as changed, from their events."""
    derived, derived_params = _derived(store, "llm_timings", "started_at", "started_at",
                                       project, since, until)
    events, event_params = _raw_events(store, project, since, until)
    sql = (f"SELECT d.model, d.{column} AS value {derived} AND d.{column} IS NOT NULL "
           f"AND d.session_id NOT IN ({NOTED_IDS}) UNION ALL "
           f"SELECT {MODEL}, e.{column} {events} AND e.type = 'llm' AND e.{column} IS NOT NULL "
           f"AND e.session_id IN ({NOTED_IDS})")
    return sql, [*derived_params, *event_params]


def _within_64_bits(number: int) -> int:
    """A total as the database's sums give it: saturated at the 64-bit limits."""
    return max(INT_MIN, min(INT_MAX, number))


def _percentiles_sql(values: str) -> str:
    """p50 and p95 per model of ``values`` (SQL of (model, value) rows),
    nearest rank: the value at rank ceil(p * n), found by numbering each
    model's values in order."""
    return ("SELECT model, rn, n, value FROM ("
            "SELECT model, value, ROW_NUMBER() OVER (PARTITION BY model ORDER BY value) AS rn, "
            f"COUNT(*) OVER (PARTITION BY model) AS n FROM ({values}) v) ranked "
            "WHERE rn = (n * 50 + 99) / 100 OR rn = (n * 95 + 99) / 100")


def _by_model(rows: list[dict[str, Any]]) -> dict[str, tuple[float | None, float | None]]:
    found: dict[str, list[float | None]] = {}
    for row in rows:
        n, rank = int(row["n"]), int(row["rn"])
        slot = found.setdefault(row["model"], [None, None])
        if rank == (n * 50 + 99) // 100:
            slot[0] = row["value"]
        if rank == (n * 95 + 99) // 100:
            slot[1] = row["value"]
    return {model: (p50, p95) for model, (p50, p95) in found.items()}


def _fill_days(rows: list[dict[str, Any]], since: float, until: float) -> list[dict[str, Any]]:
    by_day = {int(r["day"]): r for r in rows}
    first, last = int(since // DAY), int(-(-until // DAY)) - 1  # the day holding until, exclusive
    if last - first > 400:  # a very long range: only the days that have data
        return [{**r, "day": int(r["day"]), "date": int(r["day"]) * DAY} for r in rows]
    days = []
    for number in range(first, last + 1):
        row = by_day.get(number) or {"cost": 0.0, "input_tokens": 0, "output_tokens": 0,
                                     "llm_calls": 0, "llm_errors": 0, "events": 0, "errors": 0}
        days.append({**row, "day": number, "date": number * DAY})
    return days
