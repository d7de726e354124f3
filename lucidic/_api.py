"""The public API: sessions, steps, events."""

from __future__ import annotations

import base64
import functools
import inspect
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from . import _config, _continuation, _lifecycle
from ._context import (
    Binding,
    EventRef,
    StepFrame,
    current_binding,
    current_step,
    install_context_propagation,
    last_event,
    process_slot,
    scope_binding,
    step_in,
)
from ._internal import log_rate_limited, logger, swallow
from ._numbers import as_float, short_number_repr
from ._pipeline import Pipeline
from ._records import Mask, items_of, mask_fields, text_field, to_jsonable
from ._runtime import runtime, writer
from ._sinks import Sink, SinkError
from .errors import (
    InvalidOperationError,
    LucidicNotInitializedError,
    ServerUnavailableError,
)
from .limits import MAX_ID_LENGTH
from .store import Record

F = TypeVar("F", bound=Callable[..., Any])

#: The embedded store has no accounts; everything in it is one project.
LOCAL_PROJECT = "default"
#: The longest wait flush() and shutdown() take (longer ones overflow the clock).
_MAX_TIMEOUT = 1e9


# -- validation ------------------------------------------------------------------

def _session_id_arg(value: Any, name: str = "session_id") -> str:
    if not isinstance(value, str):
        raise InvalidOperationError(
            f"{name} must be a string (the id returned by lai.init()), "
            f"not {type(value).__name__}")
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise InvalidOperationError(
            f"{name} {value[:80]!r} is not a valid session id: use 1 to {MAX_ID_LENGTH} "
            "printable characters")
    return value


