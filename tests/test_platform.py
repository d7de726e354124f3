"""Where the data lives on each platform, and the platforms Lucidic runs on:
POSIX only, said plainly by `import lucidic` where it cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_python
from lucidic import _config


def test_without_lucidic_home_the_data_lives_in_the_platforms_user_data_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUCIDIC_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert _config.data_home() == tmp_path / ".local" / "share" / "lucidic"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert _config.store_path() == tmp_path / "xdg" / "lucidic" / "lucidic.db"
    monkeypatch.setenv("LUCIDIC_HOME", "~/elsewhere")
    assert _config.data_home() == tmp_path / "elsewhere"


def test_on_macos_the_data_lives_in_application_support(tmp_path: Path) -> None:
    result = run_python("""
        import os, sys
        sys.platform = "darwin"   # as platformdirs sees it on a Mac
        del os.environ["LUCIDIC_HOME"]
        from lucidic import _config
        print(_config.data_home())
    """, home=tmp_path, env={"HOME": str(tmp_path)})
    assert Path(result.stdout.strip()) == (
        tmp_path / "Library" / "Application Support" / "lucidic")


def test_import_says_lucidic_is_posix_only_where_there_is_no_flock(tmp_path: Path) -> None:
    # What `import lucidic` does on Windows, where the fcntl module does not exist.
    result = run_python("""
        import json, sys
        sys.modules["fcntl"] = None   # import fcntl now raises ImportError
        try:
            import lucidic
        except ImportError as exc:
            print(json.dumps([type(exc).__name__, str(exc)]))
    """, home=tmp_path)
    name, message = json.loads(result.stdout)
    assert name == "ImportError"
    assert "POSIX systems only" in message and "WSL" in message and "flock" in message
