"""The evaluation tables: experiments, mass simulations, scores, rubric
results and evaluation claims. Their migration is in ``lucidic.store``
(one schema); their SQL is here, used by the embedded store and by the
server alike.

Three record kinds travel with sessions, steps and events through every
sink (and the spool): ``experiment``, ``mass_sim`` and ``score``. Like every
record they are idempotent upserts keyed by client-made ids, merged field by
field whatever the order they arrive in (the newest value of a field wins; a
record never clears a field). A session naming an experiment or mass
simulation that does not exist yet creates it, bare, in the same
transaction: hosted-SDK scripts that pass ids made elsewhere run unchanged.

Evaluation claims make scoring exactly-once: ``claim`` is one atomic upsert
per evaluation (taken when free, or when its holder's lease ran out), and
``complete`` stores an outcome only while its claimant still holds it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._scores import from_row, score_id

if TYPE_CHECKING:
    from .store import Record, Store

#: Record kinds applied here rather than by the store's session/step/event path.
KINDS = frozenset({"experiment", "mass_sim", "score"})
#: What each kind must carry.
REQUIRED = {"experiment": "project", "mass_sim": "project", "score": "session_id"}

#: Column types both SQLite (by affinity) and PostgreSQL understand.
_REAL, _INT, _TEXT, _BOOL = "DOUBLE PRECISION", "BIGINT", "TEXT", "SMALLINT"

#: Columns added to existing tables (migration): a run's case and outcome on
#: its session; on an event, the recorded event a replayed answer came from.
SESSION_RUN_COLUMNS = {"case_id": _TEXT, "repeat": _INT, "input": _TEXT, "expected": _TEXT,
                       "output": _TEXT, "error": _TEXT, "production_monitoring": _BOOL}
EVENT_REPLAY_COLUMNS = {"replayed_from": _TEXT}
JSON_COLUMNS = frozenset({"input", "expected", "output"})
BOOL_COLUMNS = frozenset({"production_monitoring"})

EXPERIMENT_COLUMNS = {
    "name": _TEXT, "rubrics": _TEXT, "evaluators": _TEXT, "summary_evaluators": _TEXT,
    "metadata": _TEXT, "tags": _TEXT, "repeats": _INT, "max_concurrency": _INT,
    "case_count": _INT, "replay_of": _TEXT, "replay_mode": _TEXT, "summary": _TEXT,
    "created_at": _REAL,
}
_EXPERIMENT_JSON = frozenset({"rubrics", "evaluators", "summary_evaluators", "metadata", "tags",
                              "summary"})
MASS_SIM_COLUMNS = ("name", "task", "tags", "total_num_sims", "agent_id", "created_at")
SCORE_COLUMNS = {
    "step_id": _TEXT, "event_id": _TEXT, "name": _TEXT, "kind": _TEXT, "value": _REAL,
    "label": _TEXT, "comment": _TEXT, "passed": _BOOL, "source": _TEXT, "evaluator": _TEXT,
    "evaluator_session_id": _TEXT, "created_at": _REAL,
}


def _columns(columns: Mapping[str, str]) -> str:
    return "".join(f"  {name} {kind},\n" for name, kind in columns.items())


MIGRATION = [
    *(f"ALTER TABLE sessions ADD COLUMN {name} {kind}"
      for name, kind in SESSION_RUN_COLUMNS.items()),
    *(f"ALTER TABLE events ADD COLUMN {name} {kind}"
      for name, kind in EVENT_REPLAY_COLUMNS.items()),
    "CREATE TABLE IF NOT EXISTS experiments (\n  project TEXT NOT NULL,\n  id TEXT NOT NULL,\n"
    + _columns(EXPERIMENT_COLUMNS)
    + "  updated_at DOUBLE PRECISION NOT NULL,\n  PRIMARY KEY (project, id)\n)",
    "CREATE INDEX IF NOT EXISTS experiments_created ON experiments (project, created_at)",
    "CREATE TABLE IF NOT EXISTS scores (\n  project TEXT NOT NULL,\n  id TEXT NOT NULL,\n"
    "  session_id TEXT NOT NULL,\n" + _columns(SCORE_COLUMNS)
    + "  updated_at DOUBLE PRECISION NOT NULL,\n  PRIMARY KEY (project, id)\n)",
    "CREATE INDEX IF NOT EXISTS scores_session ON scores (project, session_id)",
    "CREATE INDEX IF NOT EXISTS scores_evaluator_session ON scores (evaluator_session_id)",
    "CREATE TABLE IF NOT EXISTS rubric_results (\n  project TEXT NOT NULL,\n"
    "  session_id TEXT NOT NULL,\n  rubric TEXT NOT NULL,\n  criterion TEXT NOT NULL,\n"
    "  weight DOUBLE PRECISION NOT NULL,\n  value DOUBLE PRECISION,\n  comment TEXT,\n"
    "  updated_at DOUBLE PRECISION NOT NULL,\n"
    "  PRIMARY KEY (project, session_id, rubric, criterion)\n)",
    "CREATE TABLE IF NOT EXISTS evaluations (\n  project TEXT NOT NULL,\n"
    "  session_id TEXT NOT NULL,\n  name TEXT NOT NULL,\n  status TEXT NOT NULL,\n"
    "  owner TEXT,\n  claimed_at DOUBLE PRECISION,\n  finished_at DOUBLE PRECISION,\n"
    "  error TEXT,\n  evaluator_session_id TEXT,\n  updated_at DOUBLE PRECISION NOT NULL,\n"
    "  PRIMARY KEY (project, session_id, name)\n)",
]


def _json(value: Any) -> str | None:
    if value is None:
        return None
    from .store import clean_json

    return json.dumps(clean_json(value), ensure_ascii=False, default=repr)


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


# -- records ---------------------------------------------------------------------------

def check(kind: str, record_id: str, fields: Mapping[str, Any], project: str | None) -> None:
    """Refuse a malformed record of one of these kinds (ValueError)."""
    needed = REQUIRED[kind]
    if fields.get(needed) is None and not (needed == "project" and project is not None):
        raise ValueError(f"{kind} record {record_id!r} lacks {needed!r}")
    if kind == "score" and not isinstance(fields.get("name"), str):
        raise ValueError(f"score record {record_id!r} lacks 'name'")


def referenced_session(kind: str, fields: Mapping[str, Any]) -> str | None:
    """The session a record of these kinds belongs to (a score's), if any."""
    return fields.get("session_id") if kind == "score" else None


def apply(store: Store, cur: Any, records: Sequence[Record], project: str | None) -> None:
    """Upsert experiment, mass_sim and score records (``project``: the
    server's, stamped on them; else each record's own, and a score's is its
    session's)."""
    ph = store.placeholder
    for kind, rid, ts, fields in records:
        if kind == "experiment":
            _upsert_experiment(cur, ph, rid, ts, fields, project or fields["project"])
        elif kind == "mass_sim":
            _upsert_mass_sim(cur, ph, rid, fields, project or fields["project"])
        elif kind == "score":
            owner = project or _session_project(cur, ph, fields["session_id"])
            _upsert_score(cur, ph, owner, rid, ts, fields)


#: The embedded store's project (it has no accounts).
DEFAULT_PROJECT = "default"


def _session_project(cur: Any, ph: str, session_id: str) -> str:
    cur.execute(f"SELECT project FROM sessions WHERE id = {ph}", (session_id,))
    row = cur.fetchone()
    return str(row[0]) if row else DEFAULT_PROJECT


def _merge_upsert(cur: Any, ph: str, table: str, key: Sequence[str], key_values: Sequence[Any],
                  values: Mapping[str, Any], ts: float, guard: str | None = None) -> None:
    """Insert the row, or merge the carried fields into it: a field takes the
    record's value if the row has none, or the record is at least as new."""
    names = [*key, *values, "updated_at"]
    sets = [f"{c} = CASE WHEN {table}.{c} IS NULL OR excluded.updated_at >= {table}.updated_at "
            f"THEN excluded.{c} ELSE {table}.{c} END" for c in values if c != guard]
    sets.append(f"updated_at = CASE WHEN excluded.updated_at > {table}.updated_at "
                f"THEN excluded.updated_at ELSE {table}.updated_at END")
    where = f" WHERE {table}.{guard} = excluded.{guard}" if guard else ""
    cur.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({_marks(ph, len(names))}) "
                f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(sets)}{where}",
                (*key_values, *values.values(), ts))


