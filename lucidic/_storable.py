"""Values every backend can hold: text without NUL bytes or lone
surrogates, JSON without NaN or integers too long to encode. Used by the
store, its evaluation tables and the HTTP sink alike, so it sits below all of
them (with nothing under it but lucidic.limits)."""

from __future__ import annotations

import math
from typing import Any

from .limits import MAX_DOCUMENT_INT_BITS


def clean_text(value: str) -> str:
    """Make a string storable everywhere: NUL bytes (refused by PostgreSQL) and
    lone surrogates (not encodable as UTF-8) become U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def int_note(value: int) -> str:
    """What an integer of thousands of digits is recorded as (JSON encoders refuse it)."""
    return f"<integer of {value.bit_length()} bits, too large to record>"


def clean_json(value: Any) -> Any:
    """A copy of a JSON-safe value that every backend (and JSON itself) can
    hold: strings cleaned as by clean_text, NaN and infinity as null, an
    integer of thousands of digits (which JSON encoders refuse) as a note."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, int) and value.bit_length() > MAX_DOCUMENT_INT_BITS:
        return int_note(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
