"""auto_end with real child processes: normal exit, SIGTERM, uncaught
exception, fork."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

import lucidic as lai
from helpers import ROOT, ReadableStore, child_env, run_python

RECORD_SOME = """
import lucidic as lai
sid = lai.init(session_name="child"{options})
print(sid, flush=True)
lai.create_step(action="work")
for i in range(200):
    lai.create_event(description=f"event {{i}}")
lai.end_step()
"""


def _child(extra: str, options: str = "") -> str:
    return textwrap.dedent(RECORD_SOME.format(options=options)) + textwrap.dedent(extra)


def _assert_all_recorded(home, sid: str) -> dict:
    store = ReadableStore(home / "lucidic.db")
    tree = store.session_tree(sid)
    assert tree is not None
    (step,) = tree["steps"]
    assert len(step["events"]) == 200 and step["is_finished"]
    return tree


def test_normal_exit_ends_the_session_with_every_record(lucidic_home):
    result = run_python(_child(""), home=lucidic_home)
    tree = _assert_all_recorded(lucidic_home, result.stdout.split()[0])
    assert tree["is_finished"] is True and tree["is_successful"] is None


def test_auto_end_false_leaves_the_session_open_but_delivers_everything(lucidic_home):
    result = run_python(_child("", options=", auto_end=False"), home=lucidic_home)
    tree = _assert_all_recorded(lucidic_home, result.stdout.split()[0])
    assert tree["is_finished"] is False


def test_uncaught_exception_marks_the_session_failed_and_records_the_error(lucidic_home):
    result = run_python(_child("raise SystemError('agent crashed')"), home=lucidic_home,
                        check=False)
    assert result.returncode == 1
    assert "SystemError: agent crashed" in result.stderr  # the usual traceback still prints
    tree = _assert_all_recorded(lucidic_home, result.stdout.split()[0])
    assert tree["is_finished"] is True and tree["is_successful"] is False
    assert "uncaught exception: SystemError: agent crashed" in tree["is_successful_reason"]
    (error,) = [e for e in tree["events"] if e["type"] == "error"]
    assert "Traceback" in error["error"] and "agent crashed" in error["description"]


def _start_and_wait_ready(code: str, home) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(home), cwd=ROOT)
    assert proc.stdout is not None
    sid = proc.stdout.readline().strip()
    assert proc.stdout.readline().strip() == "ready"
    return proc, sid


def test_sigterm_ends_the_session_delivers_everything_and_keeps_the_exit_status(lucidic_home):
    proc, sid = _start_and_wait_ready(_child("print('ready', flush=True)\n"
                                             "import time; time.sleep(60)"), lucidic_home)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    tree = _assert_all_recorded(lucidic_home, sid)
    assert tree["is_finished"] is True and tree["is_successful"] is False
    assert tree["is_successful_reason"] == "terminated by SIGTERM"


def test_sigterm_chains_to_the_programs_own_handler(lucidic_home):
    code = textwrap.dedent("""
        import signal, sys, time
        def graceful(signum, frame):
            print("own handler ran", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, graceful)
    """) + _child("print('ready', flush=True)\nimport time; time.sleep(60)")
    proc, sid = _start_and_wait_ready(code, lucidic_home)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3 and "own handler ran" in out
    assert _assert_all_recorded(lucidic_home, sid)["is_finished"] is True


#: Ctrl-C as a program started from a terminal has it. A parent that ignores
#: SIGINT (a script's background job, as CI may be started) passes SIG_IGN
#: down, and Python then leaves it ignored: no KeyboardInterrupt, whatever
#: lucidic does.
CTRL_C_AS_IN_A_TERMINAL = ("import signal\n"
                           "signal.signal(signal.SIGINT, signal.default_int_handler)\n")


def test_ctrl_c_still_raises_keyboard_interrupt(lucidic_home):
    result = run_python(CTRL_C_AS_IN_A_TERMINAL + _child("""
        import os, signal
        try:
            os.kill(os.getpid(), signal.SIGINT)
            import time; time.sleep(5)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """), home=lucidic_home)
    assert "interrupted" in result.stdout


def test_a_forked_child_records_into_the_store_and_does_not_end_the_parents_session(
        lucidic_home):
    result = run_python("""
        import os, sys
        import lucidic as lai
        sid = lai.init(session_name="forking")
        print(sid, flush=True)
        lai.create_event(description="parent before fork")
        pid = os.fork()
        if pid == 0:
            lai.create_event(description="from the forked child")
            sys.exit(0)  # atexit flushes; the child never ends the parent's session
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        import lucidic.store, lucidic._config
        row = lucidic.store.Store(lucidic._config.store_path()).get_session(sid)
        print("finished after child:", row["is_finished"], flush=True)
        lai.create_event(description="parent after fork")
    """, home=lucidic_home)
    sid, after_child = result.stdout.splitlines()[:2]
    assert after_child == "finished after child: False"
    tree = ReadableStore(lucidic_home / "lucidic.db").session_tree(sid)
    assert sorted(e["description"] for e in tree["events"]) == [
        "from the forked child", "parent after fork", "parent before fork"]
    assert tree["is_finished"] is True


def test_multiprocessing_fork_children_flush_on_their_way_out(lucidic_home):
    result = run_python("""
        import multiprocessing as mp
        import lucidic as lai

        def work(n):
            for i in range(50):
                lai.create_event(description=f"child {n} event {i}")

        if __name__ == "__main__":
            sid = lai.init(session_name="pool")
            print(sid, flush=True)
            ctx = mp.get_context("fork")
            procs = [ctx.Process(target=work, args=(n,)) for n in range(3)]
            for p in procs: p.start()
            for p in procs: p.join()
            assert all(p.exitcode == 0 for p in procs)
    """, home=lucidic_home)
    sid = result.stdout.split()[0]
    tree = ReadableStore(lucidic_home / "lucidic.db").session_tree(sid)
    assert tree["event_count"] == 150


def test_continue_in_a_child_process_after_the_parent_detached(lucidic_home):
    sid = lai.init(session_name="handed over")
    lai.create_event(description="parent")
    lai.detach()
    run_python(f"""
        import lucidic as lai
        lai.continue_session({sid!r})
        lai.create_event(description="child")
        lai.end_session(is_successful=True)
    """, home=lucidic_home)
    tree = ReadableStore(lucidic_home / "lucidic.db").session_tree(sid)
    assert sorted(e["description"] for e in tree["events"]) == ["child", "parent"]
    assert tree["is_successful"] is True
    # Finished by the child: this process can no longer continue it.
    with pytest.raises(lai.InvalidOperationError, match="has finished"):
        lai.continue_session(sid)


def test_capture_uncaught_false_records_no_crash_but_still_ends_the_session(lucidic_home):
    result = run_python(_child("raise SystemError('agent crashed')",
                               options=", capture_uncaught=False"),
                        home=lucidic_home, check=False)
    assert result.returncode == 1 and "SystemError: agent crashed" in result.stderr
    tree = _assert_all_recorded(lucidic_home, result.stdout.split()[0])
    assert tree["is_finished"] is True
    assert tree["is_successful"] is None and tree["is_successful_reason"] is None
    assert [e for e in tree["events"] if e["type"] == "error"] == []


#: A child's start: its session, and a daemon thread 'worker' inside the
#: decorated steps "outer poll" > "inner poll" until the process ends.
DAEMON_IN_A_STEP = """
import threading, time
import lucidic as lai
print(lai.init(session_name="interrupted"), flush=True)
started = threading.Event()