def _upsert_experiment(cur: Any, ph: str, rid: str, ts: float, fields: Mapping[str, Any],
                       project: str) -> None:
    values = {c: _json(fields[c]) if c in _EXPERIMENT_JSON else fields[c]
              for c in EXPERIMENT_COLUMNS if fields.get(c) is not None}
    _merge_upsert(cur, ph, "experiments", ("project", "id"), (project, rid), values, ts)


def _upsert_mass_sim(cur: Any, ph: str, rid: str, fields: Mapping[str, Any],
                     project: str) -> None:
    # The table (made for lucidicai's initmasssim) keeps a mass simulation as
    # created: later records fill in what it lacks and change nothing else.
    values = {c: _json(fields[c]) if c == "tags" else fields[c] for c in MASS_SIM_COLUMNS
              if fields.get(c) is not None}
    values.setdefault("created_at", time.time())
    names = ["id", "project", *values]
    sets = [f"{c} = COALESCE(mass_sims.{c}, excluded.{c})" for c in values]
    cur.execute(f"INSERT INTO mass_sims ({', '.join(names)}) VALUES ({_marks(ph, len(names))}) "
                f"ON CONFLICT (id) DO UPDATE SET {', '.join(sets)} "
                "WHERE mass_sims.project = excluded.project", (rid, project, *values.values()))


