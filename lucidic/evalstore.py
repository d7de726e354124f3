"""The evaluation tables: experiments, mass simulations, scores, rubric
results and evaluation claims. Their migration is in ``lucidic.store``
(one schema); their SQL is here, used by the embedded store and by the
server alike; reading them is lucidic.reading.experiments'.

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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._scores import score_id
from ._storable import clean_json, clean_text
from .columns import ColumnType, sql_type

if TYPE_CHECKING:
    from .store import Record, Store

#: Record kinds applied here rather than by the store's session/step/event path.
KINDS = frozenset({"experiment", "mass_sim", "score"})
#: What each kind must carry.
REQUIRED = {"experiment": "project", "mass_sim": "project", "score": "session_id"}

#: Column types both SQLite (by affinity) and PostgreSQL understand.
_REAL, _INT, _TEXT, _BOOL = (ColumnType.REAL.sql, ColumnType.INT.sql, ColumnType.TEXT.sql,
                             ColumnType.BOOL.sql)

#: Columns added to existing tables (migration): a run's case and outcome on
#: its session; on an event, the recorded event a replayed answer came from.
#: Their types are in lucidic.columns.
SESSION_RUN_COLUMNS = ("case_id", "repeat", "input", "expected", "output", "error",
                       "production_monitoring")
EVENT_REPLAY_COLUMNS = ("replayed_from",)

EXPERIMENT_COLUMNS = {
    "name": _TEXT, "rubrics": _TEXT, "evaluators": _TEXT, "summary_evaluators": _TEXT,
    "metadata": _TEXT, "tags": _TEXT, "repeats": _INT, "max_concurrency": _INT,
    "case_count": _INT, "replay_of": _TEXT, "replay_mode": _TEXT, "summary": _TEXT,
    "created_at": _REAL,
}
#: Experiment columns that hold JSON documents.
EXPERIMENT_JSON = frozenset({"rubrics", "evaluators", "summary_evaluators", "metadata", "tags",
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
    *(f"ALTER TABLE sessions ADD COLUMN {name} {sql_type(name)}"
      for name in SESSION_RUN_COLUMNS),
    *(f"ALTER TABLE events ADD COLUMN {name} {sql_type(name)}"
      for name in EVENT_REPLAY_COLUMNS),
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
    return json.dumps(clean_json(value), ensure_ascii=False, default=repr)


def _scalar(value: Any) -> Any:
    """A text as every backend holds it (a NUL or a lone surrogate becomes
    U+FFFD, as in a session's text); anything else as it is."""
    return clean_text(value) if isinstance(value, str) else value


def _marks(ph: str, n: int) -> str:
    return ", ".join([ph] * n)


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
    values = {c: _json(fields[c]) if c in EXPERIMENT_JSON else _scalar(fields[c])
              for c in EXPERIMENT_COLUMNS if fields.get(c) is not None}
    _merge_upsert(cur, ph, "experiments", ("project", "id"), (project, rid), values, ts)


def _upsert_mass_sim(cur: Any, ph: str, rid: str, fields: Mapping[str, Any],
                     project: str) -> None:
    # The table (made for lucidicai's initmasssim) keeps a mass simulation as
    # created: later records fill in what it lacks and change nothing else.
    values = {c: _json(fields[c]) if c == "tags" else _scalar(fields[c])
              for c in MASS_SIM_COLUMNS if fields.get(c) is not None}
    values.setdefault("created_at", time.time())
    names = ["id", "project", *values]
    sets = [f"{c} = COALESCE(mass_sims.{c}, excluded.{c})" for c in values]
    cur.execute(f"INSERT INTO mass_sims ({', '.join(names)}) VALUES ({_marks(ph, len(names))}) "
                f"ON CONFLICT (id) DO UPDATE SET {', '.join(sets)} "
                "WHERE mass_sims.project = excluded.project", (rid, project, *values.values()))


def _upsert_score(cur: Any, ph: str, project: str, rid: str, ts: float,
                  fields: Mapping[str, Any]) -> None:
    # A score record is the whole score: a newer one replaces every field (a
    # comment or a verdict it lacks included), an older one changes nothing.
    values: dict[str, Any] = {"session_id": fields["session_id"]}
    for column in SCORE_COLUMNS:
        value = fields.get(column)
        values[column] = (1 if value else 0) if column == "passed" and value is not None \
            else _scalar(value)
    names = ["project", "id", *values, "updated_at"]
    newer = "excluded.updated_at >= scores.updated_at"
    sets = [f"{c} = CASE WHEN {newer} THEN excluded.{c} ELSE scores.{c} END"
            for c in [*SCORE_COLUMNS, "updated_at"]]
    cur.execute(f"INSERT INTO scores ({', '.join(names)}) VALUES ({_marks(ph, len(names))}) "
                f"ON CONFLICT (project, id) DO UPDATE SET {', '.join(sets)} "
                "WHERE scores.session_id = excluded.session_id",
                (project, rid, *values.values(), ts))


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
        failure, kept = error, scores
        taken = None if force else _given_by_another(cur, ph, project, session_id, name,
                                                     [str(item["name"]) for item in scores])
        if taken is not None:
            # One score name per session: storing it would replace the other's
            # (a re-score, forced, replaces it on purpose).
            failure = (f"its score {taken[0]!r} is also given by evaluator {taken[1]!r}; "
                       "give the scores distinct names")
            kept = ()
        cur.execute(f"DELETE FROM scores WHERE project = {ph} AND session_id = {ph} AND "
                    f"evaluator = {ph}", (project, session_id, name))
        for item in kept:
            fields = {**item, "session_id": session_id, "created_at": now}
            _upsert_score(cur, ph, project, score_id(session_id, str(item["name"])), now, fields)
        if criteria or failure is None:
            cur.execute(f"DELETE FROM rubric_results WHERE project = {ph} AND session_id = {ph} "
                        f"AND rubric = {ph}", (project, session_id, name))
        for item in criteria if failure is None else ():
            cur.execute("INSERT INTO rubric_results (project, session_id, rubric, criterion, "
                        f"weight, value, comment, updated_at) VALUES ({_marks(ph, 8)})",
                        (project, session_id, name, item["criterion"], item["weight"],
                         item["value"], item.get("comment"), now))
        status = "failed" if failure is not None else "done"
        cur.execute(
            "INSERT INTO evaluations (project, session_id, name, status, owner, claimed_at, "
            f"finished_at, error, evaluator_session_id, updated_at) VALUES ({_marks(ph, 10)}) "
            "ON CONFLICT (project, session_id, name) DO UPDATE SET status = excluded.status, "
            "owner = excluded.owner, finished_at = excluded.finished_at, "
            "error = excluded.error, evaluator_session_id = excluded.evaluator_session_id, "
            "updated_at = excluded.updated_at",
            (project, session_id, name, status, owner, now, now, failure, evaluator_session_id,
             now))
        return True

    return bool(store.transaction(run))


def _given_by_another(cur: Any, ph: str, project: str, session_id: str, evaluator: str,
                      names: Sequence[str]) -> tuple[str, str] | None:
    """The first of ``names`` a session score of another evaluator already
    has, with that evaluator's name."""
    if not names:
        return None
    cur.execute(f"SELECT name, evaluator FROM scores WHERE project = {ph} AND session_id = {ph} "
                f"AND step_id IS NULL AND event_id IS NULL AND evaluator IS NOT NULL AND "
                f"evaluator <> {ph} AND name IN ({_marks(ph, len(names))})",
                (project, session_id, evaluator, *names))
    found = dict(cur.fetchall())
    return next(((n, str(found[n])) for n in names if n in found), None)
