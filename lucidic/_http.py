"""The HTTP transport: the sink and the reader for ``lucidic server``.

Imported only when LUCIDIC_BASE_URL is set. It speaks to the server's REST API
with ``requests`` (one pooled connection per thread) and never imports the
server or its dependencies. The sink runs in the pipeline's worker thread:
whatever it raises as ``SinkError`` makes the pipeline spool the batch and
retry it after ``retry_after`` (the server's ``Retry-After``) or its own
backoff. Batches are idempotent on the server, so a retry never duplicates.
Within one request, urllib3's ``Retry`` (configured in ``_Retries``) asks
again only when the server said to come back soon; see there.

It never sends what the server would refuse for its size (``lucidic.limits``):
batches are split, and a record too large alone has its longest texts cut. A
batch the server refuses for what some records hold is split down to those
records, which are named to the pipeline (``RecordsRefusedError``): records of a
session the server does not know yet wait for it, records refused for good
are set aside, and the others are delivered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader, MaxRetryError, ProtocolError, ResponseError
from urllib3.util.retry import Retry

from . import _config, _continuation
from ._internal import log_rate_limited, log_visible
from ._records import shrink_record
from ._sinks import RecordsRefusedError, Sink, SinkError
from .errors import APIKeyVerificationError, InvalidOperationError, ServerUnavailableError
from .limits import MAX_BATCH_RECORDS, MAX_RECORD_BYTES, MAX_REQUEST_BYTES
from .store import Record, clean_json

if TYPE_CHECKING:
    from typing_extensions import Self
    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

__all__ = ["HttpReader", "HttpSink"]

#: (connect, read) timeouts for one request, in seconds.
TIMEOUT = (3.05, 15.0)
#: Retry-After delays up to this long are waited out inside one request;
#: longer ones are handed to the pipeline, which spools meanwhile.
_INLINE_RETRY_LIMIT = 1.0
#: Answers that refuse how a request was made, never what a record holds:
#: retried like an outage rather than blamed on the records.
_NOT_THE_RECORDS = (401, 403, 405, 408, 415, 429)


class _Retries(Retry):
    """urllib3's retries, told what a request may wait for in its caller's
    thread (the pipeline's worker, or a user's continue_session()).

    Asked again, at most twice: an answer that says nothing was done and to
    come back (429, 503), after its Retry-After when that is at most
    _INLINE_RETRY_LIMIT, or else after a short backoff. An answer asking for a
    longer wait comes back at once, unwaited for: the sink hands its
    Retry-After to the pipeline (``SinkError.retry_after``), which spools and
    waits instead of the worker thread. Never asked again here: a server
    that cannot be reached, breaks the connection or is too slow to answer.
    The pipeline spools the batch at once and sends it again later, and the
    calls bounded by LUCIDIC_CONNECT_TIMEOUT keep to it. (A connection closed
    under a request that may be repeated is asked once more, on a new
    connection, by _Client.request: most often a pooled connection whose
    keep-alive ran out as the request went out.)"""

    # Not urllib3's default, which also retries a 413 that names a Retry-After.
    RETRY_AFTER_STATUS_CODES = frozenset({429, 503})

    def get_retry_after(self, response: BaseHTTPResponse | requests.Response) -> float | None:
        """The one reading of an answer's Retry-After, in seconds (RFC 9110:
        whole seconds or an HTTP date): None when it names no wait, or names
        it in another form, which is logged, and whoever retries backs off on
        its own instead of failing on the header."""
        value = response.headers.get("Retry-After")
        if not value:
            return None
        try:
            return self.parse_retry_after(value)
        except InvalidHeader:
            log_rate_limited("bad_retry_after", "lucidic: the server asked to retry after "
                             "%r, which is neither whole seconds nor an HTTP date; backing "
                             "off on our own instead", value)
            return None

    def increment(self, method: str | None = None, url: str | None = None,
                  response: BaseHTTPResponse | None = None, error: Exception | None = None,
                  _pool: ConnectionPool | None = None,
                  _stacktrace: TracebackType | None = None) -> Self:
        if response is not None and (self.get_retry_after(response) or 0) > _INLINE_RETRY_LIMIT:
            # Retries "exhausted": with raise_on_status=False, urllib3 returns
            # this answer to the caller without sleeping.
            raise MaxRetryError(_pool, url or "", ResponseError(  # type: ignore[arg-type]
                f"the server asked to retry after more than {_INLINE_RETRY_LIMIT:g}s"))
        return super().increment(method, url, response, error, _pool, _stacktrace)


_RETRIES = _Retries(
    total=2,            # three attempts at most
    connect=0,          # refused or timed out: the pipeline's to wait for, not ours
    read=False,         # broken or too slow once sent: raised as is (requests' own default)
    other=0,
    status_forcelist=(429, 503),
    # Both methods the client uses. POST too: POST /api/v1/records is
    # idempotent (a batch replayed duplicates nothing), and a 429 or 503 means
    # nothing was written ("nothing was written, retry later" is the server's
    # 503), so creating a session under a chosen id cannot find the id taken
    # by its own first attempt.
    allowed_methods=frozenset({"GET", "POST"}),
    backoff_factor=0.1,  # with no usable Retry-After: again at once, then after 0.2 s
    respect_retry_after_header=True,
    raise_on_status=False,  # the last answer goes back to the caller, who reads it
)


def _detail(response: requests.Response) -> str:
    detail = _problem_field(response, "detail")
    if isinstance(detail, str):
        return f"HTTP {response.status_code}: {detail}"
    return f"HTTP {response.status_code}"


def _is_problem(response: requests.Response) -> bool:
    """Whether the answer is a lucidic server's own problem document (a
    proxy or another server answering 4xx says nothing about our records)."""
    return response.headers.get("Content-Type", "").startswith("application/problem+json")


def _problem_field(response: requests.Response, name: str) -> Any:
    """A field of the answer's JSON body; None if it has no such field."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get(name) if isinstance(body, dict) else None


