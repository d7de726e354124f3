"""The embedded store on storage that refuses every write: a real read-only
filesystem (a tmpfs remounted read-only) or a read-only bind mount of the
store's file. As root, chmod would stop nothing: the kernel must refuse.

What a user gets: the SDK keeps the records (in the spool, when it can be
written) and says once, visibly, why they wait; the user's program runs on
untouched; the CLI and `lucidic ui` still read the store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from faults import (
    DELIVER_LATER,
    ReadOnlyDisk,
    events_of,
    numbered,
    read_only_file,
    recorded_session,
)

from helpers import ROOT, child_env, run_python

RECORD_100 = """
import lucidic as lai
sid = lai.init(session_name="on read-only storage")
for i in range(100):
    lai.create_event(description=f"event {i}")
print(sid, lai.flush(3), flush=True)
print("the program went on", flush=True)
"""


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lucidic", *args], capture_output=True,
                          text=True, timeout=60, env=child_env(home), cwd=ROOT)


def test_the_cli_reads_a_store_on_a_read_only_filesystem(tmp_path: Path) -> None:
    # SQLite could not open the file for its WAL (no shared-memory file can
    # be made there): `lucidic sessions list` ended in a traceback.
    with ReadOnlyDisk(tmp_path / "disk") as disk:
        home = disk.path / "home"
        sid = recorded_session(home)
        disk.read_only()
        listed = _cli(home, "sessions", "list")
        shown = _cli(home, "sessions", "show", sid)
    assert listed.returncode == 0, listed.stderr
    assert sid in listed.stdout and "written before" in listed.stdout
    assert shown.returncode == 0, shown.stderr
    assert "event before" in shown.stdout
    assert "Traceback" not in listed.stderr + shown.stderr


def test_a_store_file_that_cannot_be_written_keeps_the_records_spooled_and_says_so(
        tmp_path: Path) -> None:
    # The records were spooled, but the only word of it was a warning on
    # lucidic's logger, which a program that configured no logging never shows.
    home = tmp_path / "home"
    recorded_session(home)
    db = home / "lucidic.db"
    with read_only_file(db):
        child = run_python(RECORD_100, home=home)
        sid, delivered = child.stdout.split()[:2]
    assert delivered == "False"  # not delivered: waiting, not lost
    assert "the program went on" in child.stdout
    lines = [line for line in child.stderr.splitlines() if "cannot be written" in line]
    assert len(lines) == 1, child.stderr  # visible, and once
    assert str(db) in lines[0] and "readonly database" in lines[0]
    assert str(home / "spool") in lines[0] and "mended" in lines[0]
    # Mended: the next process delivers everything the first one recorded.
    later = run_python(DELIVER_LATER, home=home)
    assert later.stdout.strip() == "True", later.stderr
    assert numbered(events_of(db, sid)) == list(range(100))


def test_records_lost_at_exit_on_a_read_only_home_are_said_to_be_lost(tmp_path: Path) -> None:
    # Neither the store nor the spool can be written: the records are held in
    # memory, as the spool's warning says, and at exit they were gone with no
    # word that they were.
    with ReadOnlyDisk(tmp_path / "disk") as disk:
        home = disk.path / "home"
        recorded_session(home)
        disk.read_only()
        child = run_python(RECORD_100, home=home)
    assert "the program went on" in child.stdout  # the user's program is untouched
    assert "cannot write the spool" in child.stderr
    assert "its filesystem is read-only" in child.stderr  # why the store took none
    (lost,) = [line for line in child.stderr.splitlines() if "they are lost" in line]
    assert int(lost.split()[1]) >= 100, lost  # the 100 events, and the session's end


def test_a_data_directory_a_read_only_filesystem_cannot_have_made_is_broken_not_busy(
        tmp_path: Path) -> None:
    # Making the store's directory failed with EROFS, an error nobody had
    # classed: taken for "not now" (a lock), it was retried as one, with no
    # word to the user but the spool's. It fails until someone mends it.
    from lucidic._sinks import LocalSink, SinkError
    from lucidic.store import Store, StoreError

    with ReadOnlyDisk(tmp_path / "disk") as disk:
        disk.read_only()
        home = disk.path / "home"  # never made
        with pytest.raises(StoreError) as raised:
            Store(home / "lucidic.db")
        with pytest.raises(SinkError) as sunk:
            LocalSink(home / "lucidic.db").write([("session", "s", 1.0, {"project": "p"})])
        child = run_python(RECORD_100, home=home)
    assert raised.value.broken and raised.value.transient  # kept and retried, but mended only
    assert sunk.value.broken
    assert f"its directory {home} does not exist and cannot be made" in str(raised.value)
    assert "Read-only file system" in str(raised.value)
    assert "the program went on" in child.stdout
    (said,) = [line for line in child.stderr.splitlines() if "cannot be written" in line]
    assert str(home / "lucidic.db") in said and "does not exist and cannot be made" in said
    (lost,) = [line for line in child.stderr.splitlines() if "they are lost" in line]
    assert int(lost.split()[1]) >= 100, lost
