"""The Anthropic adapter: patches the client library's messages resources
(``messages`` and ``beta.messages``) so that each call made with a current
Lucidic session becomes one "llm" event."""

from __future__ import annotations

import contextvars
import json
import sys
from collections.abc import Callable
from typing import Any

from lucidic.patching import (
    MethodPatches,
    generated_client_request,
    llm_call_wrapper,
    llm_request_wrapper,
    recorded_above,
)
from lucidic.plugins import Adapter, LLMCall, in_session, record_internal_error, start_llm_call
from lucidic.streams import (
    Accumulator,
    EventReader,
    RecordedAsyncStream,
    RecordedStream,
    ResponseReads,
    body_already_read,
    chunk_maker,
    fields_of_read_body,
    recorded_parsed_stream,
)

from . import _extract

PROVIDER = "anthropic"
MESSAGES = "anthropic messages"
BETA_MESSAGES = "anthropic beta.messages"

#: The request of a ``messages.stream()`` call being built, and its
#: description: the manager it constructs picks it up, so that its request is
#: recorded when it is entered.
_pending_stream: contextvars.ContextVar[tuple[dict[str, Any], str] | None] = (
    contextvars.ContextVar("lucidic_anthropic_pending_stream", default=None))


def _start(kwargs: dict[str, Any], description: str) -> LLMCall | None:
    try:
        return start_llm_call(PROVIDER, request_model=kwargs.get("model"),
                              input=_extract.messages_input(kwargs),
                              arguments=_extract.arguments(kwargs),
                              description=description)
    except Exception as exc:  # noqa: BLE001 - recording never breaks the call
        record_internal_error("anthropic_request", exc)
        return None


def _outcome(call: LLMCall, result: Any, asynchronous: bool,
             kwargs: dict[str, Any] | None = None) -> Any:
    try:
        from anthropic import AsyncStream, Stream

        if isinstance(result, (Stream, AsyncStream)):
            proxy = RecordedAsyncStream if asynchronous else RecordedStream
            return proxy(result, call, _extract.MessageEvents())
        if not _is_message(result):
            if _is_raw_response(result):
                _raw_response(call, result)
            else:
                call.finish()  # a response shape this adapter does not read
            return result
        fields = _extract.message_result(result)
    except Exception as exc:  # noqa: BLE001
        record_internal_error("anthropic_result", exc)
        call.finish()
        return result
    call.finish(**fields)
    return result


def _is_message(result: Any) -> bool:
    from anthropic.types import Message
    from anthropic.types.beta import BetaMessage

    return isinstance(result, (Message, BetaMessage))


# -- with_raw_response, with_streaming_response -----------------------------------------
#
# These return the library's response object, whose body the caller reads
# later with parse() (a stream, for stream=True), or by hand (a stream's
# lines, bytes or text). The call completes then, through the patches of
# parse and close below, or from the events of the body read; the response
# object is the library's own, never wrapped.

_RESPONSES = ResponseReads()
#: Where the library keeps its response classes (_legacy_response: older releases).
_RESPONSE_MODULES = ("anthropic._response", "anthropic._legacy_response")


def _is_raw_response(result: Any) -> bool:
    for name in _RESPONSE_MODULES:
        module = sys.modules.get(name)
        base = getattr(module, "BaseAPIResponse", None) or getattr(module, "LegacyAPIResponse",
                                                                   None)
        if base is not None and isinstance(result, base):
            return True
    return False


def _finish_from_body(call: LLMCall, response: Any) -> None:
    """Complete from a body already read."""
    call.finish(**fields_of_read_body(response, _fields))


def _fields(parsed: Any) -> dict[str, Any]:
    return _extract.message_result(parsed) if _is_message(parsed) else {}


def _raw_response(call: LLMCall, response: Any) -> None:
    if body_already_read(response):
        _finish_from_body(call, response)  # with_raw_response read the body already
    elif not _RESPONSES.track(response, call, _RawRead()):
        call.finish()


