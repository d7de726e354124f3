"""Adding the processor beside the SDK's own, and taking it out again.

The processor sees spans only, and a Responses API call's span does not say
which model was asked for. Two patches on the public ``Model`` methods of
``OpenAIResponsesModel`` (``get_response``, ``stream_response``; the
websocket and hosted variants inherit them) make the model's own ``model``
setting, which is what the request sends, the current requested model while
the call runs, where its response span starts."""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from lucidic import plugins
from lucidic.patching import MethodPatches
from lucidic.plugins import Adapter

if TYPE_CHECKING:
    from ._processor import LucidicTracingProcessor

# The model a Responses API call asks for. Its span does not carry it, so it
# is set around OpenAIResponsesModel.get_response / stream_response, inside
# which the call's response span starts; the processor reads it there.
requested_model: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lucidic_openai_agents_requested_model", default=None)

_PROMPT_ARG = 9  # get_response/stream_response(system_instructions, input, ..., prompt)


def _model_asked_for(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    model = getattr(instance, "model", None)
    prompt = kwargs.get("prompt", args[_PROMPT_ARG] if len(args) > _PROMPT_ARG else None)
    if prompt is not None and not getattr(instance, "_model_is_explicit", True):
        return None  # the request leaves the model to the stored prompt
    return model if isinstance(model, str) and model else None


def _requested(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    with plugins.swallow("openai_agents_requested_model"):
        return _model_asked_for(instance, args, kwargs)
    return None


def _get_response(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
    if not plugins.in_session():
        return wrapped(*args, **kwargs)
    model = _requested(instance, args, kwargs)

    async def get_response() -> Any:
        token = requested_model.set(model)
        try:
            return await wrapped(*args, **kwargs)
        finally:
            requested_model.reset(token)

    return get_response()


def _stream_response(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
    if not plugins.in_session():
        return wrapped(*args, **kwargs)
    return _with_requested_model(wrapped(*args, **kwargs), _requested(instance, args, kwargs))


async def _with_requested_model(events: Any, model: str | None) -> AsyncIterator[Any]:
    """Iterates the model's event stream with the requested model current
    during each step of it (an async generator runs in its caller's context)."""
    try:
        while True:
            token = requested_model.set(model)
            try:
                event = await events.__anext__()
            except StopAsyncIteration:
                return
            finally:
                requested_model.reset(token)
            yield event
    finally:
        await events.aclose()


PATCHES = [
    ("agents.models.openai_responses", "OpenAIResponsesModel", "get_response", _get_response),
    ("agents.models.openai_responses", "OpenAIResponsesModel", "stream_response",
     _stream_response),
]


class OpenAIAgentsAdapter(Adapter):
    name = "openai_agents"
    library = "openai-agents"
    supported_versions = ">=0.2"

    def __init__(self) -> None:
        super().__init__()
        self.processor: LucidicTracingProcessor | None = None
        self._patches = MethodPatches()

    def _instrument(self) -> None:
        from agents import add_trace_processor

        from ._processor import LucidicTracingProcessor

        self._patches.apply(PATCHES)
        processor = LucidicTracingProcessor()
        try:
            add_trace_processor(processor)
        except BaseException:
            self._patches.restore()
            raise
        self.processor = processor

    def _uninstrument(self) -> None:
        from agents import set_trace_processors
        from agents.tracing import get_trace_provider

        self._patches.restore()
        processor, self.processor = self.processor, None
        if processor is None:
            return
        processor.enabled = False  # inert even where it cannot be taken out
        multi = getattr(get_trace_provider(), "_multi_processor", None)
        current: Any = getattr(multi, "_processors", None)
        if isinstance(current, tuple) and any(p is processor for p in current):
            # The SDK has add and set but no remove: set the list without ours,
            # leaving every other processor where it was.
            set_trace_processors([p for p in current if p is not processor])
