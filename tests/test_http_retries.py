"""What one request of the HTTP sink asks again, and what it hands to the
pipeline instead (lucidic._http._Retries over urllib3's Retry), against real
HTTP servers on loopback that answer as each test scripts them."""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lucidic._http import HttpSink
from lucidic._sinks import RecordsRefusedError, SinkError
from lucidic.errors import ServerUnavailableError

RECORDS = [("session", "s", 1.0, {"name": "x"})]
SLOW_DOWN = b'{"detail": "slow down"}'


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers the n-th request with the n-th of ``answers`` (the last one
    again once they run out), and keeps what it was sent."""

    answers: list[tuple[int, dict[str, str]]] = []
    seen: list[tuple[str, str, bytes]] = []

    def _answer(self) -> None:
        body_in = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        seen = type(self).seen
        seen.append((self.command, self.path, body_in))
        status, headers = self.answers[min(len(seen), len(self.answers)) - 1]
        body = json.dumps({"session_id": "s"}).encode() if status < 300 else SLOW_DOWN
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json" if status < 300
                         else "application/problem+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815 - the http.server API

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[_Scripted]]]:
    handler = type("Handler", (_Scripted,), {"answers": [(200, {})], "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # (its loop looks for shutdown() every 0.05 s: the default 0.5 s made
    # each test's teardown wait that long)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def sink_to(scripted: tuple[str, type[_Scripted]]) -> Iterator[HttpSink]:
    sink = HttpSink(scripted[0], "lk_test")
    yield sink
    sink.close()


# -- what is asked again, inline ------------------------------------------------------

def test_a_short_retry_after_is_waited_out_and_the_batch_delivered_in_one_write(
        scripted: tuple[str, type[_Scripted]], sink_to: HttpSink) -> None:
    handler = scripted[1]
    handler.answers = [(503, {"Retry-After": "1"}), (200, {})]
    started = time.monotonic()
    sink_to.write(RECORDS)  # delivered: no SinkError
    took = time.monotonic() - started
    assert len(handler.seen) == 2
    first, second = handler.seen
    assert first == second and first[:2] == ("POST", "/api/v1/records")  # the same batch again
    assert took >= 0.95  # the second request waited the second the server asked for


def test_a_short_retry_after_every_time_ends_after_three_attempts(
        scripted: tuple[str, type[_Scripted]], sink_to: HttpSink) -> None:
    handler = scripted[1]
    handler.answers = [(429, {"Retry-After": "1"})]
    started = time.monotonic()
    with pytest.raises(SinkError) as raised:
        sink_to.write(RECORDS)
    assert len(handler.seen) == 3 and time.monotonic() - started >= 1.9
    assert raised.value.retry_after == 1.0 and not raised.value.unreachable
    assert "slow down" in str(raised.value)


@pytest.mark.parametrize(("status", "retry_after", "expected", "requests_seen"), [
    (429, "30", 30.0, 1),     # longer than the inline limit: the pipeline waits, not write()
    (503, "120", 120.0, 1),
    (503, None, None, 3),     # "come back" without saying when: again at once, then 0.2 s
    (429, None, None, 3),
    (500, None, None, 1),     # a failure, not "come back": the pipeline's backoff
    (502, None, None, 1),     # a gateway's: the server may have acted, the pipeline replays
])
def test_the_sink_hands_what_it_does_not_wait_for_to_the_pipeline(
        scripted: tuple[str, type[_Scripted]], sink_to: HttpSink, status: int,
        retry_after: str | None, expected: float | None, requests_seen: int) -> None:
    handler = scripted[1]
    handler.answers = [(status, {"Retry-After": retry_after} if retry_after else {})]
    started = time.monotonic()
    with pytest.raises(SinkError) as raised:
        sink_to.write(RECORDS)
    assert raised.value.retry_after == expected and not raised.value.unreachable
    assert "slow down" in str(raised.value)
    assert len(handler.seen) == requests_seen
    assert time.monotonic() - started < 10  # never the 30 or 120 s asked for


def test_a_413_naming_a_retry_after_is_about_the_record_and_not_asked_again(
        scripted: tuple[str, type[_Scripted]], sink_to: HttpSink) -> None:
    # urllib3's default would wait and send the same too-large request again.
    handler = scripted[1]
    handler.answers = [(413, {"Retry-After": "1"})]
    with pytest.raises(RecordsRefusedError) as raised:
        sink_to.write(RECORDS)
    assert [record for record, _ in raised.value.refused] == RECORDS
    assert len(handler.seen) == 1


def test_a_retry_after_given_as_a_date_is_read_as_the_seconds_until_then(
        scripted: tuple[str, type[_Scripted]], sink_to: HttpSink) -> None:
    handler = scripted[1]
    handler.answers = [(503, {"Retry-After": email.utils.formatdate(time.time() + 60,
                                                                     usegmt=True)})]
    with pytest.raises(SinkError) as raised:
        sink_to.write(RECORDS)
    assert raised.value.retry_after is not None and 50 <= raised.value.retry_after <= 61
    assert len(handler.seen) == 1


# -- a Retry-After that is neither seconds nor a date ------------------------------------

@pytest.mark.parametrize("malformed", ["soon", "0.2", "-1", "1e3"])
def test_a_malformed_retry_after_falls_back_to_backing_off_and_says_so(
        scripted: tuple[str, type[_Scripted]], sink_to: HttpSink, malformed: str,
        caplog: pytest.LogCaptureFixture) -> None:
    # RFC 9110: delay-seconds is whole seconds; anything else is no delay at
    # all, not a reason to give up on the server or to crash.
    handler = scripted[1]
    handler.answers = [(503, {"Retry-After": malformed})]
    with caplog.at_level(logging.WARNING, logger="lucidic"), pytest.raises(SinkError) as raised:
        sink_to.write(RECORDS)
    assert raised.value.retry_after is None and not raised.value.unreachable
    assert len(handler.seen) == 3  # asked again after its own short backoff
    assert any(repr(malformed) in r.getMessage() and "backing off on our own" in r.getMessage()
               for r in caplog.records)


def test_a_malformed_retry_after_then_success_is_delivered(
        scripted: tuple[str, type[_Scripted]], sink_to: HttpSink) -> None:
    handler = scripted[1]
    handler.answers = [(429, {"Retry-After": "0.2"}), (200, {})]
    sink_to.write(RECORDS)
    assert len(handler.seen) == 2


# -- what is never asked again: the server is not there, or broke off ----------------------

def test_a_refused_connection_is_handed_back_at_once_not_retried(
        caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:  # bound, not listening: every connection is refused
        taken.bind(("127.0.0.1", 0))
        sink = HttpSink(f"http://127.0.0.1:{taken.getsockname()[1]}", "lk_test")
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG, logger="urllib3"), \
                pytest.raises(SinkError) as raised:
            sink.write(RECORDS)
        took = time.monotonic() - started
        sink.close()
    assert raised.value.unreachable and raised.value.retry_after is None
    assert "ConnectionError" in str(raised.value)
    # urllib3 logs each retry of a failed connection ("Retrying (...) after
    # connection broken by ..."): there was none.
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]
    assert took < 10


@pytest.fixture
def hanging_up() -> Iterator[tuple[str, list[socket.socket]]]:
    """A server that accepts each connection, reads the request and closes
    without a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    # shutdown() wakes the accept() the thread waits in (close() alone does
    # not, and the join waited out its 5 s).
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(5)


