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

from faults import ReadOnlyDisk, recorded_session

from helpers import ROOT, child_env


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
