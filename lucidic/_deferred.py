"""Work a record needs that the caller's thread must not wait for: counting a
streamed answer's tokens with a tokenizer whose vocabulary takes a second to
load. Jobs run in order on one daemon thread, each inside a guard (one that
fails is logged and counted, the next runs); what a job records it queues
like any other record (an amendment of the event it completes).

``flush()`` and ``shutdown()`` wait for the jobs submitted before them
(within their bound) before they flush the pipelines, so the amendments are
delivered with everything else. A forked child starts with none of the
parent's jobs (the parent runs them) and a thread of its own when it needs one.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable

from ._internal import record_internal_error

#: Jobs waiting beyond this many are dropped (and counted as internal errors):
#: a job is a few milliseconds of work, one per estimated LLM call.
MAX_PENDING = 10_000


class Deferred:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._jobs: deque[Callable[[], None]] = deque()
        self._pending = 0  # submitted and not yet finished
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the background thread (in this thread when no
        thread can be started: at interpreter shutdown)."""
        with self._cond:
            if self._pending >= MAX_PENDING:
                record_internal_error("deferred_full", RuntimeError(
                    f"{MAX_PENDING} deferred jobs waiting: one dropped"))
                return
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._run, name="lucidic-deferred",
                                          daemon=True)
                try:
                    thread.start()
                    self._thread = thread
                except RuntimeError:  # no new threads at interpreter shutdown
                    self._thread = None
            if self._thread is not None:
                self._jobs.append(job)
                self._pending += 1
                self._cond.notify()
                return
        _run_one(job)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job = self._jobs.popleft()
            try:
                _run_one(job)
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait until every job submitted so far has run; False if that did
        not happen within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                if threading.current_thread() is self._thread:
                    return False  # a job waiting for the jobs: it would wait for itself
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True


def _run_one(job: Callable[[], None]) -> None:
    try:
        job()
    except Exception as exc:  # noqa: BLE001 - one bad job never stops the others
        record_internal_error("deferred_job", exc)


deferred = Deferred()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=deferred._reset)
