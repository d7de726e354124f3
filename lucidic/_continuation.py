"""When a session may be continued, or its id given to a new one: the one rule,
and the words for each refusal.

Shared by the SDK (over the embedded store it applies the rule itself) and
the server (behind ``GET /api/v1/sessions/{id}/continuable``, which the SDK
asks over HTTP, and lucidicai's ``continuesession``), so that both refuse
the same sessions with the same message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def refusal(stored: Mapping[str, Any], session_id: str, agent_id: str | None) -> str | None:
    """Why the stored session cannot be continued by ``agent_id``; None if it can."""
    if stored.get("is_finished"):
        return finished_message(session_id)
    owner = stored.get("agent_id")
    if agent_id and owner and owner != agent_id:
        return (f"session {session_id!r} belongs to agent {owner!r}, not {agent_id!r}; "
                "continue it with the agent id that created it.")
    return None


def unknown_message(session_id: str) -> str:
    return (f"session {session_id!r} does not exist (for this store or API key). Check the "
            "id, or start a new session with lai.init().")


def deleted_message(session_id: str) -> str:
    return (f"session {session_id!r} was deleted, and a deleted session cannot be continued "
            "(records for it are refused). Start a new session with lai.init().")


def finished_message(session_id: str) -> str:
    return (f"session {session_id!r} has finished and a finished session cannot be "
            "continued. To hand a session over to another process, detach it there with "
            "lai.detach() (or leave its `with lai.continued()` block) instead of calling "
            "lai.end_session().")


def in_use_message(session_id: str) -> str:
    """For a new session given an id that is taken. The same words whoever
    holds the id: they must not tell one project about another's sessions."""
    return (f"session id {session_id!r} is already in use: a session with this id already "
            "exists. Continue it with lai.continue_session() if it is yours, or pass another "
            "session_id (or none, for a new random id).")
