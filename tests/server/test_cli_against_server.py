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


def test_a_short_id_and_follow_work_against_the_server(sqlite_url, start_server, tmp_path):
    import requests

    from helpers import FollowingCli

    server = start_server(sqlite_url)
    key = make_key(sqlite_url, "shop")
    env = sdk_env(server, key)
    home = tmp_path / "home"
    sid = run_python("""
        import lucidic as lai
        sid = lai.init(session_name="remote job", auto_end=False)
        lai.create_step(action="warm up")
        lai.end_step()
        assert lai.flush()
        print(sid)
    """, home=home, env=env).stdout.strip()

    # The tree answers 304 to the ETag it gave while nothing changes.
    tree_url = f"{server.url}/api/v1/sessions/{sid}/tree"
    auth = {"Authorization": f"Bearer {key}"}
    first = requests.get(tree_url, headers=auth, timeout=10)
    assert first.status_code == 200 and first.headers["ETag"]
    again = requests.get(tree_url, headers={**auth, "If-None-Match": first.headers["ETag"]},
                         timeout=10)
    assert again.status_code == 304 and again.content == b""

    follower = FollowingCli(home, sid[:8], env)
    follower.wait_for("step warm up")
    run_python("""
        import sys
        import lucidic as lai
        lai.continue_session(sys.argv[1])
        lai.create_step(action="crunch numbers")
        lai.end_step()
        lai.end_session(is_successful=False, is_successful_reason="ran out of time")
    """, home=home, env=env, args=[sid])
    assert follower.finish() == 0
    assert "+ step crunch numbers" in "\n".join(follower.lines)
    assert follower.lines[-1].startswith("session ended: failed")

    changed = requests.get(tree_url, headers={**auth, "If-None-Match": first.headers["ETag"]},
                           timeout=10)
    assert changed.status_code == 200 and changed.json()["is_finished"]


def test_another_projects_session_is_no_prefix_match(sqlite_url, start_server, tmp_path):
    server = start_server(sqlite_url)
    mine, theirs = make_key(sqlite_url, "mine"), make_key(sqlite_url, "theirs")
    home = tmp_path / "home"
    run_python("""
        import lucidic as lai
        lai.init(session_name="secret", session_id="5ec2e7-theirs")
        lai.end_session()
        assert lai.flush()
    """, home=home, env=sdk_env(server, theirs))
    shown = _cli(home, sdk_env(server, mine), "sessions", "show", "5ec2e7")
    assert shown.returncode == 1
    assert "no session '5ec2e7'" in shown.stderr and "secret" not in shown.stdout
