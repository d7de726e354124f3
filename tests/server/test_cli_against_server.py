"""`lucidic sessions` reading from a real `lucidic server`: the same tree as
from the embedded store, and a wrong or missing key says what to do next."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from server_support import ROOT, make_key, sdk_env

from helpers import child_env, run_python


def _cli(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lucidic", *args], capture_output=True,
                          text=True, env=child_env(home, env), timeout=60, cwd=str(ROOT))


def test_sessions_read_from_the_server_and_a_wrong_key_says_what_to_do(
        sqlite_url, start_server, tmp_path):
    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "shop")
    home = tmp_path / "home"
    recorded = run_python("""
        import lucidic as lai
        sid = lai.init(session_name="over the wire")
        lai.create_event(description="sent", cost_added=0.5)
        lai.end_session(is_successful=True)
        assert lai.flush()
        print(sid)
    """, home=home, env=sdk_env(server, key))
    sid = recorded.stdout.strip()

    shown = _cli(home, sdk_env(server, key), "sessions", "show", sid)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("over the wire\n")
    assert "└─ event sent  $0.50\n" in shown.stdout

    wrong = _cli(home, sdk_env(server, "lk_not-a-key"), "sessions", "list")
    assert wrong.returncode == 1
    assert wrong.stderr.startswith(f"lucidic: the lucidic server at {server.url} refused the "
                                   "API key (")
    assert "check LUCIDIC_API_KEY, or make a new key with `lucidic keys create --project " \
           "NAME` where the server runs" in wrong.stderr
    assert "Traceback" not in wrong.stderr

    missing = _cli(home, {"LUCIDIC_BASE_URL": server.url}, "sessions", "show", sid)
    assert missing.returncode == 1
    assert "LUCIDIC_API_KEY is not" in missing.stderr and "lucidic keys create" in missing.stderr
