"""Numbers the user hands us, as we record them: converted as the built-in
types convert, and shown briefly in error messages.

Imports nothing of Lucidic but its limits: the public calls, the scores, the
records and the server use it.
"""

from __future__ import annotations

import math

from .limits import MAX_COST

__all__ = ["as_float", "bounded_cost", "finite_float", "short_number_repr"]


def as_float(value: int | float) -> float:
    """An int or float as a float, converted as the built-in types convert
    (a subclass's own ``__float__`` is not called); infinity for an int too
    large for any float, so that callers refuse it as not finite."""
    if isinstance(value, float):
        return float.__float__(value)
    try:
        return int.__float__(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def finite_float(value: int | float) -> float | None:
    """``as_float(value)``, or None when that is not finite (an infinity, a
    NaN, an int too large for any float): for the caller to refuse."""
    number = as_float(value)
    return number if math.isfinite(number) else None


def bounded_cost(value: int | float) -> float | None:
    """A cost in dollars as recorded: ``finite_float(value)`` within
    ±MAX_COST (the server's bound, so that any sum of costs stays finite),
    else None."""
    number = finite_float(value)
    return number if number is not None and abs(number) <= MAX_COST else None


def short_number_repr(value: int | float) -> str:
    """A number for an error message: a huge int is not written out in full."""
    if isinstance(value, int):
        digits = int.__repr__(value) if value.bit_length() < 4000 else "a huge int"
        return digits if len(digits) <= 40 else f"{digits[:20]}… ({len(digits)} digits)"
    return float.__repr__(value)
