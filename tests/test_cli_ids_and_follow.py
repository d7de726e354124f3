"""The CLI takes the start of an id wherever it takes an id, and
`sessions show --follow` prints what other processes add to a running
session until it ends (embedded store; tests/server covers a server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import ROOT, FollowingCli, child_env, run_python


def _cli(home: Path, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lucidic", *args], capture_output=True,
                          text=True, env=child_env(home, {"TZ": "UTC", **(env or {})}),
                          timeout=60, cwd=str(ROOT))


def _record(home: Path, *ids: str) -> None:
    run_python("""
        import sys
        import lucidic as lai
        for sid in sys.argv[1:]:
            lai.init(session_name="named " + sid, session_id=sid)
            lai.end_session(is_successful=True)
        assert lai.flush()
    """, home=home, args=list(ids))


def test_a_unique_id_prefix_names_its_session(lucidic_home):
    _record(lucidic_home, "7f3a9c01-alpha", "7f3b0000-beta", "c0ffee00-gamma")

    shown = _cli(lucidic_home, "sessions", "show", "7f3a")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("named 7f3a9c01-alpha\n")
    assert "session  7f3a9c01-alpha" in shown.stdout

    as_json = _cli(lucidic_home, "sessions", "show", "c0f", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert '"id": "c0ffee00-gamma"' in as_json.stdout


def test_an_ambiguous_prefix_names_the_candidates_and_an_unknown_one_says_so(lucidic_home):
    _record(lucidic_home, "7f3a9c01-alpha", "7f3b0000-beta")

    ambiguous = _cli(lucidic_home, "sessions", "show", "7f3")
    assert ambiguous.returncode == 1
    assert ambiguous.stdout == ""
    assert "'7f3' starts more than one session id (" in ambiguous.stderr
    assert "7f3a9c01-alpha" in ambiguous.stderr and "7f3b0000-beta" in ambiguous.stderr
    assert "give more of it" in ambiguous.stderr

    unknown = _cli(lucidic_home, "sessions", "show", "dead")
    assert unknown.returncode == 1
    assert "no session 'dead'" in unknown.stderr


def test_a_whole_id_wins_over_longer_ids_it_starts(lucidic_home):
    _record(lucidic_home, "abc", "abcdef")
    shown = _cli(lucidic_home, "sessions", "show", "abc")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("named abc\n")


def test_keys_revoke_takes_the_start_of_a_key_id(lucidic_home, tmp_path):
    db = f"sqlite:///{tmp_path / 'accounts.db'}"
    created = _cli(lucidic_home, "keys", "create", "--project", "shop", "--db", db)
    assert created.returncode == 0, created.stderr
    key_id = next(line.split()[2] for line in created.stdout.splitlines()
                  if line.startswith("key id:"))

    revoked = _cli(lucidic_home, "keys", "revoke", key_id[:8], "--db", db)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"revoked {key_id}:")
    listed = _cli(lucidic_home, "keys", "list", "--db", db)
    assert f"{key_id}  project shop" in listed.stdout and "revoked" in listed.stdout


def test_follow_prints_what_other_processes_add_until_the_session_ends(lucidic_home):
    sid = "f0110w00-run"
    run_python("""
        import sys
        import lucidic as lai
        lai.init(session_name="long job", session_id=sys.argv[1], auto_end=False)
        lai.create_step(action="warm up")
        lai.end_step()
        assert lai.flush()
    """, home=lucidic_home, args=[sid])

    follower = FollowingCli(lucidic_home, sid[:6])
    follower.wait_for("step warm up")
    run_python("""
        import sys
        import lucidic as lai
        lai.continue_session(sys.argv[1])
        lai.create_step(action="crunch numbers")
        lai.create_event(description="read the batch", result="1,000 rows")
        lai.end_step()
        lai.detach()
    """, home=lucidic_home, args=[sid])
    follower.wait_for("+ step crunch numbers")
    follower.wait_for("+ event read the batch")
    assert follower.proc.poll() is None, "the session still runs: --follow goes on"

    run_python("""
        import sys
        import lucidic as lai
        lai.continue_session(sys.argv[1])
        lai.end_session(is_successful=True)
    """, home=lucidic_home, args=[sid])
    assert follower.finish() == 0
    out = follower.lines
    assert out[0] == "long job"
    arrivals = [line for line in out if line.lstrip().startswith("+ ")]
    assert [line.strip().split("  ")[0] for line in arrivals] == [
        "+ step crunch numbers", "+ event read the batch"]
    assert arrivals[1].startswith("  + event"), "an event in a step is drawn inside it"
    assert "→ 1,000 rows" in arrivals[1]
    assert sum("warm up" in line for line in out) == 1, "what was shown is not shown again"
    assert out[-1].startswith("session ended: successful  2 steps, 1 event")


def test_follow_on_an_ended_session_shows_it_and_stops(lucidic_home):
    _record(lucidic_home, "done-1")
    follower = FollowingCli(lucidic_home, "done-1")
    assert follower.finish() == 0
    assert follower.lines[0] == "named done-1"
    assert follower.lines[-1].startswith("session ended: successful")


def test_follow_with_json_is_refused_with_a_reason(lucidic_home):
    _record(lucidic_home, "done-2")
    refused = _cli(lucidic_home, "sessions", "show", "done-2", "--follow", "--json")
    assert refused.returncode == 2
    assert "--follow prints text" in refused.stderr