def _session_of(record: Record) -> Any:
    return record[1] if record[0] == "session" else record[3].get("session_id")


def _problem_text(response: requests.Response) -> str:
    """The server's own words for a refusal (its ``detail``)."""
    detail = _problem_field(response, "detail")
    if isinstance(detail, str):
        return detail
    return f"the lucidic server refused the request (HTTP {response.status_code})"


def refused_key_message(base_url: str, response: requests.Response) -> str:
    """What to say, and what to do, when the server refuses the API key."""
    return (f"the lucidic server at {base_url} refused the API key ({_detail(response)}); "
            "check LUCIDIC_API_KEY, or make a new key with `lucidic keys create --project "
            "NAME` where the server runs (with the server's --db)")


def encode_batch(records: Sequence[Record]) -> bytes:
    """The request body for records. The fast path serialises as is; only a
    batch carrying text or numbers the server would refuse is cleaned.
    Raises ValueError (or TypeError, RecursionError) if a record cannot be
    written as JSON even cleaned."""
    payload = {"records": [{"kind": r[0], "id": r[1], "ts": r[2], "fields": r[3]}
                           for r in records]}
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"), default=repr)
        if "\\u0000" not in text:
            return text.encode("utf-8")
    except ValueError:  # NaN/inf, or (UnicodeEncodeError) a lone surrogate
        pass
    return json.dumps(clean_json(payload), ensure_ascii=False, allow_nan=False,
                      separators=(",", ":"), default=repr).encode("utf-8")


#: POSTs that may be sent twice: a batch of records applied twice changes
#: nothing, and the server counts a session created again under the same id,
#: project and start time as created (Store.create_session), not as an id
#: taken by another.
_REPEATABLE_POSTS = frozenset({"/api/v1/records", "/api/v1/sessions"})


