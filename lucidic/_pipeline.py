"""Hot path → bounded queue → background worker → sink, with a spill thread
that keeps the queue's records safe on disk.

The hot path (``put``) appends to a deque and, once a batch is waiting, wakes
the worker. It never does I/O and never waits for another thread: when the
queue is full it only wakes the spill thread; when the spill thread is
overdue it gives the interpreter up for a moment, once a tick at most
(``_look_in_on_the_spill``). The worker batches by size and time, delivers to the
sink, spools a batch the sink did not take, backs off (honouring the sink's
``retry_after``) and replays the spool as soon as the sink answers again.

The spill thread bounds what a SIGKILL can lose. Every ``SPILL_TICK`` it
looks at the queue: the records that have waited ``SPILL_AFTER`` there (the
worker is behind) it appends to a copy segment and leaves queued, for the
worker to deliver from memory (the segment is removed once they are
delivered: reading records back from disk costs several times their
delivery); while the worker has held its batch that long (the sink is slow,
or a busy user thread leaves the worker little of the interpreter) it copies
all that is queued at every tick, and the held batch too. Records leave the
queue for the spool only when memory should not hold them: all of them while
the worker is stuck (the sink is failing, or has held a batch
``STUCK_AFTER``), the oldest eighth when the queue is full (what a copy
holds already is not written again). So a record reaches the kernel (the
sink, or a ``write()`` to the spool) within about ``LOSS_WINDOW`` of being
recorded, whatever the queue holds. In durable mode (``LUCIDIC_DURABLE=1``)
``put`` itself writes each record to the spool before returning, and the
worker delivers from there: a SIGKILL loses nothing.

A record is always in at least one of these places: the queue, the worker's
hands (``_inflight``), or written down. The worker and the spill thread take
records off the queue under one lock, and the spill thread removes what it
spills only once it is written; so an exit that interrupts a spill midway
finds every record still queued, and writes them itself.

The queue holds each record as its four parts, one after another (kind, id,
time, fields), not as the record's tuple: a tuple holding a dict is never
untracked by CPython's cyclic garbage collector, so while records pile up
(a tight loop holding the interpreter from the worker) every collection
walked each of them, where its parts (strings, a float, a dict of plain
values) are not tracked at all. Whoever takes records off makes them
records again (``_items``); positions count records, not slots.

A record still last in the queue can be amended (``amend_last``): a step that
ends before the worker has taken its start is queued as one record, not two,
which is what the store would have made of them. It is amended only while it
is the last thing queued: never once it is being written to the spool (or
copied there), in the worker's hands, written down in durable mode, or queued
before a fork(). The hot path takes no lock for it: the queued record is
replaced in one step no other thread can run inside.

When nothing can be written (the disk is full) and the sink does not take
records either, the queue keeps the oldest records, up to twice its size, and
the newest are dropped and counted (``stats.dropped``); session records are
always kept. Records the sink refuses for good are set aside in the spool's
rejected file (``stats.rejected``); records naming a session the sink does
not know yet wait in a later segment until it does (``LATER_GRACE``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, islice, repeat, starmap
from operator import itemgetter
from pathlib import Path
from typing import Any

from ._config import DEFAULT_MAX_QUEUE
from ._internal import (
    log_rate_limited,
    log_visible,
    logger,
    rearm,
    record_internal_error,
    warn_once,
)
from ._sinks import RecordsRefusedError, Sink, SinkError
from ._spool import Lines, Spool, encode_lines, encode_parts
from .store import RECORD_PARTS, ROWS_PER_STATEMENT, Record

_MAX_BACKOFF = 10.0
_ORPHAN_SCAN_INTERVAL = 30.0
#: How often the spill thread looks at the queue and the worker.
SPILL_TICK = 0.025
#: A record queued (or in the worker's hands) this long is written to the spool.
SPILL_AFTER = 0.1
#: A worker that has held a batch this long is waiting on its sink (a locked
#: store, a hung server), not only on the interpreter a busy user thread
#: keeps (that takes a batch 0.3 s at most): the spill thread then writes all
#: that is queued to the spool at every tick, in one write, rather than copy
#: it and keep it in memory. (Copying as well, two writes a tick, doubled what
#: a SIGKILL lost in a tight loop with the store locked.)
STUCK_AFTER = 0.5
#: What a SIGKILL can lose: the records of about this many seconds before it
#: (records wait SPILL_AFTER at most in the queue and as much in the worker's
#: hands, each noticed within a tick), plus the time to write them.
LOSS_WINDOW = 2 * (SPILL_AFTER + SPILL_TICK)
#: Records naming a session the sink does not know yet are retried this often...
_LATER_RETRY = 5.0
#: ...and set aside as refused once it has not known it for this long.
LATER_GRACE = 600.0
#: While the spool cannot be written, the spill thread tries again this often.
_SPOOL_RETRY = 1.0
#: A spill is written in pieces of this many records (a full queue is one):
#: each piece is one write(), and after each write() the spill thread must
#: win the interpreter back from a busy user thread, which can take far
#: longer than a switch interval (5 ms) when other threads want it too.
SPILL_PIECE = 65536

#: The hot path looks in on the spill thread every this many records queued
#: since it last ran (see Pipeline._look_in_on_the_spill)...
SPILL_LOOK = 1024
#: ...and, while it is overdue, gives the interpreter up this long, once a
#: tick at most.
SPILL_YIELD = 0.0002

#: Test hook: the spill thread calls it after writing each piece of a spill,
#: with (records written so far, records in the spill), before the spilled
#: records leave the queue. Lets a test stop a spill midway.
spill_checkpoint: Callable[[int, int], None] | None = None


#: Whether one thread runs Python at a time, switching only at calls and
#: loops, which amend_last relies on (a free-threaded build never amends).
_GIL: bool = getattr(sys, "_is_gil_enabled", lambda: True)()

#: Runs an iterator to its end in C, keeping nothing.
_consume: Callable[[Iterable[Any]], None] = deque(maxlen=0).extend

#: How many set-aside records Pipeline._reject remembers, not to set one
#: aside twice.
_SET_ASIDE_KEPT = 1024

#: Why a record is set aside when no encoder can write it.
_UNENCODABLE = "it cannot be written as JSON"

#: What became of a batch the worker took.
_DELIVERED, _SPOOLED, _KEPT_NOWHERE = object(), object(), object()


class _FlushRequest:
    __slots__ = ("done", "fail_fast", "failed")

    def __init__(self, fail_fast: bool) -> None:
        self.done = threading.Event()
        self.fail_fast = fail_fast
        self.failed = False

    def fail(self) -> None:
        self.failed = True
        self.done.set()


def _records_in(items: list[Any]) -> list[Record]:
    """The records among queued items (the items themselves when no flush
    request is among them, as usual)."""
    if _FlushRequest not in set(map(type, items)):
        return items
    return [item for item in items if type(item) is not _FlushRequest]


#: Queue slots an item takes: a record's parts, or a flush request and Nones.
_SLOTS = RECORD_PARTS
_REQUEST_PAD = (None,) * (_SLOTS - 1)
#: An item's first slot: a record's kind, or a flush request.
_HEAD = itemgetter(0)


def _items(slots: list[Any]) -> list[Any]:
    """The queued items (records, flush requests) that ``slots`` hold: made
    in C (a Python loop would hand the interpreter to a busy user thread
    many times over), requests looked for only when there are any."""
    part = iter(slots)
    items: list[Any] = list(zip(*(part,) * _SLOTS, strict=True))
    if _holds_requests(slots):
        items = [item[0] if type(item[0]) is _FlushRequest else item for item in items]
    return items


def _holds_requests(slots: list[Any]) -> bool:
    """Whether queue ``slots`` hold a flush request (looked for in C: the
    usual answer is no)."""
    return _FlushRequest in set(map(type, slots[::_SLOTS]))


def _requests_among(slots: list[Any]) -> list[_FlushRequest]:
    """The flush requests that queue ``slots`` hold, in order."""
    if not _holds_requests(slots):
        return []
    return [head for head in slots[::_SLOTS] if type(head) is _FlushRequest]


def _encode_slots(slots: list[Any]) -> tuple[Lines, list[Record], int]:
    """The spool lines of the records that queue ``slots`` hold (flush
    requests left out), the records no encoder could write, and how many
    records there were (see _spool.encode_parts)."""
    if not _holds_requests(slots):
        lines = encode_parts(slots)
        if lines is not None:
            return lines, [], len(slots) // _SLOTS
    records = _records_in(_items(slots))  # (rare: a flush request, or an odd record)
    lines, unencodable = encode_lines(records)
    return lines, unencodable, len(records)


def _slots(items: Iterable[Any]) -> list[Any]:
    """The queue slots of ``items`` (records, flush requests)."""
    return [part for item in items
            for part in ((item, *_REQUEST_PAD) if type(item) is _FlushRequest else item)]


@dataclass
class PipelineStats:
    delivered: int = 0
    #: Records written to the spool (one may be written twice: a copy of a
    #: batch the sink was slow to take, then the batch it failed).
    spooled: int = 0
    delivery_failures: int = 0
    #: Records lost: the queue was full while neither the sink nor the spool
    #: could take anything (the newest are dropped, the oldest kept).
    dropped: int = 0
    #: Records the sink refused for good, set aside in ``spool.rejected_path``.
    rejected: int = 0


class Pipeline:
    def __init__(self, sink: Sink, spool: Spool, *, max_queue: int = DEFAULT_MAX_QUEUE,
                 batch_size: int = ROWS_PER_STATEMENT, interval: float = 0.05,
                 durable: bool = False, later_grace: float = LATER_GRACE,
                 later_retry: float = _LATER_RETRY) -> None:
        self.sink = sink
        self.spool = spool
        self.stats = PipelineStats()
        #: Every record is written to the spool before put() returns.
        self.durable = durable
        #: fork() calls so far (see amend_last).
        self.forks = 0
        self._max_queue = max(2, max_queue)
        self._batch_size = batch_size
        self._interval = interval
        self._later_grace = later_grace
        self._later_retry = later_retry
        self._init_runtime()

    def _init_runtime(self) -> None:
        #: Items queued, each in _SLOTS slots (see the module's docstring).
        self._queue: deque[Any] = deque()
        #: Queue slots at which put() next looks in on the spill thread.
        self._look_at = SPILL_LOOK * _SLOTS
        self._spill_ran = time.monotonic()  # when the spill thread last finished a tick
        self._next_yield = 0.0
        # Queue slots below which put() only appends.
        self._busy = self._calm_busy()
        self._wake = threading.Event()
        self._spill_wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._spiller: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        #: The fields of the records set aside lately, by their id(): a record
        #: the spill thread could not encode when it copied it is set aside
        #: then, and stays queued; the sink refuses the same record when the
        #: worker delivers it, and it is not set aside twice. (The fields are
        #: kept, so that no other object takes their id meanwhile.)
        self._set_aside: OrderedDict[int, dict[str, Any]] = OrderedDict()
        # Taking items off the queue (worker, spill thread, exit) happens
        # under this lock; appending (the hot path) does not need it.
        self._take_lock = threading.RLock()
        self._taken = 0  # items ever taken off the queue
        #: (when, items ever appended by then), seen at the ticks of the last
        #: SPILL_AFTER, oldest first: by time, not by a count of ticks, since
        #: a busy user thread can keep a tick waiting several ticks' time.
        self._marks: deque[tuple[float, int]] = deque()
        self._inflight: list[Record] | None = None
        self._inflight_since = 0.0
        #: (batch, file): the copy of the worker's batch that the spill thread
        #: wrote while the sink was slow; removed again if the batch arrives.
        self._inflight_copy: tuple[list[Record], Path] | None = None
        self._inflight_lock = threading.Lock()
        #: The worker's batch is on disk already: it spooled the batch itself,
        #: or copies of the queue held all of it when it was taken.
        self._inflight_on_disk = False
        #: Queue positions (counted as _taken counts) below this one have been
        #: copied to disk: those still queued are in a copy (_copies) or were
        #: written to the spool with it. The spill thread alone moves it, under
        #: the take lock, before it writes the copy.
        self._copied_upto = 0
        #: (end, file): the copies the spill thread wrote of queued records,
        #: oldest first, each of the positions up to ``end``; removed once the
        #: worker has delivered past ``end`` (under the in-flight lock).
        self._copies: deque[tuple[int, Path]] = deque()
        #: Every position below this one has been delivered or spooled by the worker.
        self._done_upto = 0
        #: The last queued item the spill thread chose to write to disk (see _freeze).
        self._frozen_last: Any = None
        self._passed: deque[_FlushRequest] = deque()  # flush requests the spill took past
        self._stopping = False
        self._healthy = True
        self._failures = 0
        self._retry_at = 0.0
        self._spool_dirty = True  # segments of dead processes may be waiting
        self._later_waiting = True
        self._next_later_retry = 0.0
        self._next_orphan_scan = 0.0
        self._replayed_batches = 0
        self._durable_unsent = 0
        self._dropping = False
        self._spool_failing = False
        self._spool_retry_at = 0.0  # while it fails, the spill thread tries again from then
        self._losses_reported = 0
        self._waiting: list[_FlushRequest] = []

    def _calm_busy(self) -> int:
        """put()'s threshold (in slots) while the worker is not woken."""
        return min(self._batch_size * _SLOTS, self._max_queue * _SLOTS, self._look_at)

    def _queued_count(self) -> int:
        """How many items are queued."""
        return len(self._queue) // _SLOTS

    def queued(self) -> list[Any]:
        """What is queued now, oldest first: records, and flush requests."""
        return _items(list(self._queue))

    # -- hot path -------------------------------------------------------------

    def put(self, record: Record) -> None:
        """Queue a record: a (kind, id, ts, fields) tuple, always of four (its
        parts are queued one after another: a record of another length would
        put every record after it out of step; the type checker holds every
        caller to it, and takers check it with zip(strict=True))."""
        if self.durable:
            self._put_durable(record)
            return
        queue = self._queue
        size = len(queue)  # slots
        if size >= self._busy:
            queued = size // _SLOTS
            if queued >= self._max_queue and self._crowded(record, queued):
                return
            if queued >= self._batch_size and not self._wake.is_set():
                self._wake.set()
            if size >= self._look_at:
                self._look_in_on_the_spill(size)
            # Once the worker is woken put() looks no further (but for a full
            # queue, or to look in on the spill thread) until it has taken a
            # batch (_take lowers it again).
            self._busy = min((self._max_queue if self._wake.is_set() else self._batch_size)
                             * _SLOTS, self._look_at)
        queue.extend(record)  # one C call: its four parts are never apart

    def _look_in_on_the_spill(self, size: int) -> None:
        """The queue grew by SPILL_LOOK records (``size``: its slots now)
        since the spill thread last
        ran. If that was two ticks ago or more, it is most likely waiting for
        the interpreter that this thread holds: CPython lets a waiting thread
        force a switch only when no other switch happened meanwhile, so while
        a busy user thread and the worker hand it to each other the spill
        thread can wait far longer than a switch interval, and what it waits
        to write is what a SIGKILL would lose. Then give the interpreter up
        for a moment, once a tick at most (never waiting for the spill thread
        itself: it may be stuck on a slow disk)."""
        self._look_at = size + SPILL_LOOK * _SLOTS
        now = time.monotonic()
        if now - self._spill_ran >= 2 * SPILL_TICK and now >= self._next_yield:
            self._next_yield = now + SPILL_TICK
            time.sleep(SPILL_YIELD)

    def _crowded(self, record: Record, size: int) -> bool:
        """The queue is full: wake the spill thread (never wait for it). When
        the spool cannot be written either, keep the oldest records, twice
        the queue's size, and drop this one (session records are always
        kept). True if dropped. (A spool that can be written still gets a
        hard bound, far above, in case the spill thread itself is stuck.)"""
        if not self._spill_wake.is_set():
            self._spill_wake.set()
        limit = 2 * self._max_queue if self._spool_failing else 4 * self._max_queue + 16384
        if size < limit or record[0] == "session":
            return False
        with self._stats_lock:
            self.stats.dropped += 1
        self._dropping = True
        return True

    def _put_durable(self, record: Record) -> None:
        try:
            if not self.spool.append_one(record):
                self._reject_unencodable([record])
                return
        except OSError as exc:
            # The spool cannot take it: keep it in memory rather than lose it.
            self._spool_unwritable(exc)
            queued = self._queued_count()
            if queued < self._max_queue or not self._crowded(record, queued):
                self._queue.extend(record)
            return
        self._spool_dirty = True
        self._durable_unsent += 1
        if self._durable_unsent >= self._batch_size and not self._wake.is_set():
            self._wake.set()

    def amend_last(self, record: Record, fields: dict[str, Any], ts: float, forks: int) -> bool:
        """Merge ``fields`` (the newer values, at ``ts``) into ``record`` if it is
        still the last thing queued: nothing was queued after it, in any thread,
        nothing took it off the queue, it is not being written to disk (the
        spill thread's copy or spill of the queue ended with it), and no
        fork() happened since it was queued (``forks``: the pipeline's count
        then; the child may have written to the same row since). Then one
        record says what the two would have. False (nothing changed)
        otherwise: the hot path never waits."""
        if forks != self.forks or not _GIL:
            return False
        queue = self._queue
        queued_fields = record[3]  # the last slot while the record is last
        merged = {**queued_fields, **fields}
        # From the look to the assignments there is no call, and the
        # interpreter switches threads only at calls and loops: a record
        # another thread appends, or a take off the queue, falls before the
        # look or after the assignments. The queued parts are replaced,
        # never changed: whoever took them a moment before has them as they were.
        if queue and queue[-1] is queued_fields and queued_fields is not self._frozen_last:
            queue[-2] = ts
            queue[-1] = merged
            return True
        return False

    def deliver_soon(self) -> None:
        """Wake the worker now rather than at its next interval (a session
        record others may look for at once)."""
        self._wake.set()

    # -- control --------------------------------------------------------------

    def start(self) -> None:
        if self.running and self._spiller is not None and self._spiller.is_alive():
            return
        with self._start_lock:
            self._stopping = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lucidic-worker",
                                                daemon=True)
                self._thread.start()
            if self._spiller is None or not self._spiller.is_alive():
                self._spiller = threading.Thread(target=self._spill_loop,
                                                 name="lucidic-spill", daemon=True)
                self._spiller.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _no_new_losses(self) -> bool:
        """True unless records were dropped or refused since the last flush
        said so (each loss makes one flush return False)."""
        losses = self.stats.dropped + self.stats.rejected
        unreported, self._losses_reported = losses != self._losses_reported, losses
        return not unreported

    def flush(self, timeout: float, *, fail_fast: bool = False) -> bool:
        """Wait until everything queued before this call, and everything this
        process spooled, has reached the sink. False if that did not happen
        within ``timeout``, or if records were dropped or refused since the
        last flush. With ``fail_fast``, give up as soon as a delivery fails
        instead of waiting for the sink to return."""
        if not self.running:
            if not self._queue and not self.spool.has_own_pending():
                return self._no_new_losses()
            try:
                self.start()
            except RuntimeError:
                # No new threads at interpreter shutdown (Python 3.12+): deliver
                # from this thread instead.
                self._cycle()
                delivered = not self._queue and not self.spool.has_own_pending()
                return self._no_new_losses() and delivered
        if self._all_delivered():
            return self._no_new_losses()  # nothing to wait for, even with no time to wait
        request = _FlushRequest(fail_fast)
        self._queue.extend((request, *_REQUEST_PAD))
        self._wake.set()
        done = request.done.wait(max(timeout, 0.0))
        return self._no_new_losses() and done and not request.failed

    def _all_delivered(self) -> bool:
        """Nothing queued, nothing in the worker's hands, nothing of this
        process's in the spool. Looked at without waiting: a worker busy
        taking a batch means there is something to wait for."""
        if self._queue or not self._take_lock.acquire(blocking=False):
            return False
        try:
            if self._queue or not self._inflight_lock.acquire(blocking=False):
                return False
            try:
                idle = self._inflight is None
            finally:
                self._inflight_lock.release()
        finally:
            self._take_lock.release()
        return idle and not self.spool.has_own_pending()

    def shutdown(self, timeout: float, *, fail_fast: bool = False) -> bool:
        """Flush within ``timeout``; whatever could not be delivered by then is
        written to the spool, for this or a later process to deliver. With
        ``fail_fast``, spool it as soon as a delivery fails."""
        deadline = time.monotonic() + timeout
        # Keep a little of the bound for writing what is left to the spool.
        delivered = self.flush(timeout - min(0.5, timeout * 0.2), fail_fast=fail_fast)
        self._stopping = True
        self._wake.set()
        self._spill_wake.set()
        if not delivered:
            self._rescue(deadline)
        for thread in (self._thread, self._spiller):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self.spool.close()
        except Exception as exc:  # noqa: BLE001
            record_internal_error("spool_close", exc)
        return delivered

    def _rescue(self, deadline: float) -> None:
        """Called from the exiting thread while the worker may be stuck in the
        sink and the spill thread midway through a spill: write the batch the
        worker holds and everything still queued to the spool. Records may end
        up written twice (or delivered and spooled); replays are idempotent."""
        # The worker holds the lock for microseconds; the spill thread for as
        # long as a spill takes, or for ever if it is stuck.
        wait = max(0.05, min(0.5, deadline - time.monotonic()))
        slots: list[Any]
        if self._take_lock.acquire(timeout=wait):
            try:
                slots = []
                while True:  # (put() appends a record's slots in one call)
                    try:
                        slots.append(self._queue.popleft())
                    except IndexError:
                        break
                items = _items(slots)
                self._taken += len(items)
            finally:
                self._take_lock.release()
        else:
            # The spill thread holds the queue and is not finishing: redo its
            # part (its records leave the queue only once written).
            items = _items(list(self._queue.copy()))
        pending: list[Record] = []
        inflight = self._inflight
        if inflight is not None and self._copy_of(inflight) is None:
            pending.extend(inflight)
        for item in items:
            if isinstance(item, _FlushRequest):
                item.fail()
            else:
                pending.append(item)
        if not pending:
            return
        try:
            self._spool_write(pending)
        except OSError as exc:
            with self._stats_lock:
                self.stats.dropped += len(pending)
            self._spool_unwritable(exc)
            # The warning above said records were held in memory: at shutdown
            # that no longer holds, and nothing later will say they are gone.
            log_visible(logging.WARNING, "lucidic: %d records were neither delivered nor "
                        "written to the spool at %s (%s) before the pipeline shut down: they "
                        "are lost (counted in stats.dropped)", len(pending),
                        self.spool.directory, exc)
            return
        self._count_spooled(len(pending))
        log_rate_limited("exit_spooled", "lucidic: the sink did not take %d records in "
                         "time; they were spooled to %s and will be delivered by the "
                         "next process", len(pending), self.spool.directory)

    # -- the spill thread -------------------------------------------------------

    def _spill_loop(self) -> None:
        next_tick = time.monotonic()
        while not self._stopping:
            # Ticks keep their pace even when a spill took a while.
            next_tick = max(next_tick + SPILL_TICK, time.monotonic())
            self._spill_wake.wait(next_tick - time.monotonic())
            self._spill_wake.clear()
            if self._stopping:
                return
            try:
                self._spill_tick()
            except Exception as exc:  # noqa: BLE001 - the spill thread must survive anything
                record_internal_error("spill", exc)
            self._spill_ran = time.monotonic()
            self._look_at = len(self._queue) + SPILL_LOOK * _SLOTS
            self._busy = min(self._busy, self._look_at)

    def _spill_tick(self) -> None:
        if self._dropping:
            warn_once("records_dropped", "lucidic: records are being dropped: %d are held in "
                      "memory and neither the sink nor the spool at %s takes more; the "
                      "oldest are kept, newer ones dropped (the pipeline's stats.dropped "
                      "counts them)", 2 * self._max_queue, self.spool.directory)
        if self._spool_failing and time.monotonic() < self._spool_retry_at:
            # The disk refused the last write (it is full): encoding the
            # whole queue every tick only to be refused again would burn a core.
            return
        # The queue first: it holds the most, and is appended to the open
        # segment, while a copy of the worker's batch makes a file of its own
        # (a disk slow to create files delays only that batch).
        self._spill_queue()
        self._spill_inflight()

    def _spill_queue(self) -> None:
        with self._take_lock:
            queued = self._queued_count()
            marks = self._marks
            # Items queued SPILL_AFTER ago (appended by the newest mark that
            # old) and still there: the worker is behind. Those are copied
            # to disk and stay queued: the worker delivers them from memory
            # (a round trip through the spool costs several times their
            # delivery), the younger ones are copied at a later tick if they
            # wait as long; all of them while the worker is slow. Only what
            # memory should not hold leaves the queue for the spool: all of
            # it while the worker is stuck (it would only spool it, or it
            # will not take it soon), the oldest eighth when it is full.
            now = time.monotonic()
            waited_upto = 0
            while marks and now - marks[0][0] >= SPILL_AFTER:
                waited_upto = marks.popleft()[1]
            held = now - self._inflight_since if self._inflight is not None else 0.0
            stuck = queued and (not self._healthy or held >= STUCK_AFTER)
            if stuck:
                self._spill_front(queued)
            elif queued >= self._max_queue:
                self._spill_front(self._oldest_eighth(queued))
            appended = self._taken + self._queued_count()
            if not stuck and held >= SPILL_AFTER:
                # The worker is slow: each tick copies what came since the
                # last, without waiting for it to age. Small writes, each
                # done in a tick, keep what a SIGKILL can lose short even
                # when a tight loop leaves the spill little of the interpreter.
                waited_upto = appended
            marks.append((now, appended))
        if waited_upto > max(self._copied_upto, self._taken):
            self._copy_waited(waited_upto)

    def _oldest_eighth(self, queued: int) -> int:
        """How many of a full queue's oldest items go to the spool: enough to
        leave it seven eighths full, and on to the end of the copy segment
        that holds the last of them (a segment is replayed whole: cut, the
        rest of it would be delivered twice). The rest stays to be delivered
        from memory: a record read back from disk costs the worker more than
        one delivered from memory, so a queue that overflows (a tight loop
        outrunning the worker) sends no more than it must, which is most
        often its oldest copy segment. (The caller holds the take lock.)"""
        count = queued - self._max_queue * 7 // 8
        upto = self._taken + count
        with self._inflight_lock:
            ends = [end for end, _ in self._copies if end >= upto]
        return min(queued, ends[0] - self._taken) if ends else count

    def _copy_waited(self, upto: int) -> None:
        """Copy the queued items before position ``upto`` not copied yet to
        the spool's copy segment, leaving them queued. Written outside the
        take lock (the worker goes on taking batches meanwhile): nothing but
        this thread writes or trusts copies, and amend_last leaves the copied
        records alone from the moment they are chosen."""
        with self._take_lock:
            start = max(self._copied_upto, self._taken)
            slots = self._freeze(upto - self._taken, start - self._taken)
            if not slots:
                return
            end = self._copied_upto = start + len(slots) // _SLOTS
        lines, unencodable, count = _encode_slots(slots)
        if unencodable:
            self._reject_unencodable(unencodable)
        try:
            written = self._append_copy(lines, end)
        except OSError as exc:
            with self._take_lock:
                self._copied_upto = start  # not on disk after all
            self._spool_unwritable(exc)
            return
        if written:
            self._count_spooled(count)
        self._spool_writable()

    def _append_copy(self, lines: Lines, end: int) -> bool:
        """Append copies of queued records, the last at position ``end``, to
        the copy segment; False if there was nothing to write, or the worker
        delivered them all meanwhile. The segment is registered as holding
        them up to ``end`` before they are written, under the lock the
        worker lets go of copies under: so the worker never removes a
        segment between the choice of it and the write (it would take the
        new copies with it), and a segment it let go of first is not written
        to (another is made)."""
        while lines and self._done_upto < end:  # (no segment made for nothing)
            path = self.spool.copy_segment()
            with self._inflight_lock:
                if self._done_upto >= end:
                    return False
                if self._copies and self._copies[-1][1] == path:
                    self._copies[-1] = (end, path)
                else:
                    self._copies.append((end, path))
            if self.spool.append_copy(path, lines):
                return True
        return False

    def _freeze(self, stop: int, start: int = 0) -> list[Any]:
        """The slots of the queued items from ``start`` to ``stop`` (counted
        from the queue's front), about to be written to disk: from now on
        amend_last leaves them alone. (The caller holds the take lock:
        nothing takes them meanwhile.)"""
        queue = self._queue
        first = start * _SLOTS
        while True:
            size = len(queue)
            end = min(stop * _SLOTS, size)
            # A deque is walked, not indexed: from whichever end has fewer
            # slots to pass over before the wanted ones (those are passed
            # over, not kept).
            if first <= size - end:
                # One C call: appends land after it, and leave what it
                # counts from the front where it was.
                slots = list(islice(queue, first, end))
                break
            # Nearer the newest end (the newest records, after many copied
            # ones), but an append between counting the queue and the walk
            # would shift what is counted from that end: then again.
            slots = list(islice(reversed(queue), size - end, size - first))
            if len(queue) == size:
                slots.reverse()
                break
        if slots:
            last = first + len(slots) - 1
            self._frozen_last = slots[-1]
            # An amend_last between these two lines replaced the last of them
            # (its time and fields): write it as amended (a record is
            # amended once at most).
            if queue[last] is not slots[-1]:
                slots[-2] = queue[last - 1]
                slots[-1] = self._frozen_last = queue[last]
        return slots

    def _release_copies(self, upto: int) -> None:
        """The worker has delivered (or spooled) every position below
        ``upto``: the copy segments holding only those records are not
        needed any more. (Removed under the in-flight lock: see _append_copy.)"""
        with self._inflight_lock:
            self._done_upto = max(self._done_upto, upto)
            while self._copies and self._copies[0][0] <= upto:
                self.spool.release_aside(self._copies.popleft()[1], delivered=True)

    def _hand_copies_to_replay(self, after: int, upto: int) -> None:
        """The records of the copy segments ending past position ``after``
        and at ``upto`` at most have left the queue without being written
        again: those segments become ordinary ones, for the worker (or a
        later process) to replay (the caller marks the spool as having
        something to replay). The caller cuts the queue at a segment's end
        (see _oldest_eighth), or takes all of it."""
        with self._inflight_lock:
            handed = [path for end, path in self._copies if after < end <= upto]
            self._copies = deque(c for c in self._copies if not after < c[0] <= upto)
        for copy in handed:
            self.spool.release_aside(copy, delivered=False)

    def _spill_inflight(self) -> None:
        """The worker has held a batch for SPILL_AFTER (the sink is slow or
        hung): copy it to a segment of its own, in case the process dies
        before the sink answers. If the batch arrives, the copy is removed.
        Under the in-flight lock, as the worker's own spill of the batch is:
        a batch is written by one of them only, and a record no encoder can
        write is set aside once."""
        batch = self._inflight
        if (batch is None or self._copy_of(batch) is not None or self._inflight_on_disk
                or time.monotonic() - self._inflight_since < SPILL_AFTER):
            return
        with self._inflight_lock:
            if (self._inflight is not batch or self._copy_of(batch) is not None
                    or self._inflight_on_disk):
                return  # the worker is done with it, or wrote it itself
            try:
                copy, unencodable = self.spool.write_aside(batch)
            except OSError as exc:
                self._spool_unwritable(exc)
                return
            if copy is not None:
                self._inflight_copy = (batch, copy)
        if unencodable:
            self._reject_unencodable(unencodable)
        self._count_spooled(len(batch))
        self._spool_dirty = True
        self._spool_writable()

    def _copy_of(self, batch: list[Record]) -> Path | None:
        copy = self._inflight_copy
        return copy[1] if copy is not None and copy[0] is batch else None

    def _release_inflight(self, batch: list[Record], *, delivered: bool) -> None:
        """The worker is done with its batch: if it was delivered, the copy
        the spill thread made of it is not needed."""
        with self._inflight_lock:
            copy = self._copy_of(batch)
            self._inflight = self._inflight_copy = None
        if copy is not None:
            self.spool.release_aside(copy, delivered=delivered)

    def _spill_front(self, count: int) -> None:
        """Write the oldest ``count`` queued items to the spool, then take
        them off the queue (the caller holds the take lock). Those a copy
        holds already are not written again: the copy is replayed instead."""
        slots = self._freeze(count)
        copied = max(0, min(count, self._copied_upto - self._taken))
        requests = _requests_among(slots)
        rest = slots[copied * _SLOTS:]
        total = len(rest) // _SLOTS - len(_requests_among(rest) if requests else ())
        spooled = 0
        try:
            piece = SPILL_PIECE * _SLOTS
            for start in range(0, len(rest), piece):
                lines, unencodable, written = _encode_slots(rest[start:start + piece])
                self.spool.append_lines(lines)
                if unencodable:
                    self._reject_unencodable(unencodable)
                spooled += written
                checkpoint = spill_checkpoint
                if checkpoint is not None:
                    checkpoint(spooled, total)
        except OSError as exc:
            self._spool_unwritable(exc)  # they stay queued
            return
        # Taken off in one C call: a Python loop would hand the interpreter
        # back to a busy user thread many times over.
        _consume(starmap(self._queue.popleft, repeat((), count * _SLOTS)))
        taken_before, self._taken = self._taken, self._taken + count
        if copied:
            self._hand_copies_to_replay(taken_before, self._taken)
        # A flush waiting on what came before them: those are in the spool
        # now, and the worker settles it once the spool is delivered.
        if requests:
            self._passed.extend(requests)
            self._wake.set()
        self._count_spooled(spooled)
        self._spool_dirty = True
        self._spool_writable()

    def _spool_write(self, records: Sequence[Record]) -> None:
        """Append to the spool (OSError when the disk refuses); a record no
        encoder can write is set aside alone."""
        unencodable = self.spool.append(records)
        if unencodable:
            self._reject_unencodable(unencodable)

    def _spool_unwritable(self, exc: OSError) -> None:
        self._spool_failing = True
        self._spool_retry_at = time.monotonic() + _SPOOL_RETRY
        warn_once("spool_unwritable", "lucidic: cannot write the spool at %s (%s); records "
                  "are held in memory until it can be written or the sink takes them "
                  "(beyond %d, newer records are dropped and counted)",
                  self.spool.directory, exc, 2 * self._max_queue)

    def _spool_writable(self) -> None:
        if self._spool_failing:
            self._spool_failing = False
            self._dropping = False
            logger.warning("lucidic: the spool at %s can be written again", self.spool.directory)
            rearm("spool_unwritable")
            rearm("records_dropped")

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
        while not self._waiting_to_retry():
            with self._take_lock:
                batch, request = self._take()
                end = self._taken  # the position after the batch (and its flush)
            outcome = self._deliver(batch) if batch else _DELIVERED
            if outcome is _KEPT_NOWHERE:
                # Neither delivered nor spooled: back to the queue's front,
                # with the flush that waits on it, until the next cycle.
                if request is not None and request.fail_fast:
                    request.fail()
                    request = None
                back: list[Any] = [*batch, *([request] if request else [])]
                with self._take_lock:
                    self._queue.extendleft(reversed(_slots(back)))
                    self._taken -= len(back)
                    self._release_inflight(batch, delivered=False)
                break
            if batch:
                self._release_inflight(batch, delivered=outcome is _DELIVERED)
            if self._copies:
                self._release_copies(end)
            if request is not None:
                self._hold(request)
            elif not batch:
                break
        while self._passed:
            self._hold(self._passed.popleft())
        self._settle_flushes()

    def _hold(self, request: _FlushRequest) -> None:
        """A flush request whose records are delivered or spooled: it waits
        for the spool to be delivered, unless it asked to hear of a failure
        at once and deliveries are failing (those records were spooled)."""
        if request.fail_fast and not self._healthy:
            request.fail()
        else:
            self._waiting.append(request)

    def _waiting_to_retry(self) -> bool:
        """The sink failed and its retry is not due: the spill thread writes
        the queue to the spool at every tick meanwhile, and the worker
        leaves it to it. Taking batches to spool them as well would only
        compete with it for the interpreter, while a busy user thread holds
        it (and a spill kept waiting is what a SIGKILL would lose)."""
        return (not self._healthy and not self._stopping
                and time.monotonic() < self._retry_at)

    def _take(self) -> tuple[list[Record], _FlushRequest | None]:
        """A batch off the queue, up to the next flush request (the caller
        holds the take lock)."""
        queue = self._queue
        # Taken and made records in one C call, as the spill thread does: a
        # Python loop of a batch's length would hand the interpreter to a
        # busy user thread, and wait for it back, many times over.
        part = starmap(queue.popleft, repeat((), min(len(queue), self._batch_size * _SLOTS)))
        batch: list[Any] = list(zip(*(part,) * _SLOTS, strict=True))
        request: _FlushRequest | None = None
        if _FlushRequest in set(map(type, map(_HEAD, batch))):
            at = next(i for i, item in enumerate(batch) if type(item[0]) is _FlushRequest)
            request = batch[at][0]
            queue.extendleft(reversed(list(chain.from_iterable(batch[at + 1:]))))
            del batch[at:]
        self._taken += len(batch) + (request is not None)
        # put() may wake us again
        self._busy = self._calm_busy()
        if batch:
            self._inflight, self._inflight_since = batch, time.monotonic()
            self._inflight_on_disk = self._taken <= self._copied_upto
        return batch, request

    def _deliver(self, batch: list[Record]) -> object:
        """Deliver a batch (_DELIVERED), or spool it (_SPOOLED), or neither
        (_KEPT_NOWHERE)."""
        if not self._healthy and time.monotonic() < self._retry_at:
            return self._spill(batch)
        try:
            self.sink.write(batch)
        except RecordsRefusedError as refusal:
            self.stats.delivered += len(batch) - len(refusal.later) - len(refusal.refused)
            self._recovered()
            try:
                self._handle_refusal(refusal, None)
            except OSError as exc:
                # Nowhere to keep the records that wait for their session:
                # they go back to the queue and are tried again later.
                self._spool_unwritable(exc)
                self._failed(exc)
                with self._take_lock:
                    self._queue.extendleft(reversed(_slots(refusal.later)))
                    self._taken -= len(refusal.later)
            return _DELIVERED
        except Exception as exc:  # noqa: BLE001 - any sink failure means: spool, retry
            self._failed(exc)
            return self._spill(batch)
        self.stats.delivered += len(batch)
        self._recovered()
        return _DELIVERED

    def _spill(self, batch: list[Record]) -> object:
        with self._inflight_lock:
            if self._copy_of(batch) is not None:
                return _SPOOLED  # the spill thread wrote a copy while the sink hung
            try:
                self._spool_write(batch)
            except OSError as exc:
                self._spool_unwritable(exc)
                return _KEPT_NOWHERE
            # Written: the spill thread must not write a copy of it as well.
            self._inflight_on_disk = self._inflight is batch
        self._spool_dirty = True
        self._count_spooled(len(batch))
        self._spool_writable()
        return _SPOOLED

    def _handle_refusal(self, refusal: RecordsRefusedError, refused_since: float | None) -> None:
        """Set aside what the sink refused for good; keep what waits for its
        session in a later segment, until LATER_GRACE has passed since the
        sink first refused it. Raises OSError when the spool cannot take them."""
        refused = list(refusal.refused)
        if refusal.later:
            now = time.time()
            first = now if refused_since is None else refused_since
            if now - first >= self._later_grace:
                refused.extend((r, f"the sink did not know its session for "
                                   f"{self._later_grace:g} s") for r in refusal.later)
            else:
                unencodable = self.spool.defer(refusal.later, first)
                refused.extend((r, _UNENCODABLE) for r in unencodable)
                self._later_waiting = True
                log_rate_limited("records_later", "lucidic: the sink does not know the "
                                 "session of %d record(s) yet; they wait in %s and are sent "
                                 "again once it does", len(refusal.later),
                                 self.spool.directory, level=logging.INFO)
        if refused:
            self._reject(refused)

    def _reject_unencodable(self, records: Sequence[Record]) -> None:
        self._reject([(r, _UNENCODABLE) for r in records])

    def _count_spooled(self, count: int) -> None:
        # The worker, the spill thread and an exiting thread all spool.
        with self._stats_lock:
            self.stats.spooled += count

    def _reject(self, entries: list[tuple[Record, str]]) -> None:
        with self._stats_lock:
            entries = [(record, why) for record, why in entries
                       if self._set_aside.get(id(record[3])) is not record[3]]
            for record, _ in entries:
                self._set_aside[id(record[3])] = record[3]
            while len(self._set_aside) > _SET_ASIDE_KEPT:
                self._set_aside.popitem(last=False)
        if not entries:
            return
        try:
            self.spool.reject(entries)
        except OSError as exc:
            with self._stats_lock:
                self.stats.dropped += len(entries)
            self._spool_unwritable(exc)
            return
        with self._stats_lock:
            self.stats.rejected += len(entries)
        warn_once("records_rejected", "lucidic: the sink refused %d record(s) for good (%s); "
                  "they were set aside in %s and will not be sent again (the pipeline's "
                  "stats.rejected counts them)", len(entries), entries[0][1],
                  self.spool.rejected_path)

    def _maybe_replay(self) -> None:
        now = time.monotonic()
        if not self._spool_dirty and now >= self._next_orphan_scan:
            self._next_orphan_scan = now + _ORPHAN_SCAN_INTERVAL
            self._spool_dirty = self.spool.has_any()
            self._later_waiting = self._later_waiting or self.spool.has_later()
        if not self._healthy and now < self._retry_at:
            return
        retry_later = self._later_waiting and now >= self._next_later_retry
        if not (self._spool_dirty or retry_later):
            return
        try:
            if self._spool_dirty:
                replayed = self._replayed_batches
                self._durable_unsent = 0
                # Cleared first: a record spooled meanwhile (by another
                # thread) sets it again, and is not forgotten.
                self._spool_dirty = False
                if not self.spool.replay(self._deliver_replayed, self._batch_size,
                                         orphans_wait=self._own_records_wait):
                    self._spool_dirty = True
                # What waits for its session is retried once the rest was
                # delivered: the session's own record may have been in it.
                retry_later = self._later_waiting and (
                    retry_later or self._replayed_batches > replayed)
            if retry_later:
                self._next_later_retry = now + self._later_retry
                self._later_waiting = False
                complete = self.spool.replay(self._deliver_replayed, self._batch_size,
                                             later=True)
                self._later_waiting = self._later_waiting or not complete
        except OSError as exc:
            # The spool's fault, not the sink's: what is queued still goes.
            self._spool_dirty = self._later_waiting = True
            self._spool_unwritable(exc)
            return
        except Exception as exc:  # noqa: BLE001
            self._spool_dirty = self._later_waiting = True
            self._failed(exc)
            return
        self._recovered()

    def _own_records_wait(self) -> bool:
        """Whether this process's records (or a flush, or the exit) wait
        while the worker replays what other processes left in the spool: if
        so, that replay stops after its batch under way (see Spool.replay)."""
        return bool(self._queue) or self._stopping

    def _deliver_replayed(self, batch: Sequence[Record], refused_since: float | None) -> None:
        try:
            self.sink.write(batch)
        except RecordsRefusedError as refusal:
            self.stats.delivered += len(batch) - len(refusal.later) - len(refusal.refused)
            self._handle_refusal(refusal, refused_since)
        else:
            self.stats.delivered += len(batch)
        self._replayed_batches += 1

    def _failed(self, exc: BaseException) -> None:
        self.stats.delivery_failures += 1
        self._failures += 1
        self._healthy = False
        delay = min(_MAX_BACKOFF, 0.1 * 2 ** min(self._failures, 10))
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after > 0:
            delay = min(float(retry_after), 300.0)
        self._retry_at = time.monotonic() + delay
        if getattr(exc, "unreachable", False):
            warn_once("sink_unreachable", "lucidic: %s; records wait in %s and are delivered "
                      "as soon as it answers", exc, self.spool.directory)
        elif getattr(exc, "broken", False):
            # Only someone who mends it ends this: the user must hear of it.
            warn_once("sink_broken", "lucidic: %s; records wait in %s and are delivered once "
                      "it is mended (by this process or the next)", exc, self.spool.directory)
        level_kind = "sink_down" if isinstance(exc, SinkError) else "sink_error"
        log_rate_limited(level_kind, "lucidic: the sink refused a batch (%s); records are "
                         "spooled to %s and retried in %.1fs", exc, self.spool.directory, delay)
        for request in self._waiting:
            if request.fail_fast:
                request.fail()
        self._waiting = [r for r in self._waiting if not r.fail_fast]

    def _recovered(self) -> None:
        if not self._healthy:
            logger.info("lucidic: the sink accepts records again")
            rearm("sink_unreachable")
            rearm("sink_broken")
        self._healthy = True
        self._failures = 0

    def _settle_flushes(self) -> None:
        if self._waiting and not self.spool.has_own_pending():
            for request in self._waiting:
                request.done.set()
            self._waiting = []

    # -- fork -----------------------------------------------------------------

    def before_fork(self) -> None:
        self.forks += 1  # nothing queued before a fork is amended after it
        self.spool.before_fork()

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
