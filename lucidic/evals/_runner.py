"""run_experiment: a task run over cases, each run an ordinary session.

Sync tasks run in a pool of exactly ``max_concurrency`` threads; async tasks
under a semaphore of that size: never more runs at once. A run whose task
raises (or outlasts ``timeout``) records its error and fails alone. A run
whose task hands its session over (``lai.detach()``) is complete when the
session ends wherever it was continued; the experiment waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .. import _api, _config, _experiments, _sessions
from .._arguments import id_arg, number_arg, tags_arg
from .._context import Binding, current_binding
from .._internal import logger
from .._records import to_jsonable
from ..errors import InvalidOperationError
from . import _intercept
from ._backend import Backend, open_backend
from ._cases import Case, as_cases
from ._evaluators import Run, as_evaluators, call_maybe_async
from ._replay import MODES, ReplayScope, ReplaySource, ReplayStats, current_scope
from ._result import ExperimentResult, RunResult
from ._runs import RunSession, put_run_fields, record_error, settle
from ._scoring import register_experiment


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOperationError(f"{name} must be an int >= 1, not {value!r:.80}")
    return value


class _Experiment:
    """One experiment being run: its plan, its replay source, its runs."""

    def __init__(self, task: Callable[..., Any], cases: Any, *, name: str, evaluators: Any,
                 summary_evaluators: Any, repeats: Any, max_concurrency: Any, timeout: Any,
                 replay: Any, replay_mode: Any, metadata: Any, tags: Any,
                 options: dict[str, Any]) -> None:
        if not callable(task):
            raise InvalidOperationError(f"task must be a function of a case's input, not "
                                        f"{task!r:.80}")
        if not isinstance(name, str) or not name.strip():
            raise InvalidOperationError(f"name must be the experiment's name, a string with "
                                        f"more than blanks, not {name!r:.80}")
        self.task = task
        self.name = name
        self.cases = as_cases(cases)
        self.evaluators = as_evaluators(evaluators)
        self.summary_evaluators = [s if callable(s) else _not_callable(s)
                                   for s in summary_evaluators]
        self.repeats = _positive_int("repeats", repeats)
        self.max_concurrency = _positive_int("max_concurrency", max_concurrency)
        self.timeout = number_arg("timeout", timeout)
        if self.timeout is not None and self.timeout <= 0:
            raise InvalidOperationError(f"timeout must be a number of seconds > 0, not {timeout}")
        if replay_mode not in MODES:
            raise InvalidOperationError(f"replay_mode must be one of {MODES}, not "
                                        f"{replay_mode!r}")
        self.replay = id_arg("replay", replay)
        self.replay_mode = replay_mode
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidOperationError(f"metadata must be a mapping, not "
                                        f"{type(metadata).__name__}")
        self.metadata = None if metadata is None else to_jsonable(dict(metadata))
        self.tags = tags_arg(tags)
        self.options = options
        self.experiment_id = str(uuid.uuid4())
        self.stats = ReplayStats()
        self.source: ReplaySource | None = None
        self.detached: list[str] = []
        self.backend: Backend | None = None

    # -- before and after the runs -------------------------------------------------

    @contextlib.contextmanager
    def started(self) -> Iterator[None]:
        api_key = self.options.get("lucidic_api_key") or self.options.get("api_key")
        self.backend = open_backend(api_key)
        try:
            if self.replay is not None:
                if self.backend.experiment(self.replay) is None:
                    raise InvalidOperationError(
                        f"replay={self.replay!r}: no such experiment here; pass the id of an "
                        "experiment whose runs recorded their LLM calls (lucidic experiments "
                        "list)")
                self.source = ReplaySource.from_events(self.replay,
                                                       self.backend.llm_events(self.replay))
            _experiments.write_experiment(self.experiment_id, {
                "name": self.name, "metadata": self.metadata, "tags": self.tags,
                "evaluators": [e.describe() for e in self.evaluators],
                "summary_evaluators": [getattr(s, "__name__", repr(s))
                                       for s in self.summary_evaluators],
                "repeats": self.repeats, "max_concurrency": self.max_concurrency,
                "replay_of": self.replay, "replay_mode": self.replay_mode if self.replay else None,
                "case_count": len(self.cases), "created_at": time.time()},
                **self._key_options())
            register_experiment(self.experiment_id, self.evaluators)
            if self.source is not None:
                _intercept.install()
            try:
                yield
            finally:
                if self.source is not None:
                    _intercept.uninstall()
        except BaseException:
            self.backend.close()
            raise

    def _key_options(self) -> dict[str, Any]:
        return {k: self.options[k] for k in ("lucidic_api_key", "api_key", "agent_id")
                if self.options.get(k) is not None}

    def finish(self) -> ExperimentResult:
        backend = self.backend
        assert backend is not None
        try:
            for session_id in self.detached:
                settle(backend, session_id, self.timeout)
            _api.flush(_config.flush_timeout())
            order = {case.id: index for index, case in enumerate(self.cases)}
            rows = sorted(backend.runs(self.experiment_id),
                          key=lambda r: (order.get(str(r.get("case_id")), len(order)),
                                         r.get("repeat") or 0))
            runs = [RunResult.from_row(row) for row in rows]
            summary_scores = self._summarize(runs)
            return ExperimentResult(self.experiment_id, self.name, runs, summary_scores,
                                    replayed=self.stats.replayed,
                                    replay_misses=self.stats.missed)
        finally:
            backend.close()

    def _summarize(self, runs: list[RunResult]) -> dict[str, Any]:
        """Summary evaluators: each takes every run and gives one value."""
        if not self.summary_evaluators:
            return {}
        backend = self.backend
        assert backend is not None
        evaluated = []
        for run in runs:
            tree = backend.tree(run.session_id) or {"id": run.session_id}
            evaluated.append(_as_run(run, tree, self.experiment_id))
        values: dict[str, Any] = {}
        for fn in self.summary_evaluators:
            name = getattr(fn, "__name__", "summary")
            try:
                value = call_maybe_async(fn, evaluated)
            except Exception as exc:  # noqa: BLE001 - the user's summary evaluator failed
                logger.warning("lucidic: summary evaluator %r failed: %s: %s", name,
                               type(exc).__name__, exc)
                continue
            values[name] = getattr(value, "value", value)
        _experiments.write_experiment(self.experiment_id, {"summary": values},
                                      **self._key_options())
        return values

    # -- one run ---------------------------------------------------------------------

    def _session(self, case: Case, repeat: int) -> RunSession:
        options = {k: v for k, v in self.options.items() if v is not None}
        return RunSession(self.experiment_id, case, repeat,
                          session_name=f"{self.name} · {case.id} #{repeat}",
                          tags=self.tags, **options)

    def _scope(self, case: Case, repeat: int) -> ReplayScope | None:
        if self.source is None:
            return None
        return ReplayScope(self.source, (case.id, repeat), self.replay_mode, self.stats,
                           lambda: getattr(current_binding(), "mask", None))

    def run_sync(self, case: Case, repeat: int, settled: threading.Event) -> None:
        """One run of a sync task, in a pool thread; ``settled`` is set once
        the run is complete and scored (at its deadline, if it outlasts it)."""
        try:
            with self._session(case, repeat) as session_id:
                binding = current_binding()
                assert binding is not None
                guard = _Deadline(binding, self.timeout, settled)
                token = current_scope.set(self._scope(case, repeat))
                try:
                    output = self.task(case.input)
                except Exception as exc:  # noqa: BLE001 - the run fails alone
                    guard.fail(exc)
                    return
                finally:
                    current_scope.reset(token)
                    guard.cancel()
                guard.succeed(output, session_id, self.detached)
        finally:
            settled.set()

    async def run_async(self, case: Case, repeat: int) -> None:
        """One run of an async task, on the caller's event loop."""
        async with self._session(case, repeat) as session_id:
            binding = current_binding()
            assert binding is not None
            guard = _Deadline(binding, None)
            token = current_scope.set(self._scope(case, repeat))
            try:
                output = await asyncio.wait_for(self.task(case.input), self.timeout)
            except asyncio.TimeoutError:
                guard.fail(TimeoutError(f"the task took longer than {self.timeout} s"))
                return
            except Exception as exc:  # noqa: BLE001 - the run fails alone
                guard.fail(exc)
                return
            finally:
                current_scope.reset(token)
            guard.succeed(output, session_id, self.detached)


