"""lucidic.streams.ServerSentEvents: the events in a body's bytes, however
the bytes arrive, as the provider libraries' own decoders find them."""

from __future__ import annotations

import pytest
from _cassettes import own_path, response_text, shared_path

from lucidic.streams import ServerSentEvents

RECORDED_STREAMS = [
    ("shared", "openai/chat_tools_streaming.yaml"), ("shared", "openai/responses_streaming.yaml"),
    ("shared", "anthropic/messages_streaming.yaml"), ("own", "openai/chat_stream_error.yaml"),
    ("own", "anthropic/messages_stream_error.yaml")]


def events_of(chunks):
    decoder = ServerSentEvents()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def library_events(body: bytes):
    from openai._streaming import SSEDecoder

    return [(sse.event, sse.data) for sse in SSEDecoder().iter_bytes(iter([body]))]


@pytest.mark.parametrize(("where", "name"), RECORDED_STREAMS)
def test_recorded_streams_fed_whole_or_byte_by_byte_give_the_librarys_events(where, name):
    path = shared_path(name) if where == "shared" else own_path(name)
    body = response_text(path).encode("utf-8")
    expected = library_events(body)
    assert expected
    assert events_of([body]) == expected
    assert events_of([body[i:i + 1] for i in range(len(body))]) == expected


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_split_anywhere_gives_the_same_events(newline):
    body = newline.join([b": a comment", b"event: delta", b"data: {\"a\": 1}", b"data:second",
                         b"id: 7", b"", b"data: \xc3\xa9t\xc3\xa9", b"", b"event: ping", b"",
                         b"data: not ended yet"])
    expected = [("delta", "{\"a\": 1}\nsecond"), (None, "été"), ("ping", "")]
    assert library_events(body) == expected
    for cut in range(len(body) + 1):
        assert events_of([body[:cut], body[cut:]]) == expected, cut


def test_an_event_is_given_only_once_its_blank_line_has_arrived():
    decoder = ServerSentEvents()
    assert decoder.feed(b"data: one\n") == []
    assert decoder.feed(b"\r") == []  # a CR: its LF may come next
    assert decoder.feed(b"\n") == [(None, "one")]
    assert decoder.feed(b"data: two\n\n") == [(None, "two")]
