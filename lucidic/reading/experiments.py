"""Reading experiments, runs, scores and mass simulations: what the
evaluation layer, ``lucidic experiments`` / ``lucidic mass-sims``, the JSON
API and the web UI show, written once. ``project`` scopes every call (None:
every project, as the embedded store's own tools read it).

A run is a session of an experiment; its row here (``runs``) carries its
case, output or error, status, its own scores {name: value} with their
verdicts and comments, the evaluations that failed, its cost and duration.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._scores import from_row
from ..evalstore import EXPERIMENT_JSON
from ..store import Store
from .sessions import status_of
from .totals import cost_sum


def _loads(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _marks(ph: str, n: int) -> str:
    return ", ".join([ph] * n)


def _chunks(items: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _scope(project: str | None, ph: str, alias: str = "") -> tuple[str, list[Any]]:
    if project is None:
        return "", []
    return f" AND {alias}project = {ph}", [project]


def experiment(store: Store, experiment_id: str, project: str | None) -> dict[str, Any] | None:
    ph = store.placeholder
    where, params = _scope(project, ph)
    rows = store.query(f"SELECT * FROM experiments WHERE id = {ph}{where} "
                        "ORDER BY updated_at DESC", [experiment_id, *params])
    return _experiment_row(rows[0]) if rows else None


def _experiment_row(row: dict[str, Any]) -> dict[str, Any]:
    for column in EXPERIMENT_JSON:
        row[column] = _loads(row.get(column))
    return row


def list_experiments(store: Store, project: str | None, *, limit: int = 50,
                     offset: int = 0) -> list[dict[str, Any]]:
    """Experiments, newest first, with how many runs each has, how many ended
    and failed, and their cost."""
    ph = store.placeholder
    where, params = _scope(project, ph, "x.")
    rows = store.query(
        "SELECT x.*, COUNT(s.id) AS run_count, "
        "SUM(CASE WHEN s.is_finished = 1 THEN 1 ELSE 0 END) AS ended_count, "
        "SUM(CASE WHEN s.error IS NOT NULL OR s.is_successful = 0 THEN 1 ELSE 0 END) "
        "AS failed_count FROM experiments x LEFT JOIN sessions s "
        "ON s.experiment_id = x.id AND s.project = x.project "
        f"WHERE 1 = 1{where} GROUP BY x.project, x.id "
        f"ORDER BY x.created_at DESC, x.id LIMIT {ph} OFFSET {ph}",
        [*params, int(limit), int(offset)])
    out = []
    for row in rows:
        item = _experiment_row(row)
        for column in ("run_count", "ended_count", "failed_count"):
            item[column] = int(item.get(column) or 0)
        out.append(item)
    return out


_RUN_COLUMNS = ("id", "project", "experiment_id", "case_id", "repeat", "input", "expected",
                "output", "error", "is_finished", "is_successful", "started_at", "ended_at",
                "name")


def experiment_runs(store: Store, experiment_id: str, project: str | None
                    ) -> list[dict[str, Any]]:
    """The experiment's runs, by case id and repeat.

    Case ids are the stable key a run is compared by; the order runs started in
    is not (an experiment runs its cases concurrently)."""
    ph = store.placeholder
    where, params = _scope(project, ph)
    sessions = store.query(f"SELECT {', '.join(_RUN_COLUMNS)} FROM sessions "
                            f"WHERE experiment_id = {ph}{where} "
                            "ORDER BY case_id, repeat, started_at, id",
                            [experiment_id, *params])
    return _runs(store, sessions)


def run_sessions(store: Store, session_ids: Sequence[str], project: str | None
                 ) -> list[dict[str, Any]]:
    """The sessions named, as runs (see run_rows), in the order named."""
    ph = store.placeholder
    where, params = _scope(project, ph)
    found: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(list(dict.fromkeys(session_ids))):
        for row in store.query(f"SELECT {', '.join(_RUN_COLUMNS)} FROM sessions WHERE id IN "
                                f"({_marks(ph, len(chunk))}){where}", [*chunk, *params]):
            found[row["id"]] = row
    return _runs(store, [found[s] for s in session_ids if s in found])


def _runs(store: Store, sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs: ``session_id``, ``case_id``, ``repeat``, ``input``, ``expected``,
    ``output``, ``error``, ``status``, ``scores`` {name: value} (the
    session's own scores), ``passed`` {name: verdict}, ``comments``,
    ``evaluation_errors`` {name: error}, ``cost``, ``duration``."""
    ids = [s["id"] for s in sessions]
    costs = _costs(store, ids)
    scores = session_scores(store, ids, None)
    evaluations = evaluations_of(store, ids, None)
    out = []
    for session in sessions:
        sid = session["id"]
        own = [s for s in scores.get(sid, ()) if s["step_id"] is None and s["event_id"] is None]
        started, ended = session.get("started_at"), session.get("ended_at")
        out.append({
            "session_id": sid, "experiment_id": session.get("experiment_id"),
            "case_id": session.get("case_id"), "repeat": session.get("repeat"),
            "name": session.get("name"),
            # decoded by the store's query already (JSON columns): a second
            # json.loads would turn the text "4" into the number 4
            "input": session.get("input"), "expected": session.get("expected"),
            "output": session.get("output"), "error": session.get("error"),
            "status": status_of(session), "started_at": started, "ended_at": ended,
            "scores": {s["name"]: s["value"] for s in own},
            "passed": {s["name"]: s["passed"] for s in own},
            "comments": {s["name"]: s["comment"] for s in own if s["comment"] is not None},
            "evaluation_errors": {e["name"]: e["error"] for e in evaluations.get(sid, ())
                                  if e["status"] == "failed"},
            "cost": costs.get(sid, 0.0),
            "duration": None if started is None or ended is None else ended - started,
        })
    return out


