"""`lucidic sessions list` and `lucidic sessions show` read the embedded store."""

from __future__ import annotations

import json
import subprocess
import sys

import lucidic as lai
from helpers import child_env


def _cli(home, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lucidic", *args], capture_output=True,
                          text=True, env=child_env(home), timeout=60)


def _record_a_session() -> str:
    sid = lai.init(session_name="cli demo", agent_id="agent-7", task="answer questions")

    @lai.step(action="plan", goal="a plan")
    def plan():
        lai.create_event(description="thought about it", result="3 ideas", cost_added=0.25)
        act()

    @lai.step(action="act")
    def act():
        raise_and_swallow()

    def raise_and_swallow():
        try:
            failing()
        except ValueError:
            pass

    @lai.step(action="failing")
    def failing():
        raise ValueError("nope")

    plan()
    lai.end_session(is_successful=True, is_successful_reason="answered")
    assert lai.flush()
    return sid


def test_sessions_list_prints_each_session_with_status_and_totals(lucidic_home):
    sid = _record_a_session()
    open_sid = lai.init(session_name="still running")
    lai.flush()
    out = _cli(lucidic_home, "sessions", "list").stdout
    lines = out.splitlines()
    assert lines[0].startswith(open_sid) and "running" in lines[0]
    assert lines[1].startswith(sid) and "'cli demo'" in lines[1]
    assert "finished, successful" in lines[1] and "3 steps, 1 events" in lines[1]
    assert "$0.250000" in lines[1] and "1 errors" in lines[1]


def test_sessions_list_filters_and_json(lucidic_home):
    sid = _record_a_session()
    lai.init(session_name="other", agent_id="agent-8")
    lai.flush()
    listed = json.loads(_cli(lucidic_home, "sessions", "list", "--agent", "agent-7",
                             "--json").stdout)
    assert [s["id"] for s in listed] == [sid]
    assert listed[0]["step_count"] == 3 and listed[0]["total_cost"] == 0.25
    running = json.loads(_cli(lucidic_home, "sessions", "list", "--status", "running",
                              "--json").stdout)
    assert [s["name"] for s in running] == ["other"]
    limited = json.loads(_cli(lucidic_home, "sessions", "list", "--limit", "1",
                              "--json").stdout)
    assert len(limited) == 1


def test_sessions_show_prints_the_tree(lucidic_home):
    sid = _record_a_session()
    out = _cli(lucidic_home, "sessions", "show", sid).stdout
    assert out.splitlines()[0] == f"session {sid} 'cli demo'"
    assert "agent_id: agent-7" in out and "is_successful_reason: answered" in out
    assert "└─ step plan" in out
    assert "   ├─ generic  thought about it  → 3 ideas" in out
    assert "   └─ step act" in out
    assert "      └─ step failing" in out and "FAILED: ValueError: nope" in out


def test_sessions_show_json_nests_steps_and_events_with_all_fields(lucidic_home):
    sid = _record_a_session()
    tree = json.loads(_cli(lucidic_home, "sessions", "show", sid, "--json").stdout)
    assert tree["id"] == sid and tree["task"] == "answer questions"
    (plan,) = tree["steps"]
    assert plan["goal"] == "a plan"
    (event,) = plan["events"]
    assert {"id", "type", "description", "result", "cost", "model", "input", "output",
            "input_tokens", "output_tokens", "started_at", "ended_at"} <= set(event)
    assert plan["steps"][0]["steps"][0]["error"].startswith("ValueError")


def test_unknown_session_and_missing_store_are_clear_errors(lucidic_home, tmp_path):
    missing = _cli(tmp_path / "nowhere", "sessions", "list")
    assert missing.returncode != 0 and "no embedded store" in missing.stderr
    _record_a_session()
    unknown = _cli(lucidic_home, "sessions", "show", "nope")
    assert unknown.returncode == 1 and "no session 'nope'" in unknown.stderr
