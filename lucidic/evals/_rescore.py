"""Scoring stored sessions again, without running anything."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import _api, _config
from .._arguments import id_arg, session_id_arg
from .._internal import logger
from ..errors import InvalidOperationError
from ._backend import open_backend
from ._evaluators import as_evaluators
from ._result import RunResult
from ._scoring import score_session


def evaluate_sessions(evaluators: Sequence[Any], *, experiment_id: str | None = None,
                      session_ids: Sequence[str] | None = None, max_concurrency: int = 4,
                      lucidic_api_key: str | None = None) -> list[RunResult]:
    """Score the sessions of an experiment (or the sessions named) with
    ``evaluators``, from what they recorded: nothing is run again. A score
    replaces the one of the same name the session had. Sessions still
    running are left out (logged). Returns the sessions as runs, rescored."""
    if (experiment_id is None) == (session_ids is None):
        raise InvalidOperationError("evaluate_sessions() needs experiment_id=... or "
                                    "session_ids=[...] (one of them)")
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) \
            or max_concurrency < 1:
        raise InvalidOperationError(f"max_concurrency must be an int >= 1, not "
                                    f"{max_concurrency!r:.80}")
    chosen = as_evaluators(evaluators)
    if not chosen:
        raise InvalidOperationError("evaluate_sessions() needs at least one evaluator")
    _api.flush(_config.flush_timeout())
    backend = open_backend(lucidic_api_key)
    try:
        if experiment_id is not None:
            if backend.experiment(id_arg("experiment_id", experiment_id) or "") is None:
                raise InvalidOperationError(f"experiment {experiment_id!r} was not found")
            ids = [row["session_id"] for row in backend.runs(experiment_id)]
        else:
            if isinstance(session_ids, str):
                raise InvalidOperationError("session_ids must be a list of session ids")
            ids = [session_id_arg(s) for s in session_ids or ()]
        rows = {row["session_id"]: row for row in backend.run_sessions(ids)}
        missing = [s for s in ids if s not in rows]
        if missing:
            raise InvalidOperationError(f"session {missing[0]!r} was not found"
                                        + (f" (and {len(missing) - 1} more)"
                                           if len(missing) > 1 else ""))
        finished = [s for s in ids if rows[s].get("status") != "running"]
        for skipped in (s for s in ids if s not in finished):
            logger.warning("lucidic: session %s is still running; not scored", skipped)
        with ThreadPoolExecutor(max_workers=max_concurrency,
                                thread_name_prefix="lucidic-rescore") as pool:
            list(pool.map(lambda s: score_session(backend, s, evaluators=chosen, force=True),
                          finished))
        return [RunResult.from_row(row) for row in backend.run_sessions(finished)]
    finally:
        backend.close()
