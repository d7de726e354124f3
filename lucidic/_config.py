"""Where settings come from: explicit arguments first, then the environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Seconds that flush() and the exit path wait for the sink before spooling.
DEFAULT_FLUSH_TIMEOUT = 5.0


def env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def data_home() -> Path:
    """LUCIDIC_HOME, else the per-user data directory of the platform."""
    explicit = env("LUCIDIC_HOME")
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "win32":
        base = env("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "lucidic"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "lucidic"
    base = env("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "lucidic"


def base_url() -> str | None:
    url = env("LUCIDIC_BASE_URL")
    return url.rstrip("/") if url else None


def flush_timeout() -> float:
    raw = env("LUCIDIC_FLUSH_TIMEOUT")
    if raw is None:
        return DEFAULT_FLUSH_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_FLUSH_TIMEOUT
    return value if value >= 0 else DEFAULT_FLUSH_TIMEOUT


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
