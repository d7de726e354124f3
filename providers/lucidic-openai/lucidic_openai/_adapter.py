"""The OpenAI adapter: patches the client library's resource methods so that
each call made with a current Lucidic session becomes one "llm" event."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

from lucidic.patching import (
    MethodPatches,
    generated_client_request,
    llm_call_wrapper,
    llm_request_wrapper,
)
from lucidic.plugins import Adapter, LLMCall, record_internal_error, start_llm_call
from lucidic.streams import (
    Accumulator,
    EventReader,
    RecordedAsyncStream,
    RecordedStream,
    ResponseReads,
    body_already_read,
    chunk_maker,
    close_then,
    end_as_closed,
    fields_of_read_body,
    recorded_parsed_stream,
)

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
             lambda kwargs: _extract.ChatChunks(_tokens.Estimate.start(kwargs),
                                               choices=kwargs.get("n")))
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
        if not isinstance(result, kind.expected()):
            if _is_raw_response(result):
                _raw_response(kind, call, result, kwargs)
            else:
                call.finish()  # a response shape this adapter does not read
            return result
        fields = kind.result(result)
    except Exception as exc:  # noqa: BLE001
        record_internal_error(f"openai_{kind.name}_result", exc)
        call.finish()
        return result
    call.finish(**fields)
    return result


# -- with_raw_response, with_streaming_response -----------------------------------------
#
# These return the library's response object, whose body the caller reads
# later with parse() (a stream, for stream=True), or by hand (a stream's
# lines, bytes or text). The call completes then, through the patches of
# parse and close below, or from the events of the body read; the response
# object is the library's own, never wrapped.

_RESPONSES = ResponseReads()


def _is_raw_response(result: Any) -> bool:
    from openai._legacy_response import LegacyAPIResponse
    from openai._response import BaseAPIResponse

    return isinstance(result, (LegacyAPIResponse, BaseAPIResponse))


def _raw_response(kind: _Kind, call: LLMCall, response: Any, kwargs: dict[str, Any]) -> None:
    if body_already_read(response):
        # with_raw_response read the body already: complete as a plain call would
        _finish_from_body(kind, call, response)
    elif not _RESPONSES.track(response, call, _RawRead(kind, kwargs)):
        call.finish()


def _finish_from_body(kind: _Kind, call: LLMCall, response: Any) -> None:
    """Complete from a body already read."""
    call.finish(**fields_of_read_body(response, lambda parsed: _fields(kind, parsed)))


def _fields(kind: _Kind, parsed: Any) -> dict[str, Any]:
    return kind.result(parsed) if isinstance(parsed, kind.expected()) else {}


class _RawRead:
    """A tracked raw response's call, completed from what the caller reads."""

    __slots__ = ("kind", "kwargs")

    def __init__(self, kind: _Kind, kwargs: dict[str, Any]) -> None:
        self.kind = kind
        self.kwargs = kwargs

    def parsed(self, call: LLMCall, response: Any, parsed: Any) -> Any:
        from openai import AsyncStream, Stream

        if isinstance(parsed, (Stream, AsyncStream)):
            if self.kind.chunks is None:
                call.finish()
                return parsed
            return recorded_parsed_stream(response, parsed, isinstance(parsed, AsyncStream),
                                          call, self.kind.chunks(self.kwargs))
        if not isinstance(parsed, self.kind.expected()):
            _finish_from_body(self.kind, call, response)  # parse(to=dict): the body is read
            return parsed
        call.finish(**self.kind.result(parsed))
        return parsed

    def closed(self, call: LLMCall, response: Any) -> None:
        if body_already_read(response):  # read with read() or json()
            _finish_from_body(self.kind, call, response)

    def fields(self, parsed: Any) -> dict[str, Any]:
        return _fields(self.kind, parsed)

    def events(self, response: Any) -> tuple[Accumulator, EventReader] | None:
        make_chunk = chunk_maker(response)
        if self.kind.chunks is None or make_chunk is None:
            return None
        return self.kind.chunks(self.kwargs), _event_reader(make_chunk,
                                                            response.http_response.request)


