"""@lai.step and @lai.event for functions, methods, coroutines, generators and
async generators.

Plain closures (functools.wraps), not wrapt: with no session current the
wrapper costs one context-variable read over a bare call. Generators keep
their laziness: the step opens at the first ``next()``, the step is current
only while the generator's own code runs, and it closes when the generator
finishes, raises or is closed. The generator delegation (what is sent,
thrown and closed reaches the user's generator) is written once, here, and
serves continued()/session() used as decorators too. A functools.partial or a
callable object is recorded under its function's or its class's name.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar, overload

from . import _lifecycle
from ._arguments import number_arg
from ._context import Binding, current_step, process_slot, scope_binding
from ._internal import record_internal_error
from ._recording import CURRENT, Event, Step, open_step
from ._records import safe_repr, text_field, to_jsonable

F = TypeVar("F", bound=Callable[..., Any])

_scope_get = scope_binding.get
_step_set = current_step.set
_step_reset = current_step.reset


def _error_text(exc: BaseException) -> str:
    return text_field(f"{type(exc).__name__}: {safe_repr(exc) if not str(exc) else exc}") or ""


# -- the two kinds of instrumentation -------------------------------------------------
#
# A spec says what a decorated call records: enter(binding, args, kwargs) begins
# it and returns a handle (for a step, the Step, which becomes the current step
# while the function's own code runs: ``sets_step``); exit(handle, result, exc)
# ends it. Both run under the wrappers' guard: a failure of ours is logged and
# counted, and the user's call goes on.

class _StepSpec:
    """What a @step records: a Step around each call."""

    __slots__ = ("maskable", "static")
    sets_step = True

    def __init__(self, fn: Callable[..., Any], state: Any, action: Any, goal: Any,
                 eval_score: Any, eval_description: Any) -> None:
        name, function_name = _names(fn)
        fields = {
            "state": text_field(state), "action": text_field(action) or name,
            "goal": text_field(goal), "eval_score": number_arg("eval_score", eval_score),
            "eval_description": text_field(eval_description),
            "function_name": function_name,
        }
        # Absent and None are the same to the store; absent is cheaper to copy.
        self.static = {key: value for key, value in fields.items() if value is not None}
        #: Only these fields hold text a masking function must see.
        self.maskable = tuple(key for key, value in self.static.items() if type(value) is str)

    def enter(self, binding: Binding, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Step:
        return open_step(binding, self.static.copy(), CURRENT, self.maskable, True)

    def exit(self, step: Step, result: Any, exc: BaseException | None) -> None:
        ended = _lifecycle.ended_at_exit
        if ended and (step.session_id, step.step_id) in ended:
            return  # ended as the process exited: a suspended call closed since
        step.end(error=None if exc is None else _error_text(exc))


class _EventSpec:
    """What an @event records: one event per call, with its arguments, result
    or error, and duration."""

    __slots__ = ("description", "function_name", "signature")
    sets_step = False

    def __init__(self, fn: Callable[..., Any], description: Any) -> None:
        self.description = text_field(description)
        self.function_name = _names(fn)[1]
        try:
            self.signature: inspect.Signature | None = inspect.signature(
                fn.__func__ if isinstance(fn, (classmethod, staticmethod)) else fn)
        except Exception:  # noqa: BLE001 - none to be had (a builtin, an odd callable)
            self.signature = None

    def enter(self, binding: Binding, args: tuple[Any, ...], kwargs: dict[str, Any]
              ) -> tuple[Event, Any]:
        # The arguments as they were passed: the call may change them.
        return Event(binding), self._arguments(args, kwargs)

    def _arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            if self.signature is not None:
                bound = self.signature.bind_partial(*args, **kwargs)
                return to_jsonable(dict(bound.arguments))
        except TypeError:
            pass  # the call itself will raise; record what was passed
        return to_jsonable({"args": list(args), "kwargs": kwargs})

    def exit(self, handle: tuple[Event, Any], result: Any, exc: BaseException | None) -> None:
        event, arguments = handle
        fields = {"type": "function", "description": self.description,
                  "function_name": self.function_name, "arguments": arguments}
        if exc is not None:
            fields["error"] = _error_text(exc)
        else:
            fields["result"] = text_field(result) if isinstance(result, str) \
                else safe_repr(result)
        event.end(fields)


Spec = Any  # _StepSpec | _EventSpec


def _target(fn: Any) -> Any:
    """What a callable stands for, to name its records after: a partial's
    function, a classmethod's or staticmethod's, a callable object's class;
    a function or a class is itself."""
    for _ in range(100):  # partials of partials
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif isinstance(fn, (classmethod, staticmethod)):
            fn = fn.__func__
        else:
            break
    return fn if inspect.isroutine(fn) or inspect.isclass(fn) else type(fn)


def _names(fn: Any) -> tuple[str, str]:
    """The name and the dotted name (module.qualname) of what ``fn`` stands
    for. Never raises: decorating must not break the user's program."""
    try:
        target = _target(fn)
        name = target.__name__
        qualname = getattr(target, "__qualname__", name)
        module = getattr(target, "__module__", None)
        if isinstance(name, str) and isinstance(qualname, str):
            return name, f"{module}.{qualname}" if isinstance(module, str) else qualname
    except Exception:  # noqa: BLE001 - an odd callable: named after its type below
        pass
    name = type(fn).__name__
    return name, f"{type(fn).__module__}.{type(fn).__qualname__}"


