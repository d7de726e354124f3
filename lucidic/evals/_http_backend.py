"""The evaluation layer's backend on ``lucidic server`` (its /api/v1
experiments, runs and evaluations routes), within the API key's project."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from .._http import _Client, _detail, refused_key_message
from .._sinks import SinkError
from ..errors import APIKeyVerificationError, LucidicError


class HttpBackend:
    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = _Client(self.base_url, api_key)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON, None for a 404; LucidicError when the server
        cannot be reached or refuses."""
        try:
            response = self._client.request(method, path, **kwargs)
        except SinkError as exc:
            raise LucidicError(str(exc)) from exc
        if response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            raise APIKeyVerificationError(refused_key_message(self.base_url, response))
        if response.status_code != 200:
            raise LucidicError(f"the lucidic server at {self.base_url} answered "
                               f"{_detail(response)} to {method} {path}")
        return response.json()

    def session(self, session_id: str) -> dict[str, Any] | None:
        row: dict[str, Any] | None = self._call("GET", "/api/v1/sessions/"
                                                + quote(session_id, safe=""))
        return row

    def tree(self, session_id: str) -> dict[str, Any] | None:
        tree: dict[str, Any] | None = self._call(
            "GET", f"/api/v1/sessions/{quote(session_id, safe='')}/tree")
        return tree

    def experiment(self, experiment_id: str) -> dict[str, Any] | None:
        row: dict[str, Any] | None = self._call("GET", "/api/v1/experiments/"
                                                + quote(experiment_id, safe=""))
        return row

    def experiments(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        body = self._call("GET", "/api/v1/experiments",
                          params={"limit": limit, "offset": offset})
        return [] if body is None else list(body["experiments"])

    def mass_sims(self, mass_sim_id: str | None = None, limit: int = 50,
                  offset: int = 0) -> list[dict[str, Any]]:
        if mass_sim_id is not None:
            row = self._call("GET", "/api/v1/mass-sims/" + quote(mass_sim_id, safe=""))
            return [] if row is None else [row]
        body = self._call("GET", "/api/v1/mass-sims", params={"limit": limit, "offset": offset})
        return [] if body is None else list(body["mass_sims"])

    def runs(self, experiment_id: str) -> list[dict[str, Any]]:
        body = self._call("GET", f"/api/v1/experiments/{quote(experiment_id, safe='')}/runs")
        return [] if body is None else list(body["runs"])

    def run_sessions(self, session_ids: Sequence[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        ids = list(session_ids)
        for start in range(0, len(ids), 1000):
            body = self._call("POST", "/api/v1/runs",
                              json={"session_ids": ids[start:start + 1000]})
            found.extend(body["runs"] if body else ())
        return found

    def llm_events(self, experiment_id: str) -> list[dict[str, Any]]:
        body = self._call("GET",
                          f"/api/v1/experiments/{quote(experiment_id, safe='')}/llm-events")
        return [] if body is None else list(body["events"])

    def claim(self, session_id: str, names: Sequence[str], owner: str,
              lease: float) -> list[str]:
        body = self._call("POST", "/api/v1/evaluations/claim", json={
            "session_id": session_id, "names": list(names), "owner": owner, "lease": lease})
        return [] if body is None else list(body["claimed"])

    def complete(self, session_id: str, name: str, owner: str, *,
                 scores: Sequence[dict[str, Any]], criteria: Sequence[dict[str, Any]],
                 error: str | None, evaluator_session_id: str | None,
                 force: bool = False) -> bool:
        body = self._call("POST", "/api/v1/evaluations/complete", json={
            "session_id": session_id, "name": name, "owner": owner, "scores": list(scores),
            "criteria": list(criteria), "error": error,
            "evaluator_session_id": evaluator_session_id, "force": force})
        return bool(body and body["stored"])

    def evaluations(self, session_ids: Sequence[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for session_id in session_ids:
            body = self._call("GET", "/api/v1/evaluations", params={"session_id": session_id})
            rows.extend(body["evaluations"] if body else ())
        return rows

    def close(self) -> None:
        self._client.close()