@lai.step(action="inner poll")
def inner():
    started.set()
    time.sleep(600)

@lai.step(action="outer poll")
def outer():
    inner()

threading.Thread(target=outer, name="worker", daemon=True).start()
started.wait()
"""


def _polls(tree: dict) -> list[dict]:
    """The daemon thread's two steps, outer first."""
    (outer,) = [step for step in tree["steps"] if step["action"] == "outer poll"]
    (inner,) = outer["steps"]
    return [outer, inner]


def test_sigterm_ends_the_steps_it_interrupted_as_failed(lucidic_home):
    # In the main thread, and in another thread (whose steps never ended).
    proc, sid = _start_and_wait_ready(DAEMON_IN_A_STEP + textwrap.dedent("""
        @lai.step(action="inner")
        def main_inner():
            print("ready", flush=True)
            time.sleep(60)

        lai.create_step(action="outer")
        main_inner()
    """), lucidic_home)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    tree = ReadableStore(lucidic_home / "lucidic.db").session_tree(sid)
    (outer,) = [step for step in tree["steps"] if step["action"] == "outer"]
    (inner,) = outer["steps"]
    for step in (outer, inner):
        assert step["is_finished"] is True, step
        assert step["error"] == "terminated by SIGTERM", step
    for step in _polls(tree):
        assert step["is_finished"] is True, step
        assert step["error"] == "terminated by SIGTERM while this step ran (in thread 'worker')"
    assert tree["is_successful_reason"] == "terminated by SIGTERM"


