"""Where the evaluation layer reads runs and settles who scores them: the
embedded store, or ``lucidic server`` over HTTP. Both answer the same
questions with the same shapes, so nothing above this module knows which
one it talks to.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .. import _config
from ..errors import APIKeyVerificationError, InvalidOperationError

if TYPE_CHECKING:
    from .._sinks import Sink


class Backend(Protocol):
    def session(self, session_id: str) -> dict[str, Any] | None:
        """The session's row, or None when unknown."""

    def tree(self, session_id: str) -> dict[str, Any] | None:
        """The session with its steps and events, as ``sessions show --json``."""

    def experiment(self, experiment_id: str) -> dict[str, Any] | None: ...

    def experiments(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Experiments, newest first, with their runs' progress."""

    def mass_sims(self, mass_sim_id: str | None = None, limit: int = 50,
                  offset: int = 0) -> list[dict[str, Any]]:
        """Mass simulations (or the one named), with total, sessions, ended."""

    def runs(self, experiment_id: str) -> list[dict[str, Any]]:
        """The experiment's runs (see lucidic.evalstore.experiment_runs)."""

    def run_sessions(self, session_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The same shape as runs(), for the sessions named."""

    def llm_events(self, experiment_id: str) -> list[dict[str, Any]]:
        """The LLM events of the experiment's runs, each with its run's
        ``case_id`` and ``repeat``."""

    def claim(self, session_id: str, names: Sequence[str], owner: str,
              lease: float) -> list[str]:
        """Of ``names``, the evaluations of the session this owner now holds:
        those nobody holds, or whose holder's lease ran out."""

    def complete(self, session_id: str, name: str, owner: str, *,
                 scores: Sequence[dict[str, Any]], criteria: Sequence[dict[str, Any]],
                 error: str | None, evaluator_session_id: str | None,
                 force: bool = False) -> bool:
        """Store an evaluation's outcome (its scores, a rubric's criteria, or
        its error), if this owner still holds it (``force``: whoever holds
        it); False when another owner took it over."""

    def evaluations(self, session_ids: Sequence[str]) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


def owner_id() -> str:
    """Who is evaluating: host and process (for people reading the claims)
    and a token of its own for each claim, so two threads of one process
    never both think they hold an evaluation."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


def open_backend(api_key: str | None = None) -> Backend:
    """The backend this process records to: LUCIDIC_BASE_URL's server, else
    the embedded store."""
    from .._runtime import runtime

    if runtime.sink_override is not None:
        raise InvalidOperationError(
            "experiments read their runs back from a store, and lucidic.testing.capture() "
            "records in memory only: run experiments outside capture() (with LUCIDIC_HOME "
            "pointing at a directory of the test's own, say)")
    base_url = _config.base_url()
    if base_url:
        from ._http_backend import HttpBackend

        key = api_key or _config.env("LUCIDIC_API_KEY")
        if not key:
            raise APIKeyVerificationError(
                f"LUCIDIC_BASE_URL is set ({base_url}) but no API key was given: set "
                "LUCIDIC_API_KEY (make a key with `lucidic keys create --project NAME`)")
        return HttpBackend(base_url, key)
    from ._local_backend import LocalBackend

    return LocalBackend(_config.store_path())


def backend_for_sink(sink: Sink) -> Backend | None:
    """The backend behind a session's sink (None for sinks that are neither
    the embedded store nor a server, such as lucidic.testing's)."""
    from .._sinks import SinkError

    try:
        # The sink's own connection: no second open (and schema check) per session.
        store = sink.local_store()
    except SinkError as exc:
        from ..errors import LucidicError

        raise LucidicError(str(exc)) from exc
    if store is not None:
        from ._local_backend import LocalBackend

        return LocalBackend(store=store)
    server = sink.server()
    if server is not None and server[1]:
        from ._http_backend import HttpBackend

        return HttpBackend(server[0], server[1])
    return None