def _event_reader(make_chunk: Callable[[Any], Any], request: Any) -> EventReader:
    """One event of a stream read by hand, as openai's Stream reads it:
    ``[DONE]`` carries nothing, and a payload with an ``error`` is the
    APIError the stream raises."""
    def read_event(event: str | None, data: str) -> Any:
        if data.startswith("[DONE]"):
            return None
        payload = json.loads(data)
        if isinstance(payload, dict) and payload.get("error"):
            from openai import APIError

            error = payload["error"]
            message = error.get("message") if isinstance(error, dict) else None
            return APIError(message=message if isinstance(message, str) and message
                            else "An error occurred during streaming",
                            request=request, body=error)
        return make_chunk(payload)
    return read_event


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

#: The responses with_raw_response and with_streaming_response return.
RESPONSE_PATCHES = _RESPONSES.patches("openai")


# -- the .stream() helpers -----------------------------------------------------------------
#
# chat.completions.stream() (beta.chat.completions.stream() in older
# releases) and responses.stream() read the stream ``create`` returned (the
# recorded one) through a stream of their own, whose close(), which leaving
# their with block calls, closes only the HTTP response under it: the
# recorded stream is ended there too, or its call would complete only when
# garbage collected (a caller's loop that raised, a break).

def _helper_closed(helper: Any) -> None:
    end_as_closed(getattr(helper, "_raw_stream", None))


_CHAT_HELPER = "openai.lib.streaming.chat._completions"
_RESPONSES_HELPER = "openai.lib.streaming.responses._responses"
HELPER_PATCHES = tuple(
    (module, owner, "close", close_then(_helper_closed, asynchronous=owner.startswith("Async")))
    for module, owner in ((_CHAT_HELPER, "ChatCompletionStream"),
                          (_CHAT_HELPER, "AsyncChatCompletionStream"),
                          (_RESPONSES_HELPER, "ResponseStream"),
                          (_RESPONSES_HELPER, "AsyncResponseStream")))


# -- methods bound before instrument() ---------------------------------------------------
#
# A method bound before the patches above were made calls the original: a
# ``create`` the caller kept, and the with_raw_response/with_streaming_response
# wrappers, which bind the method they wrap when first accessed (a cached
# property of the resource). Every method calls through the client's request
# method, patched below, which records the calls no patched method is
# recording (llm_request_wrapper).

#: The kind of each endpoint posted to, as the resource methods name it.
_ENDPOINTS = {"/chat/completions": CHAT, "/responses": RESPONSES, "/embeddings": EMBEDDINGS}


def _request_of(args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[_Kind, dict[str, Any]] | None:
    request = generated_client_request(args, kwargs)
    if request is None:
        return None
    _, method, url, body = request
    kind = _ENDPOINTS.get(url)
    if kind is None or method != "post" or not isinstance(body, dict):
        return None
    return kind, {key: value for key, value in body.items() if _extract.given(value)}


def _request_wrapper(asynchronous: bool) -> Callable[..., Any]:
    return llm_request_wrapper(
        _request_of, lambda request: _start(*request),
        lambda call, result, is_async, request: _outcome(request[0], call, result, is_async,
                                                         request[1]),
        asynchronous=asynchronous)


REQUEST_PATCHES = (
    ("openai._base_client", "SyncAPIClient", "request", _request_wrapper(False)),
    ("openai._base_client", "AsyncAPIClient", "request", _request_wrapper(True)),
)


class OpenAIAdapter(Adapter):
    """Records chat completions (plain, streamed, tool calls, parse, the
    stream() helper), the Responses API (plain, streamed, parse, stream())
    and embeddings, sync and async, called plainly or through
    with_raw_response / with_streaming_response, bound before instrument()
    or after."""

    name = "openai"
    library = "openai"
    supported_versions = ">=1.66"

    def __init__(self) -> None:
        super().__init__()
        self._patches = MethodPatches()

    def _instrument(self) -> None:
        self._patches.apply((
            *((module, owner, method, _wrapper(kind, asynchronous))
              for module, owner, method, kind, asynchronous in PATCHES),
            *RESPONSE_PATCHES, *HELPER_PATCHES, *REQUEST_PATCHES))

    def _uninstrument(self) -> None:
        self._patches.restore()