def test_sigterm_is_handled_when_the_first_init_came_from_another_thread(lucidic_home):
    # signal handlers can only be installed from the main thread: the first
    # init made elsewhere must not settle it for good.
    proc, sid = _start_and_wait_ready(textwrap.dedent("""
        import threading, time
        import lucidic as lai
        worker = threading.Thread(target=lai.init, kwargs={"session_name": "from a thread"})
        worker.start(); worker.join()
        print(lai.init(session_name="from main"), flush=True)
        lai.create_event(description="before the signal")
        print("ready", flush=True)
        time.sleep(60)
    """), lucidic_home)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    store = ReadableStore(lucidic_home / "lucidic.db")
    sessions = {s["name"]: s for s in store.list_sessions()}
    assert set(sessions) == {"from a thread", "from main"}
    for summary in sessions.values():
        tree = store.session_tree(summary["id"])
        assert tree["is_finished"] is True
        assert tree["is_successful_reason"] == "terminated by SIGTERM"


MULTIPROCESSING_CHILD_SESSIONS = """
import multiprocessing as mp
import sys
import uuid
{parent_import}

def work(session_id):
    import lucidic as lai
    lai.init(session_name="child", session_id=session_id)
    lai.create_step(action="work")
    for i in range(50):
        lai.create_event(description=f"event {{i}}")
    lai.end_step()
    # left open: auto_end must end it as the child leaves

if __name__ == "__main__":
    ids = [str(uuid.uuid4()) for _ in range(2)]
    print(" ".join(ids), flush=True)
    ctx = mp.get_context({method!r})
    procs = [ctx.Process(target=work, args=(session_id,)) for session_id in ids]
    for p in procs: p.start()
    for p in procs: p.join()
    sys.exit(max(p.exitcode for p in procs))
"""


