"""Turning what the user hands us into safe record fields, in the caller's
thread: JSON-safe values, bounded text, masked strings."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from ._internal import log_rate_limited
from ._numbers import bounded_cost, finite_float
from ._storable import int_note
from .columns import COLUMN_TYPES, ColumnType
from .limits import INT_MAX, INT_MIN, MAX_DOCUMENT_INT_BITS, MAX_TEXT_CHARS

#: What a string becomes when the masking function fails on it.
REDACTED = "[REDACTED: masking function failed]"
_MAX_DEPTH = 32

Mask = Callable[[str], str]


def bounded(text: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        cut = len(text) - MAX_TEXT_CHARS
        return text[:MAX_TEXT_CHARS] + f"…[truncated {cut} characters]"
    return text


def safe_repr(value: Any) -> str:
    try:
        return bounded(repr(value))
    except Exception:  # noqa: BLE001 - a user's __repr__ may raise anything
        return f"<unrepresentable {type(value).__qualname__}>"


def text_field(value: Any) -> str | None:
    """A text field as given by the user: str kept, anything else rendered."""
    if value is None or type(value) is str:
        return value if value is None or len(value) <= MAX_TEXT_CHARS else bounded(value)
    if isinstance(value, str):
        return bounded(str.__str__(value))
    try:
        return bounded(str(value))
    except Exception:  # noqa: BLE001
        return safe_repr(value)


def items_of(value: list[Any] | tuple[Any, ...] | set[Any] | frozenset[Any]
             ) -> list[Any] | tuple[Any, ...] | set[Any]:
    """The items of a list, tuple or set as the built-in type holds them: a
    subclass's own ``__iter__`` (which may raise, or lie) is never called."""
    if type(value) is list or type(value) is tuple:
        return value
    if isinstance(value, list):
        return list.copy(value)
    if isinstance(value, tuple):
        return tuple.__getitem__(value, slice(None))
    return set(value)  # copies a set or frozenset subclass without its __iter__


def to_jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of value; objects that JSON cannot hold become their repr."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if INT_MIN <= value <= INT_MAX else _big_int(value)
    if isinstance(value, str):
        return bounded(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return safe_repr(value)
    if isinstance(value, Mapping):
        try:
            return {str(k) if not isinstance(k, str) else k: to_jsonable(v, depth + 1)
                    for k, v in value.items()}
        except Exception:  # noqa: BLE001 - a mapping whose iteration fails
            return safe_repr(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, depth + 1) for v in items_of(value)]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return to_jsonable(dataclasses.asdict(value), depth + 1)
        except Exception:  # noqa: BLE001
            return safe_repr(value)
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump) and not isinstance(value, type):
        try:
            return to_jsonable(dump(mode="json"), depth + 1)
        except Exception:  # noqa: BLE001
            return safe_repr(value)
    return safe_repr(value)


def shrink_record(record: tuple[str, str, float, dict[str, Any]], max_bytes: int,
                  measure: Callable[[Any], int]) -> Any:
    """A copy of ``record`` whose size (as ``measure`` gives it) is at most
    ``max_bytes``: its longest texts are cut to a common length, each saying
    how much was cut. None when cutting texts cannot make it fit."""
    kind, record_id, ts, fields = record
    fields = _copy_containers(fields)
    for _ in range(8):
        size = measure((kind, record_id, ts, fields))
        if size <= max_bytes:
            return (kind, record_id, ts, fields)
        texts = _long_texts(fields)
        # Every character takes at least a byte, so cutting the excess in
        # characters (and room for each note) is enough, unless escapes or
        # multi-byte characters make the texts larger: then another round.
        cap = _common_cap([len(t) for _, _, t in texts], size - max_bytes + 64 * len(texts))
        if cap is None:
            return None
        for holder, key, text in texts:
            if len(text) > cap:
                holder[key] = text[:cap] + f"…[truncated {len(text) - cap} characters]"
    return None


_SHORTEST_CUT = 256


def _common_cap(lengths: list[int], excess: int) -> int | None:
    """The longest length to cut every text to that removes at least
    ``excess`` characters; None if even the shortest cut is not enough."""
    def removed(cap: int) -> int:
        return sum(n - cap for n in lengths if n > cap)

    if not lengths or removed(_SHORTEST_CUT) < excess:
        return None
    low, high = _SHORTEST_CUT, max(lengths)  # removed(low) >= excess > removed(high)
    while high - low > 1:
        middle = (low + high) // 2
        if removed(middle) >= excess:
            low = middle
        else:
            high = middle
    return low


