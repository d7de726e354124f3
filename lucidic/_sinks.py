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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .store import Record, Store, StoreError

_abandoned_after_fork: list[Store] = []


class SinkError(Exception):
    """A delivery failed; the records will be spooled and retried.

    ``retry_after`` is the delay the backend asked for, if it named one;
    ``unreachable`` says the backend could not be reached at all."""

    def __init__(self, message: str, retry_after: float | None = None, *,
                 unreachable: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.unreachable = unreachable


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


class Sink(Protocol):
    #: Names the destination; records spooled for one sink are only ever
    #: replayed into a sink with the same identity.
    identity: str

    def write(self, records: Sequence[Record]) -> None: ...

    def lookup_session(self, session_id: str) -> dict[str, Any] | None:
        """The stored session (at least ``is_finished`` and ``agent_id``), or
        None when unknown. Raises SinkError when the backend cannot tell."""
        ...

    def close(self) -> None: ...


class LocalSink:
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
                    raise SinkError(str(exc)) from exc
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
                raise SinkError(str(exc)) from exc
            if len(records) == 1:
                refused.append((records[0], f"the store refused it: {exc}"))
                return
        middle = len(records) // 2
        self._write_apart(records[:middle], refused)
        self._write_apart(records[middle:], refused)

    def lookup_session(self, session_id: str) -> dict[str, Any] | None:
        try:
            return self._get_store().get_session(session_id)
        except StoreError as exc:
            raise SinkError(str(exc)) from exc

    def after_fork_in_child(self) -> None:
        # SQLite connections must not cross fork(): the child opens its own and
        # keeps the parent's alive but unused (closing it here could disturb
        # the parent's locks).
        if self._store is not None:
            _abandoned_after_fork.append(self._store)
        self._store = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