@pytest.mark.parametrize("parent_imported", [True, False],
                         ids=["parent-imported", "parent-did-not"])
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_sessions_started_in_multiprocessing_children_end_as_the_children_leave(
        lucidic_home, tmp_path, method, parent_imported):
    # multiprocessing's forked children leave through os._exit(), skipping
    # atexit: their sessions must end all the same. (A file, so that spawn's
    # children can import the target.)
    script = tmp_path / "agent.py"
    script.write_text(MULTIPROCESSING_CHILD_SESSIONS.format(
        method=method, parent_import="import lucidic" if parent_imported else ""))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, env=child_env(lucidic_home), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    store = ReadableStore(lucidic_home / "lucidic.db")
    for session_id in result.stdout.split():
        tree = store.session_tree(session_id)
        assert tree is not None, session_id
        (step,) = tree["steps"]
        assert len(step["events"]) == 50 and step["is_finished"]
        assert tree["is_finished"] is True


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_a_forked_child_neither_runs_nor_waits_for_the_parents_deferred_jobs() -> None:
    # Jobs that complete records off the caller's thread (token counts): the
    # parent runs its own; a child forked while one waits starts with none
    # and a thread of its own for what it submits.
    import os
    import threading

    from lucidic._deferred import deferred

    release, ran_in = threading.Event(), []
    deferred.submit(lambda: (release.wait(30), ran_in.append(os.getpid())))
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            nothing_pending = deferred.wait(0.5)
            deferred.submit(lambda: ran_in.append(os.getpid()))
            own_ran = deferred.wait(5)
            os.write(writer, f"{nothing_pending} {own_ran} {ran_in == [os.getpid()]}".encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as answer:
        child_said = answer.read()
    os.waitpid(pid, 0)
    assert child_said == "True True True"
    assert not deferred.wait(0.05)  # the parent's job still waits...
    release.set()
    assert deferred.wait(10) and ran_in == [os.getpid()]  # ...and runs in the parent alone


def test_a_daemon_threads_steps_end_as_interrupted_when_the_process_exits(lucidic_home):
    # The interpreter stops daemon threads at exit without unwinding them:
    # their decorated steps never ended, and their session showed them so for
    # good. Nested steps end, innermost too, at the moment of the exit.
    sid = run_python(DAEMON_IN_A_STEP, home=lucidic_home).stdout.split()[0]
    tree = ReadableStore(lucidic_home / "lucidic.db").session_tree(sid)
    for step in _polls(tree):
        assert step["is_finished"] is True and step["never_ended"] is False, step
        assert step["error"] == ("interrupted at exit: the process ended while this step ran "
                                 "(in thread 'worker')"), step
        assert step["started_at"] <= step["ended_at"] <= tree["ended_at"]
    assert tree["is_finished"] and tree["is_successful"] is None  # the session ended as usual


#: A child's start: its session, with steps left open where no thread's stack
#: shows them: an asyncio task (in a daemon thread's loop) suspended inside
#: the decorated coroutines "outer wait" > "inner wait", a decorated generator
#: and a decorated async generator paused between items, a plugin's step
#: opened and never ended, a plugin's step_scope a daemon thread is inside of,
#: and a create_step step the main thread leaves for the session's end.
SUSPENDED_STEPS = """
import asyncio, threading, time
import lucidic as lai
from lucidic import plugins
print(lai.init(session_name="suspended"), flush=True)
waiting = threading.Event()

@lai.step(action="inner wait")
async def inner():
    waiting.set()
    await asyncio.sleep(600)

@lai.step(action="outer wait")
async def outer():
    await inner()

@lai.step(action="paused generator")
def numbers():
    yield 1
    yield 2

@lai.step(action="paused async generator")
async def async_numbers():
    yield 1
    yield 2

paused = numbers()
next(paused)
paused_async = async_numbers()
asyncio.run(paused_async.__anext__())
threading.Thread(target=asyncio.run, args=(outer(),), name="loop", daemon=True).start()
waiting.wait()
handle = plugins.open_step(action="plugin run")

def framework_run():
    with plugins.step_scope(action="plugin scope"):
        time.sleep(600)

threading.Thread(target=framework_run, name="framework", daemon=True).start()
lai.create_step(action="left for the session")
"""


def _steps_by_action(tree: dict) -> dict[str, dict]:
    found: dict[str, dict] = {}

    def walk(steps: list[dict]) -> None:
        for step in steps:
            found[step["action"]] = step
            walk(step.get("steps", []))
    walk(tree["steps"])
    return found


def _wait_until_open(home, sid: str, actions: set[str]) -> None:
    """Until the child's steps with these actions are stored (open)."""
    import time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (home / "lucidic.db").exists():
            tree = ReadableStore(home / "lucidic.db").session_tree(sid)
            if tree is not None and actions <= set(_steps_by_action(tree)):
                return
        time.sleep(0.05)
    raise AssertionError(f"steps {actions} never stored")


@pytest.mark.parametrize("durable", [False, True], ids=["queued", "durable"])
def test_steps_no_stack_shows_end_as_interrupted_when_the_process_exits(lucidic_home, durable):
    # Suspended coroutines and generators are on no thread's stack, and a
    # plugin's open step is on none at all: they never ended. (In durable
    # mode, the paused generator the interpreter closes as it finalizes must
    # not end its step again: that end would wait in the spool for the next
    # process, and say the step ended later and fine.)
    env = {"LUCIDIC_DURABLE": "1"} if durable else None
    sid = run_python(SUSPENDED_STEPS, home=lucidic_home, env=env).stdout.split()[0]
    tree = ReadableStore(lucidic_home / "lucidic.db").session_tree(sid)
    steps = _steps_by_action(tree)
    why = "interrupted at exit: the process ended while this step"
    expected = {
        "outer wait": f"{why}'s coroutine was suspended",
        "inner wait": f"{why}'s coroutine was suspended",
        "paused generator": f"{why}'s generator was suspended",
        "paused async generator": f"{why}'s async generator was suspended",
        "plugin run": f"{why} was open",
        "plugin scope": f"{why} was open",
        # The imperative API leaves the last step to the session's end (the
        # seed's own basic example does): it ends with it, not failed.
        "left for the session": None,
    }
    assert {action: steps[action]["error"] for action in expected} == expected
    for step in steps.values():
        assert step["is_finished"] is True and step["never_ended"] is False, step
        assert step["started_at"] <= step["ended_at"] <= tree["ended_at"], step
    assert steps["inner wait"]["ended_at"] <= steps["outer wait"]["ended_at"]
    assert tree["is_finished"] and tree["is_successful"] is None
    assert list((lucidic_home / "spool").rglob("*.jsonl")) == []  # nothing left to replay


def test_sigterm_ends_the_steps_of_suspended_tasks_and_every_open_step(lucidic_home):
    # SIGTERM while asyncio.run waits: the task inside the decorated steps is
    # suspended, so the handler's context has no step of it. A create_step
    # step open in another thread, and a plugin's step, were interrupted too.
    proc, sid = _start_and_wait_ready(textwrap.dedent("""
        import asyncio, threading
        import lucidic as lai
        from lucidic import plugins
        print(lai.init(session_name="terminated"), flush=True)

        @lai.step(action="inner wait")
        async def inner(waiting):
            waiting.set()
            await asyncio.sleep(600)

        @lai.step(action="outer wait")
        async def outer(waiting):
            await inner(waiting)

        def imperative():
            lai.create_step(action="opened in a thread")

        async def main():
            waiting = asyncio.Event()
            task = asyncio.create_task(outer(waiting))
            await waiting.wait()
            plugins.open_step(action="plugin run")
            thread = threading.Thread(target=imperative)
            thread.start(); thread.join()
            print("ready", flush=True)
            await task

        asyncio.run(main())
    """), lucidic_home)
    _wait_until_open(lucidic_home, sid, {"inner wait", "plugin run", "opened in a thread"})
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    tree = ReadableStore(lucidic_home / "lucidic.db").session_tree(sid)
    steps = _steps_by_action(tree)
    why = "terminated by SIGTERM"
    assert {action: step["error"] for action, step in steps.items()} == {
        "outer wait": f"{why} while this step's coroutine was suspended",
        "inner wait": f"{why} while this step's coroutine was suspended",
        "plugin run": f"{why} while this step was open",
        "opened in a thread": why,
    }
    for step in steps.values():
        assert step["is_finished"] is True and step["never_ended"] is False, step
    assert tree["is_successful_reason"] == why


def test_ending_the_session_ends_the_plugin_steps_left_open(lucidic_home):
    # As it ends create_step's: a framework run that never reported its end
    # would otherwise show as running for good.
    sid = lai.init(session_name="plugin steps")
    from lucidic import plugins
    handle = plugins.open_step(action="never ended")
    ended = plugins.open_step(action="ended")
    assert handle is not None and ended is not None
    ended.end()
    lai.end_session()
    handle.end(error="too late")  # ended with the session: nothing more is recorded
    assert lai.flush()
    steps = _steps_by_action(ReadableStore(lucidic_home / "lucidic.db").session_tree(sid))
    for action in ("never ended", "ended"):
        assert steps[action]["is_finished"] is True and steps[action]["error"] is None