def _costs(store: Store, session_ids: list[str]) -> dict[str, float]:
    ph = store.placeholder
    costs: dict[str, float] = {}
    for chunk in _chunks(session_ids):
        for row in store.query(f"SELECT session_id, COALESCE({cost_sum('cost')}, 0) AS cost "
                               f"FROM events WHERE session_id IN ({_marks(ph, len(chunk))}) "
                               "GROUP BY session_id", list(chunk)):
            costs[row["session_id"]] = float(row["cost"] or 0.0)
    return costs


def _rows_by_session(store: Store, columns: str, table: str, session_ids: Sequence[str],
                     project: str | None) -> dict[str, list[dict[str, Any]]]:
    ph = store.placeholder
    where, params = _scope(project, ph)
    out: dict[str, list[dict[str, Any]]] = {}
    for chunk in _chunks(list(dict.fromkeys(session_ids))):
        for row in store.query(f"SELECT session_id, {columns} FROM {table} WHERE session_id "
                               f"IN ({_marks(ph, len(chunk))}){where} ORDER BY name",
                               [*chunk, *params]):
            out.setdefault(row["session_id"], []).append(row)
    return out


def session_scores(store: Store, session_ids: Sequence[str], project: str | None
                   ) -> dict[str, list[dict[str, Any]]]:
    """Every score of the sessions (theirs, their steps' and events'), by session."""
    found = _rows_by_session(store, "step_id, event_id, name, kind, value, label, comment, "
                             "passed, source, evaluator, evaluator_session_id, updated_at",
                             "scores", session_ids, project)
    for rows in found.values():
        for row in rows:
            row["value"] = from_row(row)
            row["passed"] = None if row["passed"] is None else bool(row["passed"])
            del row["label"]
    return found


def evaluations_of(store: Store, session_ids: Sequence[str], project: str | None
                   ) -> dict[str, list[dict[str, Any]]]:
    """Who scored each session with what (claims and their outcome), by session."""
    return _rows_by_session(store, "name, status, owner, claimed_at, finished_at, error, "
                            "evaluator_session_id", "evaluations", session_ids, project)


def rubric_results(store: Store, session_id: str, project: str | None) -> list[dict[str, Any]]:
    """The session's rubrics with their criteria, as last scored."""
    ph = store.placeholder
    where, params = _scope(project, ph)
    rubrics: dict[str, dict[str, Any]] = {}
    for row in store.query("SELECT rubric, criterion, weight, value, comment FROM "
                            f"rubric_results WHERE session_id = {ph}{where} "
                            "ORDER BY rubric, criterion", [session_id, *params]):
        entry = rubrics.setdefault(row["rubric"], {"rubric": row["rubric"], "criteria": []})
        entry["criteria"].append({k: row[k] for k in ("criterion", "weight", "value",
                                                      "comment")})
    return list(rubrics.values())


