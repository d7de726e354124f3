"""Stream proxies for provider plugins: the caller iterates exactly what the
library yields (the proxy is still an instance of the library's stream type),
and the LLM call is completed once, when the stream ends, fails, is closed, or
is dropped unfinished (garbage collected). :class:`ResponseReads` does the same
for a raw response whose body the caller reads after the call returned, parsed
or by hand (as lines, bytes or text: a stream of server-sent events, or one
JSON document).

A plugin supplies an :class:`Accumulator` that reads its library's chunks;
``RecordedStream(stream, call, accumulator)`` does the rest. Imported by
plugins only, so ``import lucidic`` does not load wrapt."""

from __future__ import annotations

import importlib
import json
import threading
import typing
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import wrapt

from lucidic.plugins import LLMCall, record_internal_error

ABANDONED = "stream closed before its end"


class Accumulator(Protocol):
    finished: bool  # True once the stream's terminal chunk was seen

    def add(self, chunk: Any) -> bool:
        """Take one chunk; True when it carries generated content (first token)."""

    def result(self) -> dict[str, Any]:
        """Keyword arguments for LLMCall.finish() from what was seen so far."""


def _complete(call: LLMCall, accumulator: Accumulator, result: str | None,
              error: BaseException | None = None) -> None:
    """Finish the call with what arrived (and ``error``, a stream that failed
    midway)."""
    try:
        fields = accumulator.result()
    except Exception as exc:  # noqa: BLE001 - never let recording break the caller
        record_internal_error("stream_result", exc)
        fields = {}
    if result == ABANDONED and getattr(accumulator, "finished", False):
        result = None  # everything arrived; the caller just did not read past the end
    if error is not None and fields.get("error") is None:
        fields = {**fields, "error": error}  # (the stream's own error event says it better)
    call.finish(result=result, **fields)


