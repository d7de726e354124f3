"""The on-disk spool: where records wait while the sink cannot take them.

A spool is a directory of segment files, one JSON record per line. Each
process appends to segments of its own, holding an exclusive ``flock`` on the
one it writes; a segment nobody holds a lock on can be replayed by any
process, so what a dead process left behind is delivered by the next one.
Replays may overlap with a delivery that already happened (the file is deleted
only after every line was accepted), which is harmless: sinks apply records
idempotently.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from ._internal import log_rate_limited, record_internal_error
from .store import RECORD_KINDS, Record

_SEGMENT_BYTES = 16 * 1024 * 1024


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Reentrant: a SIGTERM handler may spool while the interrupted main
        # thread is inside append().
        self._lock = threading.RLock()
        self._writer: IO[bytes] | None = None
        self._writer_bytes = 0
        self._own: set[Path] = set()
        self._tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._counter = 0

    # -- writing (any thread) -------------------------------------------------

    def append(self, records: Iterable[Record]) -> int:
        """Write records to this process's current segment; returns how many."""
        lines = [_encode(r) for r in records]
        if not lines:
            return 0
        data = b"".join(lines)
        with self._lock:
            writer = self._writer or self._open_segment()
            writer.write(data)
            self._writer_bytes += len(data)
            if self._writer_bytes >= _SEGMENT_BYTES:
                self._close_writer()
        return len(lines)

    def sync(self) -> None:
        """Hand buffered lines to the OS, so they survive the process dying."""
        with self._lock:
            if self._writer is not None:
                self._writer.flush()

    def _open_segment(self) -> IO[bytes]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._counter += 1
        path = self.directory / f"{time.time_ns():020d}-{self._tag}-{self._counter}.jsonl"
        writer = open(path, "ab")  # noqa: SIM115 - kept open across calls on purpose
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        self._writer, self._writer_bytes = writer, 0
        self._own.add(path)
        return writer

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()  # releases the lock: the segment is now replayable
            self._writer = None

    def close(self) -> None:
        with self._lock:
            self._close_writer()

    # -- reading (the worker) -------------------------------------------------

    def has_own_pending(self) -> bool:
        """True while a segment this process wrote still exists (another
        process may have replayed and removed it, which counts as delivered)."""
        with self._lock:
            self._own = {p for p in self._own if p.exists()}
            return bool(self._own)

    def has_any(self) -> bool:
        try:
            return any(p.suffix == ".jsonl" for p in self.directory.iterdir())
        except FileNotFoundError:
            return False

    def replay(self, deliver: Callable[[Sequence[Record]], None], batch_size: int,
               include_orphans: bool = True) -> bool:
        """Deliver spooled segments, oldest first, deleting each once all its
        records were accepted. Stops at the first failed delivery (the error
        propagates). Returns True if nothing replayable is left."""
        with self._lock:
            self._close_writer()
            own = set(self._own)
        try:
            candidates = sorted(p for p in self.directory.iterdir() if p.suffix == ".jsonl")
        except FileNotFoundError:
            return True
        complete = True
        for path in candidates:
            if path not in own and not include_orphans:
                continue
            if not self._replay_segment(path, deliver, batch_size):
                complete = False
        return complete

    def _replay_segment(self, path: Path, deliver: Callable[[Sequence[Record]], None],
                        batch_size: int) -> bool:
        try:
            handle = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return True  # someone else finished it
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its writer (or another replayer) is alive
            if os.fstat(handle.fileno()).st_nlink == 0:
                return True  # replayed and removed while we waited
            batch: list[Record] = []
            for line_number, line in enumerate(handle, 1):
                record = _parse_line(line, path, line_number)
                if record is None:
                    continue
                batch.append(record)
                if len(batch) >= batch_size:
                    deliver(batch)
                    batch = []
            if batch:
                deliver(batch)
            path.unlink(missing_ok=True)
        return True

    # -- fork ------------------------------------------------------------------

    def before_fork(self) -> None:
        """Hold the lock across fork() with the buffer empty, so the child
        inherits no half-written line and nothing of the parent's to flush."""
        self._lock.acquire()
        if self._writer is not None:
            self._writer.flush()

    def after_fork_in_parent(self) -> None:
        self._lock.release()

    def after_fork_in_child(self) -> None:
        """Forget the parent's segments and write new ones. Closing our copy of
        the descriptor keeps the parent's lock: flock belongs to the shared
        open file, released only when the parent closes it too."""
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._own = set()
        self._tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._counter = 0
        self._lock = threading.RLock()


#: Marks a line written by json rather than orjson, to be read back by json.
_BY_JSON = b"J"


def _encode(record: Record) -> bytes:
    # orjson is ten times faster than json here, and a spilled record is
    # encoded once and decoded once. It refuses a few things json takes (lone
    # surrogates, ints beyond 64 bits, odd objects): those lines are written by
    # json and marked, since orjson would read some of them back differently
    # (a big int as a float).
    try:
        return orjson.dumps(record) + b"\n"
    except TypeError:
        return _BY_JSON + json.dumps(record, default=repr).encode() + b"\n"


def _decode(line: bytes) -> Any:
    if line.startswith(_BY_JSON):
        return json.loads(line[len(_BY_JSON):])
    return orjson.loads(line)


def _parse_line(line: bytes, path: Path, line_number: int) -> Record | None:
    try:
        kind, rid, ts, fields = _decode(line)
        if kind not in RECORD_KINDS or not isinstance(fields, dict):
            raise ValueError("not a record")
        return (kind, str(rid), float(ts), fields)
    except (ValueError, TypeError) as exc:
        # A line cut short by a crash mid-write: the rest of the file is good.
        if line.endswith(b"\n"):
            record_internal_error("spool_corrupt_line", exc)
        else:
            log_rate_limited("spool_partial", "lucidic: skipped a partly written spool "
                             "line in %s:%d", path, line_number)
        return None

