"""Real faults for the reliability tests: a store locked by another process,
a full disk, a child process read line by line as it runs."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT, ReadableStore, child_env, run_python
from lucidic._sinks import SinkError
from lucidic.store import Record, Store
from lucidic.testing import MemorySink


def events(n: int, session: str = "s") -> list[Record]:
    """n event records of one session, ids e0, e1, ..."""
    return [("event", f"e{i}", float(i), {"session_id": session, "description": f"d{i}"})
            for i in range(n)]


class HangingSink(MemorySink):
    """A backend that hangs: writes block until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, records: Sequence[Record]) -> None:
        if not self.release.wait(30):
            raise SinkError("hung")
        super().write(records)


def too_deep() -> dict[str, object]:
    """A document nested deeper than any JSON encoder goes: a record holding
    it cannot be written at all."""
    root: dict[str, object] = {}
    node = root
    for _ in range(50_000):
        child: dict[str, object] = {}
        node["x"] = child
        node = child
    return root


@contextlib.contextmanager
def locked_store(db: Path) -> Iterator[None]:
    """The embedded store, held by another connection in ``BEGIN
    EXCLUSIVE`` (a stuck writer): every write waits out its busy timeout and
    fails."""
    Store(db).close()  # the schema exists before it is locked
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        locker.execute("ROLLBACK")
        locker.close()


class FullDisk:
    """A real tmpfs mounted at ``path``, filled to the last byte by a filler
    file until ``free()``. Skips the test where mounting is impossible."""

    def __init__(self, path: Path, size: str = "2m") -> None:
        self.path = path
        self.size = size
        self.filler = path / "filler"

    def __enter__(self) -> FullDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs",
                                  str(self.path)], capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"a full disk needs a tmpfs, and mounting one failed (not root?): "
                        f"{mounted.stderr.strip()}")
        return self

    def fill(self) -> None:
        chunk = b"\0" * 65536
        with open(self.filler, "ab", buffering=0) as f:
            for size in (65536, 4096, 512, 1):
                while True:
                    try:
                        f.write(chunk[:size])
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


