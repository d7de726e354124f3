"""The one reading layer: every query that reads sessions, steps and events.

The web UI, the server's JSON API and the CLI all read through a ``Reader``
over a ``Store``, so a filter, a search or a total is written once and means
the same everywhere. ``project`` scopes every call (None: every project, as
the embedded store's own tools read it). Not imported by ``import lucidic``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..store import Store
from . import dashboard as _dashboard
from . import experiments as _experiments
from . import tree as _tree
from .sessions import (
    MAX_LIMIT,
    SORTS,
    STATUSES,
    InvalidQueryError,
    SessionPage,
    SessionQuery,
    add_totals,
    list_sessions,
    status_of,
)
from .tree import Outline, node_label, writer_key

__all__ = [
    "MAX_LIMIT",
    "SORTS",
    "STATUSES",
    "Dashboard",
    "InvalidQueryError",
    "Outline",
    "Reader",
    "SessionPage",
    "SessionQuery",
    "node_label",
    "status_of",
    "writer_key",
]

Dashboard = _dashboard.Dashboard


class Reader:
    """Reads one store; see the module docstring."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- sessions ----------------------------------------------------------------

    def sessions(self, query: SessionQuery) -> SessionPage:
        """A page of sessions with their totals (see SessionQuery)."""
        return list_sessions(self.store, query)

    def session_list(self, **query: Any) -> list[dict[str, Any]]:
        """The sessions of one page, as a list (``query``: SessionQuery's fields)."""
        return list(self.sessions(SessionQuery(**query)).sessions)

    def session(self, session_id: str, project: str | None = None) -> dict[str, Any] | None:
        """The session's row with its totals, or None if unknown (or in another
        project, which callers must not be able to tell apart)."""
        session = self.store.get_session(session_id, project)
        if session is not None:
            add_totals(self.store, [session])
        return session

    def tree(self, session_id: str, project: str | None = None) -> dict[str, Any] | None:
        """The session with its steps nested by parent and its events placed in
        their steps (or at the session's top level), with its scores, rubric
        results and evaluations (see lucidic.reading.experiments)."""
        session = self.session(session_id, project)
        if session is None:
            return None
        return _experiments.add_judgement(self.store, _tree.full_tree(self.store, session),
                                          project)

    def judgement(self, session: dict[str, Any],
                  project: str | None = None) -> dict[str, Any]:
        """The session (a row or a tree) with its scores, rubric results and
        evaluations added (see lucidic.reading.experiments.add_judgement)."""
        return _experiments.add_judgement(self.store, session, project)

    def outline(self, session: dict[str, Any], offset: int = 0, limit: int = 300,
                now: float | None = None) -> Outline:
        """A window of the session's tree, flattened (see lucidic.reading.tree)."""
        return _tree.outline(self.store, session, offset, limit, now)

    # -- single records ----------------------------------------------------------------

    def step(self, step_id: str, project: str | None = None) -> dict[str, Any] | None:
        """One step; with ``project``, only if its session is in that project."""
        return self.store.get_step(step_id, project)

    def event(self, event_id: str, project: str | None = None) -> dict[str, Any] | None:
        """One event, every column; with ``project``, only if its session is
        in that project."""
        return self.store.get_event(event_id, project)

    # -- what changed ----------------------------------------------------------------

    def session_version(self, session_id: str) -> str:
        """A short fingerprint of everything stored for the session: it
        changes whenever any process (or server replica) writes to it."""
        ph = self.store.placeholder
        rows = self.store.query_many([
            (f"SELECT updated_at AS v, 1 AS n FROM sessions WHERE id = {ph}", [session_id]),
            (f"SELECT MAX(updated_at) AS v, COUNT(*) AS n FROM steps WHERE session_id = {ph}",
             [session_id]),
            (f"SELECT MAX(updated_at) AS v, COUNT(*) AS n FROM events WHERE session_id = {ph}",
             [session_id]),
            (f"SELECT MAX(updated_at) AS v, COUNT(*) AS n FROM scores WHERE session_id = {ph}",
             [session_id]),
        ])
        parts = [f"{r[0]['v']!r}/{r[0]['n']}" if r else "-" for r in rows]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def tree_if_changed(self, session_id: str, version: str | None,
                        project: str | None = None) -> tuple[str, dict[str, Any] | None]:
        """The session's current version, and its tree unless that version is
        ``version`` (None then: nothing changed). An unknown session (or
        another project's) reads as a version with no tree, so the two cannot
        be told apart."""
        if self.store.get_session(session_id, project) is None:
            return "", None
        current = self.session_version(session_id)
        if current == version:
            return current, None
        tree = self.tree(session_id, project)
        return current, tree

    def agents(self, project: str | None = None, limit: int = 200) -> list[str]:
        """Agent ids seen in sessions (for a filter's choices), in order. Found
        by hopping from one value to the next down an index (a loose index
        scan), so 100,000 sessions of five agents cost five lookups."""
        ph = self.store.placeholder
        scope = f"project = {ph} AND " if project is not None else ""
        sql = ("WITH RECURSIVE agents(v, n) AS ("
               f"SELECT (SELECT MIN(agent_id) FROM sessions WHERE {scope}agent_id IS NOT NULL), 1 "
               f"UNION ALL SELECT (SELECT MIN(agent_id) FROM sessions WHERE {scope}agent_id > v), "
               f"n + 1 FROM agents WHERE v IS NOT NULL AND n < {int(limit)}) "
               "SELECT v AS agent_id FROM agents WHERE v IS NOT NULL")
        params = [project, project] if project is not None else []
        return [r["agent_id"] for r in self.store.query(sql, params)]

    # -- experiments and mass simulations ---------------------------------------------

    def experiments(self, project: str | None = None, *, limit: int = 50,
                    offset: int = 0) -> list[dict[str, Any]]:
        """Experiments, newest first, with their runs' progress."""
        return _experiments.list_experiments(self.store, project, limit=limit, offset=offset)

    def experiment(self, experiment_id: str,
                   project: str | None = None) -> dict[str, Any] | None:
        return _experiments.experiment(self.store, experiment_id, project)

    def runs(self, experiment_id: str, project: str | None = None) -> list[dict[str, Any]]:
        """An experiment's runs, with their scores, cost and duration."""
        return _experiments.experiment_runs(self.store, experiment_id, project)

    def run_sessions(self, session_ids: Sequence[str],
                     project: str | None = None) -> list[dict[str, Any]]:
        """The sessions named, as runs, in the order named."""
        return _experiments.run_sessions(self.store, session_ids, project)

    def evaluations(self, session_ids: Sequence[str],
                    project: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Who scored each session with what, and how it went."""
        return _experiments.evaluations_of(self.store, session_ids, project)

    def llm_events(self, experiment_id: str,
                   project: str | None = None) -> list[dict[str, Any]]:
        """The LLM calls an experiment's runs recorded, with each run's case and repeat."""
        return _experiments.llm_events(self.store, experiment_id, project)

    def mass_sims(self, project: str | None = None, *, mass_sim_id: str | None = None,
                  limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Mass simulations with ``total``, ``sessions`` and ``ended``."""
        return _experiments.mass_sims(self.store, project, mass_sim_id=mass_sim_id,
                                      limit=limit, offset=offset)

    def mass_sim(self, mass_sim_id: str, project: str | None = None) -> dict[str, Any] | None:
        """One mass simulation, as mass_sims lists it; None if there is none."""
        found = self.mass_sims(project, mass_sim_id=mass_sim_id, limit=1)
        return found[0] if found else None

    # -- aggregates ----------------------------------------------------------------

    def dashboard(self, project: str | None, since: float, until: float) -> Dashboard:
        return _dashboard.dashboard(self.store, project, since, until)