def _upsert_score(cur: Any, ph: str, project: str, rid: str, ts: float,
                  fields: Mapping[str, Any]) -> None:
    values: dict[str, Any] = {"session_id": fields["session_id"]}
    for column in SCORE_COLUMNS:
        value = fields.get(column)
        if value is not None:
            values[column] = (1 if value else 0) if column == "passed" else value
    _merge_upsert(cur, ph, "scores", ("project", "id"), (project, rid), values, ts,
                  guard="session_id")


def note_references(store: Store, cur: Any, sessions: Sequence[Record],
                    project: str | None) -> None:
    """Create, bare, the experiments and mass simulations that stored
    sessions name and that do not exist yet."""
    ph = store.placeholder
    now = time.time()
    for _, _, ts, fields in sessions:
        owner = project or fields.get("project")
        if owner is None:
            continue
        if fields.get("experiment_id"):
            cur.execute("INSERT INTO experiments (project, id, created_at, updated_at) "
                        f"VALUES ({_marks(ph, 4)}) ON CONFLICT (project, id) DO NOTHING",
                        (owner, fields["experiment_id"], ts, 0.0))
        if fields.get("mass_sim_id"):
            cur.execute("INSERT INTO mass_sims (id, project, created_at) "
                        f"VALUES ({_marks(ph, 3)}) ON CONFLICT (id) DO NOTHING",
                        (fields["mass_sim_id"], owner, min(ts, now)))


# -- claims --------------------------------------------------------------------------------

def claim(store: Store, project: str, session_id: str, names: Sequence[str], owner: str,
          lease: float) -> list[str]:
    """Of ``names``, the evaluations of the session that ``owner`` now holds."""
    ph = store.placeholder
    now = time.time()

    def run(cur: Any) -> list[str]:
        for name in names:
            cur.execute(
                "INSERT INTO evaluations (project, session_id, name, status, owner, claimed_at, "
                f"updated_at) VALUES ({_marks(ph, 3)}, 'running', {_marks(ph, 3)}) "
                "ON CONFLICT (project, session_id, name) DO UPDATE SET status = 'running', "
                "owner = excluded.owner, claimed_at = excluded.claimed_at, error = NULL, "
                "updated_at = excluded.updated_at WHERE evaluations.status = 'running' "
                f"AND evaluations.claimed_at < {ph}",
                (project, session_id, name, owner, now, now, now - lease))
        cur.execute(f"SELECT name FROM evaluations WHERE project = {ph} AND session_id = {ph} "
                    f"AND owner = {ph} AND status = 'running' AND claimed_at = {ph}",
                    (project, session_id, owner, now))
        held = {row[0] for row in cur.fetchall()}
        return [name for name in names if name in held]

    return store.transaction(run)


def complete(store: Store, project: str, session_id: str, name: str, owner: str, *,
             scores: Sequence[Mapping[str, Any]], criteria: Sequence[Mapping[str, Any]],
             error: str | None, evaluator_session_id: str | None, force: bool) -> bool:
    """Store an evaluation's outcome while ``owner`` holds it (``force``:
    taking it over): the evaluator's scores replace the ones it gave before,
    a rubric's criteria replace its earlier ones. False when another holds it."""
    ph = store.placeholder
    now = time.time()

    def run(cur: Any) -> bool:
        cur.execute(f"SELECT owner, status FROM evaluations WHERE project = {ph} AND "
                    f"session_id = {ph} AND name = {ph}", (project, session_id, name))
        row = cur.fetchone()
        if not force and (row is None or row[0] != owner or row[1] != "running"):
            return False
        cur.execute(f"DELETE FROM scores WHERE project = {ph} AND session_id = {ph} AND "
                    f"evaluator = {ph}", (project, session_id, name))
        for item in scores:
            fields = {**item, "session_id": session_id, "created_at": now}
            _upsert_score(cur, ph, project, score_id(session_id, str(item["name"])), now, fields)
        if criteria or error is None:
            cur.execute(f"DELETE FROM rubric_results WHERE project = {ph} AND session_id = {ph} "
                        f"AND rubric = {ph}", (project, session_id, name))
        for item in criteria:
            cur.execute("INSERT INTO rubric_results (project, session_id, rubric, criterion, "
                        f"weight, value, comment, updated_at) VALUES ({_marks(ph, 8)})",
                        (project, session_id, name, item["criterion"], item["weight"],
                         item["value"], item.get("comment"), now))
        status = "failed" if error is not None else "done"
        cur.execute(
            "INSERT INTO evaluations (project, session_id, name, status, owner, claimed_at, "
            f"finished_at, error, evaluator_session_id, updated_at) VALUES ({_marks(ph, 10)}) "
            "ON CONFLICT (project, session_id, name) DO UPDATE SET status = excluded.status, "
            "owner = excluded.owner, finished_at = excluded.finished_at, "
            "error = excluded.error, evaluator_session_id = excluded.evaluator_session_id, "
            "updated_at = excluded.updated_at",
            (project, session_id, name, status, owner, now, now, error, evaluator_session_id,
             now))
        return True

    return bool(store.transaction(run))