class ReadOnlyDisk:
    """A real tmpfs mounted at ``path``, remounted read-only by
    ``read_only()`` (as root, chmod stops no write: the filesystem must
    refuse it) and writable again by ``writable()``. Skips the test where
    mounting is impossible."""

    def __init__(self, path: Path, size: str = "16m") -> None:
        self.path = path
        self.size = size

    def __enter__(self) -> ReadOnlyDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        _mount(["-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)],
               "a read-only filesystem needs a tmpfs")
        return self

    def read_only(self) -> None:
        _mount(["-o", "remount,ro", str(self.path)], "remounting the tmpfs read-only")

    def writable(self) -> None:
        _mount(["-o", "remount,rw", str(self.path)], "remounting the tmpfs writable")

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@contextlib.contextmanager
def read_only_file(path: Path) -> Iterator[None]:
    """The file at ``path`` on a read-only bind mount of itself: it cannot be
    written, while its directory can (the spool beside it, SQLite's WAL)."""
    _mount(["--bind", str(path), str(path)], "a read-only file needs a bind mount")
    try:
        _mount(["-o", "remount,ro,bind", str(path)], "remounting the bind mount read-only")
        yield
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def _mount(args: list[str], what: str) -> None:
    mounted = subprocess.run(["mount", *args], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"{what}, and mount failed (not root?): {mounted.stderr.strip()}")


def recorded_session(home: Path) -> str:
    """A session with one event, written while the store could be written."""
    return run_python("""
        import lucidic as lai
        sid = lai.init(session_name="written before")
        lai.create_event(description="event before")
        lai.end_session()
        print(sid)
    """, home=home).stdout.strip()


class Child:
    """A Python child process whose stdout lines are read as they come,
    each with the time it arrived."""

    def __init__(self, code: str, home: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *(args or [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=child_env(home, env), cwd=str(ROOT))
        self.lines: list[tuple[float, str]] = []
        self._arrived = threading.Condition()
        self._stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._arrived:
                self.lines.append((time.time(), line.rstrip("\n")))
                self._arrived.notify_all()
        with self._arrived:
            self.lines.append((time.time(), ""))  # end of output
            self._arrived.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    def line(self, index: int, timeout: float = 60) -> str:
        """The index-th line of output, once it has come."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.lines) > index, timeout):
                self.proc.kill()
                raise AssertionError(f"the child printed no line {index}:\n{self.stderr()}")
        text = self.lines[index][1]
        if text == "" and self.proc.poll() is not None:
            raise AssertionError(f"the child ended early ({self.proc.returncode}):\n"
                                 f"{self.stderr()}")
        return text

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # never leave a child running after its test
            raise
        time.sleep(0.05)  # let the readers drain
        return code

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "".join(self._stderr)
        self.proc.wait()
        time.sleep(0.05)
        return "".join(self._stderr)


def recording_loop(session_name: str, chunk: int, pause: float = 0.0) -> str:
    """A child's code: it prints its session id, then records events
    "event 0", "event 1", ... for ever, printing after each ``chunk`` of them
    how many it has recorded, when, and after how much of its main thread's
    CPU time (and sleeping ``pause`` seconds)."""
    return f"""
import time
import lucidic as lai
sid = lai.init(session_name={session_name!r})
print(sid, flush=True)
i = 0
while True:
    for _ in range({chunk}):
        lai.create_event(description=f"event {{i}}")
        i += 1
    print(i, time.time(), time.thread_time(), flush=True)  # every event before i is recorded
    if {pause}:
        time.sleep({pause})
"""


def made_before(child: Child, moment: float) -> int:
    """How many events a recording_loop child had recorded by then, by its own
    account (a line a kill cut short says nothing)."""
    return _made_by(child, moment, column=1)


def made_before_running(child: Child, cpu_seconds: float) -> int:
    """How many events a recording_loop child had recorded by the time its
    main thread had run ``cpu_seconds`` (see main_thread_cpu)."""
    return _made_by(child, cpu_seconds, column=2)


def _made_by(child: Child, moment: float, column: int) -> int:
    words = [text.split() for _, text in child.lines[1:]]
    return max((int(w[0]) for w in words if len(w) == 3 and float(w[column]) <= moment),
               default=0)


def main_thread_cpu(pid: int) -> float:
    """The CPU time a process's main thread has used, in seconds, as
    time.thread_time() reads it inside the process."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after the command's name
    utime, stime = int(fields[11]), int(fields[12])  # stat(5)'s 14th and 15th
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def events_of(db_url_or_path: str | Path, session_id: str) -> list[str]:
    """The descriptions of a session's events, as stored."""
    store = ReadableStore(db_url_or_path)
    try:
        tree = store.session_tree(session_id)
    finally:
        store.close()
    assert tree is not None, f"session {session_id} was not stored"
    return [e["description"] for e in tree["events"]]


def numbered(descriptions: list[str], prefix: str = "event ") -> list[int]:
    """The numbers of events described as ``<prefix><n>``, sorted."""
    return sorted(int(d[len(prefix):]) for d in descriptions if d.startswith(prefix))


#: A later process delivers what earlier ones left in the spool: its flush
#: covers its own records, and the worker replays the others' a segment at a
#: time between them, so it waits until the spool is empty, then flushes.
DELIVER_LATER = """
import os, time
from pathlib import Path
import lucidic as lai
lai.init(session_name='later')
spool = Path(os.environ['LUCIDIC_HOME']) / 'spool'
deadline = time.monotonic() + 60
while any(spool.rglob('*.jsonl')) and time.monotonic() < deadline:
    time.sleep(0.05)
print(lai.flush(30))
"""


def rejected(spool: Any) -> list[dict[str, Any]]:
    """The entries a spool set aside as refused for good (its rejected file)."""
    return [json.loads(line) for line in spool.rejected_path.read_text().splitlines()]


def spooled_files(home: Path) -> list[Path]:
    spool = home / "spool"
    return sorted(spool.rglob("*.jsonl")) if spool.exists() else []


def wait_until(condition: object, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(step)
    return bool(condition())  # type: ignore[operator]


