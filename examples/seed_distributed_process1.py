"""The seed's "Distributed System Example", process 1.

As DESIGN section 3 settles, process 1 hands the session over by detaching:
`lai.end_session()` would finish it, and a finished session cannot be
continued (the seed's own note). The "queue" is a file named on the command
line (default: session-queue.txt).
"""

import sys

import lucidic as lai

QUEUE = sys.argv[1] if len(sys.argv) > 1 else "session-queue.txt"


def put_session_on_queue(session_id):
    with open(QUEUE, "w") as f:
        f.write(session_id)


# Process 1: Initialize session
session_id = lai.init(session_name="Distributed Workflow")
print(f"Started session: {session_id}")
# ... do some work ...
lai.create_step(state="Splitting the work", action="Partition data into batches")
lai.create_event(description="partitioned", result="4 batches")
lai.end_step()
put_session_on_queue(session_id)
lai.detach()  # hand over; lai.end_session() would finish it for everyone
