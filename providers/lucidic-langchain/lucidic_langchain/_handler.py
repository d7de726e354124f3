"""The callback handler: langchain runs into Lucidic steps and events.

langchain-core reports each run's start and end in separate callbacks, keyed
by run id, and runs an async run's end callbacks in a task of their own. So
steps are opened with :func:`lucidic.plugins.open_step` and nested by
``parent_run_id`` rather than through the calling context, and the provider
adapters are held off with a suppression that can be ended from any context.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from lucidic import plugins
from lucidic.plugins import swallow
from lucidic.streams import ABANDONED

#: Model parameters worth keeping with an LLM event (never credentials).
_ARGUMENT_KEYS = ("temperature", "max_tokens", "max_completion_tokens", "top_p", "n", "stop",
                  "stream", "tools", "tool_choice", "response_format", "reasoning_effort",
                  "seed", "frequency_penalty", "presence_penalty", "thinking")
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool",
          "function": "function", "chat": "user", "developer": "developer",
          # a streamed message's chunks carry their class name as their type
          "HumanMessageChunk": "user", "AIMessageChunk": "assistant",
          "SystemMessageChunk": "system", "ToolMessageChunk": "tool",
          "FunctionMessageChunk": "function", "ChatMessageChunk": "user"}


class _Hold:
    """How long a model run holds the provider plugins off: a model's own
    code (its request, and whatever else it calls: another request, another
    model) is the model call the langchain plugin records, while code its
    caller runs is not. A call through ``generate`` (invoke, batch, and
    ``stream`` of a model that does not stream) runs the model's code from
    its start to its end (``whole``); a stream runs it while it makes each
    chunk, not while its caller holds one. See _held_stream."""

    __slots__ = ("handler", "live", "run_id", "taken", "thrown", "whole")

    def __init__(self, whole: bool) -> None:
        self.whole = whole
        #: (a stream's) its model run has started: later runs are not its own
        self.taken = False
        #: (a stream's) its model run is recorded and not yet over
        self.live = False
        #: (a stream's) the exception its caller threw in (``throw()``,
        #: ``athrow()``): the caller's, not the model's
        self.thrown: BaseException | None = None
        #: (a stream's) its model run, and the handler recording it
        self.run_id: UUID | None = None
        self.handler: LucidicCallbackHandler | None = None


#: The hold of the model call whose code runs here (set by the patched
#: langchain-core methods below): the model run started under it is its own.
_holding: contextvars.ContextVar[_Hold | None] = contextvars.ContextVar(
    "lucidic_langchain_holding", default=None)


def _hold_call(wrapped: Any, instance: Any, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:
    """Around ``generate``: its model runs hold the provider plugins off
    until they end, their streamed tokens notwithstanding."""
    token = _holding.set(_Hold(whole=True))
    try:
        return wrapped(*args, **kwargs)
    finally:
        _holding.reset(token)


def _hold_acall(wrapped: Any, instance: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
    """``agenerate``'s _hold_call."""
    async def call() -> Any:
        token = _holding.set(_Hold(whole=True))
        try:
            return await wrapped(*args, **kwargs)
        finally:
            _holding.reset(token)

    return call()


