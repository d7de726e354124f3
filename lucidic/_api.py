"""The public calls: sessions, steps, events.

The thin public face of the recording core: each call checks its arguments
(``_arguments``: a clear error for bad input), finds the current session, and
hands over to the core — ``_sessions`` to open, continue, end and detach
sessions, ``_recording`` to open and end steps and events.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from . import _lifecycle, _sessions
from ._arguments import (
    Options,
    bool_arg,
    cost_arg,
    evaluation_fields,
    number_arg,
    record_id_arg,
    screenshot_args,
    screenshots_arg,
    session_id_arg,
    tags_arg,
    timeout_arg,
)
from ._context import (
    Binding,
    current_binding,
    current_step,
    last_event,
    process_slot,
    scope_binding,
)
from ._decorators import (
    Begun,
    Wrappers,
    delegating_async_generator,
    delegating_generator,
    wrap_by_kind,
    wraps,
)
from ._internal import log_rate_limited, logger
from ._recording import Step, amend_event, current_step_of, open_step, record_event
from ._records import field_value, text_field
from ._runtime import runtime
from .errors import InvalidOperationError, LucidicNotInitializedError

F = TypeVar("F", bound=Callable[..., Any])


def _no_session(call: str) -> None:
    log_rate_limited(f"no_session_{call}", "lucidic: %s() called with no current session; "
                     "nothing recorded", call, level=logging.DEBUG)


def _require_session(call: str) -> Binding:
    binding = current_binding()
    if binding is None:
        raise LucidicNotInitializedError(
            f"lai.{call}() needs a current session and there is none here. Start one with "
            "lai.init(), lai.continue_session(id) or `with lai.continued(id):`.")
    return binding


# -- opening sessions --------------------------------------------------------------

def _activate_providers(names: list[str]) -> None:
    if names:
        from .plugins import activate

        activate(names)


def _create(options: Options, session_id: str | None, fields: dict[str, Any]) -> Binding:
    """Make a new session and bind it (the caller decides the scope)."""
    _activate_providers(options.providers)
    sink = _sessions.sink_for(options.base_url, options.api_key)
    if session_id is not None:
        session_id = session_id_arg(session_id)
    binding = _sessions.create(sink, session_id, fields, mask=options.mask,
                               auto_end=options.auto_end, agent_id=options.agent_id)
    _lifecycle.install()  # flush at exit always; end the session only with auto_end
    return binding


def _continue(session_id: str, options: Options) -> Binding:
    _activate_providers(options.providers)
    sink = _sessions.sink_for(options.base_url, options.api_key)
    binding = _sessions.resume(sink, session_id, mask=options.mask,
                               auto_end=options.auto_end, agent_id=options.agent_id)
    _lifecycle.install()
    return binding


def _session_fields(session_name: Any, task: Any, tags: Any, production_monitoring: Any,
                    mass_sim_id: Any, experiment_id: Any, rubrics: Any) -> dict[str, Any]:
    return {"name": text_field(session_name), "task": text_field(task), "tags": tags_arg(tags),
            **evaluation_fields(production_monitoring, mass_sim_id, experiment_id, rubrics)}


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
    options = Options(lucidic_api_key=lucidic_api_key, api_key=api_key, agent_id=agent_id,
                      providers=providers, masking_function=masking_function,
                      auto_end=auto_end)
    fields = _session_fields(session_name, task, tags, production_monitoring, mass_sim_id,
                             experiment_id, rubrics)
    binding = _create(options, session_id, fields)
    previous = process_slot.binding
    if previous is not None and previous.active:
        logger.info("lucidic: session %s replaces %s as the process's current session; "
                    "the earlier one stays open", binding.session_id, previous.session_id)
    process_slot.binding = binding
    binding.state.capture_uncaught = capture_uncaught
    return binding.session_id


def continue_session(session_id: str, lucidic_api_key: str | None = None,
                     agent_id: str | None = None, providers: Sequence[str] | None = None,
                     masking_function: Callable[[str], str] | None = None,
                     auto_end: bool = True, *, api_key: str | None = None) -> str:
    """Resume an existing, unfinished session as this process's current one."""
    session_id = session_id_arg(session_id)
    current = process_slot.binding
    if current is not None and current.active:
        if current.session_id == session_id:
            return session_id  # re-entering the same session is harmless
        raise InvalidOperationError(
            f"session {current.session_id!r} is already current in this process; call "
            "lai.detach() or lai.end_session() before continuing another, or use "
            "`with lai.continued(id):` to work on it in one thread or task.")
    options = Options(lucidic_api_key=lucidic_api_key, api_key=api_key, agent_id=agent_id,
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
    _sessions.detach(binding)


def _result_fields(session_eval: Any, session_eval_reason: Any, is_successful: Any,
                   is_successful_reason: Any) -> dict[str, Any]:
    return {"session_eval": number_arg("session_eval", session_eval),
            "session_eval_reason": text_field(session_eval_reason),
            "is_successful": bool_arg("is_successful", is_successful),
            "is_successful_reason": text_field(is_successful_reason)}


def update_session(task: str | None = None, session_eval: float | None = None,
                   session_eval_reason: str | None = None, is_successful: bool | None = None,
                   is_successful_reason: str | None = None, *,
                   tags: Sequence[str] | None = None, session_name: str | None = None) -> None:
    binding = _require_session("update_session")
    fields = _result_fields(session_eval, session_eval_reason, is_successful,
                            is_successful_reason)
    fields.update(task=text_field(task), tags=tags_arg(tags), name=text_field(session_name))
    _sessions.update(binding, fields)


def end_session(is_successful: bool | None = None, is_successful_reason: str | None = None,
                session_eval: float | None = None,
                session_eval_reason: str | None = None) -> None:
    """Finish the current session for everyone."""
    binding = _require_session("end_session")
    _sessions.end(binding, _result_fields(session_eval, session_eval_reason, is_successful,
                                          is_successful_reason))


def flush(timeout: float | None = None) -> bool:
    """Deliver everything queued so far; True once all of it (and anything this
    process spooled) has reached the sink within ``timeout`` seconds."""
    return runtime.flush_all(timeout_arg(timeout))


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop the background workers; what could not be delivered in
    time is spooled for the next process. What is recorded afterwards is
    delivered by the next flush() or at exit."""
    return runtime.shutdown_all(timeout_arg(timeout))


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

#: A block of continued()/session() entered here: the scope object, the
#: binding it made and the token that undoes its binding.
_Entry = tuple["_ScopeBase", Binding, "contextvars.Token[Binding | None]"]

#: The blocks entered in this thread or task and not left yet, innermost
#: last. One scope object may be entered in several threads or tasks at once
#: (``shared = lai.continued(id)``, then ``with shared:`` in each): each
#: leaves its own block, however they interleave.
_open_blocks: contextvars.ContextVar[tuple[_Entry, ...]] = contextvars.ContextVar(
    "lucidic_open_blocks", default=())


class _ScopeBase:
    """Shared by continued() and session(): a context manager (sync and async)
    binding a session to the current thread or task, usable as a decorator."""

    def __init__(self) -> None:
        #: Every block of this object not left yet, in any context (for a
        #: block left in another context than it was entered in).
        self._entries: list[_Entry] = []

    def _open(self) -> Binding:
        raise NotImplementedError

    def _close(self, binding: Binding, exc: BaseException | None) -> None:
        raise NotImplementedError

    def _clone(self) -> _ScopeBase:
        raise NotImplementedError

    def __enter__(self) -> str:
        return self._bind(self._open())

    def _bind(self, binding: Binding) -> str:
        entry: _Entry = (self, binding, scope_binding.set(binding))
        _open_blocks.set((*_open_blocks.get(), entry))
        self._entries.append(entry)
        return binding.session_id

    def _unbind(self) -> Binding:
        """Leave this context's innermost block of this object."""
        blocks = _open_blocks.get()
        for index in range(len(blocks) - 1, -1, -1):
            if blocks[index][0] is self:
                entry = blocks[index]
                _open_blocks.set(blocks[:index] + blocks[index + 1:])
                break
        else:
            # Left in another context than it was entered in (an async
            # generator finished by another task): its latest block.
            entry = self._entries[-1]
        self._entries.remove(entry)
        _, binding, token = entry
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
        return self._bind(await asyncio.to_thread(self._open))

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        import asyncio  # here, not at the top: `import lucidic` stays light

        # Flushing waits on the worker: keep the event loop free meanwhile.
        await asyncio.to_thread(self._close, self._unbind(), exc)

    def __call__(self, fn: F) -> F:
        """Use as a decorator: each call runs in its own scope."""
        return wrap_by_kind(fn, _SCOPED, self)  # type: ignore[return-value]


def _scoped_function(fn: Callable[..., Any], scope: _ScopeBase) -> Callable[..., Any]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with scope._clone():
            return fn(*args, **kwargs)
    return wrapper


def _scoped_coroutine(fn: Callable[..., Any], scope: _ScopeBase) -> Callable[..., Any]:
    @wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        async with scope._clone():
            return await fn(*args, **kwargs)
    return wrapper


# A generator's scope opens at its first next() and ends (or detaches) when it
# finishes: successful when it returned or its consumer closed it early,
# failed when it raised. Its session is current only while its own code runs,
# not in the consumer's code between items.

def _scoped_generator(fn: Callable[..., Any], scope: _ScopeBase) -> Callable[..., Any]:
    def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Begun:
        block = scope._clone()
        binding = block._open()
        return scope_binding, binding, (block, binding)

    def end(handle: tuple[_ScopeBase, Binding], result: Any, exc: BaseException | None) -> None:
        block, binding = handle
        block._close(binding, exc)

    return delegating_generator(fn, begin, end)


def _scoped_async_generator(fn: Callable[..., Any], scope: _ScopeBase) -> Callable[..., Any]:
    import asyncio

    async def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Begun:
        block = scope._clone()
        binding = await asyncio.to_thread(block._open)  # off the event loop, as __aenter__
        return scope_binding, binding, (block, binding)

    async def end(handle: tuple[_ScopeBase, Binding], result: Any,
                  exc: BaseException | None) -> None:
        block, binding = handle
        await asyncio.to_thread(block._close, binding, exc)

    return delegating_async_generator(fn, begin, end)


_SCOPED = Wrappers(_scoped_function, _scoped_coroutine, _scoped_generator,
                   _scoped_async_generator)


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
        self.session_id = session_id_arg(session_id)
        self._end = bool(end)
        self._kwargs: dict[str, Any] = {
            "lucidic_api_key": lucidic_api_key, "api_key": api_key, "agent_id": agent_id,
            "providers": providers, "masking_function": masking_function, "auto_end": auto_end}
        self._options = Options(**self._kwargs)

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
            _sessions.detach(binding)


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
        self._options = Options(lucidic_api_key=lucidic_api_key, api_key=api_key,
                                agent_id=agent_id, providers=providers,
                                masking_function=masking_function, auto_end=auto_end)
        self._fields: dict[str, Any] = _session_fields(
            session_name, task, tags, production_monitoring, mass_sim_id, experiment_id,
            rubrics)
        self._session_id = session_id
        self._last_session_id: str | None = None

    @property
    def session_id(self) -> str | None:
        """The session of this thread's or task's innermost block of this
        object (one object entered in several threads or tasks at once opens
        a session in each); outside any, the session its latest block opened."""
        for scope, binding, _ in reversed(_open_blocks.get()):
            if scope is self:
                return binding.session_id
        return self._last_session_id

    def _clone(self) -> session:
        return session(**self._kwargs)  # type: ignore[arg-type]

    def _open(self) -> Binding:
        binding = _create(self._options, self._session_id, dict(self._fields))
        self._last_session_id = binding.session_id
        return binding

    def _close(self, binding: Binding, exc: BaseException | None) -> None:
        if binding.active:
            _end_scope(binding, exc)


def _end_scope(binding: Binding, exc: BaseException | None) -> None:
    """End a block's session: successful unless an exception escaped (or the
    code said otherwise with update_session/end_session)."""
    if exc is None:
        _sessions.end(binding, None if binding.state.outcome_set else {"is_successful": True})
    else:
        _sessions.end(binding, failure=f"{type(exc).__name__}: {exc}")


# -- steps ---------------------------------------------------------------------------

def _step_fields(state: Any, action: Any, goal: Any, eval_score: Any, eval_description: Any,
                 screenshot: Any, screenshot_path: Any) -> dict[str, Any]:
    shot, shot_path = screenshot_args(screenshot, screenshot_path)
    values = {"state": text_field(state), "action": text_field(action), "goal": text_field(goal),
              "eval_score": number_arg("eval_score", eval_score),
              "eval_description": text_field(eval_description), "screenshot": shot,
              "screenshot_path": shot_path}
    # A field not given is left out: the store leaves it as it is.
    return {key: value for key, value in values.items() if value is not None}


def create_step(state: str | None = None, action: str | None = None, goal: str | None = None,
                eval_score: float | None = None, eval_description: str | None = None,
                screenshot: str | None = None, screenshot_path: str | None = None) -> str | None:
    """Open a step in the current session (nested in the open one, if any) and
    make it the current step of this thread or task. Returns its id."""
    binding = current_binding()
    if binding is None:
        _no_session("create_step")
        return None
    step = open_step(binding, _step_fields(state, action, goal, eval_score, eval_description,
                                           screenshot, screenshot_path))
    current_step.set(step)  # current until end_step(), not just for a block
    binding.state.open_steps.add(step.step_id)
    return step.step_id


def update_step(step_id: str | None = None, state: str | None = None, action: str | None = None,
                goal: str | None = None, eval_score: float | None = None,
                eval_description: str | None = None, screenshot: str | None = None,
                screenshot_path: str | None = None) -> None:
    binding = current_binding()
    if binding is None:
        _no_session("update_step")
        return
    step = _step_target(binding, step_id, "update_step")
    step.update(_step_fields(state, action, goal, eval_score, eval_description, screenshot,
                             screenshot_path))


def end_step(step_id: str | None = None, state: str | None = None, action: str | None = None,
             goal: str | None = None, eval_score: float | None = None,
             eval_description: str | None = None, screenshot: str | None = None,
             screenshot_path: str | None = None) -> None:
    """Finish a step (the current one unless step_id is given)."""
    binding = current_binding()
    if binding is None:
        _no_session("end_step")
        return
    step = _step_target(binding, step_id, "end_step")
    step.end(_step_fields(state, action, goal, eval_score, eval_description, screenshot,
                          screenshot_path))
    binding.state.open_steps.discard(step.step_id)
    _pop_step(step.step_id)


def _step_target(binding: Binding, step_id: Any, call: str) -> Step:
    if step_id is not None:
        given = record_id_arg("step_id", step_id, "a step")
        state = binding.state
        if given not in state.open_steps and not state.ids.made_here(given) \
                and not _on_step_stack(binding, given):
            raise InvalidOperationError(_not_made_here("step", given, binding, call))
        return Step(binding, given)
    step = current_step_of(binding)
    if step is None:
        raise InvalidOperationError(
            f"lai.{call}() found no open step here; open one with lai.create_step() or pass "
            "step_id")
    return step


def _on_step_stack(binding: Binding, step_id: str) -> bool:
    """An open step of this context (a decorated function's, say)."""
    step = current_step_of(binding)
    while step is not None:
        if step.step_id == step_id:
            return True
        step = step.parent
    return False


def _not_made_here(kind: str, record_id: str, binding: Binding, call: str) -> str:
    # As the hosted SDK ("Step ID not found in session history"): an update
    # only ever touches what this session made here; an unknown id would
    # otherwise become a new, phantom record, or land in another session's.
    return (f"lai.{call}(): no {kind} {record_id[:80]!r} was created in session "
            f"{binding.session_id!r} by this process; pass an id that lai.create_{kind}() "
            f"returned in this session ({'an' if kind == 'event' else 'a'} {kind} of another "
            "session, or of another process, can only be changed where it was created). "
            "Nothing was recorded.")


def _pop_step(step_id: str) -> None:
    """Take a finished step off this context's stack, wherever it is."""
    step = current_step.get()
    above: list[Step] = []
    while step is not None and step.step_id != step_id:
        above.append(step)
        step = step.parent
    if step is None:
        return  # not on this context's stack (ended from elsewhere)
    rebuilt = step.parent
    for kept in reversed(above):
        rebuilt = kept.reparented(rebuilt)
    current_step.set(rebuilt)


# -- events ------------------------------------------------------------------------

def _event_fields(description: Any, result: Any, cost_added: Any, model: Any, screenshots: Any,
                  function_name: Any, arguments: Any) -> dict[str, Any]:
    cost = cost_arg("cost_added", cost_added)  # checked and made a float once, here
    values = {"description": description, "result": result, "model": model,
              "screenshots": screenshots_arg(screenshots), "function_name": function_name,
              "arguments": arguments}
    # A field not given is left out: the store leaves it as it is.
    fields = {key: field_value(key, value) for key, value in values.items() if value is not None}
    if cost is not None:
        fields["cost"] = cost
    return fields


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
    if step_id is None:
        return record_event(binding, fields)
    return record_event(binding, fields, step_id=_step_target(binding, step_id,
                                                              "create_event").step_id)


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
    amend_event(binding, _event_target(binding, event_id, "update_event"), fields)


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
    amend_event(binding, _event_target(binding, event_id, "end_event"), fields, end=True)


def _event_target(binding: Binding, event_id: Any, call: str) -> str:
    if event_id is not None:
        given = record_id_arg("event_id", event_id, "an event")
        if not binding.state.ids.made_here(given):
            raise InvalidOperationError(_not_made_here("event", given, binding, call))
        return given
    ref = last_event.get()
    if ref is None or ref.session_id != binding.session_id:
        raise InvalidOperationError(f"lai.{call}() found no event created here; pass event_id")
    return ref.event_id