class _RawRead:
    """A tracked raw response's call, completed from what the caller reads."""

    __slots__ = ()

    def parsed(self, call: LLMCall, response: Any, parsed: Any) -> Any:
        from anthropic import AsyncStream, Stream

        if isinstance(parsed, (Stream, AsyncStream)):
            return recorded_parsed_stream(response, parsed, isinstance(parsed, AsyncStream),
                                          call, _extract.MessageEvents())
        if _is_message(parsed):
            call.finish(**_extract.message_result(parsed))
        else:
            _finish_from_body(call, response)  # parse(to=dict): the body is read by now
        return parsed

    def closed(self, call: LLMCall, response: Any) -> None:
        if body_already_read(response):  # read with read() or json()
            _finish_from_body(call, response)

    def fields(self, parsed: Any) -> dict[str, Any]:
        return _fields(parsed)

    def events(self, response: Any) -> tuple[Accumulator, EventReader] | None:
        make_chunk = chunk_maker(response)
        if make_chunk is None:
            return None
        return _extract.MessageEvents(), _event_reader(make_chunk, response)


def _event_reader(make_chunk: Callable[[Any], Any], response: Any) -> EventReader:
    """One event of a stream read by hand, as anthropic's Stream reads it:
    keep-alives (``ping``) and events without a name or data carry nothing,
    and an ``error`` event is the status error the stream raises."""
    make_error, http_response = response._client._make_status_error, response.http_response

    def read_event(event: str | None, data: str) -> Any:
        if event is None or event == "ping":
            return None
        if event == "error":
            try:
                body: Any = json.loads(data)
                message = f"{body}"
            except ValueError:
                body = data
                message = data or f"Error code: {http_response.status_code}"
            return make_error(message, body=body, response=http_response)
        if not data:
            return None
        return make_chunk(json.loads(data))
    return read_event


def _create(description: str, asynchronous: bool = False) -> Callable[..., Any]:
    return llm_call_wrapper(lambda kwargs: _start(kwargs, description), _outcome,
                            asynchronous=asynchronous)


# -- messages.stream(): the helper posts by itself, through a stream manager ----------

def _stream(description: str) -> Callable[..., Any]:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        if not in_session():
            return wrapped(*args, **kwargs)
        token = _pending_stream.set((kwargs, description))
        try:
            return wrapped(*args, **kwargs)
        finally:
            _pending_stream.reset(token)

    return wrapper


def _recorded_request(api_request: Callable[[], Any], request: dict[str, Any],
                      description: str) -> Any:
    def make_request() -> Any:
        call = _start(request, description)
        if call is None:
            return api_request()
        try:
            with recorded_above():
                raw = api_request()
        except BaseException as exc:
            call.fail(exc)
            raise
        return _outcome(call, raw, asynchronous=False)

    return make_request


async def _recorded_async_request(api_request: Any, request: dict[str, Any],
                                  description: str) -> Any:
    call = _start(request, description)
    if call is None:
        return await api_request
    try:
        with recorded_above():
            raw = await api_request
    except BaseException as exc:
        call.fail(exc)
        raise
    return _outcome(call, raw, asynchronous=True)


def _manager_init(asynchronous: bool) -> Callable[..., Any]:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        pending = _pending_stream.get()
        if pending is not None:
            try:
                request, description = pending
                if args:
                    api_request, args = args[0], args[1:]
                else:
                    api_request = kwargs.pop("api_request")
                recorded = (_recorded_async_request(api_request, request, description)
                            if asynchronous
                            else _recorded_request(api_request, request, description))
                args = (recorded, *args)
            except Exception as exc:  # noqa: BLE001
                record_internal_error("anthropic_stream_manager", exc)
        return wrapped(*args, **kwargs)

    return wrapper


_MESSAGES = "anthropic.resources.messages"
_BETA = "anthropic.resources.beta.messages.messages"