class _StreamState:
    """Everything the proxy knows, kept apart from the proxy so that the
    finalizer can complete the call without keeping the stream alive."""

    __slots__ = ("accumulator", "call", "done", "finalizer")

    def __init__(self, call: LLMCall, accumulator: Accumulator) -> None:
        self.call = call
        self.accumulator = accumulator
        self.done = False
        self.finalizer: weakref.finalize[Any, Any] | None = None

    def chunk(self, chunk: Any) -> None:
        try:
            if self.accumulator.add(chunk):
                self.call.first_token()
        except Exception as exc:  # noqa: BLE001
            record_internal_error("stream_chunk", exc)

    def end(self, result: str | None = None, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        if self.finalizer is not None:
            self.finalizer.detach()
        _complete(self.call, self.accumulator, result, error)

    def error(self, exc: BaseException) -> None:
        """The stream failed midway (its provider's error, a broken
        connection): the error, beside what arrived before it."""
        self.end(error=exc)

    def stopped(self, exc: BaseException) -> None:
        """Reading the next chunk was stopped from outside the stream: not an
        Exception but a CancelledError (the task reading it cancelled,
        ``asyncio.wait_for`` timing out), a KeyboardInterrupt, a SystemExit.
        The stream did not fail; its caller stopped reading: recorded as a
        stream closed early, with what arrived."""
        if isinstance(exc, Exception):
            self.error(exc)
        else:
            self.end(ABANDONED)

    def release(self) -> bool:
        """Leave the call to another recorder (the caller parses a body after
        all); False if the call is complete already."""
        if self.done:
            return False
        self.done = True
        if self.finalizer is not None:
            self.finalizer.detach()
        return True


def _arm(proxy: Any, state: _StreamState) -> None:
    try:
        finalizer = weakref.finalize(proxy, _complete, state.call, state.accumulator, ABANDONED)
        finalizer.atexit = False
        state.finalizer = finalizer
    except Exception as exc:  # noqa: BLE001
        record_internal_error("stream_finalizer", exc)


class RecordedStream(wrapt.ObjectProxy):  # type: ignore[misc, type-arg]
    """A synchronous stream (iterator and context manager) being recorded."""

    def __init__(self, wrapped: Any, call: LLMCall, accumulator: Accumulator) -> None:
        super().__init__(wrapped)
        self._self_state = _StreamState(call, accumulator)
        _arm(self, self._self_state)

    def __iter__(self) -> RecordedStream:
        return self

    def __next__(self) -> Any:
        state = self._self_state
        try:
            chunk = self.__wrapped__.__next__()
        except StopIteration:
            state.end()
            raise
        except BaseException as exc:
            state.stopped(exc)
            raise
        state.chunk(chunk)
        return chunk

    def __enter__(self) -> RecordedStream:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            self._self_state.end(ABANDONED)

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_state.end(ABANDONED)


class RecordedAsyncStream(wrapt.ObjectProxy):  # type: ignore[misc, type-arg]
    """An asynchronous stream (async iterator and context manager) being recorded."""

    def __init__(self, wrapped: Any, call: LLMCall, accumulator: Accumulator) -> None:
        super().__init__(wrapped)
        self._self_state = _StreamState(call, accumulator)
        _arm(self, self._self_state)

    def __aiter__(self) -> RecordedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        state = self._self_state
        try:
            chunk = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            state.end()
            raise
        except BaseException as exc:
            state.stopped(exc)
            raise
        state.chunk(chunk)
        return chunk

    async def __aenter__(self) -> RecordedAsyncStream:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            self._self_state.end(ABANDONED)

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_state.end(ABANDONED)


def end_as_closed(stream: Any) -> None:
    """A recorded stream (a RecordedStream or RecordedAsyncStream; anything
    else is left alone) whose connection was closed under it, not through
    it: a library's stream helper whose ``close()`` (what leaving its with
    block calls) closes only the HTTP response under the stream it reads.
    Its call completes now, as a stream closed before its end, with what
    arrived (if the stream had ended, as it was recorded then)."""
    if isinstance(stream, (RecordedStream, RecordedAsyncStream)):
        stream._self_state.end(ABANDONED)


# -- responses read after the call returns --------------------------------------------


class ResponseReader(Protocol):
    """What a plugin knows of one raw response it tracks (see ResponseReads)."""

    def parsed(self, call: LLMCall, response: Any, parsed: Any) -> Any:
        """The caller's ``parse()`` returned ``parsed``: complete ``call`` from it,
        or wrap a stream it returned (a RecordedStream), and return what the
        caller gets."""

    def closed(self, call: LLMCall, response: Any) -> None:
        """The response was closed without being parsed: complete ``call``
        from the body, if the caller read it otherwise (``read()``, ``json()``)."""

    def fields(self, parsed: Any) -> dict[str, Any]:
        """The ``LLMCall.finish()`` fields of a non-streamed body parsed into
        the library's result object (a JSON body read by hand); {} for an
        object this reader does not read."""

    def events(self, response: Any) -> tuple[Accumulator, EventReader] | None:
        """For a response whose body is a stream of server-sent events, which
        the caller may read by hand instead of parsing it: the accumulator of
        the plain call's stream, and the reader of one event. None: this body
        is recorded only when parsed."""


class EventReader(Protocol):
    def __call__(self, event: str | None, data: str) -> Any:
        """One server-sent event (its ``event:`` name, its ``data:`` lines
        joined) as the library's stream gives it: its chunk, None for one the
        stream skips (keep-alives, ``[DONE]``), or the exception the stream
        would raise for an error event."""


def is_event_stream(response: Any) -> bool:
    """Whether a raw response (of the openai or anthropic client: both are
    generated alike) was asked for a stream (``stream=True``): its body is
    server-sent events."""
    return bool(getattr(response, "_is_sse_stream", getattr(response, "_stream", False)))


def chunk_maker(response: Any) -> Callable[[Any], Any] | None:
    """How a raw stream's library (openai's, anthropic's: generated alike)
    makes its chunk from one event's decoded JSON, as its ``Stream`` does
    (the chunk type its stream class names, built by the client); None
    when the response names no stream class."""
    chunk_types = typing.get_args(getattr(response, "_stream_cls", None))
    if not chunk_types:
        return None
    process, http_response = response._client._process_response_data, response.http_response
    return lambda data: process(data=data, cast_to=chunk_types[0], response=http_response)


def body_already_read(response: Any) -> bool:
    """Whether a raw response (of the openai or anthropic client: both are
    generated alike) holds a body already read whole, not a stream: one
    ``with_raw_response`` returns, or one the caller read with ``read()`` or
    ``json()``."""
    if is_event_stream(response):
        return False
    try:
        response.http_response.content  # noqa: B018 - raises until the body has been read
    except Exception:  # noqa: BLE001 - httpx's ResponseNotRead
        return False
    return True


def _is_json(response: Any) -> bool:
    content_type = response.http_response.headers.get("content-type", "")
    return bool(content_type.partition(";")[0].strip().lower().endswith("json"))


def _parse_whole_body(response: Any) -> Callable[[bytes], Any]:
    """How a raw response's library (openai's, anthropic's: generated alike)
    parses its JSON body, applied to the body's bytes as they came off the
    connection (still compressed, if the server compressed them): its
    result object, as the response's ``parse()`` makes it."""
    http_response = response.http_response
    process, cast_to = response._client._process_response_data, response._cast_to

    def parse(raw: bytes) -> Any:
        # a response of the same class, to undo the Content-Encoding as the caller's read did
        body = type(http_response)(http_response.status_code, headers=http_response.headers,
                                   content=raw)
        try:
            data = json.loads(body.content)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError: what was sent is bad
            raise _BodyNotJSONError(body.text, exc) from exc
        return process(data=data, cast_to=cast_to, response=http_response)
    return parse


#: What the libraries' parse raises for a body that is not the JSON it
#: claims to be (as ``response.json()`` does).
_NOT_JSON = (json.JSONDecodeError, UnicodeDecodeError)


class _BodyNotJSONError(ValueError):
    """A body said to be JSON that is not: what the provider sent is
    recorded (its text) with an error saying so, not taken for a fault of
    the recording."""

    def __init__(self, text: str, cause: ValueError) -> None:
        super().__init__(f"the response body is not JSON ({cause})")
        self.text = text

    def fields(self) -> dict[str, Any]:
        """The ``LLMCall.finish()`` fields of the call answered with this body."""
        return {"output": self.text, "error": str(self)}


def fields_of_read_body(response: Any, fields: Callable[[Any], dict[str, Any]]
                        ) -> dict[str, Any]:
    """The ``LLMCall.finish()`` fields of a raw response (openai's,
    anthropic's) whose non-streamed body has been read: the body parsed
    apart into the library's result object (the response's cache, what the
    caller's ``parse()`` returns, is left alone) and read by ``fields``; for
    a body that is not the JSON it claims to be, what was sent and an error
    saying so."""
    try:
        parsed = response._parse()
    except _NOT_JSON as exc:
        return _BodyNotJSONError(response.http_response.text, exc).fields()
    return fields(parsed)


class _WholeBody:
    """The accumulator of a non-streamed (JSON) body read by hand: its bytes;
    once all have arrived (``finished``), the fields of the result object
    parsed from them, as the parsed response's."""

    __slots__ = ("_fields", "_parse", "_parts", "finished")

    def __init__(self, parse: Callable[[bytes], Any],
                 fields: Callable[[Any], dict[str, Any]]) -> None:
        self._parse = parse
        self._fields = fields
        self._parts: list[bytes] = []
        self.finished = False

    def add(self, chunk: Any) -> bool:
        self._parts.append(chunk)
        return False  # no content before the whole document is there

    def result(self) -> dict[str, Any]:
        if not self.finished:
            return {}  # part of a document says nothing reliable
        try:
            parsed = self._parse(b"".join(self._parts))
        except _BodyNotJSONError as exc:
            return exc.fields()
        return self._fields(parsed)


def recorded_parsed_stream(response: Any, stream: Any, asynchronous: bool, call: LLMCall,
                           accumulator: Accumulator) -> Any:
    """The stream a raw response's ``parse()`` returned, recorded as a plain
    call's stream is; the response's cache of what it parsed then gives the
    recorded stream to a later ``parse()`` too."""
    proxy_type = RecordedAsyncStream if asynchronous else RecordedStream
    proxy = proxy_type(stream, call, accumulator)
    cache = getattr(response, "_parsed_by_type", None)
    if isinstance(cache, dict):
        for key, value in list(cache.items()):
            if value is stream:
                cache[key] = proxy
    return proxy


# -- a stream of server-sent events read by hand ----------------------------------------


class ServerSentEvents:
    """The events in a body's bytes, as they arrive: each complete event's
    name and data (https://html.spec.whatwg.org/multipage/server-sent-events.html),
    never waiting for more bytes than were fed."""

    __slots__ = ("_data", "_event", "_pending")

    def __init__(self) -> None:
        self._pending = b""  # a line whose end has not arrived yet
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        lines = (self._pending + chunk).splitlines(keepends=True)
        # an unended last line, or one ended by a CR whose LF may come next, waits
        self._pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        events = []
        for line in lines:
            event = self._line(line.rstrip(b"\r\n").decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> tuple[str | None, str] | None:
        if not line:  # a blank line ends the event
            if self._event is None and not self._data:
                return None
            event = (self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return event
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None  # a comment (":..."), "id", "retry", or a field unknown


class _Decoder:
    """The events' bytes of a body's bytes, as they arrive: undone the
    Content-Encoding with the decoders of the response's own HTTP library
    (httpx; httpx2 for the newest clients, whose decoders yield their
    output in pieces), as the caller's own read of the body undoes it.
    ``flush()`` at the body's end gives what a decoder held back."""

    __slots__ = ("_decoder",)

    def __init__(self, decoder: Any | None) -> None:
        self._decoder = decoder  # None: the body is not encoded

    @classmethod
    def of(cls, http_response: Any) -> _Decoder | None:
        """The decoder of ``http_response``'s body, apart from the one its own
        reads use; None if its library cannot decode it (a coding unknown to
        it, br or zstd without the package they need): the caller's read
        gets the bytes still encoded, and the call is recorded if parsed."""
        values = http_response.headers.get_list("content-encoding", split_commas=True)
        codings = [value.strip().lower() for value in values]
        if all(coding in ("", "identity") for coding in codings):
            return cls(None)
        library = type(http_response).__module__.partition(".")[0]
        supported = importlib.import_module(f"{library}._decoders").SUPPORTED_DECODERS
        if not all(coding in supported for coding in codings if coding):
            return None
        # a response of the same class and headers makes the decoder the caller's read uses
        twin = type(http_response)(http_response.status_code, headers=http_response.headers)
        return cls(twin._get_content_decoder())

    def decode(self, chunk: bytes) -> bytes:
        return chunk if self._decoder is None else _joined(self._decoder.decode(chunk))

    def flush(self) -> bytes:
        return b"" if self._decoder is None else _joined(self._decoder.flush())


def _joined(decoded: bytes | Iterable[bytes]) -> bytes:
    return decoded if isinstance(decoded, bytes) else b"".join(decoded)


class _BodyTap:
    """The bytes a body's reader pulled, given to the call's accumulator: the
    library's chunks made of the events in them (``read_event``; decoded
    first by ``decoder``), or, for a body that is one JSON document (no
    ``read_event``), the bytes as they are."""

    __slots__ = ("decoder", "events", "read_event", "state")

    def __init__(self, state: _StreamState, read_event: EventReader | None,
                 decoder: _Decoder | None = None) -> None:
        self.state = state
        self.read_event = read_event
        self.decoder = decoder or _Decoder(None)
        self.events = ServerSentEvents()

    def feed(self, chunk: bytes) -> None:
        state = self.state
        if state.done:  # parsed after all, or complete
            return
        if self.read_event is None:
            state.chunk(chunk)
            return
        self._read(self.decoder.decode, chunk)

    def _read(self, decoded: Callable[..., bytes], *chunk: bytes) -> None:
        """Record the events in the bytes ``decoded(*chunk)`` gives."""
        assert self.read_event is not None
        try:
            for event, data in self.events.feed(decoded(*chunk)):
                item = self.read_event(event, data)
                if isinstance(item, BaseException):
                    self.state.error(item)  # the error the library's stream would raise
                    return
                if item is not None:
                    self.state.chunk(item)
        except Exception as exc:  # noqa: BLE001 - never let recording break the caller
            record_internal_error("response_body_event", exc)

    def ended(self) -> None:
        """The body was read to its end."""
        if not self.state.done:
            if self.read_event is None:
                self.state.accumulator.finished = True  # the whole document arrived
            else:
                self._read(self.decoder.flush)  # what the decoder held back
        self.state.end()


class _TappedBody(wrapt.ObjectProxy):  # type: ignore[misc, type-arg]
    """A raw response's body (the byte stream of its httpx response, which
    every way of reading it draws from: ``iter_lines()``, ``iter_bytes()``,
    ``read()``, the library's own ``parse()``), passing on every byte as it
    was, and feeding them to the call's recording as they are pulled. Its
    end completes the call; closed or dropped before, the call completes
    with what arrived (of a JSON document: nothing)."""

    def __init__(self, wrapped: Any, tap: _BodyTap) -> None:
        super().__init__(wrapped)
        self._self_tap = tap

    def __iter__(self) -> Any:
        tap = self._self_tap
        try:
            for chunk in self.__wrapped__:
                tap.feed(chunk)
                yield chunk
        except GeneratorExit:  # the reader stopped: close() or the finalizer completes
            raise
        except BaseException as exc:
            tap.state.stopped(exc)
            raise
        tap.ended()

    async def __aiter__(self) -> Any:
        tap = self._self_tap
        try:
            async for chunk in self.__wrapped__:
                tap.feed(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            tap.state.stopped(exc)
            raise
        tap.ended()

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_tap.state.end(ABANDONED)

    async def aclose(self) -> None:
        try:
            await self.__wrapped__.aclose()
        finally:
            self._self_tap.state.end(ABANDONED)


def _tap_body(response: Any, call: LLMCall, accumulator: Accumulator,
              read_event: EventReader | None) -> _StreamState | None:
    """Record ``call`` from ``response``'s body as the caller reads it: from
    its events, or (no ``read_event``) from the whole body once read; None if
    the events cannot be read here (encoded as its library cannot decode)."""
    http_response = response.http_response
    decoder = None
    if read_event is not None:
        decoder = _Decoder.of(http_response)
        if decoder is None:
            return None  # its bytes cannot be decoded here (never so from these APIs)
    state = _StreamState(call, accumulator)
    body = _TappedBody(http_response.stream, _BodyTap(state, read_event, decoder))
    _arm(body, state)  # the body, not the response object: it may outlive it
    http_response.stream = body
    return state


class _Awaiting:
    __slots__ = ("call", "finalizer", "reader", "tap")

    def __init__(self, call: LLMCall, reader: ResponseReader,
                 finalizer: weakref.finalize[Any, Any] | None,
                 tap: _StreamState | None) -> None:
        self.call = call
        self.reader = reader
        self.finalizer = finalizer  # the response's: completes the call if dropped unread
        self.tap = tap  # a stream's body read by hand completes the call instead


def _dropped(call: LLMCall) -> None:
    call.finish(result=ABANDONED)


class ResponseReads:
    """Raw responses returned before their body is read (openai's and
    anthropic's ``with_raw_response``/``with_streaming_response``: the caller
    parses the body later, or iterates the stream that parse returns). Their
    LLM calls complete when the caller reads the body, with what the plain
    call would have recorded.

    A plugin ``track()``s each such response with its call and a
    :class:`ResponseReader`, and patches the response classes' ``parse`` and
    ``close`` with :meth:`parse_wrapper` and :meth:`close_wrapper`. The
    response is held weakly and never wrapped: the caller gets the library's
    own object. One dropped unread completes its call as closed before its
    end. The body may be read by hand instead of parsed: its byte stream is
    then proxied (see _TappedBody), and the call records the events in the
    bytes read (a stream's server-sent events), or, once the whole body has
    been read, the JSON document it is, parsed as ``parse()`` would."""

    def __init__(self) -> None:
        self._awaiting: weakref.WeakKeyDictionary[Any, _Awaiting] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def track(self, response: Any, call: LLMCall, reader: ResponseReader) -> bool:
        """Complete ``call`` when ``response`` is read; False if it cannot be
        tracked (the call is then the caller's to complete)."""
        tap = None
        try:
            if is_event_stream(response):
                by_hand = reader.events(response)
                if by_hand is not None:
                    tap = _tap_body(response, call, *by_hand)
            elif _is_json(response):
                whole_body = _WholeBody(_parse_whole_body(response), reader.fields)
                tap = _tap_body(response, call, whole_body, None)
        except Exception as exc:  # noqa: BLE001 - then it is recorded if parsed
            record_internal_error("response_tap", exc)
        try:
            finalizer = None
            if tap is None:
                finalizer = weakref.finalize(response, _dropped, call)
                finalizer.atexit = False
            with self._lock:
                self._awaiting[response] = _Awaiting(call, reader, finalizer, tap)
        except Exception as exc:  # noqa: BLE001
            record_internal_error("response_track", exc)
            return False
        return True

    def _take(self, response: Any) -> _Awaiting | None:
        if not self._awaiting:  # the usual case: every parse() of a plain call
            return None
        try:
            with self._lock:
                entry = self._awaiting.pop(response, None)
        except TypeError:  # not weakly referenceable: never tracked
            return None
        if entry is not None and entry.finalizer is not None:
            entry.finalizer.detach()
        return entry

    def _take_to_parse(self, response: Any) -> _Awaiting | None:
        """The entry whose call the caller's parse() completes, if any: not
        one whose body was read by hand already."""
        entry = self._take(response)
        if entry is not None and entry.tap is not None and not entry.tap.release():
            return None
        return entry

    @staticmethod
    def _parsed(entry: _Awaiting, response: Any, parsed: Any) -> Any:
        try:
            return entry.reader.parsed(entry.call, response, parsed)
        except Exception as exc:  # noqa: BLE001 - never let recording break the caller
            record_internal_error("response_parsed", exc)
            entry.call.finish()
            return parsed

    @staticmethod
    def _parse_failed(entry: _Awaiting, response: Any, exc: BaseException) -> None:
        """The caller's ``parse()`` raised ``exc`` (passed on to the caller
        untouched): a body read whole that is not the JSON it claims to be is
        recorded as sent, with an error saying so, as when read by hand."""
        if isinstance(exc, _NOT_JSON):
            try:
                if body_already_read(response):
                    entry.call.finish(
                        **_BodyNotJSONError(response.http_response.text, exc).fields())
                    return
            except Exception as internal:  # noqa: BLE001 - then recorded as it raised
                record_internal_error("response_not_json", internal)
        entry.call.fail(exc)

    @staticmethod
    def _closed(entry: _Awaiting, response: Any) -> None:
        if entry.tap is not None:
            entry.tap.end(ABANDONED)  # what was read by hand (nothing, if complete)
            return
        try:
            entry.reader.closed(entry.call, response)
        except Exception as exc:  # noqa: BLE001
            record_internal_error("response_closed", exc)
        entry.call.finish(result=ABANDONED)  # nothing, if the reader completed it

    def parse_wrapper(self, *, asynchronous: bool) -> Any:
        """A wrapt wrapper for the response class's ``parse`` (async: ``await``-ed)."""
        if asynchronous:
            async def async_parse(wrapped: Any, instance: Any, args: tuple[Any, ...],
                                  kwargs: dict[str, Any]) -> Any:
                entry = self._take_to_parse(instance)
                if entry is None:
                    return await wrapped(*args, **kwargs)
                try:
                    parsed = await wrapped(*args, **kwargs)
                except BaseException as exc:
                    self._parse_failed(entry, instance, exc)
                    raise
                return self._parsed(entry, instance, parsed)
            return async_parse

        def parse(wrapped: Any, instance: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
            entry = self._take_to_parse(instance)
            if entry is None:
                return wrapped(*args, **kwargs)
            try:
                parsed = wrapped(*args, **kwargs)
            except BaseException as exc:
                self._parse_failed(entry, instance, exc)
                raise
            return self._parsed(entry, instance, parsed)
        return parse

    def patches(self, library: str) -> tuple[tuple[str, str, str, Any], ...]:
        """The (module, class, method, wrapper) patches of ``library``'s
        response classes (openai's and anthropic's are generated alike), for
        a plugin's MethodPatches; a module a version lacks is skipped there."""
        response, legacy = f"{library}._response", f"{library}._legacy_response"
        return (
            (response, "APIResponse", "parse", self.parse_wrapper(asynchronous=False)),
            (response, "APIResponse", "close", self.close_wrapper(asynchronous=False)),
            (response, "AsyncAPIResponse", "parse", self.parse_wrapper(asynchronous=True)),
            (response, "AsyncAPIResponse", "close", self.close_wrapper(asynchronous=True)),
            (legacy, "LegacyAPIResponse", "parse", self.parse_wrapper(asynchronous=False)),
        )

    def close_wrapper(self, *, asynchronous: bool) -> Any:
        """A wrapt wrapper for the response class's ``close`` (what leaving a
        ``with_streaming_response`` block calls)."""
        return close_then(self._after_close, asynchronous=asynchronous)

    def _after_close(self, response: Any) -> None:
        entry = self._take(response)
        if entry is not None:
            self._closed(entry, response)


def close_then(after: Callable[[Any], None], *, asynchronous: bool) -> Callable[..., Any]:
    """A wrapt wrapper for a class's ``close`` (async: ``await``-ed): the
    library's close, then ``after(instance)``, whatever the close did."""
    if asynchronous:
        async def async_close(wrapped: Any, instance: Any, args: tuple[Any, ...],
                              kwargs: dict[str, Any]) -> Any:
            try:
                return await wrapped(*args, **kwargs)
            finally:
                after(instance)
        return async_close

    def close(wrapped: Any, instance: Any, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
        try:
            return wrapped(*args, **kwargs)
        finally:
            after(instance)
    return close
