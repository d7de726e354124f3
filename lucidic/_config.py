"""Where settings come from: explicit arguments first, then the environment."""

from __future__ import annotations

import os
from pathlib import Path

#: Seconds that flush() and the exit path wait for the sink before spooling.
DEFAULT_FLUSH_TIMEOUT = 5.0


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
    raw = env("LUCIDIC_FLUSH_TIMEOUT")
    if raw is None:
        return DEFAULT_FLUSH_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_FLUSH_TIMEOUT
    return value if value >= 0 else DEFAULT_FLUSH_TIMEOUT


def store_path() -> Path:
    """The embedded store's file."""
    return data_home() / "lucidic.db"
