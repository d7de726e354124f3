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
#: completion's chunk is a dict naming it; of a Responses API stream,
#: ``response.created`` (the first event) names it in its response.
_OPENAI_MODULE = "langchain_openai.chat_models.base"
_OPENAI_CHUNKS = (_OPENAI_MODULE, "BaseChatOpenAI", "_convert_chunk_to_generation_chunk")
#: (a function of the module: the module is what the patch is made on)
_OPENAI_RESPONSES_CHUNKS = ("langchain_openai.chat_models", "base",
                            "_convert_responses_chunk_to_generation_chunk")


def _read_chunk_model(wrapped: Any, instance: Any, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Any:
    converted = wrapped(*args, **kwargs)
    with swallow("langchain_openai_chunk"):
        from ._handler import note_reported_model

        chunk = kwargs.get("chunk", args[0] if args else None)
        if isinstance(chunk, dict):
            note_reported_model(chunk.get("model"))
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


class LangChainAdapter(Adapter):
    name = "langchain"
    library = "langchain-core"
    supported_versions = ">=0.3"

    def __init__(self) -> None:
        super().__init__()
        self._hook: tuple[Any, ...] | None = None
        self.handler: LucidicCallbackHandler | None = None
        self._chunk_patches = MethodPatches()
        self._chunks_patched = False
        self._chunks_lock = threading.Lock()

    def _instrument(self) -> None:
        from langchain_core.tracers import context as tracer_context

        from ._handler import LucidicCallbackHandler

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
        """Patch langchain-openai's chunk reader once its module is imported
        (by the time one of its models runs): never imported here, which
        would cost seconds at init to those who do not use it."""
        if self._chunks_patched or _OPENAI_MODULE not in sys.modules:
            return
        with self._chunks_lock:
            if self._chunks_patched or self.handler is None:  # (or uninstrumented meanwhile)
                return
            self._chunks_patched = True
            with swallow("langchain_patch_chunk_readers"):
                self._chunk_patches.apply([
                    (*_OPENAI_CHUNKS, _read_chunk_model),
                    (*_OPENAI_RESPONSES_CHUNKS, _read_responses_chunk_model)])

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
        with self._chunks_lock:
            self._chunk_patches.restore()
            self._chunks_patched = False