def _hold_stream(wrapped: Any, instance: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
    """Around ``stream``: see _held_stream."""
    return _held_stream(wrapped(*args, **kwargs))


def _hold_astream(wrapped: Any, instance: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
    """Around ``astream``: see _held_astream."""
    return _held_astream(wrapped(*args, **kwargs))


class _Steps:
    """The steps of one model stream (see _held_stream)."""

    __slots__ = ("first", "hold")

    def __init__(self) -> None:
        self.hold = _Hold(whole=False)
        self.first = True

    @contextmanager
    def step(self) -> Iterator[None]:
        """Around one step of the stream (set and reset in the context it runs in)."""
        if self.first:
            self.first = False
            token = _holding.set(self.hold)  # the run it starts is its own
            try:
                yield
            finally:
                _holding.reset(token)
        elif self.hold.live:
            with plugins.suppress_llm_calls("langchain"):
                yield
        else:
            yield


def _held_stream(stream: Any) -> Iterator[Any]:
    """The model stream ``stream``, step by step: its first step starts its
    model run (the run taken as this stream's, see _start_llm), which holds
    the provider plugins off until its first token; each later step, while
    that run is recorded and open, runs suppressed: what the model's code
    calls as it makes a chunk is its call. Between steps, while the caller
    holds a chunk, nothing is held off. Sent values, exceptions thrown in
    and closing reach the stream as without this."""
    steps, send, value = _Steps(), stream.send, None
    try:
        while True:
            with steps.step():
                try:
                    chunk = send(value)
                except StopIteration:
                    return
            try:
                value, send = (yield chunk), stream.send
            except GeneratorExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in: the stream's to handle
                steps.hold.thrown = exc
                send, value = stream.throw, exc
    finally:
        stream.close()


async def _held_astream(stream: Any) -> AsyncIterator[Any]:
    """_held_stream for an async model stream."""
    steps, send, value = _Steps(), stream.asend, None
    try:
        while True:
            with steps.step():
                try:
                    chunk = await send(value)
                except StopAsyncIteration:
                    return
            try:
                value, send = (yield chunk), stream.asend
            except GeneratorExit:
                raise
            except BaseException as exc:  # noqa: BLE001
                steps.hold.thrown = exc
                send, value = stream.athrow, exc
    finally:
        await stream.aclose()


# -- langchain-core's event streams (stream_events / astream_events, version="v3") ---
#
# These start the model run themselves (not through generate or stream) and
# pull the model's events step by step through _iter_v2_events /
# _aiter_v2_events: each step is the model's own code, held off from the
# provider plugins while its run is recorded; between steps the caller's
# code runs, which is not. A sync stream is pulled by its reader, and
# dropped unfinished ends nothing in langchain-core: its run is completed
# when it is garbage collected, with what arrived.


def _recorded_run(run_manager: Any) -> bool:
    """Whether the model run of ``run_manager`` is being recorded here."""
    run_id = getattr(run_manager, "run_id", None)
    for handler in getattr(run_manager, "handlers", None) or ():
        if isinstance(handler, LucidicCallbackHandler) and handler.recording(run_id):
            return True
    return False


def _hold_events(wrapped: Any, instance: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
    """Around ``_iter_v2_events``: each step of a recorded run held off."""
    events = wrapped(*args, **kwargs)
    return _held_events(events) if _recorded_run(kwargs.get("run_manager")) else events


def _held_events(events: Any) -> Iterator[Any]:
    try:
        while True:
            with plugins.suppress_llm_calls("langchain"):
                try:
                    event = next(events)
                except StopIteration:
                    return
            yield event
    finally:
        events.close()


def _hold_aevents(wrapped: Any, instance: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
    """Around ``_aiter_v2_events``: _hold_events."""
    events = wrapped(*args, **kwargs)
    return _held_aevents(events) if _recorded_run(kwargs.get("run_manager")) else events


async def _held_aevents(events: Any) -> AsyncIterator[Any]:
    try:
        while True:
            with plugins.suppress_llm_calls("langchain"):
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    return
            yield event
    finally:
        await events.aclose()


def _hold_v3_stream(wrapped: Any, instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
    """Around ``_chat_model_stream_v3``: the run its stream starts is known
    by its hold, and completed with what arrived if the stream is dropped
    before its end."""
    stream = wrapped(*args, **kwargs)
    with swallow("langchain_v3_stream"):
        start = stream._ensure_started
        if start is None:
            return stream
        hold = _Hold(whole=False)

        def started() -> None:
            token = _holding.set(hold)  # the run it starts is its own
            try:
                start()
            finally:
                _holding.reset(token)

        stream.set_start(started)
        finalizer = weakref.finalize(stream, _v3_stream_dropped, hold)
        finalizer.atexit = False
    return stream


def _v3_stream_dropped(hold: _Hold) -> None:
    if hold.live and hold.handler is not None and hold.run_id is not None:
        hold.handler.on_llm_error(GeneratorExit(), run_id=hold.run_id)


_CHAT_MODELS = "langchain_core.language_models.chat_models"
_LLMS = "langchain_core.language_models.llms"
#: The langchain-core methods a model call is made through (see _Hold); a
#: langchain-core without the v3 event streams lacks the last three. Those
#: of streams are generator functions (async ones for the async streams):
#: what they return is a generator, which their wrappers step through.
MODEL_PATCHES: tuple[tuple[str, str, str, Callable[..., Any]], ...] = (
    *((module, cls, method, wrapper)
      for module, cls in ((_CHAT_MODELS, "BaseChatModel"), (_LLMS, "BaseLLM"))
      for method, wrapper in (("generate", _hold_call), ("agenerate", _hold_acall),
                              ("stream", _hold_stream), ("astream", _hold_astream))),
    (_CHAT_MODELS, "BaseChatModel", "_iter_v2_events", _hold_events),
    (_CHAT_MODELS, "BaseChatModel", "_aiter_v2_events", _hold_aevents),
    (_CHAT_MODELS, "BaseChatModel", "_chat_model_stream_v3", _hold_v3_stream),
)


@dataclass
class _Run:
    kind: str  # "step", "tool", "retriever", "llm"
    #: The step this run is (kind "step") or records into (the others).
    step: plugins.StepHandle | None
    name: str | None = None
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    arguments: Any = None
    call: plugins.LLMCall | None = None
    suppression: plugins.Suppression | None = None
    #: The answering model, as the provider named it in a streamed chunk.
    reported_model: str | None = None
    #: The input side of the usage (langchain's usage_metadata) a streamed
    #: chunk reported before the stream's last chunk passes it on.
    reported_input: dict[str, Any] | None = None
    #: The output side a streamed chunk reported (the latest: cumulative).
    reported_output: dict[str, Any] | None = None
    #: How long the run holds the provider plugins off (None: until its
    #: first token, for a run made otherwise than through MODEL_PATCHES).
    hold: _Hold | None = None
    #: A token has been streamed.
    streamed: bool = False
    #: The protocol events of a v3 event stream (on_stream_event), of which
    #: what arrived is assembled if it ends early: langchain-core passes none.
    events: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class _Reported:
    """What provider chunks reported (see _reported)."""

    model: str | None = None
    input_usage: dict[str, Any] | None = None
    output_usage: dict[str, Any] | None = None


#: What the provider chunks last converted in this context reported (the
#: answering model; the input side of the usage), until the run whose chunk
#: it is takes it: an integration converts each provider chunk, then reports
#: langchain's chunk made of it to the run's on_llm_new_token (run id in
#: hand), in the same context and the same step of the stream, with no other
#: stream's code in between. A chunk that makes no langchain chunk
#: (langchain-openai skips some, langchain-anthropic its first without
#: stream_usage) leaves what it reported for the run's next one.
_reported: contextvars.ContextVar[_Reported | None] = contextvars.ContextVar(
    "lucidic_langchain_reported", default=None)


def note_reported_model(model: Any) -> None:
    """A provider chunk being converted in this context names the answering
    ``model``: the model run it belongs to keeps it for its event (see
    _reported), in case the stream ends before the integration passes it on
    (langchain-openai does so in the stream's last chunk only)."""
    if isinstance(model, str) and model:
        _note(model=model)


def note_reported_input(usage: Any) -> None:
    """A provider chunk being converted in this context counts the input
    tokens: ``usage``, langchain's usage_metadata of them (input_tokens,
    input_token_details), kept as the model is (see note_reported_model) in
    case the stream ends before the integration passes them on
    (langchain-anthropic does so in the stream's last chunk only)."""
    side = _usage_side(usage, "input")
    if side is not None:
        _note(input_usage=side)


def note_reported_output(usage: Any) -> None:
    """A provider chunk being converted in this context counts the output
    tokens so far: ``usage``, langchain's usage_metadata (its output side
    taken), kept as the input's is (see note_reported_input), for an
    integration that does not pass them on (langchain-anthropic without
    stream_usage)."""
    side = _usage_side(usage, "output")
    if side is not None:
        _note(output_usage=side)


def _usage_side(usage: Any, side: str) -> dict[str, Any] | None:
    """The ``side`` ("input", "output") of langchain's usage_metadata: its
    tokens and their details; None if it counts none."""
    if not isinstance(usage, dict) or not isinstance(usage.get(f"{side}_tokens"), int):
        return None
    return {key: usage[key] for key in (f"{side}_tokens", f"{side}_token_details")
            if key in usage}


def _note(**reported: Any) -> None:
    """Keep what a provider chunk reported, beside what others before it did."""
    _reported.set(replace(_reported.get() or _Reported(), **reported))


def _take_reported() -> _Reported:
    reported = _reported.get()
    if reported is None:
        return _Reported()
    _reported.set(None)
    return reported


class LucidicCallbackHandler(BaseCallbackHandler):
    """Records langchain runs into the current Lucidic session."""

    # Called directly in the run's own context (thread or task), in order, so
    # that the session current there is the one recorded into and the
    # suppression set at a model call's start covers that call.
    run_inline = True
    raise_error = False

    def __init__(self, on_model_start: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._runs: dict[UUID, _Run] = {}
        self._lock = threading.Lock()
        #: Called as each recorded model run starts (the adapter patches the
        #: chunk readers of the integrations imported by then).
        self._on_model_start = on_model_start

    # -- bookkeeping -------------------------------------------------------------------

    def _parent_step(self, parent_run_id: UUID | None) -> plugins.StepHandle | None:
        """The step a child of parent_run_id goes in; None: the calling
        context's (a root run, or a child of a run recorded there: a tool
        or model called outside any chain)."""
        if parent_run_id is None:
            return None
        with self._lock:
            parent = self._runs.get(parent_run_id)
        return None if parent is None else parent.step

    def _add(self, run_id: UUID, run: _Run) -> None:
        with self._lock:
            self._runs[run_id] = run

    def _pop(self, run_id: UUID) -> _Run | None:
        with self._lock:
            return self._runs.pop(run_id, None)

    def _open_step(self, run_id: UUID, parent_run_id: UUID | None, action: str,
                   state: Any = None) -> None:
        parent = self._parent_step(parent_run_id)
        if parent is None and not plugins.in_session():
            return
        step = plugins.open_step(action=action, state=_short(state), function_name=action,
                                 parent=parent)
        if step is not None:
            self._add(run_id, _Run("step", step, name=action))

    def _end_step(self, run_id: UUID, *, outputs: Any = None,
                  error: BaseException | None = None) -> None:
        run = self._pop(run_id)
        if run is None or run.kind != "step" or run.step is None:
            return
        run.step.end(state=None if error is not None else _short(outputs), error=error)

    # -- chains, graphs and other runnables ----------------------------------------------

    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, tags: list[str] | None = None,
                       metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        with swallow("langchain_chain_start"):
            self._open_step(run_id, parent_run_id, _run_name(serialized, kwargs, "chain"),
                            inputs)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with swallow("langchain_chain_end"):
            self._end_step(run_id, outputs=outputs)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with swallow("langchain_chain_error"):
            self._end_step(run_id, error=error)

    # -- tools and retrievers ----------------------------------------------------------

    def _start_call(self, kind: str, run_id: UUID, parent_run_id: UUID | None, name: str,
                    arguments: Any) -> None:
        parent = self._parent_step(parent_run_id)
        if parent is None and not plugins.in_session():
            return
        # The tool's children (a tool that runs a chain) nest in the tool's step.
        self._add(run_id, _Run(kind, parent, name=name,
                               arguments=arguments))

    def _finish_call(self, event_type: str, run_id: UUID, output: Any = None,
                     error: BaseException | None = None) -> None:
        run = self._pop(run_id)
        if run is None:
            return
        duration = time.perf_counter() - run.started
        fields: dict[str, Any] = {
            "description": run.name, "function_name": run.name, "arguments": run.arguments,
            "output": None if error is not None else _tool_output(output),
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "started_at": run.started_at, "ended_at": run.started_at + duration,
            "duration": duration}
        if run.step is not None:
            run.step.record_event(event_type, **fields)
        else:
            plugins.record_event(event_type, **fields)

    def on_tool_start(self, serialized: dict[str, Any] | None, input_str: str, *,
                      run_id: UUID, parent_run_id: UUID | None = None,
                      inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        with swallow("langchain_tool_start"):
            self._start_call("tool", run_id, parent_run_id,
                             _run_name(serialized, kwargs, "tool"),
                             inputs if inputs is not None else input_str)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with swallow("langchain_tool_end"):
            self._finish_call("tool", run_id, output)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with swallow("langchain_tool_error"):
            self._finish_call("tool", run_id, error=error)

    def on_retriever_start(self, serialized: dict[str, Any] | None, query: str, *,
                           run_id: UUID, parent_run_id: UUID | None = None,
                           **kwargs: Any) -> None:
        with swallow("langchain_retriever_start"):
            self._start_call("retriever", run_id, parent_run_id,
                             _run_name(serialized, kwargs, "retriever"), {"query": query})

    def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID,
                         **kwargs: Any) -> None:
        with swallow("langchain_retriever_end"):
            self._finish_call("function", run_id, [
                {"page_content": getattr(d, "page_content", None),
                 "metadata": getattr(d, "metadata", None)} for d in documents])

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with swallow("langchain_retriever_error"):
            self._finish_call("function", run_id, error=error)

    # -- model calls -------------------------------------------------------------------

    def _start_llm(self, run_id: UUID, parent_run_id: UUID | None,
                   serialized: dict[str, Any] | None, metadata: dict[str, Any] | None,
                   kwargs: dict[str, Any], messages: Any) -> None:
        _take_reported()  # what a stream that ended left is none of this run's
        hold = _holding.get()
        if hold is not None and not hold.whole:
            if hold.taken:
                hold = None  # a run the stream's model started: not the stream's own
            else:
                hold.taken = True
        parent = self._parent_step(parent_run_id)
        if parent is None and not plugins.in_session():
            return
        metadata = metadata or {}
        params = kwargs.get("invocation_params") or {}
        provider = metadata.get("ls_provider") or _provider_from(serialized)
        request_model = (params.get("model") or params.get("model_name")
                         or metadata.get("ls_model_name"))
        arguments = {k: params[k] for k in _ARGUMENT_KEYS if params.get(k) is not None} or None
        description = _run_name(serialized, kwargs, "llm")
        if parent is not None:
            call = parent.start_llm_call(provider, request_model=request_model, input=messages,
                                         description=description, arguments=arguments)
        else:
            call = plugins.start_llm_call(provider, request_model=request_model,
                                          input=messages, description=description,
                                          arguments=arguments)
        if call is None:
            return
        # This adapter records the call: the provider adapter below stays quiet.
        suppression = plugins.begin_suppressing_llm_calls("langchain")
        run = _Run("llm", parent, call=call, suppression=suppression, hold=hold)
        if hold is not None and not hold.whole:
            hold.live, hold.run_id, hold.handler = True, run_id, self
        self._add(run_id, run)
        if self._on_model_start is not None:
            self._on_model_start()

    def on_chat_model_start(self, serialized: dict[str, Any] | None,
                            messages: list[list[Any]], *, run_id: UUID,
                            parent_run_id: UUID | None = None, tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        with swallow("langchain_chat_model_start"):
            batch = [_message(m) for m in messages[0]] if len(messages) == 1 else \
                [[_message(m) for m in group] for group in messages]
            self._start_llm(run_id, parent_run_id, serialized, metadata, kwargs, batch)

    def on_llm_start(self, serialized: dict[str, Any] | None, prompts: list[str], *,
                     run_id: UUID, parent_run_id: UUID | None = None,
                     tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                     **kwargs: Any) -> None:
        with swallow("langchain_llm_start"):
            self._start_llm(run_id, parent_run_id, serialized, metadata, kwargs,
                            prompts[0] if len(prompts) == 1 else prompts)

    def on_llm_new_token(self, token: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with swallow("langchain_llm_new_token"):
            reported = _take_reported()  # by the chunk this token was made of
            with self._lock:
                run = self._runs.get(run_id)
            if run is not None and run.call is not None:
                run.call.first_token()
                run.streamed = True
                if run.reported_model is None:
                    run.reported_model = reported.model
                if run.reported_input is None:
                    run.reported_input = reported.input_usage
                if reported.output_usage is not None:
                    run.reported_output = reported.output_usage
                if run.suppression is not None and not (run.hold and run.hold.whole):
                    # Its request has been made (and held from the provider
                    # adapters); code run between its chunks (another model's
                    # stream read in turn, a call per chunk) is not this call.
                    # (Its stream's later steps are held off again: _held_stream.)
                    run.suppression.active = False

    def recording(self, run_id: UUID | None) -> bool:
        """Whether the model run ``run_id`` is being recorded (and not over)."""
        with self._lock:
            run = self._runs.get(run_id) if run_id is not None else None
        return run is not None and run.call is not None

    def on_stream_event(self, event: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Each protocol event of a v3 event stream (stream_events,
        astream_events version="v3"): kept, for what arrived of a stream
        that ends early; its first content is the first token, and its
        first event, as a first token does, ends the hold on the provider
        plugins its run's start began (the stream's steps hold them off:
        _held_events)."""
        with swallow("langchain_stream_event"):
            with self._lock:
                run = self._runs.get(run_id)
            if run is None or run.call is None:
                return
            run.events.append(event)
            if isinstance(event, dict) and event.get("event") == "content-block-delta":
                run.call.first_token()
                run.streamed = True
            if run.suppression is not None and not (run.hold and run.hold.whole):
                run.suppression.active = False

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._pop(run_id)
        if run is None or run.call is None:
            return
        try:
            with swallow("langchain_llm_end"):
                run.call.finish(**_llm_result(response, run))
        finally:
            _release(run)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, response: Any = None,
                     **kwargs: Any) -> None:
        run = self._pop(run_id)
        if run is None or run.call is None:
            return
        try:
            # The caller stopped reading a stream (a break out of
            # model.stream(), aclose(); an exception it threw in; the task
            # reading it cancelled, as astream_events cancels its own when
            # its caller stops reading): no error. Else a stream that failed
            # midway: its error. Either with what arrived so far, which
            # comes as ``response`` (langchain-core passes it since 0.2).
            stopped = isinstance(error, GeneratorExit) or (
                run.hold is not None and run.hold.thrown is error) or (
                isinstance(error, asyncio.CancelledError) and run.streamed)
            if stopped or run.streamed:
                ending: dict[str, Any] = {"result": ABANDONED} if stopped else {"error": error}
                with swallow("langchain_llm_closed" if stopped else "langchain_llm_failed_midway"):
                    run.call.finish(**_llm_result(_arrived(response, run), run), **ending)
            run.call.fail(error)  # does nothing once finished
        finally:
            _release(run)


def _release(run: _Run) -> None:
    """The model run is over: the provider plugins are no longer held off for it."""
    if run.hold is not None:
        run.hold.live = False
    if run.suppression is not None:
        run.suppression.end()


# -- reading langchain's objects ------------------------------------------------------------

def _run_name(serialized: dict[str, Any] | None, kwargs: dict[str, Any], default: str) -> str:
    name = kwargs.get("name")
    if not name and serialized:
        name = serialized.get("name")
        if not name and isinstance(serialized.get("id"), list) and serialized["id"]:
            name = serialized["id"][-1]
    return str(name or default)


def _provider_from(serialized: dict[str, Any] | None) -> str:
    ids = serialized.get("id") if serialized else None
    path = ".".join(str(i) for i in ids) if isinstance(ids, list) else ""
    for known in ("openai", "anthropic", "google", "mistral", "groq", "ollama", "bedrock"):
        if known in path.lower():
            return known
    return "langchain"


def _short(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 2000 else text[:2000] + "…"


def _message(message: Any) -> dict[str, Any]:
    """A langchain message as a provider-neutral {role, content, ...} dict."""
    role = _ROLES.get(getattr(message, "type", ""), getattr(message, "type", None))
    if role == "user" and getattr(message, "role", None):  # ChatMessage
        role = message.role
    out: dict[str, Any] = {"role": role, "content": getattr(message, "content", message)}
    tool_calls = getattr(message, "tool_calls", None)
    if tool_calls:
        out["tool_calls"] = [{"id": c.get("id"), "name": c.get("name"), "arguments": c.get("args")}
                             for c in tool_calls]
    tool_call_id = getattr(message, "tool_call_id", None)
    if tool_call_id:
        out["tool_call_id"] = tool_call_id
    name = getattr(message, "name", None)
    if name:
        out["name"] = name
    return out


def _tool_output(output: Any) -> Any:
    content = getattr(output, "content", None)  # a ToolMessage
    return content if content is not None else output


def _llm_result(response: Any, run: _Run) -> dict[str, Any]:
    """finish() arguments from an LLMResult (None: nothing arrived): returned
    model (else the one the provider's chunks named), output, tokens."""
    generations = [g for group in (getattr(response, "generations", None) or []) for g in group]
    llm_output = getattr(response, "llm_output", None) or {}
    outputs: list[Any] = []
    model = None
    tokens: dict[str, int | None] = {}
    for generation in generations:
        message = getattr(generation, "message", None)
        if message is None:
            outputs.append({"role": "assistant", "content": getattr(generation, "text", None)})
            continue
        outputs.append(_message(message))
        metadata = getattr(message, "response_metadata", None) or {}
        model = model or metadata.get("model_name") or metadata.get("model")
        usage = getattr(message, "usage_metadata", None)
        # The generations of one run are the choices of one response (n > 1),
        # each message carrying that response's usage (langchain-openai): once.
        if usage and not tokens:
            _add_usage(tokens, _input_completed(usage, run.reported_input))
    if not tokens and run.reported_input:
        # a stream cut before its last chunk, or whose integration passes no
        # usage on: the input its first chunk counted, the output its later
        # ones did (none before the count at its end: see _extract of the
        # anthropic plugin)
        _add_usage(tokens, {**run.reported_input, **(run.reported_output or {})})
    if not tokens:
        usage = llm_output.get("token_usage") or llm_output.get("usage") or {}
        if isinstance(usage, dict):
            _add_tokens(tokens, "input_tokens",
                        usage.get("prompt_tokens", usage.get("input_tokens")))
            _add_tokens(tokens, "output_tokens",
                        usage.get("completion_tokens", usage.get("output_tokens")))
    model = model or llm_output.get("model_name") or llm_output.get("model") or run.reported_model
    output = outputs[0] if len(outputs) == 1 else outputs or None
    return {"model": model, "output": output, **tokens}


def _arrived(response: Any, run: _Run) -> Any:
    """What arrived of a stream that ended early or failed, of the LLMResult
    langchain-core passes with the error: its first group of generations
    (the chunks merged), without the second it adds for the error (an empty
    message carrying the error's HTTP status and headers); of a v3 event
    stream, whose error passes none of it, the message its events make."""
    if run.events:
        return _LLMResultOf(_message_of_events(run.events))
    generations = getattr(response, "generations", None)
    if not generations or len(generations) < 2:
        return response
    return response.model_copy(update={"generations": generations[:1]})


@dataclass
class _GenerationOf:
    message: Any


class _LLMResultOf:
    """An LLMResult's shape (as _llm_result reads it) for one message."""

    def __init__(self, message: Any) -> None:
        self.generations = [[_GenerationOf(message)]] if message is not None else []
        self.llm_output = None


def _message_of_events(events: list[Any]) -> Any:
    """The message a v3 stream's protocol events so far make (langchain-core's
    own assembly, fed to a stream of its own)."""
    from langchain_core.language_models.chat_model_stream import ChatModelStream

    stream = ChatModelStream()
    for event in events:
        stream.dispatch(event)
    if not stream.done:
        stream.dispatch({"event": "message-finish"})
    return stream.output_message


def _input_completed(usage: dict[str, Any], counted: dict[str, Any] | None) -> dict[str, Any]:
    """langchain's usage_metadata ``usage`` of a stream's last chunk, with
    the input side that its first chunk ``counted`` (Anthropic's
    message_start: see note_reported_input) where the last chunk reports
    none: langchain-anthropic counts its input from message_delta, which in
    the older event format does not repeat the input tokens (0, then) and
    never breaks the cache writes down by lifetime. A count the last chunk
    does report stands (cumulative, it may have grown since)."""
    if not counted:
        return usage
    completed = dict(usage)
    if not usage.get("input_tokens"):
        completed["input_tokens"] = counted["input_tokens"]
    details = usage.get("input_token_details") or {}
    completed["input_token_details"] = {
        **(counted.get("input_token_details") or {}),
        **{key: value for key, value in details.items() if value}}
    return completed


def _add_usage(tokens: dict[str, int | None], usage: dict[str, Any]) -> None:
    """Add the counts of langchain's usage_metadata ``usage``."""
    _add_tokens(tokens, "input_tokens", usage.get("input_tokens"))
    _add_tokens(tokens, "output_tokens", usage.get("output_tokens"))
    details = usage.get("input_token_details") or {}
    _add_tokens(tokens, "cached_tokens", details.get("cache_read"))
    # langchain-anthropic reports the writes by cache lifetime when the
    # API does (and then "cache_creation" as 0), else in one count.
    hour = details.get("ephemeral_1h_input_tokens")
    by_lifetime = (details.get("ephemeral_5m_input_tokens") or 0) + (hour or 0)
    _add_tokens(tokens, "cache_write_tokens", by_lifetime or details.get("cache_creation"))
    _add_tokens(tokens, "cache_write_1h_tokens", hour)
    _add_tokens(tokens, "reasoning_tokens",
                (usage.get("output_token_details") or {}).get("reasoning"))


def _add_tokens(tokens: dict[str, int | None], key: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        tokens[key] = (tokens.get(key) or 0) + value