def _not_callable(value: Any) -> Any:
    raise InvalidOperationError(f"summary evaluators must be functions of the list of runs, "
                                f"not {value!r:.80}")


def _as_run(result: RunResult, tree: dict[str, Any], experiment_id: str) -> Run:
    return Run(session_id=result.session_id, input=result.input, output=result.output,
               expected=result.expected, error=result.error, session=tree,
               experiment_id=experiment_id, case_id=result.case_id, repeat=result.repeat)


class _Deadline:
    """A run's outcome, settled once: by the task (output or error) or, for a
    sync task that outlasts its timeout, at the deadline. A sync task cannot
    be stopped: it runs on in its thread, keeping its slot, and what it
    records after its deadline is dropped with its ended session."""

    def __init__(self, binding: Binding, timeout: float | None,
                 settled: threading.Event | None = None) -> None:
        self.binding = binding
        self._settled_event = settled
        self._lock = threading.Lock()
        self._settled = False
        self._timer: threading.Timer | None = None
        if timeout is not None:
            self._timer = threading.Timer(timeout, self._time_out, args=(timeout,))
            self._timer.daemon = True
            self._timer.start()

    def _claim(self) -> bool:
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            return True

    def _time_out(self, timeout: float) -> None:
        if self._claim() and self.binding.active:
            error = TimeoutError(f"the task took longer than {timeout} s")
            record_error(self.binding, error)
            _sessions.end(self.binding, failure=f"TimeoutError: {error}")
        if self._settled_event is not None:
            self._settled_event.set()  # ended and scored: the runner need not wait on

    def fail(self, exc: BaseException) -> None:
        if self._claim():
            record_error(self.binding, exc)
            _sessions.end(self.binding, failure=f"{type(exc).__name__}: {exc}")

    def succeed(self, output: Any, session_id: str, detached: list[str]) -> None:
        if not self._claim():
            return
        if output is not None:
            put_run_fields(self.binding, {"output": to_jsonable(output)})
        if not self.binding.active and not self.binding.state.finished:
            detached.append(session_id)  # handed over: it ends elsewhere

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


