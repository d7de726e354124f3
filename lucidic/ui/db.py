"""A small pool of store connections shared by the request threads of both web
apps: `lucidic ui` and `lucidic server` (which serves the same pages, above it)."""

from __future__ import annotations

import threading
import time
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
        # Idle connections, the last returned on top; and how many exist,
        # idle, in use or being opened (a slot is taken before opening, so
        # that requests arriving at once never open more than ``size``).
        self._idle: list[Store] = []
        self._changed = threading.Condition()
        self._closed = False
        # Open one now: migrates the schema, and fails early on a bad URL.
        self._opened = 1
        self._idle.append(self._open())

    def _open(self) -> Store:
        """A new connection, in a slot already taken (given back if it fails)."""
        try:
            return Store(self.url, busy_timeout=10.0)
        except BaseException:
            self._release_slot()
            raise

    def _release_slot(self) -> None:
        with self._changed:
            self._opened -= 1
            self._changed.notify()

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
            if not (healthy and self._give_back(store)):
                self._discard(store)

    def _give_back(self, store: Store) -> bool:
        with self._changed:
            if self._closed:
                return False
            self._idle.append(store)
            self._changed.notify()
            return True

    def _discard(self, store: Store) -> None:
        self._release_slot()
        try:
            store.close()
        except Exception:  # noqa: BLE001 - it is being thrown away
            pass

    def _checkout(self) -> Store:
        deadline = time.monotonic() + self._wait
        ended: list[Store] = []
        try:
            with self._changed:
                while True:
                    while self._idle:
                        store = self._idle.pop()
                        if not store.connection_lost():
                            return store
                        # The database ended it while it sat idle (PostgreSQL
                        # restarted): the others most likely too, each found
                        # here rather than by a request that would fail on it.
                        self._opened -= 1
                        ended.append(store)
                    if self._opened < self._size:
                        self._opened += 1
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise StoreError("no database connection became free in time")
                    # Woken by a connection given back or a slot freed (one
                    # that failed and was closed).
                    self._changed.wait(left)
        finally:
            for store in ended:
                store.close()
        return self._open()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
        for store in idle:
            store.close()
