"""The seed's "Distributed System Example", process 2: continues the session
process 1 put on the queue (a file named on the command line)."""

import sys

import lucidic as lai

QUEUE = sys.argv[1] if len(sys.argv) > 1 else "session-queue.txt"
PROVIDERS = ["openai"] if "--openai" in sys.argv else []


def get_session_from_queue():
    with open(QUEUE) as f:
        return f.read().strip()


# Process 2: Continue the session
# Get session_id from shared storage, message queue, etc.
session_id = get_session_from_queue()

lai.continue_session(
    session_id=session_id,
    providers=PROVIDERS,
)

# Continue the workflow
lai.create_step(
    state="Processing in worker node",
    action="Analyze data batch"
)
lai.create_event(description="analysed batch 1", result="ok")
lai.end_step()
lai.end_session(is_successful=True, is_successful_reason="all batches analysed")
print(f"Finished session: {session_id}")
