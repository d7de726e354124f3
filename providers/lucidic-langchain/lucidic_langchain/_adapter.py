"""Registering the handler with langchain-core, and taking it away again."""

from __future__ import annotations

import contextvars
import sys
import threading
from typing import TYPE_CHECKING, Any

from lucidic.patching import MethodPatches
from lucidic.plugins import Adapter, swallow

if TYPE_CHECKING:
    from ._handler import LucidicCallbackHandler

#: Where langchain-openai turns each chunk of a streamed answer into
#: langchain's chunk, which names the answering model in the stream's last
#: chunk only: read here so that a stream cut early is recorded with the
#: model that answered (see _handler.note_reported_model). A chat
#: completion's chunk is a dict naming it (or, in a structured-output stream,
#: an event holding that chunk under "chunk"); of a Responses API stream,
#: ``response.created`` (the first event) names it in its response.
_OPENAI_MODULE = "langchain_openai.chat_models.base"
_OPENAI_CHUNKS = (_OPENAI_MODULE, "BaseChatOpenAI", "_convert_chunk_to_generation_chunk")
#: (a function of the module: the module is what the patch is made on)
_OPENAI_RESPONSES_CHUNKS = ("langchain_openai.chat_models", "base",
                            "_convert_responses_chunk_to_generation_chunk")
#: Where langchain-anthropic turns each event of a streamed answer into
#: langchain's chunk: it passes on the input tokens message_start (the first
#: event) counted in the stream's last chunk only, and the model it named and
#: the output tokens message_delta counted only with stream_usage; read here
#: for a stream cut early, or read without stream_usage.
_ANTHROPIC_MODULE = "langchain_anthropic.chat_models"
_ANTHROPIC_EVENTS = (_ANTHROPIC_MODULE, "ChatAnthropic",
                     "_make_message_chunk_from_anthropic_event")


def _read_chunk_model(wrapped: Any, instance: Any, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Any:
    converted = wrapped(*args, **kwargs)
    with swallow("langchain_openai_chunk"):
        from ._handler import note_reported_model

        chunk = kwargs.get("chunk", args[0] if args else None)
        if isinstance(chunk, dict):
            # (a structured-output stream's, of beta.chat.completions.stream:
            # an event, its "chunk" event carrying the completion's chunk)
            inner = chunk.get("chunk")
            note_reported_model(chunk.get("model") or (
                inner.get("model") if isinstance(inner, dict) else None))
    return converted


def _read_responses_chunk_model(wrapped: Any, instance: Any, args: tuple[Any, ...],
                                kwargs: dict[str, Any]) -> Any:
    converted = wrapped(*args, **kwargs)
    with swallow("langchain_openai_responses_chunk"):
        from ._handler import note_reported_model

        chunk = kwargs.get("chunk", args[0] if args else None)
        response = getattr(chunk, "response", None)  # of the events that carry one
        note_reported_model(response.get("model") if isinstance(response, dict)
                            else getattr(response, "model", None))
    return converted


def _read_anthropic_event(wrapped: Any, instance: Any, args: tuple[Any, ...],
                          kwargs: dict[str, Any]) -> Any:
    converted = wrapped(*args, **kwargs)
    with swallow("langchain_anthropic_event"):
        event = kwargs.get("event", args[0] if args else None)
        kind = getattr(event, "type", None)
        if kind not in ("message_delta", "message_start"):  # the content's: nearly all
            return converted
        message = getattr(event, "message", None)  # of message_start only
        usage = getattr(message if kind == "message_start" else event, "usage", None)
        if usage is None:
            return converted
        from langchain_anthropic.chat_models import _create_usage_metadata

        from ._handler import note_reported_input, note_reported_model, note_reported_output

        # (counted as langchain-anthropic counts the last chunk's)
        if kind == "message_delta":  # the output tokens, cumulative: without stream_usage,
            note_reported_output(_create_usage_metadata(usage))  # never passed on
        else:
            note_reported_model(getattr(message, "model", None))
            note_reported_input(_create_usage_metadata(usage))
    return converted


#: The chunk readers of each integration, by the module patched once imported.
_CHUNK_READERS: dict[str, tuple[tuple[str, str, str, Any], ...]] = {
    _OPENAI_MODULE: ((*_OPENAI_CHUNKS, _read_chunk_model),
                     (*_OPENAI_RESPONSES_CHUNKS, _read_responses_chunk_model)),
    _ANTHROPIC_MODULE: ((*_ANTHROPIC_EVENTS, _read_anthropic_event),),
}


class LangChainAdapter(Adapter):
    name = "langchain"
    library = "langchain-core"
    supported_versions = ">=0.3"

    def __init__(self) -> None:
        super().__init__()
        self._hook: tuple[Any, ...] | None = None
        self.handler: LucidicCallbackHandler | None = None
        self._model_patches = MethodPatches()  # _handler.MODEL_PATCHES
        self._chunk_patches = MethodPatches()
        self._chunks_patched: set[str] = set()  # of _CHUNK_READERS' modules
        self._chunks_lock = threading.Lock()

    def _instrument(self) -> None:
        from langchain_core.tracers import context as tracer_context

        from ._handler import MODEL_PATCHES, LucidicCallbackHandler

        # (langchain-core's model classes: imported by any model's module anyway)
        self._model_patches.apply(MODEL_PATCHES)
        handler = LucidicCallbackHandler(on_model_start=self._patch_chunk_readers)
        # A ContextVar whose default is the handler: every callback manager
        # langchain-core configures, in any thread or task, adds it beside the
        # user's own callbacks (inheritable, so child runs report to it too).
        var: contextvars.ContextVar[Any] = contextvars.ContextVar(
            "lucidic_langchain_handler", default=handler)
        tracer_context.register_configure_hook(var, True)
        self._hook = tracer_context._configure_hooks[-1]
        self.handler = handler

    def _patch_chunk_readers(self) -> None:
        """Patch an integration's chunk readers (langchain-openai's,
        langchain-anthropic's) once its module is imported (by the time one
        of its models runs): never imported here, which would cost seconds
        at init to those who do not use it."""
        if len(self._chunks_patched) == len(_CHUNK_READERS):
            return
        imported = [module for module in _CHUNK_READERS
                    if module in sys.modules and module not in self._chunks_patched]
        if not imported:
            return
        with self._chunks_lock:
            if self.handler is None:  # uninstrumented meanwhile
                return
            for module in imported:
                if module in self._chunks_patched:
                    continue
                self._chunks_patched.add(module)
                with swallow("langchain_patch_chunk_readers"):
                    self._chunk_patches.apply(_CHUNK_READERS[module])

    def _uninstrument(self) -> None:
        from langchain_core.tracers import context as tracer_context

        hooks = tracer_context._configure_hooks
        if self._hook is not None:
            for index, hook in enumerate(hooks):
                if hook is self._hook:
                    del hooks[index]
                    break
        self._hook = None
        self.handler = None
        self._model_patches.restore()
        with self._chunks_lock:
            self._chunk_patches.restore()
            self._chunks_patched.clear()