def llm_events(store: Store, experiment_id: str, project: str | None) -> list[dict[str, Any]]:
    """The LLM events of the experiment's runs, each with its run's case_id and repeat."""
    ph = store.placeholder
    where, params = _scope(project, ph, "s.")
    return store.query(
        "SELECT e.id, e.session_id, e.provider, e.model, e.request_model, e.input, "
        "e.arguments, e.output, e.input_tokens, e.output_tokens, e.cached_tokens, "
        "e.cache_write_tokens, e.reasoning_tokens, e.error, e.started_at, "
        "s.case_id, s.repeat FROM events e JOIN sessions s ON s.id = e.session_id "
        f"WHERE s.experiment_id = {ph}{where} AND e.type = 'llm' "
        "ORDER BY e.started_at, e.id", [experiment_id, *params])


def mass_sims(store: Store, project: str | None, *, mass_sim_id: str | None = None,
              limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    """Mass simulations, newest first, with ``total`` (the sessions intended),
    ``sessions`` (how many exist) and ``ended`` (how many have ended), and
    how many of those succeeded or failed."""
    ph = store.placeholder
    clauses, params = [], []
    if project is not None:
        clauses.append(f"m.project = {ph}")
        params.append(project)
    if mass_sim_id is not None:
        clauses.append(f"m.id = {ph}")
        params.append(mass_sim_id)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    rows = store.query(
        "SELECT m.id, m.project, m.name, m.task, m.tags, m.total_num_sims, m.agent_id, "
        "m.created_at, COUNT(s.id) AS sessions, "
        "SUM(CASE WHEN s.is_finished = 1 THEN 1 ELSE 0 END) AS ended, "
        "SUM(CASE WHEN s.is_successful = 1 THEN 1 ELSE 0 END) AS successful, "
        "SUM(CASE WHEN s.is_successful = 0 THEN 1 ELSE 0 END) AS failed "
        "FROM mass_sims m LEFT JOIN sessions s ON s.mass_sim_id = m.id AND s.project = m.project"
        f"{where} GROUP BY m.id, m.project, m.name, m.task, m.tags, m.total_num_sims, "
        f"m.agent_id, m.created_at ORDER BY m.created_at DESC, m.id LIMIT {ph} OFFSET {ph}",
        [*params, int(limit), int(offset)])
    for row in rows:
        row["tags"] = _loads(row.get("tags"))
        row["total"] = row.pop("total_num_sims")
        for column in ("sessions", "ended", "successful", "failed"):
            row[column] = int(row.get(column) or 0)
    return rows


def add_judgement(store: Store, tree: dict[str, Any], project: str | None) -> dict[str, Any]:
    """A session tree with what was said about it: ``scores`` {name: value}
    on the session and on each scored step and event, ``score_details``
    (every score, with its comment, source and judge's session),
    ``rubric_results``, ``evaluations`` (who scored it, how it went) and, for
    an evaluator's own session, ``evaluates`` (the runs it judged)."""
    sid = tree["id"]
    details = session_scores(store, [sid], project).get(sid, [])
    tree["scores"] = {s["name"]: s["value"] for s in details
                      if s["step_id"] is None and s["event_id"] is None}
    tree["score_details"] = details
    tree["rubric_results"] = rubric_results(store, sid, project)
    tree["evaluations"] = [{k: v for k, v in row.items() if k != "session_id"}
                           for row in evaluations_of(store, [sid], project).get(sid, [])]
    ph = store.placeholder
    where, params = _scope(project, ph)
    tree["evaluates"] = store.query(
        f"SELECT session_id, name FROM scores WHERE evaluator_session_id = {ph}{where} "
        "ORDER BY session_id, name", [sid, *params])
    by_target: dict[str, dict[str, Any]] = {}
    for score in details:
        target = score["event_id"] or score["step_id"]
        if target is not None:
            by_target.setdefault(target, {})[score["name"]] = score["value"]
    if by_target:
        _place_scores(tree, by_target)
    return tree


def _place_scores(node: dict[str, Any], by_target: Mapping[str, dict[str, Any]]) -> None:
    for event in node.get("events") or ():
        if event.get("id") in by_target:
            event["scores"] = by_target[event["id"]]
    for step in node.get("steps") or ():
        if step.get("id") in by_target:
            step["scores"] = by_target[step["id"]]
        _place_scores(step, by_target)
