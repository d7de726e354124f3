"""@lai.step and @lai.event for functions, methods, coroutines, generators and
async generators.

Plain closures (functools.wraps), not wrapt: with no session current the
wrapper costs one context-variable read over a bare call. Generators keep
their laziness: the step opens at the first ``next()``, the step is current
only while the generator's own code runs, and it closes when the generator
finishes, raises or is closed.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar, overload

from ._api import _number_arg, _put, record_event
from ._context import Binding, StepFrame, current_step, process_slot, scope_binding
from ._internal import record_internal_error
from ._records import safe_repr, text_field, to_jsonable
from ._runtime import new_id

F = TypeVar("F", bound=Callable[..., Any])

_scope_get = scope_binding.get
_step_get = current_step.get
_step_set = current_step.set
_step_reset = current_step.reset


def _error_text(exc: BaseException) -> str:
    return text_field(f"{type(exc).__name__}: {safe_repr(exc) if not str(exc) else exc}") or ""


# -- the two kinds of instrumentation -------------------------------------------------

class _StepSpec:
    """What a @step records; enter() opens the step, exit() closes it."""

    __slots__ = ("static",)

    def __init__(self, fn: Callable[..., Any], state: Any, action: Any, goal: Any,
                 eval_score: Any, eval_description: Any) -> None:
        self.static = {
            "state": text_field(state), "action": text_field(action) or fn.__name__,
            "goal": text_field(goal), "eval_score": _number_arg("eval_score", eval_score),
            "eval_description": text_field(eval_description),
            "function_name": f"{fn.__module__}.{fn.__qualname__}",
        }

    def enter(self, binding: Binding, args: tuple[Any, ...], kwargs: dict[str, Any]
              ) -> tuple[StepFrame, Any]:
        session_id = binding.session_id
        parent = _step_get()
        if parent is not None and parent.session_id != session_id:
            parent = None
        step_id = new_id()
        now = time.time()
        fields = dict(self.static)
        fields["session_id"] = session_id
        fields["parent_step_id"] = parent.step_id if parent is not None else None
        fields["started_at"] = now
        _put(binding, "step", step_id, fields, now)
        return StepFrame(session_id, step_id, parent), None

    def exit(self, binding: Binding, frame: StepFrame, handle: Any, result: Any,
             exc: BaseException | None) -> None:
        now = time.time()
        fields = {"session_id": frame.session_id, "ended_at": now, "is_finished": True}
        if exc is not None:
            fields["error"] = _error_text(exc)
        _put(binding, "step", frame.step_id, fields, now)


class _EventSpec:
    """What an @event records: one event per call, with its arguments, result
    or error, and duration."""

    __slots__ = ("description", "function_name", "signature")

    def __init__(self, fn: Callable[..., Any], description: Any) -> None:
        self.description = text_field(description)
        self.function_name = f"{fn.__module__}.{fn.__qualname__}"
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self.signature = None

    def enter(self, binding: Binding, args: tuple[Any, ...], kwargs: dict[str, Any]
              ) -> tuple[None, Any]:
        return None, (time.time(), self._arguments(args, kwargs))

    def _arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            if self.signature is not None:
                bound = self.signature.bind_partial(*args, **kwargs)
                return to_jsonable(dict(bound.arguments))
        except TypeError:
            pass  # the call itself will raise; record what was passed
        return to_jsonable({"args": list(args), "kwargs": kwargs})

    def exit(self, binding: Binding, frame: None, handle: Any, result: Any,
             exc: BaseException | None) -> None:
        started, arguments = handle
        now = time.time()
        fields = {"type": "function", "description": self.description,
                  "function_name": self.function_name, "arguments": arguments,
                  "started_at": started, "ended_at": now, "duration": now - started}
        if exc is not None:
            fields["error"] = _error_text(exc)
        else:
            fields["result"] = text_field(result) if isinstance(result, str) \
                else safe_repr(result)
        record_event(binding, fields)


Spec = Any  # _StepSpec | _EventSpec


def _active_binding() -> Binding | None:
    binding = _scope_get()
    if binding is None:
        binding = process_slot.binding
    return binding if binding is not None and binding.active else None


def _safe_enter(spec: Spec, binding: Binding, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> tuple[Any, Any] | None:
    try:
        return spec.enter(binding, args, kwargs)  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - never break the user's call
        record_internal_error("decorator_enter", exc)
        return None


def _safe_exit(spec: Spec, binding: Binding, entered: tuple[Any, Any], result: Any,
               exc: BaseException | None) -> None:
    try:
        spec.exit(binding, entered[0], entered[1], result, exc)
    except Exception as error:  # noqa: BLE001
        record_internal_error("decorator_exit", error)


# -- wrappers, one per kind of callable -------------------------------------------------

def _wrap(fn: Callable[..., Any], spec: Spec) -> Callable[..., Any]:
    if isinstance(fn, (classmethod, staticmethod)):
        return type(fn)(_wrap(fn.__func__, spec))  # type: ignore[arg-type]
    if inspect.isasyncgenfunction(fn):
        return _wrap_async_generator(fn, spec)
    if inspect.iscoroutinefunction(fn):
        return _wrap_coroutine(fn, spec)
    if inspect.isgeneratorfunction(fn):
        return _wrap_generator(fn, spec)
    return _wrap_function(fn, spec)


def _wrap_function(fn: Callable[..., Any], spec: Spec) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        binding = _scope_get()
        if binding is None:
            binding = process_slot.binding
        if binding is None or not binding.active:
            return fn(*args, **kwargs)
        entered = _safe_enter(spec, binding, args, kwargs)
        if entered is None:
            return fn(*args, **kwargs)
        frame = entered[0]
        token = _step_set(frame) if frame is not None else None
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            _restore(token)
            _safe_exit(spec, binding, entered, None, exc)
            raise
        _restore(token)
        _safe_exit(spec, binding, entered, result, None)
        return result
    return wrapper


def _wrap_coroutine(fn: Callable[..., Any], spec: Spec) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        binding = _active_binding()
        if binding is None:
            return await fn(*args, **kwargs)
        entered = _safe_enter(spec, binding, args, kwargs)
        if entered is None:
            return await fn(*args, **kwargs)
        frame = entered[0]
        token = _step_set(frame) if frame is not None else None
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            _restore(token)
            _safe_exit(spec, binding, entered, None, exc)
            raise
        _restore(token)
        _safe_exit(spec, binding, entered, result, None)
        return result
    return wrapper


def _wrap_generator(fn: Callable[..., Any], spec: Spec) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        binding = _active_binding()
        entered = _safe_enter(spec, binding, args, kwargs) if binding is not None else None
        if binding is None or entered is None:
            return (yield from fn(*args, **kwargs))
        frame = entered[0]
        generator = fn(*args, **kwargs)

        def resume(method: Callable[..., Any], value: Any) -> Any:
            # The step is current only while the generator's own code runs.
            token = _step_set(frame) if frame is not None else None
            try:
                return method(value)
            finally:
                _restore(token)

        try:
            item = resume(generator.send, None)
            while True:
                try:
                    sent = yield item
                except GeneratorExit:
                    generator.close()
                    raise
                except BaseException as thrown:  # noqa: BLE001 - forwarded, like yield from
                    item = resume(generator.throw, thrown)
                else:
                    item = resume(generator.send, sent)
        except StopIteration as stop:
            _safe_exit(spec, binding, entered, stop.value, None)
            return stop.value
        except GeneratorExit:
            _safe_exit(spec, binding, entered, None, None)  # abandoned by the consumer
            raise
        except BaseException as exc:
            _safe_exit(spec, binding, entered, None, exc)
            raise
    return wrapper


def _wrap_async_generator(fn: Callable[..., Any], spec: Spec) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        binding = _active_binding()
        entered = _safe_enter(spec, binding, args, kwargs) if binding is not None else None
        generator = fn(*args, **kwargs)
        if binding is None or entered is None:
            async with _aclosing(generator):
                async for item in generator:
                    yield item
            return
        frame = entered[0]

        async def resume(method: Callable[..., Any], value: Any) -> Any:
            token = _step_set(frame) if frame is not None else None
            try:
                return await method(value)
            finally:
                _restore(token)

        try:
            item = await resume(generator.asend, None)
            while True:
                try:
                    sent = yield item
                except GeneratorExit:
                    await generator.aclose()
                    raise
                except BaseException as thrown:  # noqa: BLE001
                    item = await resume(generator.athrow, thrown)
                else:
                    item = await resume(generator.asend, sent)
        except StopAsyncIteration:
            _safe_exit(spec, binding, entered, None, None)
            return
        except GeneratorExit:
            _safe_exit(spec, binding, entered, None, None)
            raise
        except BaseException as exc:
            _safe_exit(spec, binding, entered, None, exc)
            raise
    return wrapper


class _aclosing:  # noqa: N801 - contextlib.aclosing, which 3.10 has, minus typing fuss
    def __init__(self, generator: Any) -> None:
        self.generator = generator

    async def __aenter__(self) -> Any:
        return self.generator

    async def __aexit__(self, *exc: Any) -> None:
        await self.generator.aclose()


def _restore(token: Any) -> None:
    if token is not None:
        try:
            _step_reset(token)
        except ValueError:
            # Resumed in another context than it was entered in (a generator
            # moved between tasks): leave that context's stack as it was.
            pass


# -- the public decorators --------------------------------------------------------------

@overload
def step(state: F) -> F: ...
@overload
def step(state: str | None = None, action: str | None = None, goal: str | None = None,
         eval_score: float | None = None, eval_description: str | None = None
         ) -> Callable[[F], F]: ...


def step(state: Any = None, action: str | None = None, goal: str | None = None,
         eval_score: float | None = None, eval_description: str | None = None) -> Any:
    """Record a step around each call of the decorated function; steps opened
    inside it are its children. ``@lai.step`` and ``@lai.step(...)`` both work;
    ``action`` defaults to the function's name."""
    if callable(state) and action is None and goal is None and eval_score is None \
            and eval_description is None:
        fn = state
        return _wrap(fn, _StepSpec(_function_of(fn), None, None, None, None, None))

    _number_arg("eval_score", eval_score)  # refuse a bad value now, not at the first call

    def decorate(fn: F) -> F:
        spec = _StepSpec(_function_of(fn), state, action, goal, eval_score, eval_description)
        return _wrap(fn, spec)  # type: ignore[return-value]
    return decorate


@overload
def event(description: F) -> F: ...
@overload
def event(description: str | None = None) -> Callable[[F], F]: ...


def event(description: Any = None) -> Any:
    """Record one event per call: arguments, result or error, duration."""
    if callable(description):
        fn = description
        return _wrap(fn, _EventSpec(_function_of(fn), None))

    def decorate(fn: F) -> F:
        return _wrap(fn, _EventSpec(_function_of(fn), description))  # type: ignore[return-value]
    return decorate


def _function_of(fn: Any) -> Callable[..., Any]:
    return fn.__func__ if isinstance(fn, (classmethod, staticmethod)) else fn
