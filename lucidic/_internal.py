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


_warned: set[str] = set()


def warn_once(kind: str, message: str, *args: object) -> None:
    """A warning the user must see even when their program configured no
    logging (records are at risk): logged on the ``lucidic`` logger, and
    written to stderr (by logging's last-resort handler) when no handler
    would show it. Once per kind, until ``rearm(kind)``."""
    with _lock:
        if kind in _warned:
            return
        _warned.add(kind)
    if not logger.isEnabledFor(logging.WARNING):
        return
    if _has_handler(logger) or logging.lastResort is None:
        logger.warning(message, *args)
        return
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 0, message, args, None)
    logging.lastResort.handle(record)


def rearm(kind: str) -> None:
    """The condition warned about has cleared: warn again if it returns."""
    with _lock:
        _warned.discard(kind)


def reset_warnings() -> None:
    """Forget every warn_once and rate limit (a test's fresh start)."""
    with _lock:
        _warned.clear()
        _last_logged.clear()


def _has_handler(start: logging.Logger) -> bool:
    """Whether a handler other than a NullHandler would see our records."""
    current: logging.Logger | None = start
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent  # type: ignore[assignment]
    return False


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
