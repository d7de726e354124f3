"""The seed's "Basic Usage" example, as written (apart from the import).

It continues a session that must already exist: run_all.py first creates
"existing-session-123" in another process (see create_existing_session.py).
"""

import lucidic as lai

# Continue a previous session
session_id = "existing-session-123"
lai.continue_session(session_id=session_id)

# Add more steps and events to the session
lai.create_step(
    state="Continuing workflow",
    action="Process additional data"
)
