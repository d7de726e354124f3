"""The guard every instrumentation path runs under: log, count, swallow.

User exceptions never pass through here; only Lucidic's own failures do. The
counters let tests (and curious users) see what was swallowed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("lucidic")
logger.addHandler(logging.NullHandler())

#: How many internal failures were swallowed, by kind. Read by lucidic.testing.
internal_errors: Counter[str] = Counter()

_last_logged: dict[str, float] = {}
_lock = threading.Lock()
_RATE_LIMIT_SECONDS = 10.0


def log_rate_limited(kind: str, message: str, *args: object, level: int = logging.WARNING,
                     exc_info: bool = False) -> None:
    """Log at most once per kind every few seconds, so a failing backend cannot
    flood the host program's logs."""
    now = time.monotonic()
    with _lock:
        last = _last_logged.get(kind)
        if last is not None and now - last < _RATE_LIMIT_SECONDS:
            return
        _last_logged[kind] = now
    logger.log(level, message, *args, exc_info=exc_info)


def record_internal_error(kind: str, exc: BaseException | None = None) -> None:
    internal_errors[kind] += 1
    log_rate_limited(kind, "lucidic: internal error (%s), swallowed: %r", kind, exc,
                     level=logging.ERROR, exc_info=exc is not None)


@contextmanager
def swallow(kind: str) -> Iterator[None]:
    """Run a piece of instrumentation; if it fails, log and count, never raise."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - this is the one place that swallows
        record_internal_error(kind, exc)
