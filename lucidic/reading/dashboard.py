"""Aggregates over a time range: cost and tokens per day and per model, LLM
latency and time to first token per model (p50, p95), and error rates.

Everything is computed by the database in a handful of statements, the same
SQL on SQLite and PostgreSQL; percentiles are nearest-rank, picked with
window functions so that no call's duration travels to Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..limits import INT_MAX, INT_MIN
from ..store import Store
from .totals import cost_sum, int_sum

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


def _day_expr(store: Store, column: str) -> str:
    # Whole UTC days since the epoch (PostgreSQL's CAST rounds, so floor first).
    if store.dialect == "postgresql":
        return f"CAST(floor({column} / 86400) AS BIGINT)"
    return f"CAST({column} / 86400 AS INTEGER)"


def dashboard(store: Store, project: str | None, since: float, until: float) -> Dashboard:
    if not until > since:
        raise ValueError("the dashboard's range must end after it starts")
    ph = store.placeholder
    scope = f" AND s.project = {ph}" if project is not None else ""
    scoped = [project] if project is not None else []
    # Events carry no project: join their sessions only when scoping by one.
    join = "JOIN sessions s ON s.id = e.session_id " if project is not None else ""
    events = f"FROM events e {join}WHERE e.started_at >= {ph} AND e.started_at < {ph}{scope}"
    base = [since, until, *scoped]
    day = _day_expr(store, "e.started_at")
    model = "COALESCE(e.model, e.request_model, '(no model)')"
    tokens = (f"COALESCE({int_sum(store, 'e.input_tokens')}, 0) AS input_tokens, "
              f"COALESCE({int_sum(store, 'e.output_tokens')}, 0) AS output_tokens, ")
    cost = f"COALESCE({cost_sum('e.cost')}, 0)"
    per_day, per_model, latency, ttft, sessions = store.query_many([
        (f"SELECT {day} AS day, {cost} AS cost, {tokens}"
         "SUM(CASE WHEN e.type = 'llm' THEN 1 ELSE 0 END) AS llm_calls, "
         "SUM(CASE WHEN e.type = 'llm' AND e.error IS NOT NULL THEN 1 ELSE 0 END) AS llm_errors, "
         "COUNT(*) AS events, "
         "SUM(CASE WHEN e.error IS NOT NULL OR e.type = 'error' THEN 1 ELSE 0 END) AS errors "
         f"{events} GROUP BY {day} ORDER BY day", base),
        (f"SELECT {model} AS model, COUNT(*) AS calls, {cost} AS cost, "
         f"{tokens}"
         "SUM(CASE WHEN e.error IS NOT NULL THEN 1 ELSE 0 END) AS errors "
         f"{events} AND e.type = 'llm' GROUP BY {model} ORDER BY cost DESC, calls DESC", base),
        (_percentiles_sql(events, model, "e.duration"), base),
        (_percentiles_sql(events, model, "e.time_to_first_token"), base),
        ("SELECT "
         f"SUM(CASE WHEN s.is_finished = 1 AND s.is_successful = 0 THEN 1 ELSE 0 END) AS failed, "
         f"SUM(CASE WHEN s.is_finished = 1 AND s.is_successful = 1 THEN 1 ELSE 0 END) "
         "AS successful, "
         f"SUM(CASE WHEN s.is_finished = 1 AND s.is_successful IS NULL THEN 1 ELSE 0 END) "
         "AS finished, "
         "SUM(CASE WHEN s.is_finished IS NULL OR s.is_finished = 0 THEN 1 ELSE 0 END) AS running, "
         f"COUNT(*) AS total FROM sessions s WHERE s.started_at >= {ph} AND s.started_at < {ph}"
         f"{scope}", base),
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


def _within_64_bits(number: int) -> int:
    """A total as the database's sums give it: saturated at the 64-bit limits."""
    return max(INT_MIN, min(INT_MAX, number))


def _percentiles_sql(events: str, model: str, column: str) -> str:
    """p50 and p95 of ``column`` per model, nearest rank: the value at rank
    ceil(p * n), found by numbering each model's values in order."""
    sql = ("SELECT model, rn, n, value FROM ("
           f"SELECT {model} AS model, {column} AS value, "
           f"ROW_NUMBER() OVER (PARTITION BY {model} ORDER BY {column}) AS rn, "
           f"COUNT(*) OVER (PARTITION BY {model}) AS n "
           f"{events} AND e.type = 'llm' AND {column} IS NOT NULL) ranked "
           "WHERE rn = (n * 50 + 99) / 100 OR rn = (n * 95 + 99) / 100")
    return sql


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
