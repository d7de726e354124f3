"""The on-disk spool: where records wait while the sink cannot take them.

A spool is a directory of segment files of JSON lines, each line one record
or a batch of records (a list of them, encoded in one call). Each
process appends to segments of its own, holding an exclusive ``flock`` on the
one it writes (and on a copy of a batch its worker may still deliver); a
segment nobody holds a lock on can be replayed by any process, so what a dead
process left behind is delivered by the next one, even a segment it died
writing.
Replays may overlap with a delivery that already happened (the file is deleted
only after every line was accepted), which is harmless: sinks apply records
idempotently.

A segment is replayed a batch at a time, and after each delivered batch its
replayer notes how far it got in a *progress* file beside it
(``<segment>.replayed``: the byte offset of the line holding the first record
not delivered yet, and how many of that line's records were): a replay that
stops midway (this process's own records wait, or it died) is taken up where
it stopped, by this process or the next, rather than from the segment's
start. At least once, not exactly once: a replayer killed between a batch's
delivery and its note delivers that one batch again (idempotently); exactly
once would need the note written in the sink's own transaction, which a
server cannot share.

Lines are written with one ``writev()`` each call, unbuffered: once
``append`` returns, the records are the kernel's and survive the process
being killed. A write the disk cannot take (it is full) is cut back, so a
segment never holds half a line followed by more records.

Two more kinds of file live beside the segments:

- *later* segments (``later-<when first refused>-...jsonl``) hold records the
  sink refused because it does not know their session yet. Their names sort
  after every ordinary segment, so a replay retries them only once everything
  else, the session's own record among it, has been delivered: replay does
  not depend on the order in which records reached the spool.
- the *rejected* file (``<data dir>/rejected/<sink>.jsonl``) keeps records
  the sink refused for good, each with the reason, for a human to read.
  Nothing replays it.
"""

from __future__ import annotations

import fcntl
import json
import os
import reprlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from ._internal import log_rate_limited, record_internal_error
from .store import RECORD_KINDS, RECORD_PARTS, ROWS_PER_STATEMENT, Record, clean_json

_SEGMENT_BYTES = 16 * 1024 * 1024
#: Copies of queued records go to one segment, appended to until it holds
#: this much (see Spool.append_copy): one writev() a copy, where a segment of
#: its own took five system calls, each of which hands the interpreter to a
#: busy user thread and waits to win it back. A full queue sends its oldest
#: records to the spool cut at a copy segment's end, and a segment is
#: replayed whole (its records the worker had delivered from memory too):
#: segments of a few thousand records keep that cut near the eighth it aims
#: at, and what is read back near what had to leave (with segments of
#: 4 MiB, about 20,000 records, 100,000-step loops that overflowed read
#: back 33,000 records, median of eight; with these, 20,000).
COPY_SEGMENT_BYTES = 1024 * 1024
_LATER_PREFIX = "later-"
#: What a segment's progress file adds to the segment's name.
_PROGRESS_SUFFIX = ".replayed"
#: A segment's temporary file this old was left by a process killed while
#: making it (see Spool._remove_stale_temporaries).
_STALE_TEMPORARY = 60.0

#: Spool lines, each ending in a newline, written together by one writev().
Lines = list[bytes]
#: The most lines one writev() takes (sysconf's -1: no limit it knows of;
#: _write_all steps through the lines by it, so it must be positive).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else -1
if _IOV_MAX <= 0:
    _IOV_MAX = 1024

#: deliver(batch, refused_since): refused_since is when the records of a
#: later segment were first refused, None for an ordinary segment.
Deliver = Callable[[Sequence[Record], "float | None"], None]

#: What _replay_segment returns when it stopped between batches, the segment
#: still held (see Spool._held).
_PAUSED = object()


class UnencodableRecordError(ValueError):
    """No JSON encoder can write this record, even cleaned."""