def _dropped(exc: requests.ConnectionError) -> bool:
    """The connection closed under a request already sent, with no answer
    (not a connection that could not be made: that is MaxRetryError)."""
    return bool(exc.args) and isinstance(exc.args[0], (ProtocolError, ConnectionResetError))


class _Client:
    """One pooled ``requests.Session`` per thread (sessions are not meant to
    be shared across threads), all closed together."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._local = threading.local()
        self._all: weakref.WeakSet[requests.Session] = weakref.WeakSet()

    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=_RETRIES)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = "lucidic-python"
            if self.api_key:
                session.headers["Authorization"] = f"Bearer {self.api_key}"
            self._local.session = session
            self._all.add(session)
        return session

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request, asked again as ``_Retries`` says, and once more on
        a new connection when the connection was dropped under a request
        that may be repeated. Raises SinkError when the server cannot be
        reached or does not answer in time."""
        kwargs.setdefault("timeout", TIMEOUT)
        url = self.base_url + path
        try:
            try:
                return self.session().request(method, url, **kwargs)
            except requests.ConnectionError as exc:
                if not (_dropped(exc) and (method == "GET" or path in _REPEATABLE_POSTS)):
                    raise
                # Most often a pooled connection the server closed as this
                # request went out (its keep-alive ran out): urllib3 cannot
                # tell that from a server that died midway, so it does not
                # ask again (read=False); a request that may be repeated is.
                return self.session().request(method, url, **kwargs)
        except requests.RequestException as exc:
            raise SinkError(f"cannot reach the lucidic server at {self.base_url} "
                            f"({type(exc).__name__})", unreachable=True) from exc

    def reset_after_fork(self) -> None:
        # Connections must not be shared with the parent: start afresh, and
        # leave the parent's sockets alone.
        self._local = threading.local()
        self._all = weakref.WeakSet()

    def close(self) -> None:
        for session in list(self._all):
            session.close()


