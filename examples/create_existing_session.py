"""Creates the session the basic-usage example continues, then hands it over
by detaching (ending it would make it impossible to continue)."""

import lucidic as lai

lai.init(session_name="Existing session", session_id="existing-session-123")
lai.create_step(state="Started elsewhere", action="Prepare data")
lai.end_step()
lai.detach()
