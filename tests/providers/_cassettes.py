"""Replaying recorded provider traffic (vcrpy, record_mode="none") and reading
what a recording implies (model, tokens, cost), independently of the adapters.

The shared recordings are read in place from ../shared/cassettes beside the
checkout (or LUCIDIC_SHARED_CASSETTES); they are never copied into the project.
The project's own hand-written recordings live in cassettes/ at the root.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import vcr
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED_CASSETTES = Path(os.environ.get("LUCIDIC_SHARED_CASSETTES",
                                       ROOT.parent / "shared" / "cassettes"))
OWN_CASSETTES = ROOT / "cassettes"
PRICES = json.loads((ROOT / "lucidic" / "data" / "prices.json").read_text("utf-8"))

_vcr = vcr.VCR(record_mode="none", match_on=("method", "scheme", "host", "port", "path"))


def shared_path(relative: str) -> Path:
    path = SHARED_CASSETTES / relative
    if not path.is_file():
        pytest.skip(f"recorded provider traffic {relative} not found under {SHARED_CASSETTES}: "
                    "put the shared cassettes beside the checkout (../shared/cassettes) or "
                    "point LUCIDIC_SHARED_CASSETTES at them")
    return path


def own_path(relative: str) -> Path:
    path = OWN_CASSETTES / relative
    assert path.is_file(), f"the project's cassette {path} is missing"
    return path


@contextmanager
def replay(path: Path, *, allow_repeats: bool = False) -> Iterator[Any]:
    """Replay a cassette; nothing reaches the network, nothing is recorded."""
    with _vcr.use_cassette(str(path), allow_playback_repeats=allow_repeats) as cassette:
        yield cassette


def interaction(path: Path, index: int = 0) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)["interactions"][index]


def request_body(path: Path, index: int = 0) -> dict[str, Any]:
    return json.loads(interaction(path, index)["request"]["body"])


def response_text(path: Path, index: int = 0) -> str:
    body = interaction(path, index)["response"]["body"]["string"]
    if isinstance(body, bytes):
        try:
            body = gzip.decompress(body)
        except OSError:
            pass
        body = body.decode("utf-8")
    return body


def response_json(path: Path, index: int = 0) -> dict[str, Any]:
    return json.loads(response_text(path, index))


def response_events(path: Path, index: int = 0) -> list[dict[str, Any]]:
    """The JSON data lines of a server-sent-events body."""
    events = []
    for line in response_text(path, index).splitlines():
        if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
            events.append(json.loads(line[5:]))
    return events


def _compressor(coding: str) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    """One Content-Encoding applied as a server streams: how it compresses a
    part and flushes it whole (what was sent can be decoded at once), and
    how it compresses the last part and ends the encoded stream."""
    if coding in _ZLIB_WBITS:
        deflate = zlib.compressobj(wbits=_ZLIB_WBITS[coding])
        return (lambda data: deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH),
                lambda data: deflate.compress(data) + deflate.flush())
    if coding == "br":
        import brotli  # (the test's encodings were checked to be decodable: see decodable())

        compressor = brotli.Compressor()
        return (lambda data: compressor.process(data) + compressor.flush(),
                lambda data: compressor.process(data) + compressor.finish())
    try:  # zstd: what httpx2 decodes it with (compression.zstd from Python 3.14)
        from compression.zstd import ZstdCompressor  # type: ignore[import-not-found]
    except ImportError:
        try:
            from backports.zstd import ZstdCompressor
        except ImportError:  # httpx's: zstandard
            import zstandard

            zstd = zstandard.ZstdCompressor().compressobj()
            return (lambda data: zstd.compress(data) + zstd.flush(
                        zstandard.COMPRESSOBJ_FLUSH_BLOCK),
                    lambda data: zstd.compress(data) + zstd.flush())
    frames = ZstdCompressor()
    return (lambda data: frames.compress(data, mode=ZstdCompressor.FLUSH_BLOCK),
            lambda data: frames.compress(data, mode=ZstdCompressor.FLUSH_FRAME))


#: zlib's wbits for each Content-Encoding of zlib's that event_stream_in_steps
#: can send ("raw deflate": sent as "deflate" without zlib's header, as some
#: servers do).
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS,
               "raw deflate": -zlib.MAX_WBITS}


def decodable(encoding: str) -> Any:
    """``encoding`` (a Content-Encoding header, codings comma-separated in the
    order applied) as a test parameter, skipped where the openai client's
    HTTP library (httpx, or httpx2) cannot decode it here: br and zstd need
    packages of their own (brotli; zstandard, or backports.zstd for httpx2)."""
    import importlib

    import openai

    library = next(kind.__module__.partition(".")[0]  # (the client's class is openai's own)
                   for kind in type(openai.OpenAI(api_key="-")._client).__mro__
                   if not kind.__module__.startswith("openai"))
    supported = importlib.import_module(f"{library}._decoders").SUPPORTED_DECODERS
    codings = (coding.split()[-1] for coding in encoding.split(","))
    missing = [coding for coding in codings if coding not in supported]
    marks = [pytest.mark.skip(reason=f"{library} cannot decode {', '.join(missing)} here: "
                                     f"install its extra for it")] if missing else []
    return pytest.param(encoding, marks=marks)


@contextmanager
def event_stream_in_steps(path: Path, *, first: int, index: int = 0,
                          encoding: str | None = None) -> Iterator[str]:
    """A loopback HTTP server answering each POST with the recorded
    server-sent-events body of ``path``: its first ``first`` events at once,
    the rest only when the block ends, so that a client that stops reading
    early can have received those events and no more (a replayed cassette
    arrives in one piece); compressed with ``encoding`` if given (a
    Content-Encoding header: gzip, deflate, "raw deflate", br, zstd, or
    several, comma-separated in the order applied), and said so in its
    Content-Encoding (the first events flushed whole). Yields the server's
    base URL."""
    events = [event + "\n\n" for event in response_text(path, index).split("\n\n") if event]
    codings = [c.strip() for c in encoding.split(",")] if encoding is not None else []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            if encoding is not None:
                self.send_header("content-encoding",
                                 ", ".join(c.split()[-1] for c in codings))
            self.end_headers()  # no length: the body ends when the connection closes
            parts = ["".join(events[:first]).encode("utf-8"),
                     "".join(events[first:]).encode("utf-8")]
            for part, last in map(_compressor, codings):
                parts = [part(parts[0]), last(parts[1])]
            try:
                self.wfile.write(parts[0])
                self.wfile.flush()
                if first < len(events):  # (else the body ends here)
                    release.wait()
                self.wfile.write(parts[1])
            except OSError:
                pass  # the client stopped reading and closed the connection

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # (its loop looks for shutdown() every 0.05 s: the default 0.5 s made
    # each test's teardown wait that long)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join()


async def read_then_stop(stream: Any, first: int, how: str) -> tuple[list[Any], BaseException]:
    """Read the ``first`` chunks of ``stream`` (an async stream served by
    event_stream_in_steps: all it has sent), then stop the reading while it
    awaits the next, which the server holds back: the task reading it
    cancelled (``how`` "cancel": ``task.cancel(msg)``), or
    ``asyncio.wait_for`` timing out ("wait_for"). Returns the chunks read
    and the exception the caller got."""
    read: list[Any] = []
    reading = asyncio.Event()

    async def reader() -> None:
        async for chunk in stream:
            read.append(chunk)
            if len(read) == first:
                reading.set()

    if how == "wait_for":
        chunks = aiter(stream)
        for _ in range(first):
            read.append(await anext(chunks))
        with pytest.raises(asyncio.TimeoutError) as raised:  # (TimeoutError since 3.11)
            await asyncio.wait_for(anext(chunks), timeout=0.05)
        return read, raised.value
    task = asyncio.create_task(reader())
    await reading.wait()  # the task goes on to await the next chunk
    task.cancel("the caller's own reason")
    with pytest.raises(asyncio.CancelledError) as raised:
        await task
    assert task.cancelled()
    return read, raised.value


def lines_of_events(lines: Iterator[str], count: int) -> list[str]:
    """The lines of the next ``count`` server-sent events (each ends with a blank line)."""
    read: list[str] = []
    while count:
        read.append(next(lines))
        count -= read[-1] == ""
    return read


# -- a raw response's body read by hand (iter_lines(), iter_bytes(), read(), ...) ---------

def read_by_hand(body: Any, how: str) -> str:
    """Read a raw response's body (the library's response, or its httpx
    response) by hand with its method ``how``; the text read, lines joined."""
    return _joined(getattr(body, how)(), how)


async def read_by_hand_async(body: Any, how: str) -> str:
    """read_by_hand for an async body (``iter_lines`` of the library's async
    response, ``aiter_lines`` of an httpx response, ...)."""
    got = getattr(body, how)()
    if hasattr(got, "__aiter__"):
        return _joined([part async for part in got], how)
    return _joined(await got, how)


def _joined(got: Any, how: str) -> str:
    if isinstance(got, bytes):
        return got.decode("utf-8")
    if isinstance(got, str):
        return got
    parts = list(got)
    if how.endswith("lines"):
        return "\n".join(parts)
    return b"".join(parts).decode("utf-8") if how.endswith("bytes") else "".join(parts)


def parse_then_read_by_hand(accessor: Any, body: dict[str, Any], of: str, how: str,
                            while_open: Any = None) -> str:
    """Make the call ``body`` twice through ``accessor`` (a resource's
    ``with_streaming_response``): parse the first response, and read the
    second's body by hand with ``how``, of the response or (``of`` is
    "http_response") of its httpx response; ``while_open()`` runs after that
    read, before the response is closed."""
    with accessor.create(**body) as response:
        response.parse()
    with accessor.create(**body) as response:
        read = read_by_hand(response.http_response if of == "http_response" else response, how)
        if while_open is not None:
            while_open()
    return read


async def parse_then_read_by_hand_async(accessor: Any, body: dict[str, Any], of: str,
                                        how: str) -> str:
    """parse_then_read_by_hand for an async client (``aiter_bytes`` and so
    on of the httpx response)."""
    async with accessor.create(**body) as response:
        await response.parse()
    async with accessor.create(**body) as response:
        if of == "http_response":
            return await read_by_hand_async(response.http_response, f"a{how}")
        return await read_by_hand_async(response, how)


def read_once_by_hand(accessor: Any, body: dict[str, Any], of: str, how: str) -> str:
    """Make the call ``body`` through ``accessor`` (a resource's
    ``with_streaming_response``) and read its body by hand with ``how``, of
    the response or (``of`` is "http_response") of its httpx response."""
    with accessor.create(**body) as response:
        return read_by_hand(response.http_response if of == "http_response" else response, how)


async def read_once_by_hand_async(accessor: Any, body: dict[str, Any], of: str,
                                  how: str) -> str:
    """read_once_by_hand for an async client."""
    async with accessor.create(**body) as response:
        if of == "http_response":
            return await read_by_hand_async(response.http_response, f"a{how}")
        return await read_by_hand_async(response, how)


def parse_body_not_json(accessor: Any, body: dict[str, Any]) -> None:
    """Ask for a body that is not JSON (``accessor``: a resource's
    ``with_streaming_response``) and parse it, as the caller would: its
    JSONDecodeError comes through."""
    with accessor.create(**body) as response, pytest.raises(json.JSONDecodeError):
        response.parse()


async def parse_body_not_json_async(accessor: Any, body: dict[str, Any]) -> None:
    """parse_body_not_json for an async client."""
    async with accessor.create(**body) as response:
        with pytest.raises(json.JSONDecodeError):
            await response.parse()


def assert_recorded_as_not_json(event: dict[str, Any], body_text: str) -> None:
    """``event`` records a call answered with ``body_text``, a body that is
    not the JSON it claims to be: what was sent, and an error saying so."""
    assert event["output"] == body_text
    assert event["error"].startswith("the response body is not JSON (")
    assert event["model"] == event["request_model"]  # nothing more is known
    assert event["input_tokens"] is None and event["output_tokens"] is None
    assert event["cost"] is None and event["result"] is None


def as_read(body_text: str, how: str) -> str:
    """What read_by_hand gives for a body: the body, its lines joined for iter_lines."""
    return "\n".join(body_text.splitlines()) if how.endswith("lines") else body_text


#: What the event of an LLM call records from the answer.
ANSWER_FIELDS = ("model", "output", "input_tokens", "output_tokens", "cached_tokens",
                 "cache_write_tokens", "reasoning_tokens", "cost", "result", "error")


def assert_recorded_alike(event: dict[str, Any], parsed_event: dict[str, Any]) -> None:
    """``event`` records the answer as ``parsed_event`` (of the same call,
    its response parsed by the library) does, and that one has an answer."""
    assert parsed_event["output"] and parsed_event["output_tokens"] and parsed_event["cost"]
    assert {f: event[f] for f in ANSWER_FIELDS} == {f: parsed_event[f] for f in ANSWER_FIELDS}


def expected_cost(provider: str, model: str, input_tokens: int, output_tokens: int = 0,
                  cached_tokens: int = 0) -> float:
    """tokens × price, from the price table read here (longest matching prefix)."""
    models = PRICES[provider]
    name = max((m for m in models if model.startswith(m)), key=len)
    price = models[name]
    uncached = input_tokens - cached_tokens
    return (uncached * price["input"] + cached_tokens * price.get("cached_input", price["input"])
            + output_tokens * price.get("output", 0.0)) / 1_000_000


@pytest.fixture
def restore_adapters() -> Iterator[None]:
    """Uninstrument every provider adapter after the test, so that each test
    starts from the libraries as they were."""
    yield
    from lucidic import plugins

    for adapter in list(plugins._adapters.values()):
        adapter.uninstrument()
