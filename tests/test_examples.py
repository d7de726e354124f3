"""Every example runs as written, each in its own process, against a fresh
embedded store; the seed's distributed example with two real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, ReadableStore, child_env
from lucidic.store import Store

EXAMPLES = ROOT / "examples"


def _run(home: Path, cwd: Path, script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd,
                            env=child_env(home), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _only_session(store: Store, name: str) -> dict:
    (summary,) = [s for s in store.list_sessions() if s["name"] == name]
    tree = store.session_tree(summary["id"])
    assert tree is not None
    return tree


def test_seed_basic_usage_continues_an_existing_session(lucidic_home, tmp_path):
    _run(lucidic_home, tmp_path, "create_existing_session.py")
    _run(lucidic_home, tmp_path, "seed_basic_usage.py")
    tree = ReadableStore(lucidic_home / "lucidic.db").session_tree("existing-session-123")
    steps = {s["action"]: s for s in tree["steps"]}
    assert steps["Process additional data"]["state"] == "Continuing workflow"
    assert tree["is_finished"]  # auto_end at the example's exit


def test_seed_distributed_example_hands_over_between_two_processes(lucidic_home, tmp_path):
    started = _run(lucidic_home, tmp_path, "seed_distributed_process1.py", "queue.txt")
    sid = started.split("Started session: ")[1].split()[0]
    store = ReadableStore(lucidic_home / "lucidic.db")
    assert store.get_session(sid)["is_finished"] is False  # detached, not ended
    finished = _run(lucidic_home, tmp_path, "seed_distributed_process2.py", "queue.txt")
    assert f"Finished session: {sid}" in finished
    tree = store.session_tree(sid)
    assert [s["action"] for s in tree["steps"]] == ["Partition data into batches",
                                                   "Analyze data batch"]
    assert tree["steps"][1]["state"] == "Processing in worker node"
    assert tree["is_finished"] and tree["is_successful"] is True


def test_seed_distributed_example_as_literally_written_explains_why_it_fails(
        lucidic_home, tmp_path):
    """Process 1 of the seed calls end_session(); process 2 is then refused,
    with a message that says to detach instead (DESIGN section 3)."""
    code = ("import lucidic as lai\n"
            "session_id = lai.init(session_name='Distributed Workflow')\n"
            "open('queue.txt', 'w').write(session_id)\n"
            "lai.end_session()\n")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=child_env(lucidic_home),
                   check=True, timeout=60)
    result = subprocess.run([sys.executable, str(EXAMPLES / "seed_distributed_process2.py"),
                             "queue.txt"], cwd=tmp_path, env=child_env(lucidic_home),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "InvalidOperationError" in result.stderr and "lai.detach()" in result.stderr


def test_seed_error_recovery_continues_the_checkpointed_session(lucidic_home, tmp_path):
    out = _run(lucidic_home, tmp_path, "seed_error_recovery.py")
    sid = out.split("Recovered session: ")[1].split()[0]
    tree = ReadableStore(lucidic_home / "lucidic.db").session_tree(sid)
    assert [s["action"] for s in tree["steps"]] == ["Load first rows", "Load the rest"]
    assert not (tmp_path / "checkpoint.pkl").exists()


def test_seed_error_handling_reports_an_unknown_session(lucidic_home, tmp_path):
    out = _run(lucidic_home, tmp_path, "seed_error_handling.py")
    assert out.strip() == "Session may already be active or does not exist"


def test_thread_pool_example_records_every_worker_in_one_session(lucidic_home, tmp_path):
    _run(lucidic_home, tmp_path, "thread_pool.py")
    tree = _only_session(ReadableStore(lucidic_home / "lucidic.db"), "Thread pool summaries")
    assert tree["step_count"] == 4 and tree["event_count"] == 4
    assert sorted(s["events"][0]["description"] for s in tree["steps"]) == [
        "read alpha", "read beta", "read delta", "read gamma"]


def test_asyncio_example_keeps_each_task_in_its_own_session(lucidic_home, tmp_path):
    _run(lucidic_home, tmp_path, "asyncio_tasks.py")
    store = ReadableStore(lucidic_home / "lucidic.db")
    for topic in ("tides", "volcanoes", "glaciers"):
        tree = _only_session(store, f"Research {topic}")
        (step,) = tree["steps"]
        assert [e["description"] for e in step["events"]] == [f"searched {topic}"]
        assert tree["is_finished"] and tree["is_successful"] is True


def test_the_demo_runs_everything_and_prints_the_trees(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    home = tmp_path / "home"
    result = subprocess.run([sys.executable, str(EXAMPLES / "run_all.py"), "--home", str(home)],
                            capture_output=True, text=True, timeout=300,
                            env=child_env(tmp_path / "ignored", {"TMPDIR": str(scratch)}))
    assert result.returncode == 0, result.stderr
    assert "$ lucidic sessions show existing-session-123" in result.stdout
    assert "step Analyze data batch" in result.stdout
    listed = json.loads(subprocess.run(
        [sys.executable, "-m", "lucidic", "sessions", "list", "--json"], capture_output=True,
        text=True, env=child_env(home), check=True).stdout)
    assert len(listed) == 8
    # it ends with the exact commands that read its sessions again
    quickstart = next(s for s in listed if s["name"] == "Trip planner")
    tail = result.stdout.splitlines()[-3:]
    assert tail[0] == (f"The demo's 8 sessions are kept in {home} (each `make demo` starts it "
                       "afresh). Read them again with:")
    lucidic = Path(sys.executable).parent / "lucidic"
    if lucidic.is_relative_to(Path.cwd()):  # shown as the user in this directory types it
        lucidic = lucidic.relative_to(Path.cwd())
    assert tail[1:] == [f"  LUCIDIC_HOME={home} {lucidic} sessions list",
                        f"  LUCIDIC_HOME={home} {lucidic} sessions show {quickstart['id']}"]
    assert list(scratch.iterdir()) == []  # its working files are gone


def test_the_demo_will_not_reuse_a_directory_that_holds_something_else(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    result = subprocess.run([sys.executable, str(EXAMPLES / "run_all.py"), "--home",
                             str(tmp_path)], capture_output=True, text=True, timeout=60,
                            env=child_env(tmp_path / "ignored"))
    assert result.returncode != 0 and "is not empty" in result.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_the_quickstart_runs_with_the_core_alone_and_prints_what_to_run_next(lucidic_home,
                                                                               tmp_path):
    out = _run(lucidic_home, tmp_path, "quickstart.py")
    sid = out.split("Recorded session ")[1].split(";")[0]
    assert out == f"Recorded session {sid}; see it with: lucidic sessions show {sid}\n"
    tree = _only_session(ReadableStore(lucidic_home / "lucidic.db"), "Trip planner")
    assert tree["id"] == sid and tree["is_successful"] is True
    assert [s["action"] for s in tree["steps"]] == ["Plan the trip"]