# -- reading ---------------------------------------------------------------------------------

def _scope(project: str | None, ph: str, alias: str = "") -> tuple[str, list[Any]]:
    if project is None:
        return "", []
    return f" AND {alias}project = {ph}", [project]


def experiment(store: Store, experiment_id: str, project: str | None) -> dict[str, Any] | None:
    ph = store.placeholder
    where, params = _scope(project, ph)
    rows = store.query(f"SELECT * FROM experiments WHERE id = {ph}{where} "
                        "ORDER BY updated_at DESC", [experiment_id, *params])
    return _experiment_row(rows[0], store) if rows else None


def _experiment_row(row: dict[str, Any], store: Store) -> dict[str, Any]:
    for column in _EXPERIMENT_JSON:
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
        item = _experiment_row(row, store)
        for column in ("run_count", "ended_count", "failed_count"):
            item[column] = int(item.get(column) or 0)
        out.append(item)
    return out


_RUN_COLUMNS = ("id", "project", "experiment_id", "case_id", "repeat", "input", "expected",
                "output", "error", "is_finished", "is_successful", "started_at", "ended_at",
                "name")


def experiment_runs(store: Store, experiment_id: str, project: str | None
                    ) -> list[dict[str, Any]]:
    """The experiment's runs, ordered by case and repeat: see run_rows."""
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


def _status(row: Mapping[str, Any]) -> str:
    if not row.get("is_finished"):
        return "running"
    if row.get("error") is not None or row.get("is_successful") is False:
        return "failed"
    return "successful" if row.get("is_successful") else "finished"


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
            "input": _loads(session.get("input")), "expected": _loads(session.get("expected")),
            "output": _loads(session.get("output")), "error": session.get("error"),
            "status": _status(session), "started_at": started, "ended_at": ended,
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
        for row in store.query("SELECT session_id, COALESCE(SUM(cost), 0) AS cost FROM events "
                                f"WHERE session_id IN ({_marks(ph, len(chunk))}) "
                                "GROUP BY session_id", list(chunk)):
            costs[row["session_id"]] = float(row["cost"] or 0.0)
    return costs


def session_scores(store: Store, session_ids: Sequence[str], project: str | None
                   ) -> dict[str, list[dict[str, Any]]]:
    """Every score of the sessions (theirs, their steps' and events'), by session."""
    ph = store.placeholder
    where, params = _scope(project, ph)
    out: dict[str, list[dict[str, Any]]] = {}
    for chunk in _chunks(list(session_ids)):
        for row in store.query(
                "SELECT session_id, step_id, event_id, name, kind, value, label, comment, "
                "passed, source, evaluator, evaluator_session_id, updated_at FROM scores "
                f"WHERE session_id IN ({_marks(ph, len(chunk))}){where} ORDER BY name",
                [*chunk, *params]):
            row["value"] = from_row(row)
            row["passed"] = None if row["passed"] is None else bool(row["passed"])
            del row["label"]
            out.setdefault(row.pop("session_id"), []).append({"session_id": None, **row})
    for sid, rows in out.items():
        for row in rows:
            row["session_id"] = sid
    return out


def evaluations_of(store: Store, session_ids: Sequence[str], project: str | None
                   ) -> dict[str, list[dict[str, Any]]]:
    ph = store.placeholder
    where, params = _scope(project, ph)
    out: dict[str, list[dict[str, Any]]] = {}
    for chunk in _chunks(list(session_ids)):
        for row in store.query(
                "SELECT session_id, name, status, owner, claimed_at, finished_at, error, "
                "evaluator_session_id FROM evaluations "
                f"WHERE session_id IN ({_marks(ph, len(chunk))}){where} ORDER BY name",
                [*chunk, *params]):
            out.setdefault(row["session_id"], []).append(row)
    return out


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


def decorate_tree(store: Store, tree: dict[str, Any], project: str | None) -> dict[str, Any]:
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
