"""Stream proxies for provider plugins: the caller iterates exactly what the
library yields (the proxy is still an instance of the library's stream type),
and the LLM call is completed once, when the stream ends, fails, is closed, or
is dropped unfinished (garbage collected).

A plugin supplies an :class:`Accumulator` that reads its library's chunks;
``RecordedStream(stream, call, accumulator)`` does the rest. Imported by
plugins only, so ``import lucidic`` does not load wrapt."""

from __future__ import annotations

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
