"""The evaluation layer's backend on the embedded store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import evalstore
from ..reading import Reader
from ..store import Store


class LocalBackend:
    """Reads and claims in the embedded SQLite store (every project in it:
    the SDK writes its own as ``default``)."""

    def __init__(self, path: str | Path | None = None, *, store: Store | None = None) -> None:
        """Over the store at ``path`` (opened here, closed by close()), or over
        an open ``store`` shared with its owner (left open)."""
        if store is None:
            assert path is not None
            store = Store(path)
            self._owned = True
        else:
            self._owned = False
        self.store = store
        self.reader = Reader(self.store)

    def session(self, session_id: str) -> dict[str, Any] | None:
        return self.store.get_session(session_id)

    def tree(self, session_id: str) -> dict[str, Any] | None:
        return self.reader.tree(session_id)

    def experiment(self, experiment_id: str) -> dict[str, Any] | None:
        return self.reader.experiment(experiment_id)

    def experiments(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        return self.reader.experiments(limit=limit, offset=offset)

    def mass_sims(self, mass_sim_id: str | None = None, limit: int = 50,
                  offset: int = 0) -> list[dict[str, Any]]:
        return self.reader.mass_sims(mass_sim_id=mass_sim_id, limit=limit, offset=offset)

    def runs(self, experiment_id: str) -> list[dict[str, Any]]:
        return self.reader.runs(experiment_id)

    def run_sessions(self, session_ids: Sequence[str]) -> list[dict[str, Any]]:
        return self.reader.run_sessions(session_ids)

    def llm_events(self, experiment_id: str) -> list[dict[str, Any]]:
        return self.reader.llm_events(experiment_id)

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
        found = self.reader.evaluations(session_ids)
        return [row for sid in session_ids for row in found.get(sid, [])]

    def close(self) -> None:
        if self._owned:
            self.store.close()
