"""Sinks: where the worker delivers records.

A sink takes batches of records and applies them idempotently (a batch may be
delivered twice), raising ``SinkError`` when it cannot take the batch now,
and ``RecordsRefusedError`` when it took all of it but some records (which it
names, with the reason). The embedded SQLite
store is the default; ``lucidic.testing`` adds an in-memory one, and the HTTP
sink for ``lucidic server`` plugs in the same way.
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _continuation
from .errors import InvalidOperationError
from .store import DeletedSessionError, Record, Store, StoreError


class SinkError(Exception):
    """A delivery failed; the records will be spooled and retried.

    ``retry_after`` is the delay the backend asked for, if it named one;
    ``unreachable`` says the backend could not be reached at all;
    ``broken`` that it fails on its own side until someone mends it (a
    store that cannot be written, a full disk, a damaged file)."""

    def __init__(self, message: str, retry_after: float | None = None, *,
                 unreachable: bool = False, broken: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.unreachable = unreachable
        self.broken = broken


class RecordsRefusedError(Exception):
    """The sink took the batch except some of its records. ``later`` name a
    session the sink does not know yet (its own record may still be on its
    way: deliver them again once it has arrived); ``refused`` pairs each
    record refused for good with the reason. No retry changes a refusal, so
    the pipeline sets those records aside instead of retrying them."""

    def __init__(self, later: Sequence[Record] = (),
                 refused: Sequence[tuple[Record, str]] = ()) -> None:
        super().__init__(f"{len(later)} record(s) for unknown sessions, "
                         f"{len(refused)} refused")
        self.later = list(later)
        self.refused = list(refused)


class Sink(ABC):
    """What the pipeline and the session calls need of a destination. Every
    sink derives from this class, which declares all that its callers use:
    ``write``, ``lookup_session`` and ``identity`` each sink must give; the
    rest has defaults for a sink that has nothing to do there."""

    #: Names the destination; records spooled for one sink are only ever
    #: replayed into a sink with the same identity.
    identity: str
    #: Records reach this destination over the network: nothing on a
    #: caller's thread may wait for a write to it (see _sessions.write_at_once).
    remote: bool = False

    @abstractmethod
    def write(self, records: Sequence[Record]) -> None:
        """Apply a batch idempotently; raise SinkError when that cannot be done now."""

    @abstractmethod
    def lookup_session(self, session_id: str) -> dict[str, Any] | None:
        """The stored session (at least ``is_finished`` and ``agent_id``), or
        None when unknown. Raises SinkError when the backend cannot tell."""

    def verify(self) -> None:  # noqa: B027 - a default: nothing to check
        """Check, without waiting on the network, what can be checked of the
        credentials before the first record (init and continue_session call
        it): raise APIKeyVerificationError if they are refused. Nothing to
        check by default."""

    def check_continuable(self, session_id: str, agent_id: str | None) -> dict[str, Any]:
        """The stored session, if ``agent_id`` may continue it; otherwise
        InvalidOperationError saying why (the rule of lucidic._continuation).
        Raises SinkError when the backend cannot tell now. A server applies
        the rule itself."""
        stored = self.lookup_session(session_id)
        if stored is None:
            raise InvalidOperationError(_continuation.unknown_message(session_id))
        refused = _continuation.refusal(stored, session_id, agent_id)
        if refused:
            raise InvalidOperationError(refused)
        return stored

    def claim_session(self, record: Record) -> None:
        """Create the session of ``record`` under the id it names, unless a
        session holds that id (in any project): InvalidOperationError then, in
        the same words whoever holds it. Raises SinkError when the backend
        cannot tell now (the caller queues the record). A server decides
        atomically; this default looks, then writes."""
        if self.lookup_session(record[1]) is not None:
            raise InvalidOperationError(_continuation.in_use_message(record[1]))
        self.write([record])

    def after_fork_in_child(self) -> None:  # noqa: B027 - a default: nothing to drop
        """Drop what must not cross fork() (connections); the child opens its own."""

    def local_store(self) -> Store | None:
        """The embedded store this sink writes, for readers in this process
        (lucidic.evals reads runs back from it); None for other sinks."""
        return None

    def server(self) -> tuple[str, str | None] | None:
        """The lucidic server this sink delivers to, as (base URL, API key);
        None for other sinks."""
        return None

    def close(self) -> None:  # noqa: B027 - a default: nothing to release
        """Release connections; the sink may be used again afterwards."""


class LocalSink(Sink):
    """The embedded store: one SQLite file shared by every process of the user."""

    def __init__(self, path: Path, busy_timeout: float = 2.0) -> None:
        self.path = path
        self.identity = "local-" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        self._busy_timeout = busy_timeout
        self._store: Store | None = None
        self._lock = threading.Lock()

    def _get_store(self) -> Store:
        with self._lock:
            if self._store is None:
                try:
                    self._store = Store(self.path, busy_timeout=self._busy_timeout)
                except StoreError as exc:
                    raise self._failed(exc) from exc
            return self._store

    def write(self, records: Sequence[Record]) -> None:
        refused: list[tuple[Record, str]] = []
        self._write_apart(records, refused)
        if refused:
            raise RecordsRefusedError(refused=refused)

    def _write_apart(self, records: Sequence[Record],
                     refused: list[tuple[Record, str]]) -> None:
        """Write records; when the store refuses them for what they hold
        (which no retry would change), write them in halves, so that only the
        records it refuses are left out, not everything queued with them."""
        try:
            self._get_store().write(records)
            return
        except (StoreError, ValueError, TypeError, OverflowError) as exc:
            if isinstance(exc, StoreError) and exc.transient:
                raise self._failed(exc) from exc
            if len(records) == 1:
                refused.append((records[0], f"the store refused it: {exc}"))
                return
        middle = len(records) // 2
        self._write_apart(records[:middle], refused)
        self._write_apart(records[middle:], refused)

    def _failed(self, exc: StoreError) -> SinkError:
        if exc.broken:
            return SinkError(f"the embedded store at {self.path} cannot be written ({exc})",
                             broken=True)
        return SinkError(str(exc))

    def local_store(self) -> Store:
        return self._get_store()

    def claim_session(self, record: Record) -> None:
        """As Sink.claim_session; a deleted session's id stays taken (its
        records are refused for good), which InvalidOperationError says."""
        if self.lookup_session(record[1]) is not None:
            raise InvalidOperationError(_continuation.in_use_message(record[1]))
        try:
            self._get_store().write([record])
        except DeletedSessionError as exc:
            raise InvalidOperationError(f"{exc}: a deleted session's id cannot be used "
                                        "again; start the session without session_id, or "
                                        "with another") from None
        except (StoreError, ValueError, TypeError, OverflowError) as exc:
            if isinstance(exc, StoreError) and exc.transient:
                raise self._failed(exc) from exc
            raise InvalidOperationError(f"the store refused session {record[1]!r}: {exc}"
                                        ) from None

    def check_continuable(self, session_id: str, agent_id: str | None) -> dict[str, Any]:
        """As Sink.check_continuable; a deleted session is said to be deleted,
        not unknown."""
        stored = self.lookup_session(session_id)
        if stored is None:
            try:
                deleted = bool(self._get_store().deleted_among([session_id]))
            except StoreError as exc:
                raise self._failed(exc) if exc.transient else InvalidOperationError(
                    _continuation.unknown_message(session_id)) from exc
            raise InvalidOperationError(_continuation.deleted_message(session_id) if deleted
                                        else _continuation.unknown_message(session_id))
        refused = _continuation.refusal(stored, session_id, agent_id)
        if refused:
            raise InvalidOperationError(refused)
        return stored

    def lookup_session(self, session_id: str) -> dict[str, Any] | None:
        try:
            return self._get_store().get_session(session_id)
        except StoreError as exc:
            raise self._failed(exc) from exc

    def after_fork_in_child(self) -> None:
        # The store makes itself safe across fork() (see Store._hold_for_fork);
        # only this sink's own lock may have been copied held.
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
