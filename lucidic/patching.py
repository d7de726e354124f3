"""Patching library methods so that it can be undone exactly: what provider
plugins use to implement instrument()/uninstrument(). Imported by plugins
only, so ``import lucidic`` does not load wrapt."""

from __future__ import annotations

import contextvars
import importlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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


#: Set while a patched client method runs the library call it records: the
#: request method below it (patched with llm_request_wrapper) then stays out.
_recording: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lucidic_recording_a_client_call", default=False)


@contextmanager
def recorded_above() -> Iterator[None]:
    """Around a library call that a plugin records itself without
    llm_call_wrapper (a stream helper's deferred request, say): the
    llm_request_wrapper below it records nothing more."""
    token = _recording.set(True)
    try:
        yield
    finally:
        _recording.reset(token)


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
    def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[LLMCall, Any] | None:
        if not in_session():
            return None
        call = _guarded(start, kwargs)
        return None if call is None else (call, kwargs)

    return _recording_wrapper(begin, outcome, asynchronous)


def llm_request_wrapper(request_of: Callable[[tuple[Any, ...], dict[str, Any]], Any],
                        start: Callable[[Any], LLMCall | None],
                        outcome: Callable[[LLMCall, Any, bool, Any], Any], *,
                        asynchronous: bool = False) -> Callable[..., Any]:
    """A wrapt wrapper for a client library's own request method, which every
    client method calls through: it records the LLM calls that reach it
    without a method patched with llm_call_wrapper above (one bound before
    the patches were made calls the original: ``create =
    client.chat.completions.create`` before ``lai.init``, or a wrapper the
    library built around it then, such as a ``with_raw_response``).

    ``request_of(args, kwargs)`` reads the request method's arguments: the
    request an LLM call makes (what ``start`` and ``outcome`` are given in
    place of a client method's kwargs), or None for any other request,
    which goes straight through. Otherwise as llm_call_wrapper."""
    def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[LLMCall, Any] | None:
        if _recording.get() or not in_session():
            return None
        try:
            request = request_of(args, kwargs)
        except Exception as exc:  # noqa: BLE001 - the plugin's bug never reaches the caller
            record_internal_error("plugin_llm_request", exc)
            return None
        call = None if request is None else _guarded(start, request)
        return None if call is None else (call, request)

    return _recording_wrapper(begin, outcome, asynchronous)


def generated_client_request(args: tuple[Any, ...], kwargs: dict[str, Any]
                             ) -> tuple[Any, str, str, Any] | None:
    """The ``(cast_to, method, url, json body)`` of a call to the request
    method of a client generated as openai's and anthropic's are
    (``request(cast_to, options, *, stream, stream_cls)``), for
    llm_request_wrapper's ``request_of``; None if its arguments are not so."""
    options = kwargs.get("options", args[1] if len(args) > 1 else None)
    url, method = getattr(options, "url", None), getattr(options, "method", None)
    if not isinstance(url, str) or not isinstance(method, str):
        return None
    cast_to = kwargs.get("cast_to", args[0] if args else None)
    return cast_to, method.lower(), url, getattr(options, "json_data", None)


def _recording_wrapper(begin: Callable[[tuple[Any, ...], dict[str, Any]],
                                       tuple[LLMCall, Any] | None],
                       outcome: Callable[[LLMCall, Any, bool, Any], Any],
                       asynchronous: bool) -> Callable[..., Any]:
    if asynchronous:
        async def async_wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...],
                                kwargs: dict[str, Any]) -> Any:
            begun = begin(args, kwargs)
            if begun is None:
                return await wrapped(*args, **kwargs)
            call, request = begun
            try:
                with recorded_above():
                    result = await wrapped(*args, **kwargs)
            except BaseException as exc:
                call.fail(exc)
                raise
            return _outcome(outcome, call, result, True, request)
        return async_wrapper

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        begun = begin(args, kwargs)
        if begun is None:
            return wrapped(*args, **kwargs)
        call, request = begun
        try:
            with recorded_above():
                result = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        return _outcome(outcome, call, result, False, request)
    return wrapper


def _guarded(start: Callable[[Any], LLMCall | None], request: Any) -> LLMCall | None:
    try:
        return start(request)
    except Exception as exc:  # noqa: BLE001 - the plugin's bug never reaches the caller
        record_internal_error("plugin_llm_call_start", exc)
        return None


def _outcome(outcome: Callable[[LLMCall, Any, bool, Any], Any], call: LLMCall,
             result: Any, asynchronous: bool, kwargs: Any) -> Any:
    try:
        return outcome(call, result, asynchronous, kwargs)
    except Exception as exc:  # noqa: BLE001 - the plugin's bug never reaches the caller
        record_internal_error("plugin_llm_call_outcome", exc)
        call.finish()
        return result