def test_a_connection_the_server_breaks_off_is_asked_again_once(
        hanging_up: tuple[str, list[socket.socket]]) -> None:
    url, accepted = hanging_up
    sink = HttpSink(url, "lk_test")
    with pytest.raises(SinkError) as raised:
        sink.write(RECORDS)
    assert raised.value.unreachable
    # A batch may be sent twice (applied again, it changes nothing): asked
    # once more, on a new connection, and no more; the pipeline spools it.
    assert len(accepted) == 2
    # So may a session's creation under a chosen id (the server counts the
    # same id, project and start time again as created).
    with pytest.raises(ServerUnavailableError):
        sink.claim_session(("session", "chosen", 1.0, {"name": "x", "started_at": 1.0}))
    assert len(accepted) == 4
    sink.close()


OK_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
             b"Content-Length: 2\r\n\r\n{}")


def read_request(conn: socket.socket) -> bytes:
    """One whole HTTP request off a connection (headers and body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return head


def test_a_pooled_connection_closed_as_a_batch_goes_out_is_not_an_outage(
        caplog: pytest.LogCaptureFixture) -> None:
    # The server's keep-alive runs out just as the next batch is sent on the
    # pooled connection: it reads the request and closes without an answer.
    # That once made the pipeline spool the batch and warn that the server
    # was unreachable.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    requests_per_connection: list[int] = []

    def serve() -> None:
        first, _ = listener.accept()
        read_request(first)
        first.sendall(OK_ANSWER)  # kept alive
        read_request(first)
        first.close()  # the keep-alive ran out: no answer
        requests_per_connection.append(2)
        second, _ = listener.accept()
        read_request(second)
        second.sendall(OK_ANSWER)
        requests_per_connection.append(1)
        second.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    sink = HttpSink(f"http://127.0.0.1:{listener.getsockname()[1]}", "lk_test")
    sink.write(RECORDS)
    with caplog.at_level(logging.WARNING, logger="lucidic"):
        sink.write(RECORDS)  # delivered: no SinkError
    thread.join(10)
    sink.close()
    listener.close()
    assert requests_per_connection == [2, 1]
    assert not caplog.records


# -- the calls a user waits for -----------------------------------------------------------

def test_continuing_waits_out_a_short_retry_after_and_gets_its_answer(
        scripted: tuple[str, type[_Scripted]], sink_to: HttpSink) -> None:
    handler = scripted[1]
    handler.answers = [(503, {"Retry-After": "1"}), (200, {})]
    assert sink_to.check_continuable("s", None) == {"session_id": "s"}
    assert [(method, path) for method, path, _ in handler.seen] == \
        [("GET", "/api/v1/sessions/s/continuable")] * 2


def test_continuing_refuses_at_once_when_the_server_asks_for_a_long_wait(
        scripted: tuple[str, type[_Scripted]], sink_to: HttpSink) -> None:
    handler = scripted[1]
    handler.answers = [(503, {"Retry-After": "120"})]
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="slow down"):
        sink_to.check_continuable("s", None)
    assert len(handler.seen) == 1 and time.monotonic() - started < 10
