"""A small pool of store connections shared by the request threads of both web
apps: `lucidic ui` and `lucidic server` (which serves the same pages, above it)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..store import Store, StoreError, UnknownSessionError


class StorePool:
    """Up to ``size`` Store connections, each used by one request at a time.

    A connection that failed (the database restarted, the network dropped) is
    closed and replaced by a fresh one on the next request; so is one the
    database ended while it sat idle, found before a request uses it."""

    def __init__(self, url: str, size: int = 8, wait: float = 10.0) -> None:
        self.url = url
        self._size = size
        self._wait = wait
        self._idle: queue.LifoQueue[Store] = queue.LifoQueue()
        self._opened = 0
        self._lock = threading.Lock()
        self._closed = False
        # Open one now: migrates the schema, and fails early on a bad URL.
        self._idle.put(self._open())

    def _open(self) -> Store:
        store = Store(self.url, busy_timeout=10.0)
        with self._lock:
            self._opened += 1
        return store

    @contextmanager
    def store(self) -> Iterator[Store]:
        store = self._checkout()
        healthy = True
        try:
            yield store
        except UnknownSessionError:
            raise
        except StoreError as exc:
            # Refused data (IdInUseError, say) leaves the connection as good
            # as it was; a failed database does not.
            healthy = not exc.transient
            raise
        finally:
            if healthy and not self._closed:
                self._idle.put(store)
            else:
                self._discard(store)

    def _discard(self, store: Store) -> None:
        with self._lock:
            self._opened -= 1
        try:
            store.close()
        except Exception:  # noqa: BLE001 - it is being thrown away
            pass

    def _checkout(self) -> Store:
        while True:
            try:
                store = self._idle.get_nowait()
            except queue.Empty:
                break
            if not store.connection_lost():
                return store
            # The database ended it while it sat idle (PostgreSQL restarted):
            # the others most likely too, each found here rather than by a
            # request that would fail on it.
            self._discard(store)
        with self._lock:
            may_open = self._opened < self._size
        if may_open:
            return self._open()
        try:
            store = self._idle.get(timeout=self._wait)
        except queue.Empty:
            raise StoreError("no database connection became free in time") from None
        if not store.connection_lost():
            return store
        self._discard(store)
        return self._open()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
