"""Hot path → bounded queue → one background worker → sink.

The hot path (``put``) appends to a deque and, once a batch is waiting, wakes
the worker; it never does I/O unless the queue is full, in which case the
oldest records go straight to the on-disk spool rather than being dropped. The
worker batches by size and time, delivers to the sink, spools a batch the sink
refused, backs off (honouring the sink's ``retry_after``) and replays the spool
as soon as the sink answers again.

A record still last in the queue can be amended (``amend_last``): a step that
ends before the worker has taken its start is queued as one record, not two,
which is what the store would have made of them. Whoever takes records off
the queue holds ``_taking`` meanwhile, so a record is amended only while no
one else can have it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._internal import log_rate_limited, logger, record_internal_error
from ._sinks import Sink, SinkError
from ._spool import Spool
from .store import Record

_MAX_BACKOFF = 10.0
_ORPHAN_SCAN_INTERVAL = 30.0


class _FlushRequest:
    __slots__ = ("done", "fail_fast", "failed")

    def __init__(self, fail_fast: bool) -> None:
        self.done = threading.Event()
        self.fail_fast = fail_fast
        self.failed = False


@dataclass
class PipelineStats:
    delivered: int = 0
    spooled: int = 0
    delivery_failures: int = 0
    lost: int = 0  # only when the spool itself cannot be written


class Pipeline:
    def __init__(self, sink: Sink, spool: Spool, *, max_queue: int = 65536,
                 batch_size: int = 2000, interval: float = 0.1) -> None:
        self.sink = sink
        self.spool = spool
        self.stats = PipelineStats()
        self._max_queue = max_queue
        self._overflow_chunk = max(1, max_queue // 8)
        self._batch_size = batch_size
        self._interval = interval
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._queue: deque[Any] = deque()
        #: Held while records are taken off the queue (see amend_last).
        self._taking = threading.Lock()
        #: put() looks further only once the queue is this long: to wake the
        #: worker for a full batch, or to spill when the queue is full.
        self._crowded_at = self._batch_size
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = False
        self._healthy = True
        self._failures = 0
        self._retry_at = 0.0
        self._spool_dirty = True  # segments of dead processes may be waiting
        self._next_orphan_scan = 0.0
        self._assembling: list[Record] = []
        self._waiting: list[_FlushRequest] = []

    # -- hot path -------------------------------------------------------------

    def put(self, record: Record) -> None:
        queue = self._queue
        queue.append(record)
        if len(queue) >= self._crowded_at:
            self._crowded()

    def _crowded(self) -> None:
        """A batch is waiting: wake the worker (once: put() looks no further
        until the worker has taken records); or the queue is full (the sink is
        slower than the program): spool in the caller's thread rather than
        drop or grow without bound."""
        if len(self._queue) > self._max_queue:
            self._overflow()
        elif not self._wake.is_set():
            self._wake.set()
        self._crowded_at = self._max_queue + 1

    def _overflow(self) -> None:
        """The oldest part of the queue goes to disk in one write, so the next
        few thousand calls are back on the fast path."""
        chunk: list[Record] = []
        queue = self._queue
        with self._taking:
            try:
                while len(chunk) < self._overflow_chunk:
                    item = queue.popleft()
                    if isinstance(item, _FlushRequest):
                        queue.appendleft(item)  # keep its place: it waits on what follows
                        break
                    chunk.append(item)
            except IndexError:
                pass  # the worker drained it meanwhile
        if not chunk:
            return
        try:
            self.spool.append(chunk)
            self._spool_dirty = True
            self.stats.spooled += len(chunk)
        except Exception as exc:  # noqa: BLE001
            self.stats.lost += len(chunk)
            record_internal_error("spool_write", exc)

    def amend_last(self, record: Record, fields: dict[str, Any], ts: float) -> bool:
        """Merge ``fields`` (the newer values, at ``ts``) into ``record`` if it is
        still the last thing queued: nothing was queued after it, in any thread,
        and the worker has not taken it, so one record says what the two would
        have. False (nothing changed) otherwise, or when the queue is being
        taken from right now: the hot path never waits."""
        queue = self._queue
        taking = self._taking
        if not taking.acquire(blocking=False):
            return False  # someone is taking records off the queue: never wait for them
        try:
            if not queue or queue[-1] is not record:
                return False
            merged = record[3]
            merged.update(fields)
            queue[-1] = (record[0], record[1], ts, merged)
        finally:
            taking.release()
        return True

    def deliver_soon(self) -> None:
        """Wake the worker now rather than at its next interval (a session
        record others may look for at once)."""
        self._wake.set()

    # -- control --------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="lucidic-worker",
                                                daemon=True)
                self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def flush(self, timeout: float, *, fail_fast: bool = False) -> bool:
        """Wait until everything queued before this call, and everything this
        process spooled, has reached the sink. With ``fail_fast``, give up as
        soon as a delivery fails instead of waiting for the sink to return."""
        if not self.running:
            if not self._queue and not self.spool.has_own_pending():
                return True
            try:
                self.start()
            except RuntimeError:
                # No new threads at interpreter shutdown (Python 3.12+): deliver
                # from this thread instead.
                self._cycle()
                return not self._queue and not self.spool.has_own_pending()
        request = _FlushRequest(fail_fast)
        self._queue.append(request)
        self._wake.set()
        return request.done.wait(max(timeout, 0.0)) and not request.failed

    def shutdown(self, timeout: float) -> bool:
        """Flush within ``timeout``; whatever could not be delivered by then is
        written to the spool, for this or a later process to deliver."""
        deadline = time.monotonic() + timeout
        delivered = self.flush(timeout * 0.8)
        self._stopping = True
        self._wake.set()
        if not delivered:
            self._rescue()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self.spool.close()
        except Exception as exc:  # noqa: BLE001
            record_internal_error("spool_close", exc)
        return delivered

    def _rescue(self) -> None:
        """Called from the exiting thread while the worker may be stuck in the
        sink: spool the batch it holds and everything still queued. Records
        may end up both delivered and spooled; replays are idempotent."""
        pending: list[Record] = list(self._assembling)
        with self._taking:
            while True:
                try:
                    item = self._queue.popleft()
                except IndexError:
                    break
                if isinstance(item, _FlushRequest):
                    item.failed = True
                    item.done.set()
                else:
                    pending.append(item)
        if pending:
            try:
                self.spool.append(pending)
                self.stats.spooled += len(pending)
                self.spool.sync()
            except Exception as exc:  # noqa: BLE001
                self.stats.lost += len(pending)
                record_internal_error("spool_write", exc)
            log_rate_limited("exit_spooled", "lucidic: the sink did not take %d records in "
                             "time; they were spooled to %s and will be delivered by the "
                             "next process", len(pending), self.spool.directory)

    # -- worker ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            timeout = self._interval
            if not self._healthy:
                timeout = max(0.001, min(timeout, self._retry_at - time.monotonic()))
            self._wake.wait(timeout)
            self._wake.clear()
            try:
                self._cycle()
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                record_internal_error("worker", exc)
            if self._stopping and not self._queue:
                return

    def _cycle(self) -> None:
        self._maybe_replay()
        queue = self._queue
        while queue:
            batch = self._assembling = []
            request: _FlushRequest | None = None
            with self._taking:
                self._crowded_at = self._batch_size  # put() may wake us again
                for _ in range(min(len(queue), self._batch_size)):
                    item = queue.popleft()
                    if isinstance(item, _FlushRequest):
                        request = item
                        break
                    batch.append(item)
            if batch:
                self._deliver(batch)
            self._assembling = []
            if request is not None:
                self._waiting.append(request)
        try:
            self.spool.sync()
        except Exception as exc:  # noqa: BLE001
            record_internal_error("spool_sync", exc)
        self._settle_flushes()

    def _deliver(self, batch: Sequence[Record]) -> None:
        if not self._healthy and time.monotonic() < self._retry_at:
            self._spill(batch)
            return
        try:
            self.sink.write(batch)
        except Exception as exc:  # noqa: BLE001 - any sink failure means: spool, retry
            self._failed(exc)
            self._spill(batch)
            return
        self.stats.delivered += len(batch)
        self._recovered()

    def _spill(self, batch: Sequence[Record]) -> None:
        try:
            self.spool.append(batch)
            self._spool_dirty = True
            self.stats.spooled += len(batch)
        except Exception as exc:  # noqa: BLE001
            self.stats.lost += len(batch)
            record_internal_error("spool_write", exc)

    def _maybe_replay(self) -> None:
        now = time.monotonic()
        if not self._spool_dirty and now >= self._next_orphan_scan:
            self._next_orphan_scan = now + _ORPHAN_SCAN_INTERVAL
            self._spool_dirty = self.spool.has_any()
        if not self._spool_dirty or (not self._healthy and now < self._retry_at):
            return
        try:
            complete = self.spool.replay(self._deliver_replayed, self._batch_size)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return
        self._recovered()
        self._spool_dirty = not complete

    def _deliver_replayed(self, batch: Sequence[Record]) -> None:
        self.sink.write(batch)
        self.stats.delivered += len(batch)

    def _failed(self, exc: BaseException) -> None:
        self.stats.delivery_failures += 1
        self._failures += 1
        self._healthy = False
        delay = min(_MAX_BACKOFF, 0.1 * 2 ** min(self._failures, 10))
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after > 0:
            delay = min(float(retry_after), 300.0)
        self._retry_at = time.monotonic() + delay
        level_kind = "sink_down" if isinstance(exc, SinkError) else "sink_error"
        log_rate_limited(level_kind, "lucidic: the sink refused a batch (%s); records are "
                         "spooled to %s and retried in %.1fs", exc, self.spool.directory, delay)
        for request in self._waiting:
            if request.fail_fast:
                request.failed = True
                request.done.set()
        self._waiting = [r for r in self._waiting if not r.fail_fast]

    def _recovered(self) -> None:
        if not self._healthy:
            logger.info("lucidic: the sink accepts records again")
        self._healthy = True
        self._failures = 0

    def _settle_flushes(self) -> None:
        if self._waiting and not self.spool.has_own_pending():
            for request in self._waiting:
                request.done.set()
            self._waiting = []

    # -- fork -----------------------------------------------------------------

    def before_fork(self) -> None:
        self.spool.before_fork()
        with self._taking:
            # Nothing queued before a fork is amended after it: the child may
            # write to the same rows meanwhile, so each record keeps its own time.
            queue = self._queue
            if queue and not isinstance(queue[-1], _FlushRequest):
                last = queue[-1]
                queue[-1] = (last[0], last[1], last[2], last[3])

    def after_fork_in_parent(self) -> None:
        self.spool.after_fork_in_parent()

    def after_fork_in_child(self) -> None:
        """The child starts empty: what the parent had queued is the parent's
        to deliver. It gets its own worker, spool segments and connection."""
        was_running = self._thread is not None
        self.spool.after_fork_in_child()
        self.sink.after_fork_in_child()
        self._init_runtime()
        self.stats = PipelineStats()
        if was_running:
            self.start()