def wraps(fn: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """functools.wraps, which never raises (an object whose attributes raise
    leaves the wrapper as it is, but for ``__wrapped__``)."""
    def update(wrapper: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return functools.update_wrapper(wrapper, fn)
        except Exception:  # noqa: BLE001 - never break decoration
            wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
            return wrapper
    return update


def _active_binding() -> Binding | None:
    binding = _scope_get()
    if binding is None:
        binding = process_slot.binding
    return binding if binding is not None and binding.active else None


def _safe_enter(spec: Spec, binding: Binding, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
    try:
        return spec.enter(binding, args, kwargs)
    except Exception as exc:  # noqa: BLE001 - never break the user's call
        record_internal_error("decorator_enter", exc)
        return None


def _safe_exit(spec: Spec, handle: Any, result: Any, exc: BaseException | None) -> None:
    try:
        spec.exit(handle, result, exc)
    except Exception as error:  # noqa: BLE001
        record_internal_error("decorator_exit", error)


# -- wrappers, one per kind of callable -------------------------------------------------

class Wrappers(NamedTuple):
    """How to wrap each kind of callable: each makes a wrapper from the
    function and what the wrapper needs (a spec, a scope)."""

    function: Callable[[Callable[..., Any], Any], Callable[..., Any]]
    coroutine: Callable[[Callable[..., Any], Any], Callable[..., Any]]
    generator: Callable[[Callable[..., Any], Any], Callable[..., Any]]
    async_generator: Callable[[Callable[..., Any], Any], Callable[..., Any]]


def wrap_by_kind(fn: Callable[..., Any], wrappers: Wrappers, using: Any) -> Callable[..., Any]:
    """Wrap a function, coroutine function, generator or async generator
    function (or a classmethod/staticmethod of one) with the matching wrapper,
    so that set-up and tear-down happen inside the await or the iteration."""
    if isinstance(fn, (classmethod, staticmethod)):
        return type(fn)(wrap_by_kind(fn.__func__, wrappers, using))  # type: ignore[arg-type]
    return getattr(wrappers, _kind(fn))(fn, using)  # type: ignore[no-any-return]


def _kind(fn: Any) -> str:
    """Which of the Wrappers a callable needs. A partial is of the kind of its
    function (inspect sees through it); a callable object of its __call__'s."""
    try:
        if not (inspect.isroutine(fn) or inspect.isclass(fn)
                or isinstance(fn, functools.partial)):
            fn = type(fn).__call__
        if inspect.isasyncgenfunction(fn):
            return "async_generator"
        if inspect.iscoroutinefunction(fn):
            return "coroutine"
        if inspect.isgeneratorfunction(fn):
            return "generator"
    except Exception:  # noqa: BLE001 - an odd callable: wrapped as a plain function
        pass
    return "function"


def _wrap_function(fn: Callable[..., Any], spec: Spec) -> Callable[..., Any]:
    if isinstance(spec, _StepSpec):
        return _wrap_step_function(fn, spec)

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        binding = _active_binding()
        if binding is None:
            return fn(*args, **kwargs)
        handle = _safe_enter(spec, binding, args, kwargs)
        if handle is None:
            return fn(*args, **kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            _safe_exit(spec, handle, None, exc)
            raise
        _safe_exit(spec, handle, result, None)
        return result
    return wrapper


def _wrap_step_function(fn: Callable[..., Any], spec: _StepSpec) -> Callable[..., Any]:
    """The hot path: a plain function under @step. The same steps as the
    generic wrappers, written out, since every call pays for them."""
    static, maskable = spec.static, spec.maskable

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        binding = _scope_get()
        if binding is None:
            binding = process_slot.binding
        if binding is None or not binding.active:
            return fn(*args, **kwargs)
        try:
            step = open_step(binding, static.copy(), CURRENT, maskable, True)
        except Exception as exc:  # noqa: BLE001 - never break the user's call
            record_internal_error("decorator_enter", exc)
            return fn(*args, **kwargs)
        token = _step_set(step)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            _restore(token)
            _safe_exit(spec, step, None, exc)
            raise
        try:
            _step_reset(token)
        except ValueError:
            pass  # see _restore
        try:
            step.end()
        except Exception as error:  # noqa: BLE001
            record_internal_error("decorator_exit", error)
        return result
    return wrapper


def _suspendable(spec: Spec) -> None:
    """A coroutine, generator or async generator function is wrapped: if it
    records steps, the exit looks for steps waiting in suspended ones."""
    if spec.sets_step:
        _lifecycle.suspendable_steps = True


def _wrap_coroutine(fn: Callable[..., Any], spec: Spec) -> Callable[..., Any]:
    _suspendable(spec)

    @wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        binding = _active_binding()
        if binding is None:
            return await fn(*args, **kwargs)
        handle = _safe_enter(spec, binding, args, kwargs)
        if handle is None:
            return await fn(*args, **kwargs)
        token = _step_set(handle) if spec.sets_step else None
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            _restore(token)
            _safe_exit(spec, handle, None, exc)
            raise
        _restore(token)
        _safe_exit(spec, handle, result, None)
        return result
    return wrapper


def _wrap_generator(fn: Callable[..., Any], spec: Spec) -> Callable[..., Any]:
    _suspendable(spec)
    var = current_step if spec.sets_step else None

    def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Begun | None:
        binding = _active_binding()
        handle = _safe_enter(spec, binding, args, kwargs) if binding is not None else None
        return None if handle is None else (var, handle, handle)

    def end(handle: Any, result: Any, exc: BaseException | None) -> None:
        _safe_exit(spec, handle, result, exc)

    return delegating_generator(fn, begin, end)


def _wrap_async_generator(fn: Callable[..., Any], spec: Spec) -> Callable[..., Any]:
    _suspendable(spec)
    var = current_step if spec.sets_step else None

    async def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Begun | None:
        binding = _active_binding()
        handle = _safe_enter(spec, binding, args, kwargs) if binding is not None else None
        return None if handle is None else (var, handle, handle)

    async def end(handle: Any, result: Any, exc: BaseException | None) -> None:
        _safe_exit(spec, handle, result, exc)

    return delegating_async_generator(fn, begin, end)


# -- generators: one delegation for every decorator ------------------------------------
#
# @step, @event, and continued()/session() used as decorators all run the
# user's generator the same way: as ``yield from`` would (what the consumer
# sends reaches it, an exception thrown in is raised where it waits, and if it
# catches it, it goes on; close() runs its finally), with a context variable
# bound only while its own code runs (the step, or the scope's session: the
# consumer's code between items never sees it), and a hook called once when
# it finishes.

#: What ``begin`` returns to run a generator bound: the context variable to
#: set (None: none), its value while the generator's own code runs, and the
#: handle given back to ``end``.
Begun = tuple["contextvars.ContextVar[Any] | None", Any, Any]


def delegating_generator(
        fn: Callable[..., Any], begin: Callable[[tuple[Any, ...], dict[str, Any]], Begun | None],
        end: Callable[[Any, Any, BaseException | None], None]) -> Callable[..., Any]:
    """A generator function running ``fn``'s generators. At the first
    ``next()``, ``begin(args, kwargs)``: None runs the generator untouched
    (``yield from``), else ``(var, value, handle)``: ``var`` is set to
    ``value`` while the generator's own code runs (each resumption, and its
    close), and ``end(handle, result, exc)`` is called once it finishes:
    ``exc`` is None when it returned or its consumer closed it (closing
    early is the consumer's choice, not a failure), else what it raised."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        begun = begin(args, kwargs)
        if begun is None:
            return (yield from fn(*args, **kwargs))
        var, value, handle = begun
        try:
            generator = fn(*args, **kwargs)
            method, sent = generator.send, None
            while True:
                try:
                    item = _bound(var, value, method, sent)
                except StopIteration as stop:
                    result = stop.value
                    break
                try:
                    sent = yield item
                    method = generator.send
                except GeneratorExit:
                    _bound(var, value, generator.close)
                    raise
                except BaseException as thrown:  # noqa: BLE001 - handed on, as yield from does
                    method, sent = generator.throw, thrown
        except GeneratorExit:
            end(handle, None, None)
            raise
        except BaseException as exc:
            end(handle, None, exc)
            raise
        end(handle, result, None)
        return result
    return wrapper


def delegating_async_generator(
        fn: Callable[..., Any],
        begin: Callable[[tuple[Any, ...], dict[str, Any]], Awaitable[Begun | None]],
        end: Callable[[Any, Any, BaseException | None], Awaitable[None]]
        ) -> Callable[..., Any]:
    """delegating_generator for async generators (``asend``, ``athrow``,
    ``aclose``); ``begin`` and ``end`` are awaited (a scope's may wait on the
    store, off the event loop), and ``end`` gets no result."""
    @wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        begun = await begin(args, kwargs)
        var, value, handle = (None, None, None) if begun is None else begun
        try:
            generator = fn(*args, **kwargs)
            method, sent = generator.asend, None
            while True:
                try:
                    if var is None:  # (no session: no coroutine of ours per item)
                        item = await method(sent)
                    else:
                        item = await _bound_async(var, value, method, sent)
                except StopAsyncIteration:
                    break
                try:
                    sent = yield item
                    method = generator.asend
                except GeneratorExit:
                    await _bound_async(var, value, generator.aclose)
                    raise
                except BaseException as thrown:  # noqa: BLE001 - handed on
                    method, sent = generator.athrow, thrown
        except GeneratorExit:
            if begun is not None:
                await end(handle, None, None)
            raise
        except BaseException as exc:
            if begun is not None:
                await end(handle, None, exc)
            raise
        if begun is not None:
            await end(handle, None, None)
    return wrapper


def _bound(var: contextvars.ContextVar[Any] | None, value: Any,
           method: Callable[..., Any], *args: Any) -> Any:
    """``method(*args)`` (a resumption of the generator) with ``var`` set to
    ``value`` while it runs."""
    if var is None:
        return method(*args)
    token = var.set(value)
    try:
        return method(*args)
    finally:
        _reset(var, token)


async def _bound_async(var: contextvars.ContextVar[Any] | None, value: Any,
                       method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    if var is None:
        return await method(*args)
    token = var.set(value)
    try:
        return await method(*args)
    finally:
        _reset(var, token)


def _reset(var: contextvars.ContextVar[Any], token: contextvars.Token[Any]) -> None:
    try:
        var.reset(token)
    except ValueError:
        # Set in another context than this (the user's code moved between
        # contexts while it ran): leave this context's value as it is.
        pass


_RECORDED = Wrappers(_wrap_function, _wrap_coroutine, _wrap_generator, _wrap_async_generator)


def _wrap(fn: Callable[..., Any], spec: Spec) -> Callable[..., Any]:
    return wrap_by_kind(fn, _RECORDED, spec)


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
    if _is_function(state) and action is None and goal is None and eval_score is None \
            and eval_description is None:
        fn = state
        return _wrap(fn, _StepSpec(fn, None, None, None, None, None))

    number_arg("eval_score", eval_score)  # refuse a bad value now, not at the first call

    def decorate(fn: F) -> F:
        spec = _StepSpec(fn, state, action, goal, eval_score, eval_description)
        return _wrap(fn, spec)  # type: ignore[return-value]
    return decorate


@overload
def event(description: F) -> F: ...
@overload
def event(description: str | None = None) -> Callable[[F], F]: ...


def event(description: Any = None) -> Any:
    """Record one event per call: arguments, result or error, duration."""
    if _is_function(description):
        fn = description
        return _wrap(fn, _EventSpec(fn, None))

    def decorate(fn: F) -> F:
        return _wrap(fn, _EventSpec(fn, description))  # type: ignore[return-value]
    return decorate


def _is_function(value: Any) -> bool:
    """Used bare (``@lai.step``), the decorator is given the function itself:
    a callable, or a classmethod (which is not callable before Python 3.13)."""
    return callable(value) or isinstance(value, (classmethod, staticmethod))
