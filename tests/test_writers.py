"""Each step and event records the process that wrote it (host, pid, agent),
so a session handed between processes shows who did what; a forked child
records under its own pid."""

from __future__ import annotations

import os
import socket

import lucidic as lai
from helpers import run_python


def _rows(tree):
    steps = list(tree["steps"])
    rows = []
    while steps:
        step = steps.pop(0)
        rows.append(step)
        steps.extend(step["steps"])
        rows.extend(step["events"])
    return rows + tree["events"]


def test_steps_and_events_record_host_pid_and_agent(store) -> None:
    sid = lai.init(session_name="writers", agent_id="agent-w")

    @lai.step(action="decorated")
    def work() -> None:
        lai.create_event(description="inside")

    work()
    lai.create_step(action="imperative")
    lai.update_step(state="later")
    lai.end_step()
    lai.end_session(is_successful=True)
    assert lai.flush()
    rows = _rows(store.session_tree(sid))
    assert len(rows) == 3
    assert {(r["writer_host"], r["writer_pid"], r["writer_agent"]) for r in rows} == {
        (socket.gethostname(), os.getpid(), "agent-w")}


def test_a_handed_over_session_names_each_writer(store, lucidic_home) -> None:
    sid = lai.init(session_name="relay")
    lai.create_event(description="first")
    lai.detach()
    child = run_python(f"""
        import os, lucidic as lai
        lai.continue_session({sid!r}, agent_id="second")
        lai.create_event(description="second")
        lai.end_session()
        print(os.getpid())
    """, home=lucidic_home)
    rows = {r["description"]: r for r in _rows(store.session_tree(sid))}
    assert rows["first"]["writer_pid"] == os.getpid() and rows["first"]["writer_agent"] is None
    assert rows["second"]["writer_pid"] == int(child.stdout.split()[-1])
    assert rows["second"]["writer_agent"] == "second"


def test_a_forked_child_writes_under_its_own_pid(store) -> None:
    sid = lai.init(session_name="forked")
    pid = os.fork()
    if pid == 0:  # the child: record, flush, leave without running the parent's exit
        code = 1
        try:
            lai.create_event(description="from the child")
            code = 0 if lai.flush(10) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lai.create_event(description="from the parent")
    lai.end_session()
    assert lai.flush()
    rows = {r["description"]: r["writer_pid"] for r in _rows(store.session_tree(sid))}
    assert rows == {"from the child": pid, "from the parent": os.getpid()}
