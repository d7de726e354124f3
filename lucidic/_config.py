"""Where settings come from: explicit arguments first, then the environment."""

from __future__ import annotations

import os
from pathlib import Path

#: Seconds that flush() and the exit path wait for the sink before spooling.
DEFAULT_FLUSH_TIMEOUT = 5.0
#: Seconds that a call needing the server's answer (continuing a session,
#: claiming a given session id) waits to connect, and again for the answer.
DEFAULT_CONNECT_TIMEOUT = 3.0


def env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def data_home() -> Path:
    """LUCIDIC_HOME, else the per-user data directory of the platform, as
    platformdirs knows it: ``$XDG_DATA_HOME/lucidic`` (by default
    ``~/.local/share/lucidic``) on Linux, ``~/Library/Application
    Support/lucidic`` on macOS."""
    explicit = env("LUCIDIC_HOME")
    if explicit:
        return Path(explicit).expanduser()
    from platformdirs import user_data_path  # only when no LUCIDIC_HOME is set

    return user_data_path("lucidic", appauthor=False)


def base_url() -> str | None:
    url = env("LUCIDIC_BASE_URL")
    return url.rstrip("/") if url else None


def flush_timeout() -> float:
    return _seconds("LUCIDIC_FLUSH_TIMEOUT", DEFAULT_FLUSH_TIMEOUT)


def connect_timeout() -> float:
    """LUCIDIC_CONNECT_TIMEOUT: the bound on the few calls that wait for the
    server (continue_session, init with a session_id); never zero."""
    return _seconds("LUCIDIC_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT) or DEFAULT_CONNECT_TIMEOUT


def _seconds(name: str, default: float) -> float:
    raw = env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if 0 <= value < 1e6 else default


#: Records held in memory before the oldest are written to the spool.
DEFAULT_MAX_QUEUE = 65536


def max_queue() -> int:
    """LUCIDIC_MAX_QUEUE: how many records wait in memory before the oldest
    are written to the spool (at twice as many, with the spool unwritable
    and the sink down, the newest are dropped)."""
    raw = env("LUCIDIC_MAX_QUEUE")
    try:
        value = int(raw) if raw is not None else DEFAULT_MAX_QUEUE
    except ValueError:
        return DEFAULT_MAX_QUEUE
    return value if value >= 2 else DEFAULT_MAX_QUEUE


def durable() -> bool:
    """LUCIDIC_DURABLE=1: every record is written to the spool before the
    call that made it returns, so that even SIGKILL loses nothing."""
    return (env("LUCIDIC_DURABLE") or "").strip().lower() in ("1", "true", "yes", "on")


def store_path() -> Path:
    """The embedded store's file."""
    return data_home() / "lucidic.db"