_OPTION_NAMES = ("providers", "agent_id", "lucidic_api_key", "api_key", "masking_function")


def run_experiment(task: Callable[..., Any], cases: Sequence[Any], *, name: str,
                   evaluators: Sequence[Any] = (), summary_evaluators: Sequence[Any] = (),
                   repeats: int = 1, max_concurrency: int = 8, timeout: float | None = None,
                   replay: str | None = None, replay_mode: str = "strict",
                   metadata: dict[str, Any] | None = None, tags: Sequence[str] | None = None,
                   **options: Any) -> ExperimentResult:
    """Run ``task(case.input)`` for every case × repeat, each run a session of
    the new experiment ``name``, score each run with ``evaluators`` and the
    whole with ``summary_evaluators``. ``options`` (providers, agent_id,
    lucidic_api_key, masking_function) are those of ``lai.session``.

    ``replay=EXPERIMENT_ID`` answers the runs' OpenAI and Anthropic calls from
    that experiment's recorded calls; ``replay_mode="fallback"`` makes (and
    records) the calls it never recorded instead of raising ReplayMissError.
    An async ``task`` is run on an event loop of its own; from a coroutine,
    ``await arun_experiment(...)`` instead."""
    experiment = _build(task, cases, name, evaluators, summary_evaluators, repeats,
                        max_concurrency, timeout, replay, replay_mode, metadata, tags, options)
    if _is_async(task):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(_arun(experiment))
        raise InvalidOperationError("run_experiment() was called inside a running event loop "
                                    "with an async task: use `await arun_experiment(...)`")
    with experiment.started():
        _run_in_threads(experiment)
    return experiment.finish()