class HttpSink(Sink):
    """Delivers records to ``lucidic server``; see the module docstring."""

    remote = True

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.identity = "http-" + hashlib.sha256(
            f"{self.base_url}\n{api_key or ''}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
        self._api_key = api_key
        self._client = _Client(self.base_url, api_key)
        self._key_refusal_logged = False

    # -- called by init() / continue_session() ---------------------------------
    # A new session needs no answer from the server: its record is queued like
    # any other, and the first delivery is the key check (a refused key is
    # logged once, and the records stay in the spool until a valid key is
    # used). Only the calls that cannot go on without an answer ask, each
    # within LUCIDIC_CONNECT_TIMEOUT: continuing a session, and starting one
    # with an id the caller chose.

    def verify(self) -> None:
        """A key must be given (checked here, without the network: the first
        delivery is the server's check)."""
        if not self._api_key:
            raise APIKeyVerificationError(
                f"LUCIDIC_BASE_URL is set ({self.base_url}) but no API key was given: pass "
                "lucidic_api_key=... or set LUCIDIC_API_KEY (make a key with "
                "`lucidic keys create --project NAME` where the server runs)")

    def _ask(self, method: str, path: str, what: str, **kwargs: Any) -> requests.Response:
        """One request that the caller waits for, within the connect bound;
        ServerUnavailableError when the server does not answer in time."""
        bound = _config.connect_timeout()
        try:
            response = self._client.request(method, path, timeout=(bound, bound), **kwargs)
        except SinkError as exc:
            raise ServerUnavailableError(
                f"the lucidic server at {self.base_url} did not answer within {bound:g}s "
                f"(LUCIDIC_CONNECT_TIMEOUT) while {what}: {exc.__cause__ or exc}. Nothing "
                "was recorded; retry when the server answers.") from exc
        if response.status_code in (401, 403):
            raise APIKeyVerificationError(refused_key_message(self.base_url, response))
        if response.status_code in (429,) or response.status_code >= 500:
            raise ServerUnavailableError(
                f"the lucidic server at {self.base_url} could not answer while {what} "
                f"({_detail(response)}); nothing was recorded, retry later.")
        return response

    def check_continuable(self, session_id: str, agent_id: str | None) -> dict[str, Any]:
        """The server's answer to "may this key (and agent) continue the
        session?": the session's fields when it may; otherwise
        InvalidOperationError saying why (the server's words, see
        lucidic._continuation), APIKeyVerificationError, or
        ServerUnavailableError."""
        response = self._ask("GET", f"/api/v1/sessions/{quote(session_id, safe='')}/continuable",
                             f"checking session {session_id!r}",
                             params={"agent_id": agent_id} if agent_id else None)
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        if response.status_code == 404:
            raise InvalidOperationError(_continuation.unknown_message(session_id))
        raise InvalidOperationError(_problem_text(response))

    def claim_session(self, record: Record) -> None:
        """Create the session of ``record`` under the id it names, which must
        not be taken (in any project): InvalidOperationError if it is."""
        kind, session_id, ts, fields = record
        response = self._ask("POST", "/api/v1/sessions", f"creating session {session_id!r}",
                             json=clean_json({"kind": kind, "id": session_id, "ts": ts,
                                              "fields": fields}))
        if response.status_code not in (200, 201):
            raise InvalidOperationError(_problem_text(response))

    def lookup_session(self, session_id: str) -> dict[str, Any] | None:
        bound = _config.connect_timeout()
        response = self._client.request("GET", "/api/v1/sessions/" + quote(session_id, safe=""),
                                        timeout=(bound, bound))
        if response.status_code in (401, 403):
            raise APIKeyVerificationError(refused_key_message(self.base_url, response))
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        if response.status_code == 404:
            return None
        raise SinkError(f"the lucidic server could not look up session {session_id!r}: "
                        f"{_detail(response)}", retry_after=_RETRIES.get_retry_after(response))

    # -- called by the worker ---------------------------------------------------------

    def write(self, records: Sequence[Record]) -> None:
        later: list[Record] = []
        refused: list[tuple[Record, str]] = []
        for start in range(0, len(records), MAX_BATCH_RECORDS):
            self._post(records[start:start + MAX_BATCH_RECORDS], later, refused)
        if later or refused:
            raise RecordsRefusedError(later, refused)

    def _post(self, records: Sequence[Record], later: list[Record],
              refused: list[tuple[Record, str]]) -> None:
        """Send records, splitting them until the server takes each part or
        names the records it refuses (added to ``later`` or ``refused``)."""
        try:
            body = encode_batch(records)
        except (ValueError, TypeError, RecursionError) as exc:
            if len(records) == 1:
                refused.append((records[0], f"it cannot be written as JSON: {exc}"))
            else:
                self._post_halves(records, later, refused)
            return
        if len(records) > 1 and len(body) > MAX_REQUEST_BYTES:
            self._post_halves(records, later, refused)
            return
        if len(body) > MAX_RECORD_BYTES:
            self._post_cut(records[0], MAX_RECORD_BYTES, later, refused)
            return
        response = self._client.request(
            "POST", "/api/v1/records", data=body,
            headers={"Content-Type": "application/json"})
        status = response.status_code
        if 200 <= status < 300:
            self._key_refusal_logged = False
            return
        if status in _NOT_THE_RECORDS or status >= 500 or not _is_problem(response):
            self._refused_as_a_whole(response)
        if status == 404:
            self._unknown_sessions(records, response, later, refused)
        elif len(records) > 1:
            self._post_halves(records, later, refused)
        elif status == 413:
            limit = _problem_field(response, "max_bytes")
            target = (limit if isinstance(limit, int) else len(body) // 2) - 1024
            if target < len(body) - 64:
                self._post_cut(records[0], target, later, refused)
            else:
                refused.append((records[0], _detail(response)))
        else:
            refused.append((records[0], _detail(response)))

    def _post_halves(self, records: Sequence[Record], later: list[Record],
                     refused: list[tuple[Record, str]]) -> None:
        middle = len(records) // 2
        self._post(records[:middle], later, refused)
        self._post(records[middle:], later, refused)

    def _post_cut(self, record: Record, max_bytes: int, later: list[Record],
                  refused: list[tuple[Record, str]]) -> None:
        """One record too large to send: cut its longest texts to fit."""
        cut = shrink_record(record, max_bytes, lambda r: len(encode_batch([r])))
        if cut is None:
            refused.append((record, f"it is larger than {max_bytes} bytes as JSON, and "
                                    "cutting its texts cannot make it fit"))
            return
        log_rate_limited("record_cut", "lucidic: a %s record was larger than a request may "
                         "be (%d bytes); its longest texts were cut to fit", record[0],
                         max_bytes)
        self._post([cut], later, refused)

    def _refused_as_a_whole(self, response: requests.Response) -> None:
        """An answer about the request (the key, the rate, the server
        itself), not about records: the whole batch waits and is retried."""
        status = response.status_code
        if status in (401, 403):
            if not self._key_refusal_logged:
                # init() did not wait for the key check: this is where a bad
                # key shows, once, as an error (the pipeline's own warning
                # about the spooled batch is rate-limited).
                self._key_refusal_logged = True
                log_visible(logging.ERROR, "lucidic: %s. Records made with this key are kept "
                            "in the spool, and delivered if the server accepts the key later "
                            "(say, once it serves the database the key was made in).",
                            refused_key_message(self.base_url, response))
            raise SinkError(f"the lucidic server refused the API key ({_detail(response)}); "
                            "records are spooled until a valid key is used",
                            retry_after=_RETRIES.get_retry_after(response) or 30.0)
        if 400 <= status < 500 and status not in _NOT_THE_RECORDS:
            raise SinkError(f"{self.base_url} answered {_detail(response)} without saying "
                            "why: is LUCIDIC_BASE_URL a lucidic server? Records are spooled "
                            "until it takes them", retry_after=30.0)
        raise SinkError(f"the lucidic server did not take the batch ({_detail(response)})",
                        retry_after=_RETRIES.get_retry_after(response))

    def _unknown_sessions(self, records: Sequence[Record], response: requests.Response,
                          later: list[Record], refused: list[tuple[Record, str]]) -> None:
        """Some records name sessions the server does not know (yet: their
        own record may still sit in a spool). They wait; the rest is sent."""
        missing = _problem_field(response, "session_ids")
        if not isinstance(missing, list) or not missing:
            self._refused_as_a_whole(response)
        unknown = set(missing)
        waiting = [r for r in records if _session_of(r) in unknown]
        if not waiting:  # the server named sessions this batch does not hold
            self._refused_as_a_whole(response)
        # Deleted sessions never come back: their records are set aside now.
        deleted = _problem_field(response, "deleted_session_ids")
        gone = set(deleted) & unknown if isinstance(deleted, list) else set()
        refused.extend((r, f"its session {_session_of(r)!r} was deleted on the server")
                       for r in waiting if _session_of(r) in gone)
        later.extend(r for r in waiting if _session_of(r) not in gone)
        if len(waiting) < len(records):
            self._post([r for r in records if _session_of(r) not in unknown], later, refused)

    def server(self) -> tuple[str, str | None]:
        return self.base_url, self._api_key

    def after_fork_in_child(self) -> None:
        self._client.reset_after_fork()

    def close(self) -> None:
        self._client.close()


class HttpReader:
    """What ``lucidic sessions list/show`` read when LUCIDIC_BASE_URL is set.
    Failures end the command with a message (SystemExit), not a traceback."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        if not api_key:
            raise SystemExit("lucidic: LUCIDIC_BASE_URL is set but LUCIDIC_API_KEY is not: "
                             "reading from the server needs an API key (make one with "
                             "`lucidic keys create --project NAME` where the server runs)")
        self._client = _Client(self.base_url, api_key)

    def _get(self, path: str, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> requests.Response:
        try:
            response = self._client.request("GET", path, params=params, headers=headers)
        except SinkError as exc:
            raise SystemExit(f"lucidic: {exc}") from exc
        if response.status_code in (200, 304, 404):
            return response
        if response.status_code in (401, 403):
            raise SystemExit("lucidic: " + refused_key_message(self.base_url, response))
        raise SystemExit(f"lucidic: the server at {self.base_url} answered {_detail(response)}")

    def list_sessions(self, *, agent_id: str | None = None, status: str | None = None,
                      search: str | None = None, id_prefix: str | None = None,
                      limit: int = 50, offset: int = 0,
                      mass_sim_id: str | None = None) -> list[dict[str, Any]]:
        # The server hands out at most 500 a page: follow its cursor for more.
        params: dict[str, Any] = {"agent_id": agent_id, "status": status, "search": search,
                                  "id_prefix": id_prefix, "offset": offset or None,
                                  "mass_sim_id": mass_sim_id}
        sessions: list[dict[str, Any]] = []
        while len(sessions) < limit:
            params["limit"] = min(500, limit - len(sessions))
            response = self._get("/api/v1/sessions",
                                 {k: v for k, v in params.items() if v is not None})
            if response.status_code != 200:
                raise SystemExit(f"lucidic: the server at {self.base_url} answered "
                                 f"{_detail(response)}")
            page = response.json()
            sessions.extend(page["sessions"])
            if not page.get("next_cursor"):
                break
            params.update(cursor=page["next_cursor"], offset=None)
        return sessions

    def session_tree(self, session_id: str) -> dict[str, Any] | None:
        return self.tree_if_changed(session_id, None)[1]

    def has_session(self, session_id: str) -> bool:
        """Whether the key's project holds this session (its row, not its tree)."""
        return self._get(f"/api/v1/sessions/{quote(session_id, safe='')}").status_code == 200

    def tree_if_changed(self, session_id: str,
                        version: str | None) -> tuple[str, dict[str, Any] | None]:
        """As lucidic.reading.Reader.tree_if_changed, by a conditional GET."""
        headers = {"If-None-Match": f'"{version}"'} if version else None
        response = self._get(f"/api/v1/sessions/{quote(session_id, safe='')}/tree",
                             headers=headers)
        if response.status_code == 404:
            return "", None
        current = response.headers.get("ETag", "").strip('"')
        if response.status_code == 304:
            return current, None
        tree: dict[str, Any] = response.json()
        return current, tree

    def delete_session(self, session_id: str, *, force: bool = False) -> tuple[str, str]:
        """Delete a session on the server (``lucidic sessions delete``):
        ("deleted" | "unknown" | "running", the server's words)."""
        try:
            response = self._client.request(
                "DELETE", f"/api/v1/sessions/{quote(session_id, safe='')}",
                params={"force": "true"} if force else None)
        except SinkError as exc:
            raise SystemExit(f"lucidic: {exc}") from exc
        if response.status_code in (401, 403):
            raise SystemExit("lucidic: " + refused_key_message(self.base_url, response))
        outcome = {200: "deleted", 404: "unknown", 409: "running"}.get(response.status_code)
        if outcome is None:
            raise SystemExit(f"lucidic: the server at {self.base_url} answered "
                             f"{_detail(response)}")
        return outcome, _problem_text(response) if outcome != "deleted" else ""

    def close(self) -> None:
        self._client.close()


# -- one sink per server and key ---------------------------------------------------------

_sinks: dict[str, HttpSink] = {}
_sinks_lock = threading.Lock()


def shared_sink(base_url: str, api_key: str | None) -> HttpSink:
    """One sink per (server, key), so every init() reuses its pooled
    connections and the pipeline serving it."""
    sink = HttpSink(base_url, api_key)
    with _sinks_lock:
        return _sinks.setdefault(sink.identity, sink)