def _copy_containers(value: Any) -> Any:
    if type(value) is dict:
        return {k: _copy_containers(v) for k, v in value.items()}
    if type(value) is list:
        return [_copy_containers(v) for v in value]
    return value


def _long_texts(value: Any) -> list[tuple[Any, Any, str]]:
    """(container, key, text) of every string inside value that could be cut."""
    found: list[tuple[Any, Any, str]] = []
    stack = [value]
    while stack:
        node = stack.pop()
        items = node.items() if type(node) is dict else enumerate(node)
        for key, item in items:
            if type(item) is str:
                if len(item) > _SHORTEST_CUT:
                    found.append((node, key, item))
            elif type(item) in (dict, list):
                stack.append(item)
    return found


def _big_int(value: int) -> Any:
    """An integer beyond 64 bits is kept while JSON can carry it; one whose
    decimal text would run to thousands of digits becomes a note (encoding
    it would fail, and lose the record with it)."""
    if value.bit_length() <= MAX_DOCUMENT_INT_BITS:
        return int(value)  # a plain int, even from an int subclass
    return int_note(value)


# -- a value as its column wants it ----------------------------------------------------

def field_value(column: str, value: Any) -> Any:
    """A value for a record's field, as its column's type wants it (see
    lucidic.columns); None stays None: the field is left as it is."""
    if value is None:
        return None
    return _COERCE[column](value)


def _text_list(value: Any) -> Any:
    if isinstance(value, (list, tuple, set, frozenset)):
        return [text_field(item) for item in items_of(value)]
    return to_jsonable(value)


def _coercer(kind: ColumnType) -> Callable[[Any], Any]:
    if kind is ColumnType.TEXT_LIST:
        return _text_list
    if kind.is_json:
        return to_jsonable
    return {ColumnType.INT: int, ColumnType.BOOL: bool,
            ColumnType.REAL: float}.get(kind, text_field)


def _cost(value: Any) -> float | None:
    """A cost in dollars, or None (no cost known) for one that is not a
    finite number within MAX_COST: the server refuses it."""
    try:
        return bounded_cost(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def _duration(value: Any) -> float | None:
    """How long something took, in seconds, or None (not known) for one
    that is not a finite number of at least 0: the server refuses it."""
    try:
        number = finite_float(float(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and number >= 0 else None


#: How a value becomes each column's type, worked out once per column.
_COERCE = {column: _coercer(kind) for column, kind in COLUMN_TYPES.items()}
_COERCE.update(cost=_cost, duration=_duration, time_to_first_token=_duration)


# -- masking ------------------------------------------------------------------------

def mask_text(mask: Mask, text: str) -> str:
    try:
        masked = mask(text)
    except Exception as exc:  # noqa: BLE001 - the user's function may raise anything
        return masking_raised(exc)
    return masked if type(masked) is str else masking_returned(masked)


def masking_raised(exc: Exception) -> str:
    """What a text becomes when the masking function raised on it."""
    _masking_failed(f"raised {exc!r}", exc_info=True)
    return REDACTED


def masking_returned(masked: Any) -> str:
    """What a text becomes when the masking function returned something else
    than text: that could carry the original through, so it is a failure."""
    _masking_failed(f"returned {type(masked).__name__}, not str", exc_info=False)
    return REDACTED


def _masking_failed(what: str, *, exc_info: bool) -> None:
    # The user's bug, not ours: say so, and where the traceback points.
    log_rate_limited("masking_function", "lucidic: masking_function %s; the text was redacted "
                     "(stored as %r, nothing unmasked left the process). Fix the "
                     "masking_function given to lai.init() / continue_session().", what,
                     REDACTED, exc_info=exc_info)


def mask_value(mask: Mask, value: Any) -> Any:
    """Mask every string inside a JSON-safe value, dict keys included (a key
    can be data too: {"alice@example.com": ...})."""
    if type(value) is str:
        return mask_text(mask, value)
    if type(value) is dict:
        return {mask_text(mask, k): mask_value(mask, v) for k, v in value.items()}
    if type(value) is list:
        return [mask_value(mask, v) for v in value]
    return value


#: Fields that are identifiers or enumerations, never user text: not masked.
UNMASKED_FIELDS = frozenset({
    "session_id", "step_id", "parent_step_id", "project", "type", "is_finished",
    "is_successful", "started_at", "ended_at",
})


def mask_fields(mask: Mask, fields: dict[str, Any]) -> dict[str, Any]:
    for key, value in fields.items():
        if key not in UNMASKED_FIELDS and (type(value) is str or type(value) in (dict, list)):
            fields[key] = mask_value(mask, value)
    return fields