async def arun_experiment(task: Callable[..., Any], cases: Sequence[Any], *, name: str,
                          evaluators: Sequence[Any] = (), summary_evaluators: Sequence[Any] = (),
                          repeats: int = 1, max_concurrency: int = 8,
                          timeout: float | None = None, replay: str | None = None,
                          replay_mode: str = "strict", metadata: dict[str, Any] | None = None,
                          tags: Sequence[str] | None = None, **options: Any) -> ExperimentResult:
    """``run_experiment`` for a coroutine: async tasks run on this event loop
    under a semaphore of ``max_concurrency``; a sync task runs in threads."""
    experiment = _build(task, cases, name, evaluators, summary_evaluators, repeats,
                        max_concurrency, timeout, replay, replay_mode, metadata, tags, options)
    return await _arun(experiment)


def _build(task: Callable[..., Any], cases: Any, name: str, evaluators: Any,
           summary_evaluators: Any, repeats: Any, max_concurrency: Any, timeout: Any,
           replay: Any, replay_mode: Any, metadata: Any, tags: Any,
           options: dict[str, Any]) -> _Experiment:
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise InvalidOperationError(f"run_experiment() got unexpected keyword(s) "
                                    f"{', '.join(unknown)}; the session options it takes are "
                                    f"{', '.join(_OPTION_NAMES)}")
    return _Experiment(task, cases, name=name, evaluators=evaluators,
                       summary_evaluators=summary_evaluators, repeats=repeats,
                       max_concurrency=max_concurrency, timeout=timeout, replay=replay,
                       replay_mode=replay_mode, metadata=metadata, tags=tags, options=options)


def _is_async(task: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(task) or inspect.iscoroutinefunction(
        getattr(task, "__call__", None))  # noqa: B004 - a callable object's async __call__


def _plan(experiment: _Experiment) -> list[tuple[Case, int]]:
    return [(case, repeat) for case in experiment.cases for repeat in range(experiment.repeats)]


def _run_in_threads(experiment: _Experiment) -> None:
    pool = ThreadPoolExecutor(max_workers=experiment.max_concurrency,
                              thread_name_prefix="lucidic-run")
    runs: list[tuple[Future[None], threading.Event]] = []
    for case, repeat in _plan(experiment):
        settled = threading.Event()
        runs.append((pool.submit(experiment.run_sync, case, repeat, settled), settled))
    try:
        _wait_settled(runs)
    finally:
        # A sync task past its deadline cannot be stopped: leave its thread be.
        pool.shutdown(wait=False)


def _wait_settled(runs: list[tuple[Future[None], threading.Event]]) -> None:
    """Until every run is settled; what escaped a run (not an Exception of
    its task, which the run records) is raised here."""
    for future, settled in runs:
        while not settled.wait(0.05):
            if future.done():
                break
        if future.done() and future.exception() is not None:
            raise future.exception()  # type: ignore[misc]


async def _arun(experiment: _Experiment) -> ExperimentResult:
    loop = asyncio.get_running_loop()
    started = experiment.started()
    await loop.run_in_executor(None, started.__enter__)
    try:
        if _is_async(experiment.task):
            semaphore = asyncio.Semaphore(experiment.max_concurrency)

            async def one(case: Case, repeat: int) -> None:
                async with semaphore:
                    await experiment.run_async(case, repeat)

            await asyncio.gather(*(one(case, repeat) for case, repeat in _plan(experiment)))
        else:
            await loop.run_in_executor(None, _run_in_threads, experiment)
    except BaseException as exc:
        await loop.run_in_executor(None, started.__exit__, type(exc), exc, exc.__traceback__)
        raise
    await loop.run_in_executor(None, started.__exit__, None, None, None)
    return await loop.run_in_executor(None, experiment.finish)

