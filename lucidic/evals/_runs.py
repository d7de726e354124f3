"""A run: one case of an experiment, recorded as an ordinary session.

The session carries its experiment, case and repeat, the case's input and
expected answer, and (once there is one) the run's output or error, so that
it is a complete record wherever it is read, continued or scored. A run that
is not one function call (``experiment_run``) is an open session like any
other: it can be detached and continued in other processes, and it is
complete, and scored, when its session ends, wherever that happens.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from .. import _api, _config, _recording
from .._arguments import id_arg
from .._context import Binding, current_binding
from .._internal import log_rate_limited
from .._records import to_jsonable
from ..errors import InvalidOperationError, LucidicError, LucidicNotInitializedError
from ._backend import Backend, backend_for_sink, open_backend
from ._cases import Case
from ._scoring import Outcome, score_session, wait_ended, wait_scored


def case_fields(experiment_id: str, case: Case, repeat: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"experiment_id": experiment_id, "case_id": case.id,
                              "repeat": repeat, "input": to_jsonable(case.input),
                              "expected": to_jsonable(case.expected)}
    if case.metadata is not None:
        fields["attributes"] = {"case_metadata": to_jsonable(dict(case.metadata))}
    return fields


def repeat_arg(repeat: Any) -> int:
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
        raise InvalidOperationError(f"repeat must be an int >= 0, not {repeat!r:.80}")
    return repeat


class RunSession(_api.session):
    """``lai.session`` for a run: its session record carries the run's fields
    from the start, so a process continuing it sees the whole case."""

    def __init__(self, experiment_id: str, case: Case, repeat: int, **options: Any) -> None:
        options.setdefault("session_name", f"{case.id} #{repeat}")
        super().__init__(experiment_id=experiment_id, **options)
        self._fields.update(case_fields(experiment_id, case, repeat))


def set_output(value: Any) -> None:
    """Record ``value`` as the output of the current session's run (any
    process working on the run may call it; the last value set wins)."""
    binding = current_binding()
    if binding is None:
        raise LucidicNotInitializedError(
            "set_output() needs the run's session to be current here: call it inside "
            "`with experiment_run(...)`, or `with lai.continued(session_id):` in another process")
    put_run_fields(binding, {"output": to_jsonable(value)})


def put_run_fields(binding: Binding, fields: dict[str, Any]) -> None:
    _recording.put_session(binding, dict(fields))


def record_error(binding: Binding, exc: BaseException) -> None:
    """The run failed: its error on the session, and an error event with the
    traceback (where it failed, for whoever reads the run)."""
    summary = f"{type(exc).__name__}: {exc}"
    put_run_fields(binding, {"error": summary})
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    _recording.record_error(binding, f"The run failed: {summary}", trace)


class experiment_run:  # noqa: N801 - used like a function: `with experiment_run(...):`
    """One run of ``case`` (a Case, or an input) in an experiment, as a block.

    Inside it the run's session is current; ``set_output(value)`` records
    the output. Leaving the block ends the session (failed, with the error,
    if an exception escaped) and scores the run; if the block detached the
    session (``lai.detach()``), the run goes on wherever the session is
    continued, and is scored when it ends there. ``result()`` waits for that.
    """

    def __init__(self, experiment_id: str, case: Any, repeat: int = 0, **options: Any) -> None:
        self.experiment_id = id_arg("experiment_id", experiment_id) or ""
        if not self.experiment_id:
            raise InvalidOperationError("experiment_run needs an experiment id")
        self.case = case if isinstance(case, Case) else Case(case)
        self.repeat = repeat_arg(repeat)
        self._scope = RunSession(self.experiment_id, self.case, self.repeat, **options)
        self.session_id: str | None = None
        self._api_key = options.get("lucidic_api_key") or options.get("api_key")

    def __enter__(self) -> experiment_run:
        self.session_id = self._scope.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close(exc)
        self._scope.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> experiment_run:
        self.session_id = await self._scope.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._close(exc)
        await self._scope.__aexit__(exc_type, exc, tb)

    def _close(self, exc: BaseException | None) -> None:
        binding = current_binding()
        if exc is not None and binding is not None and binding.session_id == self.session_id:
            record_error(binding, exc)

    def set_output(self, value: Any) -> None:
        set_output(value)

    def result(self, timeout: float | None = None) -> Any:
        """Wait until the run's session has ended (here or elsewhere) and been
        scored, scoring it here if nobody else can; the run with its scores
        (a lucidic.evals.RunResult). TimeoutError if that takes longer than
        ``timeout`` seconds."""
        from ._result import RunResult

        if self.session_id is None:
            raise InvalidOperationError("the run has not started: enter its block first")
        backend = open_backend(self._api_key)
        try:
            return RunResult.from_row(settle(backend, self.session_id, timeout))
        finally:
            backend.close()


def settle(backend: Backend, session_id: str, timeout: float | None) -> dict[str, Any]:
    """Wait for the run's session to end, score what is due (what another
    process holds, wait for), and return the run as stored."""
    deadline = None if timeout is None else time.monotonic() + timeout
    _api.flush(_config.flush_timeout())
    if not wait_ended(backend, session_id, deadline):
        raise TimeoutError(f"run {session_id} has not ended after {timeout} s")
    outcomes = score_session(backend, session_id)
    elsewhere = [o.name for o in outcomes if o.status == "elsewhere"]
    if elsewhere and not wait_scored(backend, session_id, elsewhere, deadline):
        raise TimeoutError(f"run {session_id} is still being scored after {timeout} s")
    rows = backend.run_sessions([session_id])
    if not rows:
        raise InvalidOperationError(f"run {session_id} was not found")
    return rows[0]


# -- scoring where a session ends ---------------------------------------------------------

def on_session_end(binding: Binding) -> None:
    """lucidic's session-end hook: score a session that names an experiment
    or rubrics, here, as it ends (not while the process is being terminated:
    that is left for whoever scores it next)."""
    if not binding.state.evaluated:
        return
    from .. import _lifecycle

    if getattr(_lifecycle, "terminating", False):
        log_rate_limited("score_on_signal", "lucidic: session %s ended by a signal; its "
                         "scoring is left for `lucidic experiments rescore` or the "
                         "experiment's runner", binding.session_id)
        return
    try:
        backend = backend_for_sink(binding.pipeline.sink)
        if backend is None:
            return
        try:
            report(score_session(backend, binding.session_id))
        finally:
            backend.close()
    except LucidicError as exc:  # the store or server cannot answer now
        log_rate_limited("score_unreachable", "lucidic: could not score session %s where it "
                         "ended (%s); it stays due for whoever scores it next",
                         binding.session_id, exc)


def report(outcomes: Sequence[Outcome]) -> None:
    unavailable = [o.name for o in outcomes if o.status == "unavailable"]
    if unavailable:
        log_rate_limited("evaluators_unavailable", "lucidic: %s cannot be run in this "
                         "process (not defined or importable here); the session stays due "
                         "for them", ", ".join(repr(n) for n in unavailable))


def install_hook(hooks: list[Callable[[Binding], None]]) -> None:
    if on_session_end not in hooks:
        hooks.append(on_session_end)