#: (module, class, method, wrapper). The beta resource posts to the same
#: /v1/messages and answers the same shapes (BetaMessage, the same stream
#: events); its tool runner and message threads call
#: beta.messages.create, so they are recorded through it. A library version
#: without one of these methods is skipped by MethodPatches.
PATCHES: tuple[tuple[str, str, str, Callable[..., Any]], ...] = (
    (_MESSAGES, "Messages", "create", _create(MESSAGES)),
    (_MESSAGES, "Messages", "parse", _create(MESSAGES)),
    (_MESSAGES, "Messages", "stream", _stream(MESSAGES)),
    (_MESSAGES, "AsyncMessages", "create", _create(MESSAGES, asynchronous=True)),
    (_MESSAGES, "AsyncMessages", "parse", _create(MESSAGES, asynchronous=True)),
    (_MESSAGES, "AsyncMessages", "stream", _stream(MESSAGES)),
    (_BETA, "Messages", "create", _create(BETA_MESSAGES)),
    (_BETA, "Messages", "parse", _create(BETA_MESSAGES)),
    (_BETA, "Messages", "stream", _stream(BETA_MESSAGES)),
    (_BETA, "AsyncMessages", "create", _create(BETA_MESSAGES, asynchronous=True)),
    (_BETA, "AsyncMessages", "parse", _create(BETA_MESSAGES, asynchronous=True)),
    (_BETA, "AsyncMessages", "stream", _stream(BETA_MESSAGES)),
    ("anthropic.lib.streaming", "MessageStreamManager", "__init__", _manager_init(False)),
    ("anthropic.lib.streaming", "AsyncMessageStreamManager", "__init__", _manager_init(True)),
    ("anthropic.lib.streaming", "BetaMessageStreamManager", "__init__", _manager_init(False)),
    ("anthropic.lib.streaming", "BetaAsyncMessageStreamManager", "__init__",
     _manager_init(True)),
)


#: The responses with_raw_response and with_streaming_response return.
RESPONSE_PATCHES = _RESPONSES.patches("anthropic")


# -- methods bound before instrument() ---------------------------------------------------
#
# A method bound before the patches above were made calls the original: a
# ``create`` or ``stream`` the caller kept, and the with_raw_response /
# with_streaming_response wrappers, which bind the method they wrap when
# first accessed (a cached property of the resource). Every method calls
# through the client's request method, patched below, which records the
# calls no patched method is recording (llm_request_wrapper).

def _request_of(args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[dict[str, Any], str] | None:
    request = generated_client_request(args, kwargs)
    if request is None:
        return None
    cast_to, method, url, body = request
    # (anthropic 1.x's beta resource posts to "/v1/messages?beta=true")
    if url.partition("?")[0] != "/v1/messages" or method != "post" or not isinstance(body, dict):
        return None
    from anthropic.types.beta import BetaMessage

    beta = isinstance(cast_to, type) and issubclass(cast_to, BetaMessage)
    return ({key: value for key, value in body.items() if _extract.given(value)},
            BETA_MESSAGES if beta else MESSAGES)


def _request_wrapper(asynchronous: bool) -> Callable[..., Any]:
    return llm_request_wrapper(
        _request_of, lambda request: _start(*request),
        lambda call, result, is_async, request: _outcome(call, result, is_async, request[0]),
        asynchronous=asynchronous)


REQUEST_PATCHES = (
    ("anthropic._base_client", "SyncAPIClient", "request", _request_wrapper(False)),
    ("anthropic._base_client", "AsyncAPIClient", "request", _request_wrapper(True)),
)


class AnthropicAdapter(Adapter):
    """Records messages.create (sync, async, stream=True), the messages.stream()
    helper and messages.parse, including tool use and extended thinking, and
    the same methods of beta.messages; called plainly or through
    with_raw_response / with_streaming_response, bound before instrument()
    or after."""

    name = "anthropic"
    library = "anthropic"
    supported_versions = ">=0.49"

    def __init__(self) -> None:
        super().__init__()
        self._patches = MethodPatches()

    def _instrument(self) -> None:
        self._patches.apply((*PATCHES, *RESPONSE_PATCHES, *REQUEST_PATCHES))

    def _uninstrument(self) -> None:
        self._patches.restore()
