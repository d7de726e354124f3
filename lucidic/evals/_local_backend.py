"""The evaluation layer's backend on the embedded store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import evalstore
from ..store import Store


class LocalBackend:
    """Reads and claims in the embedded SQLite store (every project in it:
    the SDK writes its own as ``default``)."""

    def __init__(self, path: str | Path) -> None:
        self.store = Store(path)

    def session(self, session_id: str) -> dict[str, Any] | None:
        return self.store.get_session(session_id)

    def tree(self, session_id: str) -> dict[str, Any] | None:
        tree = self.store.session_tree(session_id)
        return None if tree is None else evalstore.decorate_tree(self.store, tree, None)

    def experiment(self, experiment_id: str) -> dict[str, Any] | None:
        return evalstore.experiment(self.store, experiment_id, None)

    def experiments(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        return evalstore.list_experiments(self.store, None, limit=limit, offset=offset)

    def mass_sims(self, mass_sim_id: str | None = None, limit: int = 50,
                  offset: int = 0) -> list[dict[str, Any]]:
        return evalstore.mass_sims(self.store, None, mass_sim_id=mass_sim_id, limit=limit,
                                   offset=offset)

    def runs(self, experiment_id: str) -> list[dict[str, Any]]:
        return evalstore.experiment_runs(self.store, experiment_id, None)

    def run_sessions(self, session_ids: Sequence[str]) -> list[dict[str, Any]]:
        return evalstore.run_sessions(self.store, session_ids, None)

    def llm_events(self, experiment_id: str) -> list[dict[str, Any]]:
        return evalstore.llm_events(self.store, experiment_id, None)

    def _project(self, session_id: str) -> str:
        row = self.store.get_session(session_id)
        return str(row["project"]) if row else evalstore.DEFAULT_PROJECT

    def claim(self, session_id: str, names: Sequence[str], owner: str,
              lease: float) -> list[str]:
        return evalstore.claim(self.store, self._project(session_id), session_id, names, owner,
                               lease)

    def complete(self, session_id: str, name: str, owner: str, *,
                 scores: Sequence[dict[str, Any]], criteria: Sequence[dict[str, Any]],
                 error: str | None, evaluator_session_id: str | None,
                 force: bool = False) -> bool:
        return evalstore.complete(self.store, self._project(session_id), session_id, name,
                                  owner, scores=scores, criteria=criteria, error=error,
                                  evaluator_session_id=evaluator_session_id, force=force)

    def evaluations(self, session_ids: Sequence[str]) -> list[dict[str, Any]]:
        found = evalstore.evaluations_of(self.store, session_ids, None)
        return [row for sid in session_ids for row in found.get(sid, [])]

    def close(self) -> None:
        self.store.close()
