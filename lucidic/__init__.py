"""Lucidic: observability for AI agents.

    import lucidic as lai

    session_id = lai.init(session_name="My agent")

    @lai.step
    def plan(goal): ...

Sessions can be continued in another thread, task, process or machine with
``lai.continue_session(id)`` or ``with lai.continued(id):``.
"""

from __future__ import annotations

try:
    import fcntl  # noqa: F401 - what the spool locks its files with
except ImportError:  # Windows
    raise ImportError(
        "lucidic runs on POSIX systems only (Linux, macOS): its spool locks files with "
        "flock() and its pipelines start again in a child after fork(), neither of which "
        "Windows has. On Windows, run your agent under WSL.") from None

from . import errors
from ._api import (
    continue_session,
    continued,
    create_event,
    create_step,
    delivery_stats,
    detach,
    end_event,
    end_session,
    end_step,
    flush,
    init,
    session,
    shutdown,
    update_event,
    update_session,
    update_step,
)
from ._decorators import event, step
from ._experiments import create_experiment, create_mass_sim, score
from .errors import (
    APIKeyVerificationError,
    InvalidOperationError,
    LucidicError,
    LucidicNotInitializedError,
    ReplayMissError,
    ServerUnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "APIKeyVerificationError",
    "InvalidOperationError",
    "LucidicError",
    "LucidicNotInitializedError",
    "ReplayMissError",
    "ServerUnavailableError",
    "__version__",
    "continue_session",
    "continued",
    "create_event",
    "create_experiment",
    "create_mass_sim",
    "create_step",
    "delivery_stats",
    "detach",
    "end_event",
    "end_session",
    "end_step",
    "errors",
    "event",
    "flush",
    "init",
    "score",
    "session",
    "shutdown",
    "step",
    "update_event",
    "update_session",
    "update_step",
]
