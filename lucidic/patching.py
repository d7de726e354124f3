"""Patching library methods so that it can be undone exactly: what provider
plugins use to implement instrument()/uninstrument(). Imported by plugins
only, so ``import lucidic`` does not load wrapt."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import wrapt

from ._internal import logger
from .plugins import LLMCall, in_session, record_internal_error

#: (module, class, method, wrapt wrapper(wrapped, instance, args, kwargs))
Patch = tuple[str, str, str, Callable[..., Any]]


class MethodPatches:
    """A set of wrapt patches on methods of library classes.

    ``apply()`` is all or nothing: if one patch fails, those already made are
    undone before the error propagates. ``restore()`` puts back the very
    function objects that were there, in reverse order. Methods and modules a
    library version does not have are skipped (older releases lack newer
    endpoints; newer ones drop old modules): a module not installed is a
    debug line of the ``lucidic`` logger, never an error; one installed that
    fails to import raises.
    """

    def __init__(self) -> None:
        self._originals: list[tuple[type, str, Any]] = []

    def apply(self, patches: Iterable[Patch]) -> None:
        applied: list[tuple[type, str, Any]] = []
        try:
            for module_name, class_name, method, wrapper in patches:
                try:
                    module = importlib.import_module(module_name)
                except ModuleNotFoundError as exc:
                    missing = exc.name or ""
                    if not (module_name == missing or module_name.startswith(missing + ".")):
                        raise  # the module is there, but something it imports is not
                    logger.debug("lucidic: %s.%s.%s not patched: module %s is not installed",
                                 module_name, class_name, method, missing)
                    continue
                owner = getattr(module, class_name, None)
                if owner is None or method not in vars(owner):
                    continue
                original = vars(owner)[method]
                wrapt.wrap_function_wrapper(owner, method, wrapper)
                applied.append((owner, method, original))
        except BaseException:
            _restore(applied)
            raise
        self._originals.extend(applied)

    def restore(self) -> None:
        _restore(self._originals)
        self._originals = []


def _restore(originals: list[tuple[type, str, Any]]) -> None:
    for owner, method, original in reversed(originals):
        setattr(owner, method, original)


def llm_call_wrapper(start: Callable[[dict[str, Any]], LLMCall | None],
                     outcome: Callable[[LLMCall, Any, bool, dict[str, Any]], Any], *,
                     asynchronous: bool = False) -> Callable[..., Any]:
    """A wrapt wrapper recording one LLM call around a client method.

    ``start(kwargs)`` begins the call before the request (None: record
    nothing, call straight through); if the method raises, the call fails
    and the exception reaches the caller unchanged; otherwise
    ``outcome(call, result, asynchronous, kwargs)`` completes the call, or
    wraps a returned stream to complete it later, and returns what the
    caller gets.
    With no session current the method is called straight away. If ``start``
    or ``outcome`` raises (a bug in the plugin), the error is logged and
    counted, and the caller gets what the method returned, as without the
    plugin (the call is recorded without its outcome)."""
    if asynchronous:
        async def async_wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...],
                                kwargs: dict[str, Any]) -> Any:
            call = _started(start, kwargs)
            if call is None:
                return await wrapped(*args, **kwargs)
            try:
                result = await wrapped(*args, **kwargs)
            except BaseException as exc:
                call.fail(exc)
                raise
            return _outcome(outcome, call, result, True, kwargs)
        return async_wrapper

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        call = _started(start, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        return _outcome(outcome, call, result, False, kwargs)
    return wrapper


def _started(start: Callable[[dict[str, Any]], LLMCall | None],
             kwargs: dict[str, Any]) -> LLMCall | None:
    if not in_session():
        return None
    try:
        return start(kwargs)
    except Exception as exc:  # noqa: BLE001 - the plugin's bug never reaches the caller
        record_internal_error("plugin_llm_call_start", exc)
        return None


def _outcome(outcome: Callable[[LLMCall, Any, bool, dict[str, Any]], Any], call: LLMCall,
             result: Any, asynchronous: bool, kwargs: dict[str, Any]) -> Any:
    try:
        return outcome(call, result, asynchronous, kwargs)
    except Exception as exc:  # noqa: BLE001 - the plugin's bug never reaches the caller
        record_internal_error("plugin_llm_call_outcome", exc)
        call.finish()
        return result
