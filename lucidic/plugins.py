"""The provider plugin API.

A provider plugin is an installable distribution that registers an
:class:`Adapter` subclass under the entry-point group ``lucidic.providers``::

    [project.entry-points."lucidic.providers"]
    openai = "lucidic_openai:OpenAIAdapter"

``lai.init(providers=["openai"])`` (and ``continue_session``, ``continued``,
``session``) loads it and calls ``instrument()``. Adapters record what they
see through this module only — :func:`start_llm_call`, :func:`record_event`,
:func:`step_scope` — which write into the calling context's session and
step, and do nothing when no session is current. They never reach into the
queue, the worker or the store.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from typing import Any, ClassVar

from ._context import Binding, current_binding, current_step
from ._deferred import deferred
from ._internal import logger, record_internal_error, swallow
from ._recording import CURRENT, Event, Step, amend_event, current_step_of
from ._recording import open_step as _open_step
from ._recording import record_event as _record_event
from ._records import field_value, text_field
from .errors import InvalidOperationError
from .pricing import cost_of
from .store import EVENT_COLUMNS, WRITER_COLUMNS, Record

__all__ = [
    "ENTRY_POINT_GROUP",
    "FIRST_PARTY",
    "Adapter",
    "LLMCall",
    "ProviderInfo",
    "StepHandle",
    "Suppression",
    "activate",
    "begin_suppressing_llm_calls",
    "describe",
    "get_adapter",
    "in_session",
    "mark_replayed",
    "open_step",
    "record_event",
    "record_internal_error",
    "start_llm_call",
    "step_scope",
    "suppress_llm_calls",
    "swallow",
]

ENTRY_POINT_GROUP = "lucidic.providers"


class Adapter:
    """Base class of provider adapters.

    Subclasses set ``name``, ``library`` (the distribution they instrument)
    and ``supported_versions`` (a PEP 440 specifier), and implement
    ``_instrument``/``_uninstrument``. ``instrument()`` and ``uninstrument()``
    are idempotent and symmetric: after ``uninstrument()`` the library is
    exactly as it was before ``instrument()``.
    """

    name: ClassVar[str] = ""
    library: ClassVar[str] = ""
    supported_versions: ClassVar[str] = ""

    def __init__(self) -> None:
        self._instrumented = False
        self._lock = threading.Lock()

    @property
    def instrumented(self) -> bool:
        return self._instrumented

    def library_version(self) -> str | None:
        try:
            return metadata.version(self.library)
        except metadata.PackageNotFoundError:
            return None

    def check_library(self, version: str | None = None) -> None:
        """Raise InvalidOperationError if the library is missing or of a
        version this adapter does not support (``version``: the installed
        one, when the caller has read it already)."""
        version = version or self.library_version()
        if version is None:
            raise InvalidOperationError(
                f"provider {self.name!r} instruments the {self.library!r} library, which is not "
                f"installed: pip install {self.library}")
        if self.supported_versions and not _version_matches(version, self.supported_versions):
            raise InvalidOperationError(
                f"provider {self.name!r} supports {self.library} {self.supported_versions}, but "
                f"{self.library} {version} is installed")

    def instrument(self) -> None:
        with self._lock:
            if self._instrumented:
                return
            self.check_library()
            self._instrument()
            self._instrumented = True

    def uninstrument(self) -> None:
        with self._lock:
            if not self._instrumented:
                return
            self._uninstrument()
            self._instrumented = False

    def _instrument(self) -> None:
        raise NotImplementedError

    def _uninstrument(self) -> None:
        raise NotImplementedError


def _version_matches(version: str, specifier: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:  # pragma: no cover - packaging ships with pip's environments
        return True
    try:
        return Version(version) in SpecifierSet(specifier)
    except Exception:  # noqa: BLE001 - an odd version string: let it through
        return True


# -- discovery -------------------------------------------------------------------------

_adapters: dict[str, Adapter] = {}
_adapters_lock = threading.Lock()


def _entry_points() -> dict[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def get_adapter(name: str, entry_points: dict[str, metadata.EntryPoint] | None = None
                ) -> Adapter:
    """The (single) adapter registered under name, loaded on first use
    (``entry_points``: the group as already read, to spare reading it again)."""
    with _adapters_lock:
        adapter = _adapters.get(name)
        if adapter is not None:
            return adapter
        if entry_points is None:
            entry_points = _entry_points()
        entry_point = entry_points.get(name)
        if entry_point is None:
            raise InvalidOperationError(unknown_provider_message(name, sorted(entry_points)))
        try:
            target = entry_point.load()
            adapter = target() if isinstance(target, type) else target
        except Exception as exc:  # noqa: BLE001 - a broken plugin is the user's to know
            raise InvalidOperationError(
                f"provider {name!r} ({entry_point.value}) failed to load: "
                f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(adapter, Adapter):
            raise InvalidOperationError(
                f"provider {name!r} ({entry_point.value}) is not a lucidic.plugins.Adapter")
        _adapters[name] = adapter
        return adapter


#: The first-party plugins, and the distribution that installs each.
FIRST_PARTY = {
    "openai": "lucidic-toolkit-openai",
    "anthropic": "lucidic-toolkit-anthropic",
    "langchain": "lucidic-toolkit-langchain",
    "pydantic_ai": "lucidic-toolkit-pydantic-ai",
    "openai_agents": "lucidic-toolkit-openai-agents",
}
#: Names people try for what a plugin of another name records.
_SERVED_BY = {
    "langgraph": ("langchain", "LangGraph runs on langchain-core, whose callbacks the "
                               "'langchain' plugin records"),
    "langchain_core": ("langchain", "the 'langchain' plugin records langchain-core runs"),
    "agents": ("openai_agents", "the OpenAI Agents SDK is recorded by 'openai_agents'"),
}


def unknown_provider_message(name: str, installed: Sequence[str]) -> str:
    """What to say when no installed plugin is called ``name``: the plugin that
    serves it, or the closest known name, and what to install."""
    import difflib

    listing = f"Installed providers: {', '.join(installed) or 'none'}."
    key = name.strip().lower().replace("-", "_")
    served = _SERVED_BY.get(key)
    if served is None and key != name and (key in installed or key in FIRST_PARTY):
        served = (key, f"provider names are written with underscores, as {key!r}")
    if served is not None:
        plugin, why = served
        return (f"unknown provider {name!r}: {why}; use providers=[{plugin!r}]"
                f"{_install_hint(plugin, installed)}. {listing}")
    if name in FIRST_PARTY:
        return (f"provider {name!r} is not installed: pip install {FIRST_PARTY[name]}. "
                f"{listing}")
    known = sorted({*installed, *FIRST_PARTY, *_SERVED_BY})
    # 0.75: a typo ("opnai") is close; a word sharing three letters ("nope") is not.
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if close:
        guess = _SERVED_BY[close[0]][0] if close[0] in _SERVED_BY else close[0]
        return (f"unknown provider {name!r}; did you mean {guess!r}?"
                f"{_install_hint(guess, installed)} {listing}")
    first_party = ", ".join(f"{n} ({d})" for n, d in FIRST_PARTY.items())
    return (f"unknown provider {name!r}. {listing} First-party providers, each installed by "
            f"its own distribution: {first_party}. A third-party plugin registers itself "
            f"under the entry-point group {ENTRY_POINT_GROUP!r}.")


def _install_hint(plugin: str, installed: Sequence[str]) -> str:
    if plugin in installed or plugin not in FIRST_PARTY:
        return ""
    return f" (not installed: pip install {FIRST_PARTY[plugin]})"


def activate(names: Sequence[str]) -> list[Adapter]:
    """Instrument the named providers; raises InvalidOperationError for an
    unknown name or a missing library, before anything is patched."""
    adapters = []
    for name in names:
        if not isinstance(name, str):
            raise InvalidOperationError(f"provider names are strings, not {name!r:.80}")
        adapter = get_adapter(name)
        adapter.check_library()
        adapters.append(adapter)
    for adapter in adapters:
        adapter.instrument()
    return adapters


@dataclass(frozen=True)
class ProviderInfo:
    name: str
    entry_point: str
    distribution: str | None
    distribution_version: str | None
    library: str | None
    library_version: str | None
    supported_versions: str | None
    problem: str | None


def describe() -> list[ProviderInfo]:
    """Every installed provider, with the library version each found."""
    infos = []
    entry_points = _entry_points()
    for name, entry_point in sorted(entry_points.items()):
        dist = getattr(entry_point, "dist", None)
        try:
            adapter = get_adapter(name, entry_points)
        except InvalidOperationError as exc:
            infos.append(ProviderInfo(name, entry_point.value, dist.name if dist else None,
                                      dist.version if dist else None, None, None, None,
                                      str(exc)))
            continue
        problem = None
        version = adapter.library_version()
        try:
            adapter.check_library(version)
        except InvalidOperationError as exc:
            problem = str(exc)
        infos.append(ProviderInfo(name, entry_point.value, dist.name if dist else None,
                                  dist.version if dist else None, adapter.library, version,
                                  adapter.supported_versions or None, problem))
    return infos


# -- recording -------------------------------------------------------------------------

_suppressed: contextvars.ContextVar[str | Suppression | None] = contextvars.ContextVar(
    "lucidic_llm_suppressed", default=None)


def _is_suppressed() -> bool:
    value = _suppressed.get()
    return value is not None and (not isinstance(value, Suppression) or value.in_force())


def in_session() -> bool:
    """True when the calling context has a current session (patches go
    straight through when it has none)."""
    return current_binding() is not None


@contextmanager
def suppress_llm_calls(by: str) -> Iterator[None]:
    """While active, start_llm_call() records nothing: a framework adapter that
    records an LLM call itself wraps the underlying client call in this, so the
    provider adapter below it does not record the same call twice."""
    token = _suppressed.set(by)
    try:
        yield
    finally:
        _suppressed.reset(token)


def record_event(type: str, **fields: Any) -> str | None:  # noqa: A002
    """Record a finished event (``type``: llm, tool, function, error, generic)
    in the current session and step. Unknown field names are ignored with a
    logged warning. Returns the event id, or None with no session."""
    binding = current_binding()
    if binding is None:
        return None
    return _record_event(binding, _event_fields(type, fields))


def _event_fields(type: str, fields: dict[str, Any]) -> dict[str, Any]:  # noqa: A002
    clean = {"type": type}
    for key, value in fields.items():
        if key not in EVENT_COLUMNS:
            logger.warning("lucidic: record_event() ignores unknown field %r", key)
            continue
        if key in WRITER_COLUMNS:
            continue  # Lucidic stamps who wrote the event (see _recording._queue_event)
        clean[key] = field_value(key, value)
    return clean


def _llm_fields(provider: str, request_model: str | None, input: Any,  # noqa: A002
                description: str | None, arguments: Any) -> dict[str, Any]:
    return {"type": "llm", "provider": text_field(provider),
            "request_model": text_field(request_model), "input": field_value("input", input),
            "description": text_field(description),
            "arguments": field_value("arguments", arguments)}


#: The LLM call most recently started in this context, until it is recorded:
#: what an answer given from a recording (lucidic.evals replay) marks.
_open_call: contextvars.ContextVar[LLMCall | None] = contextvars.ContextVar(
    "lucidic_open_llm_call", default=None)


def mark_replayed(event_id: str) -> None:
    """The LLM call in flight in this context was answered from the recorded
    event ``event_id``, not by the provider: recorded as replayed, at no cost."""
    call = _open_call.get()
    if call is not None and not call.done:
        call._replayed_from = event_id


def _error_text(error: BaseException | str) -> str:
    """An error as recorded: a text as it is; an exception as its type's
    name and its message."""
    return error if isinstance(error, str) else f"{type(error).__name__}: {error}"


#: What an estimate may amend.
_ESTIMATED = frozenset({"input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens",
                        "cache_write_tokens", "cache_write_1h_tokens"})


class LLMCall(Event):
    """One LLM call in flight: an event of the recording core, begun when the
    request starts. Adapters create it with :func:`start_llm_call` before the
    request, then call ``finish()`` or ``fail()`` exactly once (streams: when
    the stream ends, is abandoned or errors)."""

    __slots__ = ("_fields", "_first_token_at", "_replayed_from")

    def __init__(self, binding: Binding, fields: dict[str, Any], step_id: str | None) -> None:
        super().__init__(binding, step_id)
        self._fields = fields
        self._first_token_at: float | None = None
        self._replayed_from: str | None = None
        _open_call.set(self)

    def annotate(self, *, request_model: str | None = None, input: Any = None,  # noqa: A002
                 arguments: Any = None) -> None:
        """Fill in request fields a framework learns only after the call has
        started (for example from a span's data at its end). None leaves a
        field as it is."""
        with swallow("llm_call_annotate"):
            for key, value in (("request_model", request_model), ("input", input),
                               ("arguments", arguments)):
                if value is not None:
                    self._fields[key] = field_value(key, value)

    def first_token(self) -> None:
        """Mark the arrival of the first streamed chunk (once)."""
        if self._first_token_at is None:
            self._first_token_at = time.perf_counter()

    def finish(self, *, model: str | None = None, output: Any = None,
               input_tokens: int | None = None, output_tokens: int | None = None,
               cached_tokens: int | None = None, reasoning_tokens: int | None = None,
               cache_write_tokens: int | None = None, cache_write_1h_tokens: int | None = None,
               tokens_estimated: bool = False, cost: float | None = None,
               result: str | None = None, error: BaseException | str | None = None,
               estimate: Callable[[], dict[str, Any]] | None = None) -> None:
        """Complete the call. ``input_tokens`` include the cache reads
        (``cached_tokens``) and the prompt-cache writes (``cache_write_tokens``,
        of which ``cache_write_1h_tokens`` went to a 1-hour cache, priced
        higher); ``tokens_estimated`` marks counts Lucidic worked out itself
        because the API reported none. ``cost`` defaults to the price table's.
        ``error``: the call was answered, but its answer is unusable (a body
        that is not the JSON it claims to be; a stream that failed midway,
        its exception, recorded as ``fail()`` records one): recorded beside
        ``output``, which then holds what arrived; ``fail()`` is for a call
        that raised.

        ``estimate``: for counts the API did not report and that take a while
        to work out (a tokenizer). The call is recorded now, its duration its
        own; ``estimate()`` then runs on Lucidic's background thread, never
        the caller's, and the token counts it returns (``input_tokens``,
        ``output_tokens``, ...) amend the recorded event, with their cost,
        marked ``tokens_estimated``. ``flush()`` waits for it."""
        with swallow("llm_call_finish"):
            if self.done:
                return
            fields = self._fields
            fields.update(model=text_field(model) or fields.get("request_model"),
                          output=field_value("output", output), result=text_field(result))
            for key, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens),
                               ("cached_tokens", cached_tokens),
                               ("cache_write_tokens", cache_write_tokens),
                               ("reasoning_tokens", reasoning_tokens)):
                fields[key] = field_value(key, value)
            if tokens_estimated:
                fields["tokens_estimated"] = True
            if error is not None:
                fields["error"] = text_field(_error_text(error))
            if self._replayed_from is not None:
                cost = 0.0  # answered from a recording: nothing was spent
            elif cost is None:
                cost = cost_of(fields.get("provider"), fields["model"], input_tokens,
                               output_tokens, cached_tokens, cache_write_tokens,
                               cache_write_1h_tokens)
            fields["cost"] = field_value("cost", cost)
            priced_as = (fields.get("provider"), fields["model"])  # before masking
            self._record()
            if estimate is not None:
                deferred.submit(partial(self._amend_with, estimate, *priced_as))

    def _amend_with(self, estimate: Callable[[], dict[str, Any]], provider: str | None,
                    model: str | None) -> None:
        """(On the deferred thread, once the call is recorded.)"""
        counts = {key: value for key, value in estimate().items()
                  if key in _ESTIMATED and value is not None}
        if self.event_id is None or not counts:
            return
        fields: dict[str, Any] = {key: field_value(key, value) for key, value in counts.items()
                                  if key != "cache_write_1h_tokens"}  # a part of the writes
        fields["tokens_estimated"] = True
        fields["cost"] = 0.0 if self._replayed_from is not None else cost_of(
            provider, model, counts.get("input_tokens"), counts.get("output_tokens"),
            counts.get("cached_tokens"), counts.get("cache_write_tokens"),
            counts.get("cache_write_1h_tokens"))
        amend_event(self.binding, self.event_id, fields)

    def fail(self, error: BaseException | str) -> None:
        with swallow("llm_call_fail"):
            if self.done:
                return
            self._fields["error"] = text_field(_error_text(error))
            self._record()

    def _record(self) -> None:
        if _open_call.get() is self:
            _open_call.set(None)
        fields = self._fields
        if self._replayed_from is not None:
            fields["replayed_from"] = self._replayed_from
        if self._first_token_at is not None:
            fields["time_to_first_token"] = self._first_token_at - self.started
        self.end(fields)


def start_llm_call(provider: str, *, request_model: str | None = None,
                   input: Any = None,  # noqa: A002 - the field's name in the record
                   description: str | None = None,
                   arguments: Any = None) -> LLMCall | None:
    """Begin recording an LLM call in the calling context's session and step;
    None when there is no session (or a framework adapter records this call)."""
    binding = current_binding()
    if binding is None or _is_suppressed():
        return None
    try:
        step = current_step_of(binding)
        fields = _llm_fields(provider, request_model, input, description, arguments)
        return LLMCall(binding, fields, step.step_id if step is not None else None)
    except Exception as exc:  # noqa: BLE001
        record_internal_error("start_llm_call", exc)
        return None


@contextmanager
def step_scope(*, action: str | None = None, state: str | None = None,
               goal: str | None = None, function_name: str | None = None) -> Iterator[str | None]:
    """Open a step (nested in the current one) around a framework run and make
    it the current step inside the block; yields its id, or None with no
    session. An exception escaping the block is recorded on the step and
    re-raised unchanged."""
    handle = open_step(action=action, state=state, goal=goal, function_name=function_name)
    if handle is None:
        yield None
        return
    handle.activate()
    try:
        yield handle.step_id
    except BaseException as exc:
        handle.end(error=exc)
        raise
    handle.end()


# -- callback-style frameworks -----------------------------------------------------------
#
# Some frameworks report a run's start and its end in separate callbacks, and
# do not promise that both arrive in the same context (langchain-core runs an
# async run's end callbacks in a task of their own). The helpers below carry
# their own state instead of relying on a ContextVar token being reset where
# it was set.


class Suppression:
    """An LLM-call suppression begun in one callback and ended in another
    (see :func:`begin_suppressing_llm_calls`). Once ended it suppresses
    nothing, even in a context where its ContextVar value could not be reset.

    ``active`` may also be switched on and off while it is set: a framework
    that sets it (inactive) around a whole run, where it reaches every task
    the run starts, switches it on for each model call only."""

    __slots__ = ("_outer", "_token", "active", "by")

    def __init__(self, by: str, *, active: bool = True) -> None:
        self.by = by
        self.active = active
        self._outer = _suppressed.get()
        self._token: contextvars.Token[str | Suppression | None] | None = _suppressed.set(self)

    def in_force(self) -> bool:
        """True while it is active, or the suppression it was set inside is."""
        outer = self._outer
        return self.active or (outer is not None
                               and (not isinstance(outer, Suppression) or outer.in_force()))

    def end(self) -> None:
        """Stop suppressing (idempotent; callable from any context)."""
        self.active = False
        token, self._token = self._token, None
        if token is not None:
            try:
                _suppressed.reset(token)
            except ValueError:
                pass  # ended from another context: inactive is enough there


def begin_suppressing_llm_calls(by: str, *, active: bool = True) -> Suppression:
    """Like :func:`suppress_llm_calls`, for frameworks whose model call starts
    and ends in separate callbacks: call ``end()`` on the result when the
    model call is over.

    With ``active=False`` it suppresses nothing until its ``active`` is set:
    for frameworks that make a model call in a task other than the one whose
    hook sees the call (set it around the run, switch it on in the hook)."""
    return Suppression(by, active=active)


class StepHandle(Step):
    """A step of the recording core opened by :func:`open_step` and finished by
    :meth:`end`, for frameworks whose run start and end arrive in separate
    callbacks (keyed by the framework's run id). Events go into it explicitly
    through :meth:`record_event` and :meth:`start_llm_call`."""

    __slots__ = ("_done", "_token")

    def __init__(self, binding: Binding, step_id: str, parent: Step | None = None,
                 record: Record | None = None, forks: int = 0) -> None:
        super().__init__(binding, step_id, parent, record, forks)
        self._token: contextvars.Token[Step | None] | None = None
        self._done = False
        # Until it ends: a run whose end never comes ends with the session,
        # or as interrupted when the process ends (see _lifecycle).
        binding.state.open_handles[step_id] = self

    @property
    def frame(self) -> Step:
        """This step as a frame of the context's stack of steps (itself)."""
        return self

    def activate(self) -> None:
        """Make this step the calling context's current step until end() (for
        frameworks that end their runs in the context that started them)."""
        with swallow("step_handle_activate"):
            if self._token is None and not self._done:
                self._token = current_step.set(self)

    def record_event(self, type: str, **fields: Any) -> str | None:  # noqa: A002
        """Record a finished event in this step (see :func:`record_event`)."""
        return _record_event(self.binding, _event_fields(type, fields), step_id=self.step_id)

    def start_llm_call(self, provider: str, *, request_model: str | None = None,
                       input: Any = None, description: str | None = None,  # noqa: A002
                       arguments: Any = None) -> LLMCall | None:
        """Begin recording an LLM call in this step; None while LLM calls are
        suppressed (another framework records this call)."""
        if _is_suppressed():
            return None
        return LLMCall(self.binding,
                       _llm_fields(provider, request_model, input, description, arguments),
                       self.step_id)

    def end(self, fields: dict[str, Any] | None = None, *,  # type: ignore[override]
            state: str | None = None, error: BaseException | str | None = None) -> None:
        """Finish the step (once; later calls do nothing)."""
        if self._done:
            return
        self._done = True
        self.binding.state.open_handles.pop(self.step_id, None)
        token, self._token = self._token, None
        if token is not None:
            try:
                current_step.reset(token)
            except ValueError:
                pass  # ended from another context, where it was never current
        with swallow("step_handle_end"):
            if state is not None:
                fields = {**(fields or {}), "state": text_field(state)}
            super().end(fields, error=None if error is None else text_field(_error_text(error)))


def open_step(*, action: str | None = None, state: str | None = None, goal: str | None = None,
              function_name: str | None = None,
              parent: StepHandle | None = None) -> StepHandle | None:
    """Open a step nested in ``parent`` (else in the calling context's current
    step); None with no session. Unlike :func:`step_scope` it does not become
    the current step unless :meth:`StepHandle.activate` is called."""
    binding = parent.binding if parent is not None else current_binding()
    if binding is None:
        return None
    try:
        fields = {"action": text_field(action), "state": text_field(state),
                  "goal": text_field(goal), "function_name": text_field(function_name)}
        step = _open_step(binding, fields, CURRENT if parent is None else parent,
                          kind=StepHandle)
        assert isinstance(step, StepHandle)
        return step
    except Exception as exc:  # noqa: BLE001
        record_internal_error("open_step", exc)
        return None
