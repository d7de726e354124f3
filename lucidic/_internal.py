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
RATE_LIMIT_SECONDS = 10.0


def log_rate_limited(kind: str, message: str, *args: object, level: int = logging.WARNING,
                     exc_info: bool = False, to: logging.Logger | None = None) -> None:
    """Log at most once per kind every few seconds, so a failing backend cannot
    flood the host program's logs (``to``: a logger other than lucidic's)."""
    now = time.monotonic()
    with _lock:
        last = _last_logged.get(kind)
        if last is not None and now - last < RATE_LIMIT_SECONDS:
            return
        _last_logged[kind] = now
    (to or logger).log(level, message, *args, exc_info=exc_info)


_warned: set[str] = set()


def warn_once(kind: str, message: str, *args: object) -> None:
    """A warning the user must see (records are at risk), through
    ``log_visible``: once per kind, until ``rearm(kind)``."""
    with _lock:
        if kind in _warned:
            return
        _warned.add(kind)
    log_visible(logging.WARNING, message, *args)


def rearm(kind: str) -> None:
    """The condition warned about has cleared: warn again if it returns."""
    with _lock:
        _warned.discard(kind)


def reset_warnings() -> None:
    """Forget every warn_once and rate limit (a test's fresh start)."""
    with _lock:
        _warned.clear()
        _last_logged.clear()


def log_visible(level: int, message: str, *args: object) -> None:
    """Log on the lucidic logger, and, when the program configured no logging
    at all, on stderr too (as Python's last-resort handler would, were it not
    for our NullHandler): for what the user must learn without asking, such
    as a refused API key."""
    logger.log(level, message, *args)
    last_resort = logging.lastResort
    if level >= logging.WARNING and last_resort is not None and logger.isEnabledFor(level) \
            and not _heard():
        last_resort.handle(logger.makeRecord(logger.name, level, __file__, 0, message, args,
                                             None))


def _heard() -> bool:
    """Whether a handler of the program's would take a lucidic record."""
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(handler, logging.NullHandler) for handler in current.handlers):
            return True
        current = current.parent if current.propagate else None
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
