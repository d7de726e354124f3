"""Reliability of sessions and the public API under real faults (issue 7,
points 3, 5, 6 and 8, over the embedded store or no server at all): a server
that accepts connections and never answers, fork() while the parent's worker
writes a backlog, session ids of another project in the store, and input
that breaks Python's own protocols. Their server-side half is in
tests/server/test_reliability_sessions_server.py."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_python
from lucidic.store import Store

# -- 5. a forked child delivers its own records --------------------------------------

FORKING_PARENT = """
import json, os, sys
import lucidic as lai
from lucidic.store import Store

CHILDREN, PER_CHILD, BACKLOG = 8, 500, 10_000
lai.init(session_name="forks")
for i in range(BACKLOG):
    lai.create_event(description=f"parent {i}")
pids = []
for child in range(CHILDREN):
    pid = os.fork()  # while the worker is writing the backlog
    if pid == 0:
        for i in range(PER_CHILD):
            lai.create_event(description=f"child {child} {i}")
        if child % 2:
            os._exit(0 if lai.flush(20) else 3)  # says whether its own records arrived
        sys.exit(0)  # the normal way out: the exit flush delivers them
    pids.append(pid)
statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
store = Store(os.path.join(os.environ["LUCIDIC_HOME"], "lucidic.db"))
rows = store.query("SELECT description FROM events WHERE description LIKE 'child %'")
print(json.dumps({"statuses": statuses, "child_rows": [r["description"] for r in rows]}))
"""


def test_forked_children_deliver_their_own_records_while_the_parent_writes_a_backlog(
        lucidic_home: Path, store: Store) -> None:
    done = run_python(FORKING_PARENT, home=lucidic_home, timeout=120)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # Before: the children forked mid-transaction saw "database is locked"
    # for their whole life (flush False, everything left in the spool).
    assert out["statuses"] == [0] * 8, out["statuses"]
    expected = {f"child {c} {i}" for c in range(8) for i in range(500)}
    # Counted as the children left, before anyone could replay their spools.
    assert len(out["child_rows"]) == len(expected) and set(out["child_rows"]) == expected
    assert store.count("events") == 10_000 + len(expected)
