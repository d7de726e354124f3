"""Errors raised by Lucidic's public API.

Only misuse of the API raises; instrumentation never does. Every message says
what was wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "APIKeyVerificationError",
    "InvalidOperationError",
    "LucidicError",
    "LucidicNotInitializedError",
    "ReplayMissError",
    "ServerUnavailableError",
]


class LucidicError(Exception):
    """Base class of every error Lucidic raises on purpose."""


class APIKeyVerificationError(LucidicError):
    """The API key was missing, unknown or revoked."""


class InvalidOperationError(LucidicError):
    """The call cannot be carried out in the current state (unknown or finished
    session, another session already current, bad argument, ...)."""


class ServerUnavailableError(InvalidOperationError):
    """A call that needs the lucidic server's answer (continuing a session,
    starting one with a given id) got none within LUCIDIC_CONNECT_TIMEOUT:
    the server is down, unreachable or not answering. Retrying later may
    succeed; nothing was recorded."""


class LucidicNotInitializedError(LucidicError):
    """A call needs a current session and there is none."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "No Lucidic session is current here. Start one with lai.init(), "
            "lai.continue_session(id) or `with lai.continued(id):` first."
        )


class ReplayMissError(LucidicError):
    """An experiment replaying another one in strict mode met an LLM call that
    experiment never recorded."""
