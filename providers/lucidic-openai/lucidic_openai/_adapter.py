"""The OpenAI adapter: patches the client library's resource methods so that
each call made with a current Lucidic session becomes one "llm" event."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from lucidic.patching import MethodPatches, llm_call_wrapper
from lucidic.plugins import Adapter, LLMCall, record_internal_error, start_llm_call
from lucidic.streams import RecordedAsyncStream, RecordedStream

from . import _extract, _tokens

PROVIDER = "openai"


class _Kind:
    """One family of endpoints: how to read its request and its result."""

    __slots__ = ("_expected", "chunks", "input", "name", "result", "type_path")

    def __init__(self, name: str, input: Callable[[dict[str, Any]], Any],  # noqa: A002
                 result: Callable[[Any], dict[str, Any]], type_path: tuple[str, str],
                 chunks: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.name = name
        self.input = input
        self.result = result
        self.type_path = type_path
        self.chunks = chunks
        self._expected: type | None = None

    def expected(self) -> type:
        """The library's result type (resolved on first use: the library may
        be imported after this module)."""
        if self._expected is None:
            module, name = self.type_path
            self._expected = getattr(importlib.import_module(module), name)
        return self._expected


CHAT = _Kind("chat", _extract.chat_input, _extract.chat_result,
             ("openai.types.chat", "ChatCompletion"),
             lambda kwargs: _extract.ChatChunks(_tokens.Estimate.start(kwargs)))
RESPONSES = _Kind("responses", _extract.responses_input, _extract.responses_result,
                  ("openai.types.responses", "Response"), lambda kwargs: _extract.ResponseEvents())
EMBEDDINGS = _Kind("embeddings", _extract.embeddings_input, _extract.embeddings_result,
                   ("openai.types", "CreateEmbeddingResponse"))


def _start(kind: _Kind, kwargs: dict[str, Any]) -> LLMCall | None:
    try:
        return start_llm_call(PROVIDER, request_model=kwargs.get("model"),
                              input=kind.input(kwargs), arguments=_extract.arguments(kwargs),
                              description=f"openai {kind.name}")
    except Exception as exc:  # noqa: BLE001 - recording never breaks the call
        record_internal_error(f"openai_{kind.name}_request", exc)
        return None


def _outcome(kind: _Kind, call: LLMCall, result: Any, asynchronous: bool,
             kwargs: dict[str, Any]) -> Any:
    """Complete the call from a returned result, or wrap a returned stream so
    that the call completes when the stream ends. Returns what the caller gets."""
    try:
        from openai import AsyncStream, Stream

        if kind.chunks is not None and isinstance(result, (Stream, AsyncStream)):
            proxy = RecordedAsyncStream if asynchronous else RecordedStream
            return proxy(result, call, kind.chunks(kwargs))
        expected = kind.expected()
        if not isinstance(result, expected):
            # with_raw_response: the legacy wrapper has read the body already.
            from openai._legacy_response import LegacyAPIResponse

            if isinstance(result, LegacyAPIResponse) and not result._stream:
                result_object = result.parse()
                if isinstance(result_object, expected):
                    call.finish(**kind.result(result_object))
                    return result
            call.finish()  # a response shape this adapter does not read
            return result
        fields = kind.result(result)
    except Exception as exc:  # noqa: BLE001
        record_internal_error(f"openai_{kind.name}_result", exc)
        call.finish()
        return result
    call.finish(**fields)
    return result


def _wrapper(kind: _Kind, asynchronous: bool) -> Callable[..., Any]:
    return llm_call_wrapper(lambda kwargs: _start(kind, kwargs),
                            lambda call, result, is_async, kwargs: _outcome(kind, call, result,
                                                                            is_async, kwargs),
                            asynchronous=asynchronous)


#: (module, class, method, kind, async). ``.stream()`` helpers go through
#: ``create`` and are recorded there; ``parse`` posts on its own.
PATCHES: tuple[tuple[str, str, str, _Kind, bool], ...] = (
    ("openai.resources.chat.completions", "Completions", "create", CHAT, False),
    ("openai.resources.chat.completions", "Completions", "parse", CHAT, False),
    ("openai.resources.chat.completions", "AsyncCompletions", "create", CHAT, True),
    ("openai.resources.chat.completions", "AsyncCompletions", "parse", CHAT, True),
    ("openai.resources.responses", "Responses", "create", RESPONSES, False),
    ("openai.resources.responses", "Responses", "parse", RESPONSES, False),
    ("openai.resources.responses", "AsyncResponses", "create", RESPONSES, True),
    ("openai.resources.responses", "AsyncResponses", "parse", RESPONSES, True),
    ("openai.resources.embeddings", "Embeddings", "create", EMBEDDINGS, False),
    ("openai.resources.embeddings", "AsyncEmbeddings", "create", EMBEDDINGS, True),
)


class OpenAIAdapter(Adapter):
    """Records chat completions (plain, streamed, tool calls, parse), the
    Responses API (plain, streamed, parse) and embeddings, sync and async."""

    name = "openai"
    library = "openai"
    supported_versions = ">=1.66"

    def __init__(self) -> None:
        super().__init__()
        self._patches = MethodPatches()

    def _instrument(self) -> None:
        self._patches.apply(
            (module, owner, method, _wrapper(kind, asynchronous))
            for module, owner, method, kind, asynchronous in PATCHES)

    def _uninstrument(self) -> None:
        self._patches.restore()