class Spool:
    def __init__(self, directory: Path, rejected: Path | None = None) -> None:
        self.directory = directory
        #: Where records refused for good are set aside (see the module doc).
        self.rejected_path = rejected or directory.parent / "rejected" / f"{directory.name}.jsonl"
        # Reentrant: a SIGTERM handler may spool while the interrupted main
        # thread is inside append().
        self._lock = threading.RLock()
        self._fd: int | None = None
        self._path: Path | None = None  # the open segment's, while _fd is set
        self._size = 0  # bytes of whole lines in the open segment
        self._own: set[Path] = set()
        #: Segments written aside (write_aside), each held open and locked,
        #: so no replayer takes them while the records may still be delivered.
        self._aside: dict[Path, int] = {}
        #: The aside segment copies are appended to now, and its size.
        self._copy_path: Path | None = None
        self._copy_size = 0
        self._tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._counter = 0
        #: The segment of another process a replay stopped in between two
        #: batches, still open and locked, to go on with at the next replay.
        self._held: _Replaying | None = None

    # -- writing (any thread) -------------------------------------------------

    def append(self, records: Iterable[Record]) -> list[Record]:
        """Write records to this process's current segment, in one write.
        Returns the records no encoder could write (usually none), for the
        caller to set aside. Raises OSError when the disk refuses the write;
        then nothing of it stays in the segment."""
        lines, unencodable = encode_lines(list(records))
        self.append_lines(lines)
        return unencodable

    def append_lines(self, lines: Lines) -> None:
        """append() for records already encoded (encode_lines')."""
        if lines:
            self._write(lines)

    def append_one(self, record: Record) -> bool:
        """append() for one record, at the least cost (durable mode's hot
        path). False if no encoder can write it."""
        try:
            line = _dumps_line(record)
        except TypeError:
            try:
                line = _encode(record)
            except UnencodableRecordError:
                return False
        self._write([line])
        return True

    def _write(self, lines: Lines) -> None:
        with self._lock:
            fd = self._fd if self._fd is not None else self._open_segment()
            try:
                _write_all(fd, lines)
            except OSError:
                if self._size == 0:
                    # Nothing in it: no segment at all, rather than an empty
                    # one that flush() would wait on to be replayed.
                    self._drop_writer()
                elif not _cut_back(fd, self._size):
                    self._close_writer()  # start afresh next time
                raise
            self._size += _size(lines)
            if self._size >= _SEGMENT_BYTES:
                self._close_writer()

    def _new_name(self, prefix: str, when_ns: int) -> Path:
        self._counter += 1
        return self.directory / f"{prefix}{when_ns:020d}-{self._tag}-{self._counter}.jsonl"

    def _open_segment(self) -> int:
        self._path, fd = self._create_locked()
        self._fd, self._size = fd, 0
        return fd

    def _drop_writer(self) -> None:
        """Remove the open segment (still empty), then close it."""
        fd, path, self._fd, self._path = self._fd, self._path, None, None
        if fd is not None and path is not None:  # (set together by _open_segment)
            self._remove_unwritten(path, fd)

    def _remove_unwritten(self, path: Path, fd: int) -> None:
        """Remove a segment this process made and nothing was written to,
        then close it (in that order: no replayer ever sees it unlocked).
        Left behind, it would count as pending, and flush would wait for it."""
        path.unlink(missing_ok=True)
        self._own.discard(path)
        os.close(fd)

    def _create_locked(self, prefix: str = "", when_ns: int | None = None) -> tuple[Path, int]:
        """A new segment of this process, open and locked: made under a
        temporary name, locked, then renamed, so that no replayer ever finds
        it unlocked (and takes it, empty, from under its writer). Once its
        writer dies, the lock is gone and anyone replays it."""
        path = self._new_name(prefix, time.time_ns() if when_ns is None else when_ns)
        temporary = path.with_suffix(".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(temporary, flags, 0o600)
        except FileNotFoundError:
            # The first segment (or the directory was removed): made only
            # then, not at every segment (a system call saved is one hand-over
            # of the interpreter fewer for the spill thread).
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(temporary, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(temporary, path)
        except OSError:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        self._own.add(path)
        return path, fd

    def _close_writer(self) -> None:
        if self._fd is not None:
            fd, self._fd, self._path = self._fd, None, None
            os.close(fd)  # releases the lock: the segment is now replayable

    def close(self) -> None:
        """Release every segment this process holds: they can be replayed (one
        this process was replaying, from where its progress file says)."""
        with self._lock:
            self._close_writer()
            for path in list(self._aside):
                self.release_aside(path, delivered=False)
            held, self._held = self._held, None
            if held is not None:
                held.close()

    def defer(self, records: Sequence[Record], refused_since: float) -> list[Record]:
        """Put records aside in a later segment, replayed after everything
        else. Returns the unencodable records."""
        lines, unencodable = encode_lines(list(records))
        if lines:
            with self._lock:
                _, fd = self._write_new(lines, _LATER_PREFIX, int(refused_since * 1e9))
                os.close(fd)  # whole: a replay may take it
        return unencodable

    def write_aside(self, records: Sequence[Record]) -> tuple[Path | None, list[Record]]:
        """Write records to a segment of their own, held locked until
        ``release_aside``: removed then if they were delivered meanwhile,
        else left to be replayed like any other segment (and so if this
        process dies first, even midway through the write). Returns its path
        (None if nothing could be encoded) and the unencodable records."""
        lines, unencodable = encode_lines(list(records))
        if not lines:
            return None, unencodable
        with self._lock:
            path, fd = self._write_new(lines)
            self._aside[path] = fd
        return path, unencodable

    def _write_new(self, lines: Lines, prefix: str = "",
                   when_ns: int | None = None) -> tuple[Path, int]:
        """A new segment of this process holding ``lines``, still open and
        locked; on a failed write, no segment at all (the caller holds the lock)."""
        path, fd = self._create_locked(prefix, when_ns)
        try:
            _write_all(fd, lines)
        except OSError:
            self._remove_unwritten(path, fd)
            raise
        return path, fd

    def copy_segment(self) -> Path:
        """The aside segment copies are appended to now: made (open and
        locked, held until ``release_aside``) if there is none. Raises
        OSError when it cannot be made."""
        with self._lock:
            if self._copy_path is None:
                path, fd = self._create_locked()
                self._aside[path] = fd
                self._copy_path, self._copy_size = path, 0
            return self._copy_path

    def append_copy(self, path: Path, lines: Lines) -> bool:
        """Append encoded records to the copy segment ``path``, unless it was
        let go of meanwhile (False: nothing written; ask for the segment
        again). Once it holds COPY_SEGMENT_BYTES the next copy starts
        another; this one stays held. Raises OSError when the disk refuses
        the write; then nothing of it stays in the segment."""
        with self._lock:
            if path != self._copy_path:
                return False
            fd = self._aside[path]
            try:
                _write_all(fd, lines)
            except OSError:
                if self._copy_size == 0:  # (see _write)
                    self._copy_path = None
                    self._remove_unwritten(path, self._aside.pop(path))
                elif not _cut_back(fd, self._copy_size):
                    self._copy_path = None  # the next copy starts another
                raise
            self._copy_size += _size(lines)
            if self._copy_size >= COPY_SEGMENT_BYTES:
                self._copy_path = None
            return True

    def release_aside(self, path: Path, *, delivered: bool) -> None:
        """Let go of a segment written aside: removed if its records were
        delivered (or it holds none: a copy segment made just as the worker
        delivered what it was made for), else unlocked, for a replay to
        deliver."""
        with self._lock:
            if path == self._copy_path:
                delivered = delivered or self._copy_size == 0
                self._copy_path = None
            fd = self._aside.pop(path, None)
            if delivered:
                path.unlink(missing_ok=True)
                self._own.discard(path)
            if fd is not None:
                os.close(fd)  # after the unlink: no replayer sees it unlocked

    def reject(self, entries: Sequence[tuple[Record, str]]) -> None:
        """Append records refused for good to the rejected file, each with
        why. Raises OSError when it cannot be written."""
        now = time.time()
        lines = []
        for record, reason in entries:
            # Plain JSON lines, for people and tools to read (no marks).
            try:
                line = _encode({"rejected_at": now, "reason": reason, "record": list(record)},
                               marked=False)
            except UnencodableRecordError:
                kind, record_id, ts, fields = record
                line = _encode({"rejected_at": now, "reason": reason, "kind": kind,
                                "id": record_id, "ts": ts, "fields_repr": _safe_repr(fields)},
                               marked=False)
            lines.append(line)
        self.rejected_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.rejected_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        try:
            _write_all(fd, lines)
        finally:
            os.close(fd)

    # -- reading (the worker) -------------------------------------------------

    def has_own_pending(self) -> bool:
        """True while a segment this process wrote still exists (another
        process may have replayed and removed it, which counts as delivered),
        not counting those written aside: their records are still in memory."""
        with self._lock:
            self._own = {p for p in self._own if p.exists()}
            return bool(self._own.difference(self._aside))

    def has_any(self) -> bool:
        """Whether an ordinary segment (not a later one) is waiting."""
        return any(not name.startswith(_LATER_PREFIX) for name in self._names())

    def has_later(self) -> bool:
        return any(name.startswith(_LATER_PREFIX) for name in self._names())

    def _names(self, listing: list[Path] | None = None) -> list[str]:
        """The segments' names, of ``listing`` (else of the directory now)."""
        return [p.name for p in (self._listing() if listing is None else listing)
                if p.suffix == ".jsonl"]

    def _listing(self) -> list[Path]:
        try:
            return list(self.directory.iterdir())
        except OSError:  # not made yet, or not a directory it can read
            return []

    def replay(self, deliver: Deliver, batch_size: int, *, later: bool = False,
               include_orphans: bool = True,
               orphans_wait: Callable[[], bool] | None = None) -> bool:
        """Deliver the ordinary segments (or, with ``later``, the later
        ones), oldest first, in batches, deleting each once all its records
        were handled. Stops at the first failed delivery (the error
        propagates; the segment's progress file keeps what was delivered).
        Returns True if none of them is left.

        ``orphans_wait``: once it says so, other processes' segments wait for
        a later call, after the first batch of them, even in the middle of a
        segment (up to 16 MiB: the segment stays locked by this process, and
        the next call goes on where this one stopped): the caller's own
        records come first, so a backlog a crashed process left never holds
        them up, at its exit above all, while each call still takes a batch
        of it."""
        with self._lock:
            self._close_writer()
            own = set(self._own)
            aside = set(self._aside)
            held = self._held
        complete = True
        orphan_batches = 0  # delivered by this call
        paused = False

        def deliver_orphans(batch: Sequence[Record], since: float | None) -> None:
            nonlocal orphan_batches
            deliver(batch, since)
            orphan_batches += 1

        def orphans_stop() -> bool:
            return orphans_wait is not None and orphans_wait()

        listing = self._listing()
        names = sorted(self._names(listing))
        if held is not None and held.path.name in names:
            # The segment a replay stopped in first: it is this process's to finish.
            names.remove(held.path.name)
            names.insert(0, held.path.name)
        elif held is not None and not later:
            with self._lock:  # removed under us (by hand): nothing left to finish
                if self._held is held:
                    self._held = None
                    held.close()
        for name in names:
            if name.startswith(_LATER_PREFIX) != later:
                continue
            path = self.directory / name
            if path in aside or (path not in own and not include_orphans):
                continue  # (written aside: its records are still in memory)
            orphan = path not in own
            if orphan and (paused or (orphan_batches and orphans_stop())):
                complete = False
                continue
            since = _refused_since(name) if later else None
            if orphan:
                outcome = self._replay_segment(path, deliver_orphans, batch_size, since,
                                               orphans_stop)
            else:
                outcome = self._replay_segment(path, deliver, batch_size, since)
            if outcome is not True:
                complete = False
                paused = paused or outcome is _PAUSED
        if include_orphans and not later:
            self._remove_stale_temporaries([p for p in listing if p.suffix == ".tmp"])
            self._remove_stale_progress(listing)
        return complete

    def _remove_stale_progress(self, listing: list[Path]) -> None:
        """Remove the progress files of segments that are gone (a replayer
        killed between removing a segment and its progress file)."""
        names = {path.name for path in listing}
        for path in listing:
            if path.suffix == _PROGRESS_SUFFIX and \
                    path.name[:-len(_PROGRESS_SUFFIX)] not in names:
                path.unlink(missing_ok=True)

    def _remove_stale_temporaries(self, temporaries: list[Path]) -> None:
        """Remove what a process killed while making a segment left behind:
        the empty temporary file it had not renamed yet (a live writer holds
        its lock, and renames it within microseconds of making it)."""
        for path in temporaries:
            try:
                if time.time() - path.stat().st_mtime < _STALE_TEMPORARY:
                    continue
                with open(path, "rb") as handle:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    path.unlink()
            except OSError:  # held (BlockingIOError), or gone already
                continue

    def _replay_segment(self, path: Path, deliver: Deliver, batch_size: int,
                        since: float | None, stop: Callable[[], bool] | None = None) -> object:
        """Deliver a segment's records in batches from where its progress
        file says (its start if it has none), noting the progress after each
        batch. True once it is done (delivered and removed, or gone); False
        if its writer or another replayer holds it; _PAUSED if ``stop`` said
        so after a batch: then this process keeps it, locked, in ``_held``."""
        with self._lock:
            held = self._held if self._held is not None and self._held.path == path else None
            if held is not None:
                self._held = None
        if held is None:
            try:
                handle = open(path, "rb")  # noqa: SIM115
            except FileNotFoundError:
                return True  # someone else finished it
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False  # its writer (or another replayer) is alive
            if os.fstat(handle.fileno()).st_nlink == 0:
                handle.close()
                return True  # replayed and removed while we waited
            held = _Replaying(path, handle)
        try:
            if self._deliver_from(held, deliver, batch_size, since, stop):
                with self._lock:
                    self._held = held
                return _PAUSED
            path.unlink(missing_ok=True)
            if held.progress_kept:
                held.progress_path.unlink(missing_ok=True)
        except BaseException:
            held.close()
            raise
        held.close()
        return True

    @staticmethod
    def _deliver_from(held: _Replaying, deliver: Deliver, batch_size: int,
                      since: float | None, stop: Callable[[], bool] | None) -> bool:
        """Deliver the rest of a held segment; True if ``stop`` said to stop
        between two batches (the rest is left for later)."""
        handle, path = held.handle, held.path
        offset, skip = held.position
        handle.seek(offset)
        batch: list[Record] = []
        #: Where each line's records start in ``batch``: (their index, the
        #: line's offset, how many of its records came before them).
        starts: list[tuple[int, int, int]] = []
        for line in iter(handle.readline, b""):
            records = _parse_line(line, path, offset)
            starts.append((len(batch), offset, skip))
            batch.extend(records[skip:] if skip else records)
            offset += len(line)
            skip = 0
            while len(batch) >= batch_size:
                deliver(batch[:batch_size], since)
                del batch[:batch_size]
                starts = _rebased(starts, batch_size) if batch else []
                held.note(starts[0][1:] if starts else (offset, 0), on_disk=stop is not None)
                if stop is not None and stop():
                    return True
        if batch:
            deliver(batch, since)
        return False

    # -- fork ------------------------------------------------------------------

    def before_fork(self) -> None:
        """Hold the lock across fork(), so the child inherits no write in
        progress."""
        self._lock.acquire()

    def after_fork_in_parent(self) -> None:
        self._lock.release()

    def after_fork_in_child(self) -> None:
        """Forget the parent's segments and write new ones. Closing our copy of
        the descriptor keeps the parent's lock: flock belongs to the shared
        open file, released only when the parent closes it too."""
        for fd in [self._fd, *self._aside.values()]:
            if fd is not None:
                os.close(fd)
        if self._held is not None:
            self._held.close()  # (the parent goes on with it)
            self._held = None
        self._fd = None
        self._aside = {}
        self._copy_path = None
        self._own = set()
        self._tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._counter = 0
        self._lock = threading.RLock()


class _Replaying:
    """A segment being replayed: its open handle (locked), where the replay
    stands (the byte offset of the line holding the first record not
    delivered yet, and how many of that line's records were), and its
    progress file, which says the same for whoever takes the segment up if
    this process dies."""

    __slots__ = ("handle", "path", "position", "progress_kept", "progress_path",
                 "_progress_fd")

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self.handle = handle
        self.progress_path = path.with_name(path.name + _PROGRESS_SUFFIX)
        #: The progress file may exist: it is removed with the segment.
        self.progress_kept = False
        self._progress_fd: int | None = None
        self.position = self._noted(os.fstat(handle.fileno()).st_size)

    def _noted(self, size: int) -> tuple[int, int]:
        """The position the progress file holds (a dead replayer's), else the
        segment's start."""
        try:
            noted = self.progress_path.read_bytes()
        except OSError:
            return 0, 0  # none (or unreadable): from the start
        self.progress_kept = True
        try:
            offset, skip = map(int, noted.split())
        except ValueError:
            return 0, 0  # cut short (the machine crashed): from the start again, at worst
        return (offset, skip) if 0 <= offset <= size and skip >= 0 else (0, 0)

    def note(self, position: tuple[int, int], *, on_disk: bool) -> None:
        """The records before ``position`` were delivered: say so (``on_disk``,
        in one write, for another process's segment: this process's own are
        replayed whole, without stopping, and a system call less is a
        hand-over of the interpreter fewer for the worker while the user's
        thread is busy). A note that cannot be written costs only a batch or
        more delivered again if this process dies."""
        self.position = position
        if not on_disk:
            return
        try:
            if self._progress_fd is None:
                self._progress_fd = os.open(self.progress_path,
                                            os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self.progress_kept = True
            os.pwrite(self._progress_fd, b"%020d %010d\n" % position, 0)
        except OSError as exc:
            log_rate_limited("spool_progress", "lucidic: cannot note a spool replay's "
                             "progress in %s (%s); if this process dies, the next one "
                             "delivers that segment's records again from further back",
                             self.progress_path, exc)

    def close(self) -> None:
        if self._progress_fd is not None:
            os.close(self._progress_fd)
            self._progress_fd = None
        self.handle.close()  # releases its lock: anyone may take it up from the note


def _rebased(starts: list[tuple[int, int, int]], delivered: int) -> list[tuple[int, int, int]]:
    """``starts`` (see Spool._deliver_from) once the first ``delivered``
    records of the batch have left it: the line holding the first record left
    starts it, with the records of it that left counted as before it."""
    first = max(i for i, (index, _, _) in enumerate(starts) if index <= delivered)
    index, offset, skip = starts[first]
    return [(0, offset, skip + delivered - index),
            *((later - delivered, at, before) for later, at, before in starts[first + 1:])]


def _cut_back(fd: int, size: int) -> bool:
    """After a refused write, cut a segment back to its ``size`` bytes of
    whole lines: a full disk may have taken part of the write, and the next
    one would glue onto it. False when even that fails: write no more to it."""
    try:
        os.ftruncate(fd, size)
    except OSError:
        return False
    return True


def _write_all(fd: int, lines: Lines) -> None:
    """Write all the lines: one writev() (of IOV_MAX lines at most), unless a
    signal or a filling disk cuts it short."""
    for start in range(0, len(lines), _IOV_MAX):
        chunk = lines[start:start + _IOV_MAX]
        written = os.writev(fd, chunk)
        if written == _size(chunk):
            continue
        for line in chunk:  # cut short: the rest a line at a time
            if written >= len(line):
                written -= len(line)
                continue
            view = memoryview(line)[written:]
            written = 0
            while view:
                view = view[os.write(fd, view):]


def _size(lines: Lines) -> int:
    return sum(map(len, lines))


def _refused_since(name: str) -> float | None:
    try:
        return int(name[len(_LATER_PREFIX):].split("-", 1)[0]) / 1e9
    except ValueError:
        return None


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 8, 1000, 1000
_REPR.maxdict = _REPR.maxlist = 50


def _safe_repr(value: Any) -> str:
    """A short, depth-limited repr (of what could not be encoded)."""
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001 - whatever the record holds
        return "<unrepresentable>"


#: Marks a line written by json rather than orjson, to be read back by json.
_BY_JSON = b"J"


#: Records a spool line holds at most (see encode_lines): a line replayed
#: is one batch, and one statement of the embedded store.
LINE_RECORDS = ROWS_PER_STATEMENT
_dumps_line = partial(orjson.dumps, option=orjson.OPT_APPEND_NEWLINE)


def encode_lines(records: list[Record]) -> tuple[Lines, list[Record]]:
    """Records as spool lines: lines of up to LINE_RECORDS records, each
    encoded in one call (three times faster than a line each, and read back
    a third faster than one line of many thousands), unless a record needs
    the slower road; then a line each. Also returns the unencodable records.
    The lines are written as they are, with one writev(): joined first, a
    spill's lines cost a copy of them all in memory the kernel must fault in
    afresh (with it a spill's CPU was twice its encoding's)."""
    if len(records) > 1:
        try:
            # In C from end to end: a Python loop here would hand the
            # interpreter to a busy user thread (and wait for it back) at
            # every turn, and a spill must not lag behind a tight loop.
            return list(map(_dumps_line, _pieces(records, LINE_RECORDS))), []
        except TypeError:
            pass
    return _encode_each(records)


def _pieces(items: list[Any], size: int) -> list[list[Any]]:
    """``items`` cut into lists of ``size`` (the last shorter), in C."""
    return list(map(items.__getitem__, map(slice, range(0, len(items), size),
                                           range(size, len(items) + size, size))))


#: Each picks one of the records' parts from a list of records' parts.
_PART = tuple(itemgetter(slice(part, None, RECORD_PARTS)) for part in range(RECORD_PARTS))
_zip_strict = partial(zip, strict=True)


def encode_parts(parts: list[Any]) -> Lines | None:
    """encode_lines() for records given as their parts (kind, id, ts,
    fields), one record's after another's, as the pipeline's queue holds
    them; None if a record needs the slower road (then make the records and
    call encode_lines). A line's records are made from their parts, encoded
    and let go of before the next line's are made, all in C: made all at
    once, tens of thousands of tuples holding a dict sat in the cyclic
    collector's young generations, walked by each of its collections (that
    more than doubled what encoding 100,000 records cost); made in a Python
    loop, each turn would hand the interpreter to a busy user thread (and
    wait for it back: a spill written that way lagged a tight loop by half
    a second)."""
    pieces = _pieces(parts, LINE_RECORDS * RECORD_PARTS)
    try:
        return list(map(_dumps_line, map(list, map(_zip_strict, *(map(part, pieces)
                                                                   for part in _PART)))))
    except TypeError:
        return None


def _encode_each(records: list[Record]) -> tuple[Lines, list[Record]]:
    """A line each: the slower road, for records orjson refuses."""
    lines: Lines = []
    unencodable: list[Record] = []
    for record in records:
        try:
            lines.append(_encode(record))
        except UnencodableRecordError:
            unencodable.append(record)
    return lines, unencodable


def _encode(record: Any, *, marked: bool = True) -> bytes:
    # orjson is ten times faster than json here, and a spilled record is
    # encoded once and decoded once. It refuses a few things json takes (lone
    # surrogates, ints beyond 64 bits, odd objects): those lines are written by
    # json and marked, since orjson would read some of them back differently
    # (a big int as a float). What json refuses too (an int of thousands of
    # digits, nesting too deep) is cleaned first, or found unencodable.
    try:
        return orjson.dumps(record) + b"\n"
    except TypeError:
        pass
    mark = _BY_JSON if marked else b""
    try:
        return mark + json.dumps(record, default=repr).encode() + b"\n"
    except (ValueError, TypeError, RecursionError):
        pass
    try:
        return mark + json.dumps(clean_json(record), default=repr).encode() + b"\n"
    except (ValueError, TypeError, RecursionError) as exc:
        raise UnencodableRecordError(f"the record cannot be written as JSON: {exc}") from exc


def _decode(line: bytes) -> Any:
    if line.startswith(_BY_JSON):
        return json.loads(line[len(_BY_JSON):])
    return orjson.loads(line)


def _parse_line(line: bytes, path: Path, offset: int) -> list[Record]:
    """The records of a line: one, or a batch of them."""
    try:
        value = _decode(line)
        if not isinstance(value, list) or not value:
            raise ValueError("not a record")
        items = value if isinstance(value[0], list) else [value]
        return [_record(item) for item in items]
    except (ValueError, TypeError) as exc:
        # A line cut short by a crash mid-write: the rest of the file is good.
        if line.endswith(b"\n"):
            record_internal_error("spool_corrupt_line", exc)
        else:
            log_rate_limited("spool_partial", "lucidic: skipped a partly written spool "
                             "line in %s (at byte %d)", path, offset)
        return []


def _record(item: Any) -> Record:
    kind, rid, ts, fields = item
    if kind not in RECORD_KINDS or not isinstance(fields, dict):
        raise ValueError("not a record")
    return (kind, str(rid), float(ts), fields)
