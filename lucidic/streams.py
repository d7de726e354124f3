"""Stream proxies for provider plugins: the caller iterates exactly what the
library yields (the proxy is still an instance of the library's stream type),
and the LLM call is completed once, when the stream ends, fails, is closed, or
is dropped unfinished (garbage collected). :class:`ResponseReads` does the same
for a raw response whose body the caller reads after the call returned.

A plugin supplies an :class:`Accumulator` that reads its library's chunks;
``RecordedStream(stream, call, accumulator)`` does the rest. Imported by
plugins only, so ``import lucidic`` does not load wrapt."""

from __future__ import annotations

import threading
import weakref
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


def _complete(call: LLMCall, accumulator: Accumulator, result: str | None) -> None:
    try:
        fields = accumulator.result()
    except Exception as exc:  # noqa: BLE001 - never let recording break the caller
        record_internal_error("stream_result", exc)
        fields = {}
    if result == ABANDONED and getattr(accumulator, "finished", False):
        result = None  # everything arrived; the caller just did not read past the end
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

    def end(self, result: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        if self.finalizer is not None:
            self.finalizer.detach()
        _complete(self.call, self.accumulator, result)

    def error(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        if self.finalizer is not None:
            self.finalizer.detach()
        self.call.fail(exc)


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
            state.error(exc)
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
            state.error(exc)
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


def body_already_read(response: Any) -> bool:
    """Whether a raw response (of the openai or anthropic client: both are
    generated alike) holds a body already read whole, not a stream: one
    ``with_raw_response`` returns, or one the caller read with ``read()`` or
    ``json()``."""
    if getattr(response, "_is_sse_stream", getattr(response, "_stream", False)):
        return False
    try:
        response.http_response.content  # noqa: B018 - raises until the body has been read
    except Exception:  # noqa: BLE001 - httpx's ResponseNotRead
        return False
    return True


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


class _Awaiting:
    __slots__ = ("call", "finalizer", "reader")

    def __init__(self, call: LLMCall, reader: ResponseReader,
                 finalizer: weakref.finalize[Any, Any]) -> None:
        self.call = call
        self.reader = reader
        self.finalizer = finalizer


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
    response is held weakly and never wrapped or changed: the caller gets the
    library's own object. One dropped unread completes its call as
    closed before its end."""

    def __init__(self) -> None:
        self._awaiting: weakref.WeakKeyDictionary[Any, _Awaiting] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def track(self, response: Any, call: LLMCall, reader: ResponseReader) -> bool:
        """Complete ``call`` when ``response`` is read; False if it cannot be
        tracked (the call is then the caller's to complete)."""
        try:
            finalizer = weakref.finalize(response, _dropped, call)
            finalizer.atexit = False
            with self._lock:
                self._awaiting[response] = _Awaiting(call, reader, finalizer)
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
        if entry is not None:
            entry.finalizer.detach()
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
    def _closed(entry: _Awaiting, response: Any) -> None:
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
                entry = self._take(instance)
                if entry is None:
                    return await wrapped(*args, **kwargs)
                try:
                    parsed = await wrapped(*args, **kwargs)
                except BaseException as exc:
                    entry.call.fail(exc)
                    raise
                return self._parsed(entry, instance, parsed)
            return async_parse

        def parse(wrapped: Any, instance: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
            entry = self._take(instance)
            if entry is None:
                return wrapped(*args, **kwargs)
            try:
                parsed = wrapped(*args, **kwargs)
            except BaseException as exc:
                entry.call.fail(exc)
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
        if asynchronous:
            async def async_close(wrapped: Any, instance: Any, args: tuple[Any, ...],
                                  kwargs: dict[str, Any]) -> Any:
                try:
                    return await wrapped(*args, **kwargs)
                finally:
                    entry = self._take(instance)
                    if entry is not None:
                        self._closed(entry, instance)
            return async_close

        def close(wrapped: Any, instance: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
            try:
                return wrapped(*args, **kwargs)
            finally:
                entry = self._take(instance)
                if entry is not None:
                    self._closed(entry, instance)
        return close