def _number_arg(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOperationError(f"{name} must be a number, not {type(value).__name__} "
                                    f"{value!r:.80}")
    number = as_float(value)
    if not math.isfinite(number):
        raise InvalidOperationError(f"{name} must be a finite number, not "
                                    f"{short_number_repr(value)}")
    return number


def _bool_arg(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidOperationError(f"{name} must be True, False or None, not {value!r:.80}")


def _mask_arg(value: Any) -> Mask | None:
    if value is None or callable(value):
        return value  # type: ignore[no-any-return]
    raise InvalidOperationError(
        f"masking_function must be a callable taking and returning text, not "
        f"{type(value).__name__}")


def _tags_arg(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise InvalidOperationError(f"tags must be a list of strings, not {type(value).__name__}")
    return [text_field(tag) or "" for tag in items_of(value)]


def _id_arg(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH \
            or not value.isprintable():
        raise InvalidOperationError(f"{name} must be an id string of 1 to {MAX_ID_LENGTH} "
                                    f"printable characters, not {value!r:.80}")
    return value


def _rubrics_arg(value: Any) -> list[str] | None:
    """Rubric names (a rubric object stands for its name)."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidOperationError(f"rubrics must be a list of rubric names, not {value!r:.80}")
    names = []
    for item in items_of(value):
        name = item if isinstance(item, str) else getattr(item, "name", None)
        if not isinstance(name, str) or not name.strip():
            raise InvalidOperationError(f"rubrics must be a list of rubric names, not "
                                        f"{item!r:.80}")
        names.append(name)
    return names


def _evaluation_fields(production_monitoring: Any, mass_sim_id: Any, experiment_id: Any,
                       rubrics: Any) -> dict[str, Any]:
    """The hosted SDK's init() keywords, as session fields. An experiment or
    mass simulation id not seen before is created when the session is stored."""
    return {"production_monitoring": _bool_arg("production_monitoring",
                                               production_monitoring) or None,
            "mass_sim_id": _id_arg("mass_sim_id", mass_sim_id),
            "experiment_id": _id_arg("experiment_id", experiment_id),
            "rubrics": _rubrics_arg(rubrics)}


def _screenshot(screenshot: Any, screenshot_path: Any) -> tuple[str | None, str | None]:
    """A screenshot given inline (base64) or by path, which is read now."""
    if screenshot is not None or screenshot_path is None:
        return text_field(screenshot), text_field(screenshot_path)
    path = Path(str(screenshot_path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidOperationError(
            f"cannot read screenshot_path {str(path)!r}: {exc.strerror or exc}") from exc
    return base64.b64encode(data).decode("ascii"), str(path)


def _no_session(call: str) -> None:
    log_rate_limited(f"no_session_{call}", "lucidic: %s() called with no current session; "
                     "nothing recorded", call, level=logging.DEBUG)


# -- options and bindings --------------------------------------------------------

class _Options:
    """init/continue options resolved against the environment."""

    __slots__ = ("agent_id", "api_key", "auto_end", "base_url", "mask", "providers")

    def __init__(self, *, lucidic_api_key: str | None, api_key: str | None,
                 agent_id: str | None, providers: Sequence[str] | None,
                 masking_function: Any, auto_end: Any) -> None:
        key = lucidic_api_key if lucidic_api_key is not None else api_key
        self.api_key = key if key is not None else _config.env("LUCIDIC_API_KEY")
        self.agent_id = agent_id if agent_id is not None else _config.env("LUCIDIC_AGENT_ID")
        for name, value in (("api key", self.api_key), ("agent_id", self.agent_id)):
            if value is not None and not isinstance(value, str):
                raise InvalidOperationError(f"{name} must be a string, not {type(value).__name__}")
        self.base_url = _config.base_url()
        self.mask = _mask_arg(masking_function)
        auto = _bool_arg("auto_end", auto_end)
        self.auto_end = True if auto is None else auto
        if providers is not None and (isinstance(providers, str)
                                      or not isinstance(providers, (list, tuple))):
            raise InvalidOperationError(
                f"providers must be a list of names such as ['openai'], not {providers!r:.80}")
        self.providers = list(items_of(providers or ()))

    def sink(self) -> Sink:
        sink = runtime.make_sink(self.base_url, self.api_key)
        sink.verify()  # no key at all: APIKeyVerificationError, without the network
        return sink


def _activate_providers(names: list[str]) -> None:
    if names:
        from .plugins import activate

        activate(names)


def _bind(session_id: str, options: _Options, pipeline: Pipeline, project: str) -> Binding:
    install_context_propagation()
    binding = Binding(runtime.state(session_id), pipeline, mask=options.mask,
                      auto_end=options.auto_end, agent_id=options.agent_id, project=project,
                      writer=writer.fields(options.agent_id))
    runtime.register(binding)
    _lifecycle.install()  # flush at exit always; end the session only with auto_end
    return binding


def _project_of(sink: Sink) -> str:
    return sink.project or LOCAL_PROJECT


def _put(binding: Binding, kind: str, record_id: str, fields: dict[str, Any],
         ts: float | None = None) -> None:
    if binding.mask is not None:
        mask_fields(binding.mask, fields)
    if "started_at" in fields and kind != "session":
        # The record that creates a step or event names the process writing it.
        fields.update(binding.writer)
    binding.pipeline.put((kind, record_id, time.time() if ts is None else ts, fields))


def _create_session(options: _Options, session_id: str | None, fields: dict[str, Any]) -> Binding:
    """Make a new session and bind it (the caller decides the scope). With no
    session_id nothing waits on the network; a given one is checked first."""
    _activate_providers(options.providers)
    sink = options.sink()
    given = session_id is not None
    session_id = _session_id_arg(session_id) if given else str(uuid.uuid4())
    pipeline = runtime.pipeline_for(sink)
    project = _project_of(sink)
    now = time.time()
    record_fields = {"project": project, "agent_id": options.agent_id, "started_at": now,
                     **fields}
    if options.mask is not None:
        mask_fields(options.mask, record_fields)
    record: Record = ("session", session_id, now, record_fields)
    if given:
        _claim(sink, pipeline, record)
    else:
        write_at_once(sink, pipeline, record)
    binding = _bind(session_id, options, pipeline, project)
    binding.state.evaluated = bool(fields.get("experiment_id") or fields.get("rubrics"))
    return binding


def _claim(sink: Sink, pipeline: Pipeline, record: Record) -> None:
    """Create a session under the id its caller chose, refusing an id that is
    taken: InvalidOperationError, in the same words whoever holds it."""
    try:
        # A server decides atomically, within LUCIDIC_CONNECT_TIMEOUT.
        sink.claim_session(record)
    except (SinkError, ServerUnavailableError) as exc:
        log_rate_limited("claim_unanswered", "lucidic: could not check that session id %r is "
                         "free (%s); the session is queued and created when the store or "
                         "server answers (if the id is taken by then, its records are "
                         "refused)", record[1], exc)
        _deliver_soon(pipeline, record)


def write_at_once(sink: Sink, pipeline: Pipeline, record: Record) -> None:
    """Store a record now (what others must find as soon as the call that
    made it returns); if the backend cannot take it now, queue it. A remote
    backend is never waited for: the record goes first in line instead."""
    if sink.remote:
        _deliver_soon(pipeline, record)
        return
    try:
        sink.write([record])
    except Exception as exc:  # noqa: BLE001
        log_rate_limited(f"{record[0]}_create", "lucidic: could not store %s %s yet (%s); it "
                         "is queued and will be delivered later", record[0], record[1], exc)
        pipeline.put(record)


def _deliver_soon(pipeline: Pipeline, record: Record) -> None:
    pipeline.put(record)
    pipeline.deliver_soon()


def _check_continuable(sink: Sink, session_id: str,
                       agent_id: str | None) -> dict[str, Any] | None:
    """Refuse to continue an unknown, finished or other agent's session (the
    rule of lucidic._continuation); returns the stored session when the
    backend was asked."""
    state = runtime.states.get(session_id)
    if state is not None and state.finished:
        raise InvalidOperationError(_continuation.finished_message(session_id))
    if state is not None and state.bindings:
        # This process holds it open right now: no need to ask the backend.
        refused = _continuation.refusal({"agent_id": state.bindings[0].agent_id}, session_id,
                                        agent_id)
        if refused:
            raise InvalidOperationError(refused)
        return None
    try:
        # A server applies the rule itself, within LUCIDIC_CONNECT_TIMEOUT,
        # and raises what it answers (or ServerUnavailableError, naming it).
        return sink.check_continuable(session_id, agent_id)
    except SinkError as exc:
        # The embedded store is busy (another process holds its lock): the
        # records wait in the queue and the spool until it is free.
        log_rate_limited("lookup_failed", "lucidic: could not check session %s (%s); "
                         "continuing it, records will be delivered when the store answers",
                         session_id, exc)
        return None


def _continue(session_id: str, options: _Options) -> Binding:
    _activate_providers(options.providers)
    sink = options.sink()
    info = _check_continuable(sink, session_id, options.agent_id)
    # Over the embedded store, a session written through a server sharing its
    # file keeps its project: session records carry it, or they would not apply.
    project = (info or {}).get("project") or _project_of(sink)
    binding = _bind(session_id, options, runtime.pipeline_for(sink), project)
    if info is not None:
        binding.state.evaluated = bool(info.get("experiment_id") or info.get("rubrics"))
    return binding


# -- sessions ----------------------------------------------------------------------

def init(session_name: str | None = None, session_id: str | None = None,
         lucidic_api_key: str | None = None, agent_id: str | None = None,
         task: str | None = None, providers: Sequence[str] | None = None,
         tags: Sequence[str] | None = None, masking_function: Callable[[str], str] | None = None,
         auto_end: bool = True, *, api_key: str | None = None,
         capture_uncaught: bool = True, production_monitoring: bool = False,
         mass_sim_id: str | None = None, experiment_id: str | None = None,
         rubrics: Sequence[str] | None = None) -> str:
    """Start a session and make it this process's current one; returns its id.

    ``mass_sim_id``, ``experiment_id`` and ``rubrics`` (names) are recorded on
    the session, as the hosted SDK does; the named rubrics, and the
    experiment's evaluators, score the session when it ends."""
    options = _Options(lucidic_api_key=lucidic_api_key, api_key=api_key, agent_id=agent_id,
                       providers=providers, masking_function=masking_function,
                       auto_end=auto_end)
    fields = {"name": text_field(session_name), "task": text_field(task),
              "tags": _tags_arg(tags),
              **_evaluation_fields(production_monitoring, mass_sim_id, experiment_id, rubrics)}
    binding = _create_session(options, session_id, fields)
    previous = process_slot.binding
    if previous is not None and previous.active:
        logger.info("lucidic: session %s replaces %s as the process's current session; "
                    "the earlier one stays open", binding.session_id, previous.session_id)
    process_slot.binding = binding
    if not capture_uncaught:
        binding.state.outcome_set = True  # nothing will mark it failed on a crash
    return binding.session_id


def continue_session(session_id: str, lucidic_api_key: str | None = None,
                     agent_id: str | None = None, providers: Sequence[str] | None = None,
                     masking_function: Callable[[str], str] | None = None,
                     auto_end: bool = True, *, api_key: str | None = None) -> str:
    """Resume an existing, unfinished session as this process's current one."""
    session_id = _session_id_arg(session_id)
    current = process_slot.binding
    if current is not None and current.active:
        if current.session_id == session_id:
            return session_id  # re-entering the same session is harmless
        raise InvalidOperationError(
            f"session {current.session_id!r} is already current in this process; call "
            "lai.detach() or lai.end_session() before continuing another, or use "
            "`with lai.continued(id):` to work on it in one thread or task.")
    options = _Options(lucidic_api_key=lucidic_api_key, api_key=api_key, agent_id=agent_id,
                       providers=providers, masking_function=masking_function,
                       auto_end=auto_end)
    process_slot.binding = _continue(session_id, options)
    return session_id


def detach() -> None:
    """Stop this scope (a `continued` block, else the process) writing to the
    current session without finishing it, after flushing what it recorded."""
    binding = current_binding()
    if binding is None:
        raise LucidicNotInitializedError("lai.detach() needs a current session; there is none "
                                         "here (it may have ended or been detached already).")
    detach_binding(binding)


def detach_binding(binding: Binding, *, wait: bool = True) -> None:
    if wait:
        binding.pipeline.flush(_config.flush_timeout(), fail_fast=True)
    runtime.release(binding)


def update_session(task: str | None = None, session_eval: float | None = None,
                   session_eval_reason: str | None = None, is_successful: bool | None = None,
                   is_successful_reason: str | None = None, *,
                   tags: Sequence[str] | None = None, session_name: str | None = None) -> None:
    binding = _require_session("update_session")
    fields = _session_result_fields(session_eval, session_eval_reason, is_successful,
                                    is_successful_reason, binding)
    fields.update(task=text_field(task), tags=_tags_arg(tags), name=text_field(session_name))
    _put(binding, "session", binding.session_id, fields)


def end_session(is_successful: bool | None = None, is_successful_reason: str | None = None,
                session_eval: float | None = None,
                session_eval_reason: str | None = None) -> None:
    """Finish the current session for everyone."""
    binding = _require_session("end_session")
    end_binding(binding, is_successful=is_successful, is_successful_reason=is_successful_reason,
                session_eval=session_eval, session_eval_reason=session_eval_reason)


#: Called with each binding whose session this process ends, once its records
#: are delivered: lucidic.evals, when imported, scores the sessions that name
#: an experiment or rubrics there.
session_end_hooks: list[Callable[[Binding], None]] = []


def end_binding(binding: Binding, *, is_successful: bool | None = None,
                is_successful_reason: str | None = None, session_eval: float | None = None,
                session_eval_reason: str | None = None, failure: str | None = None,
                wait: bool = True, timeout: float | None = None) -> None:
    """End the binding's session; with ``wait``, flush for ``timeout`` (the
    flush bound by default) so that others see it finished at once."""
    fields = _session_result_fields(session_eval, session_eval_reason, is_successful,
                                    is_successful_reason, binding)
    if failure is not None and not binding.state.outcome_set and is_successful is None:
        fields.update(is_successful=False, is_successful_reason=failure)
    now = time.time()
    for step_id in list(binding.state.open_steps):
        _put(binding, "step", step_id, {"session_id": binding.session_id, "ended_at": now,
                                        "is_finished": True}, now)
    binding.state.open_steps.clear()
    fields.update(ended_at=now, is_finished=True)
    _put(binding, "session", binding.session_id, fields, now)
    runtime.finish_state(binding.state)
    if wait:
        # Let another process see the session as finished right away.
        binding.pipeline.flush(_config.flush_timeout() if timeout is None else timeout,
                               fail_fast=True)
    for hook in session_end_hooks:
        with swallow("session_end_hook"):
            hook(binding)


def _session_result_fields(session_eval: Any, session_eval_reason: Any, is_successful: Any,
                           is_successful_reason: Any, binding: Binding) -> dict[str, Any]:
    success = _bool_arg("is_successful", is_successful)
    if success is not None:
        binding.state.outcome_set = True
    return {"project": binding.project, "session_eval": _number_arg("session_eval", session_eval),
            "session_eval_reason": text_field(session_eval_reason), "is_successful": success,
            "is_successful_reason": text_field(is_successful_reason)}


def _require_session(call: str) -> Binding:
    binding = current_binding()
    if binding is None:
        raise LucidicNotInitializedError(
            f"lai.{call}() needs a current session and there is none here. Start one with "
            "lai.init(), lai.continue_session(id) or `with lai.continued(id):`.")
    return binding


def flush(timeout: float | None = None) -> bool:
    """Deliver everything queued so far; True once all of it (and anything this
    process spooled) has reached the sink within ``timeout`` seconds."""
    timeout = _config.flush_timeout() if timeout is None else _number_arg("timeout", timeout)
    assert timeout is not None
    return runtime.flush_all(min(timeout, _MAX_TIMEOUT))


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop the background workers; what could not be delivered in
    time is spooled for the next process. What is recorded afterwards is
    delivered by the next flush() or at exit."""
    timeout = _config.flush_timeout() if timeout is None else _number_arg("timeout", timeout)
    assert timeout is not None
    return runtime.shutdown_all(min(timeout, _MAX_TIMEOUT))


def delivery_stats() -> dict[str, int]:
    """What this process's records became so far: ``delivered``, ``spooled``
    (written to the spool; one may be written twice), ``dropped`` (lost: the
    queue was full while neither the sink nor the disk took records),
    ``rejected`` (refused for good by the sink, kept in the rejected file) and
    ``delivery_failures``. Summed over every destination."""
    totals = {"delivered": 0, "spooled": 0, "dropped": 0, "rejected": 0,
              "delivery_failures": 0}
    for pipeline in list(runtime.pipelines.values()):
        for name in totals:
            totals[name] += getattr(pipeline.stats, name)
    return totals


# -- scoped sessions ---------------------------------------------------------------

class _ScopeBase:
    """Shared by continued() and session(): a context manager (sync and async)
    binding a session to the current thread or task, usable as a decorator."""

    def __init__(self) -> None:
        self._entries: list[tuple[Binding, Any]] = []

    def _open(self) -> Binding:
        raise NotImplementedError

    def _close(self, binding: Binding, exc: BaseException | None) -> None:
        raise NotImplementedError

    def _clone(self) -> _ScopeBase:
        raise NotImplementedError

    def __enter__(self) -> str:
        binding = self._open()
        self._entries.append((binding, scope_binding.set(binding)))
        return binding.session_id

    def _unbind(self) -> Binding:
        binding, token = self._entries.pop()
        try:
            scope_binding.reset(token)
        except ValueError:  # exited in another context than entered: undo by hand
            scope_binding.set(None)
        return binding

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close(self._unbind(), exc)

    async def __aenter__(self) -> str:
        import asyncio

        # Checking or creating the session may wait on the store or the
        # server: do it off the event loop (to_thread carries our context, so
        # the scope checks see this task's), then bind in this task.
        binding = await asyncio.to_thread(self._open)
        self._entries.append((binding, scope_binding.set(binding)))
        return binding.session_id

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        import asyncio  # here, not at the top: `import lucidic` stays light

        # Flushing waits on the worker: keep the event loop free meanwhile.
        await asyncio.to_thread(self._close, self._unbind(), exc)

    def __call__(self, fn: F) -> F:
        """Use as a decorator: each call runs in its own scope."""
        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with self._clone():
                    async for item in fn(*args, **kwargs):
                        yield item
            return agen_wrapper  # type: ignore[return-value]
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with self._clone():
                    return await fn(*args, **kwargs)
            return async_wrapper  # type: ignore[return-value]
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._clone():
                    return (yield from fn(*args, **kwargs))
            return gen_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._clone():
                return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]


class continued(_ScopeBase):  # noqa: N801 - used like a function: `with lai.continued(id):`
    """Resume a session in the current thread or task only.

    On exit the block detaches (flushes, stops writing) unless ``end=True``,
    in which case it ends the session: successful unless an exception escaped.
    """

    def __init__(self, session_id: str, *, end: bool = False,
                 lucidic_api_key: str | None = None, api_key: str | None = None,
                 agent_id: str | None = None, providers: Sequence[str] | None = None,
                 masking_function: Callable[[str], str] | None = None,
                 auto_end: bool = True) -> None:
        super().__init__()
        self.session_id = _session_id_arg(session_id)
        self._end = bool(end)
        self._kwargs: dict[str, Any] = {
            "lucidic_api_key": lucidic_api_key, "api_key": api_key, "agent_id": agent_id,
            "providers": providers, "masking_function": masking_function, "auto_end": auto_end}
        self._options = _Options(**self._kwargs)

    def _clone(self) -> continued:
        return continued(self.session_id, end=self._end, **self._kwargs)  # type: ignore[arg-type]

    def _open(self) -> Binding:
        current = scope_binding.get()
        if current is not None and current.active and current.session_id != self.session_id:
            raise InvalidOperationError(
                f"session {current.session_id!r} is already current in this scope; leave its "
                f"block before continuing {self.session_id!r}, or continue it in another "
                "thread or task.")
        return _continue(self.session_id, self._options)

    def _close(self, binding: Binding, exc: BaseException | None) -> None:
        if not binding.active:
            return
        if self._end:
            _end_scope(binding, exc)
        else:
            detach_binding(binding)


class session(_ScopeBase):  # noqa: N801
    """A new session scoped to the current thread or task; exit ends it
    (successful unless an exception escaped)."""

    def __init__(self, session_name: str | None = None, *, session_id: str | None = None,
                 lucidic_api_key: str | None = None, api_key: str | None = None,
                 agent_id: str | None = None, task: str | None = None,
                 providers: Sequence[str] | None = None, tags: Sequence[str] | None = None,
                 masking_function: Callable[[str], str] | None = None,
                 auto_end: bool = True, production_monitoring: bool = False,
                 mass_sim_id: str | None = None, experiment_id: str | None = None,
                 rubrics: Sequence[str] | None = None) -> None:
        super().__init__()
        self._kwargs = {"session_name": session_name, "session_id": session_id,
                        "lucidic_api_key": lucidic_api_key, "api_key": api_key,
                        "agent_id": agent_id, "task": task, "providers": providers,
                        "tags": tags, "masking_function": masking_function,
                        "auto_end": auto_end, "production_monitoring": production_monitoring,
                        "mass_sim_id": mass_sim_id, "experiment_id": experiment_id,
                        "rubrics": rubrics}
        self._options = _Options(lucidic_api_key=lucidic_api_key, api_key=api_key,
                                 agent_id=agent_id, providers=providers,
                                 masking_function=masking_function, auto_end=auto_end)
        self._fields: dict[str, Any] = {
            "name": text_field(session_name), "task": text_field(task), "tags": _tags_arg(tags),
            **_evaluation_fields(production_monitoring, mass_sim_id, experiment_id, rubrics)}
        self._session_id = session_id
        self.session_id: str | None = None

    def _clone(self) -> session:
        return session(**self._kwargs)  # type: ignore[arg-type]

    def _open(self) -> Binding:
        binding = _create_session(self._options, self._session_id, dict(self._fields))
        self.session_id = binding.session_id
        return binding

    def _close(self, binding: Binding, exc: BaseException | None) -> None:
        if binding.active:
            _end_scope(binding, exc)


def _end_scope(binding: Binding, exc: BaseException | None) -> None:
    """End a block's session: successful unless an exception escaped (or the
    code said otherwise with update_session/end_session)."""
    if exc is None:
        end_binding(binding, is_successful=None if binding.state.outcome_set else True)
    else:
        end_binding(binding, failure=f"{type(exc).__name__}: {exc}")


# -- steps ---------------------------------------------------------------------------

def create_step(state: str | None = None, action: str | None = None, goal: str | None = None,
                eval_score: float | None = None, eval_description: str | None = None,
                screenshot: str | None = None, screenshot_path: str | None = None) -> str | None:
    """Open a step in the current session (nested in the open one, if any) and
    make it the current step of this thread or task. Returns its id."""
    binding = current_binding()
    if binding is None:
        _no_session("create_step")
        return None
    session_id = binding.session_id
    parent = step_in(session_id)
    step_id = binding.state.ids.new()
    now = time.time()
    fields = _step_fields(state, action, goal, eval_score, eval_description, screenshot,
                          screenshot_path)
    fields.update(session_id=session_id, parent_step_id=parent.step_id if parent else None,
                  started_at=now)
    _put(binding, "step", step_id, fields, now)
    current_step.set(StepFrame(session_id, step_id, parent))
    binding.state.open_steps.add(step_id)
    return step_id


def update_step(step_id: str | None = None, state: str | None = None, action: str | None = None,
                goal: str | None = None, eval_score: float | None = None,
                eval_description: str | None = None, screenshot: str | None = None,
                screenshot_path: str | None = None) -> None:
    binding = current_binding()
    if binding is None:
        _no_session("update_step")
        return
    step_id = _step_target(binding, step_id, "update_step")
    fields = _step_fields(state, action, goal, eval_score, eval_description, screenshot,
                          screenshot_path)
    fields["session_id"] = binding.session_id
    _put(binding, "step", step_id, fields)


def end_step(step_id: str | None = None, state: str | None = None, action: str | None = None,
             goal: str | None = None, eval_score: float | None = None,
             eval_description: str | None = None, screenshot: str | None = None,
             screenshot_path: str | None = None) -> None:
    """Finish a step (the current one unless step_id is given)."""
    binding = current_binding()
    if binding is None:
        _no_session("end_step")
        return
    step_id = _step_target(binding, step_id, "end_step")
    fields = _step_fields(state, action, goal, eval_score, eval_description, screenshot,
                          screenshot_path)
    now = time.time()
    fields.update(session_id=binding.session_id, ended_at=now, is_finished=True)
    _put(binding, "step", step_id, fields, now)
    binding.state.open_steps.discard(step_id)
    _pop_step(step_id)


def _step_fields(state: Any, action: Any, goal: Any, eval_score: Any, eval_description: Any,
                 screenshot: Any, screenshot_path: Any) -> dict[str, Any]:
    shot, shot_path = _screenshot(screenshot, screenshot_path)
    return {"state": text_field(state), "action": text_field(action), "goal": text_field(goal),
            "eval_score": _number_arg("eval_score", eval_score),
            "eval_description": text_field(eval_description), "screenshot": shot,
            "screenshot_path": shot_path}


def _step_target(binding: Binding, step_id: Any, call: str) -> str:
    if step_id is not None:
        if not isinstance(step_id, str) or not step_id:
            raise InvalidOperationError(f"step_id must be a step id string, not {step_id!r:.80}")
        state = binding.state
        if step_id not in state.open_steps and not state.ids.made_here(step_id) \
                and not _on_step_stack(binding.session_id, step_id):
            raise InvalidOperationError(_not_made_here("step", step_id, binding, call))
        return step_id
    frame = step_in(binding.session_id)
    if frame is None:
        raise InvalidOperationError(
            f"lai.{call}() found no open step here; open one with lai.create_step() or pass "
            "step_id")
    return frame.step_id


def _on_step_stack(session_id: str, step_id: str) -> bool:
    """An open step of this context (a decorated function's, say)."""
    frame = step_in(session_id)
    while frame is not None:
        if frame.step_id == step_id:
            return True
        frame = frame.parent
    return False


def _not_made_here(kind: str, record_id: str, binding: Binding, call: str) -> str:
    # As the hosted SDK ("Step ID not found in session history"): an update
    # only ever touches what this session made here; an unknown id would
    # otherwise become a new, phantom record, or land in another session's.
    return (f"lai.{call}(): no {kind} {record_id[:80]!r} was created in session "
            f"{binding.session_id!r} by this process; pass an id that lai.create_{kind}() "
            f"returned in this session (a {kind} of another session, or of another process, "
            "can only be changed where it was created). Nothing was recorded.")


def _pop_step(step_id: str) -> None:
    """Take a finished step off this context's stack, wherever it is."""
    frame = current_step.get()
    above: list[StepFrame] = []
    while frame is not None and frame.step_id != step_id:
        above.append(frame)
        frame = frame.parent
    if frame is None:
        return  # not on this context's stack (ended from elsewhere)
    rebuilt = frame.parent
    for kept in reversed(above):
        rebuilt = StepFrame(kept.session_id, kept.step_id, rebuilt)
    current_step.set(rebuilt)


# -- events ------------------------------------------------------------------------

_EVENT_ARGS = ("description", "result", "cost_added", "model", "screenshots", "function_name",
               "arguments")


def create_event(step_id: str | None = None, description: str | None = None,
                 result: str | None = None, cost_added: float | None = None,
                 model: str | None = None, screenshots: Sequence[str] | None = None,
                 function_name: str | None = None, arguments: Any = None,
                 type: str = "generic") -> str | None:  # noqa: A002 - the record's field name
    """Record an event in the current step (or session); returns its id."""
    binding = current_binding()
    if binding is None:
        _no_session("create_event")
        return None
    fields = _event_fields(description, result, cost_added, model, screenshots, function_name,
                           arguments)
    fields["type"] = text_field(type) or "generic"
    if step_id is not None:
        step_id = _step_target(binding, step_id, "create_event")
    return record_event(binding, fields, step_id=step_id)


def record_event(binding: Binding, fields: dict[str, Any], *, step_id: str | None = None,
                 event_id: str | None = None) -> str:
    """Record one finished event for binding's session; the building block
    create_event, @event and provider plugins share."""
    session_id = binding.session_id
    if step_id is None:
        frame = step_in(session_id)
        step_id = frame.step_id if frame is not None else None
    event_id = event_id or binding.state.ids.new()
    now = time.time()
    fields["session_id"] = session_id
    fields["step_id"] = step_id
    fields.setdefault("started_at", now)
    fields.setdefault("ended_at", now)
    fields["is_finished"] = True
    _put(binding, "event", event_id, fields, now)
    last_event.set(EventRef(session_id, event_id))
    return event_id


def update_event(event_id: str | None = None, description: str | None = None,
                 result: str | None = None, cost_added: float | None = None,
                 model: str | None = None, screenshots: Sequence[str] | None = None,
                 function_name: str | None = None, arguments: Any = None) -> None:
    binding = current_binding()
    if binding is None:
        _no_session("update_event")
        return
    fields = _event_fields(description, result, cost_added, model, screenshots, function_name,
                           arguments)
    fields["session_id"] = binding.session_id
    _put(binding, "event", _event_target(binding, event_id, "update_event"), fields)


def end_event(event_id: str | None = None, description: str | None = None,
              result: str | None = None, cost_added: float | None = None,
              model: str | None = None, screenshots: Sequence[str] | None = None,
              function_name: str | None = None, arguments: Any = None) -> None:
    """Amend an event and stamp its end time (the last one created here unless
    event_id is given)."""
    binding = current_binding()
    if binding is None:
        _no_session("end_event")
        return
    fields = _event_fields(description, result, cost_added, model, screenshots, function_name,
                           arguments)
    now = time.time()
    fields.update(session_id=binding.session_id, ended_at=now)
    _put(binding, "event", _event_target(binding, event_id, "end_event"), fields, now)


def _event_fields(description: Any, result: Any, cost_added: Any, model: Any, screenshots: Any,
                  function_name: Any, arguments: Any) -> dict[str, Any]:
    if screenshots is not None and (isinstance(screenshots, str)
                                    or not isinstance(screenshots, (list, tuple))):
        raise InvalidOperationError("screenshots must be a list of base64 strings, not "
                                    f"{type(screenshots).__name__}")
    return {"description": text_field(description), "result": text_field(result),
            "cost": _number_arg("cost_added", cost_added), "model": text_field(model),
            "screenshots": None if screenshots is None
            else [text_field(s) for s in items_of(screenshots)],
            "function_name": text_field(function_name),
            "arguments": None if arguments is None else to_jsonable(arguments)}


def _event_target(binding: Binding, event_id: Any, call: str) -> str:
    if event_id is not None:
        if not isinstance(event_id, str) or not event_id:
            raise InvalidOperationError(f"event_id must be an event id string, not "
                                        f"{event_id!r:.80}")
        if not binding.state.ids.made_here(event_id):
            raise InvalidOperationError(_not_made_here("event", event_id, binding, call))
        return event_id
    ref = last_event.get()
    if ref is None or ref.session_id != binding.session_id:
        raise InvalidOperationError(f"lai.{call}() found no event created here; pass event_id")
    return ref.event_id


def record_error_event(binding: Binding, *, description: str, error: str) -> None:
    record_event(binding, {"type": "error", "description": text_field(description),
                           "error": text_field(error)})
